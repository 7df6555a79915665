//! Bounds on connections, whatever protocol they speak: how many may be open at once, and how
//! long one may go without a request.
//!
//! HTTP/1's header timeout starts only once hyper knows the protocol, so a client that connects
//! and sends nothing (or completes a TLS handshake, or opens an h2c connection, and then goes
//! quiet) would be held for ever, and an HTTP/2 client could keep a connection open with pings
//! alone. The guard works below every protocol: a connection over the limit is closed at accept;
//! the connection's service marks each request it is handed; and a read or write of the
//! connection that cannot proceed fails once the connection has gone without a request for its
//! deadline (`first_request` after opening, `idle` after the last request), which makes hyper
//! close it. Bytes alone (a ping, a trickle) do not keep a connection open; a request does.

use std::future::{Future, Ready};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep, sleep};

/// How connections are bounded.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections open at once; the excess is closed at accept.
    pub max_connections: usize,
    /// How long a new connection may take to deliver its first request (a TLS handshake and
    /// a request head).
    pub first_request: Duration,
    /// How long a connection may go without a request after its last one.
    pub idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// The acceptor that applies [`ConnectionLimits`] to every TCP stream, before TLS or HTTP.
#[derive(Clone)]
pub(crate) struct Guard {
    limits: ConnectionLimits,
    open: Arc<Semaphore>,
}

impl Guard {
    pub(crate) fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            open: Arc::new(Semaphore::new(limits.max_connections)),
        }
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.limits
            .max_connections
            .saturating_sub(self.open.available_permits())
    }
}

impl<I, S> Accept<I, S> for Guard {
    type Stream = Guarded<I>;
    type Service = Marked<S>;
    type Future = Ready<io::Result<(Guarded<I>, Marked<S>)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            tracing::warn!(
                max = self.limits.max_connections,
                "connection limit reached; a new connection is closed"
            );
            return std::future::ready(Err(io::Error::other("connection limit reached")));
        };
        let requests = Arc::new(Requests::default());
        let opened = Instant::now();
        std::future::ready(Ok((
            Guarded {
                place: Some(permit),
                inner: stream,
                limits: self.limits,
                opened,
                requests: requests.clone(),
                deadline: Box::pin(sleep(self.limits.first_request)),
            },
            Marked {
                inner: service,
                requests,
            },
        )))
    }
}

/// When a connection's last request was handed to its service.
#[derive(Default)]
pub(crate) struct Requests(Mutex<Option<Instant>>);

impl Requests {
    fn mark(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(Instant::now());
        }
    }

    fn last(&self) -> Option<Instant> {
        self.0.lock().ok().and_then(|last| *last)
    }
}

/// A connection's service, marking every request it is handed.
#[derive(Clone)]
pub(crate) struct Marked<S> {
    inner: S,
    requests: Arc<Requests>,
}

impl<S: tower::Service<R>, R> tower::Service<R> for Marked<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.requests.mark();
        self.inner.call(request)
    }
}

/// A stream counted against the limit while it lives, whose reads and writes fail once it has
/// gone without a request past its deadline.
pub(crate) struct Guarded<I> {
    /// The connection's place: given back when the server shuts its side, before the peer can
    /// see the close (and, declared before the stream, first on drop), so that a peer that saw
    /// its connection end can open another.
    place: Option<OwnedSemaphorePermit>,
    inner: I,
    limits: ConnectionLimits,
    opened: Instant,
    requests: Arc<Requests>,
    deadline: Pin<Box<Sleep>>,
}

impl<I> Guarded<I> {
    /// When the connection must have had its next request.
    fn due(&self) -> Instant {
        match self.requests.last() {
            None => self.opened + self.limits.first_request,
            Some(last) => last + self.limits.idle,
        }
    }

    /// An operation that cannot proceed: pending until the connection is due, then an error.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.due();
            if due <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection went without a request past its deadline",
                )));
            }
            self.deadline.as_mut().reset(due);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => self.stalled(cx),
            ready => ready,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.stalled(cx),
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.place = None;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
