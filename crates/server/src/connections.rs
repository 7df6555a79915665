//! Bounds on connections, whatever protocol they speak: how many may be open at once, and how
//! long one may stay silent.
//!
//! HTTP/1's header timeout starts only once hyper knows the protocol, so a client that connects
//! and sends nothing (or completes a TLS handshake, or opens an h2c connection, and then goes
//! quiet) would be held for ever. The guard works below every protocol, on the TCP stream: a
//! connection over the limit is closed at accept, and one that makes no progress for its
//! deadline (its first bytes within `first_byte`; later, no byte read or written within `idle`)
//! fails its next read or write, which makes hyper close it. Writes count as progress, so a
//! long answer to a client that reads it is not cut; a client that stops reading its answers
//! stalls the writes, and is cut like a silent one.

use std::future::{Future, Ready};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
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
    /// How long a new connection may take to send its first bytes (a TLS handshake or a
    /// request head).
    pub first_byte: Duration,
    /// How long an open connection may stay silent between requests.
    pub idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            first_byte: Duration::from_secs(10),
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
}

impl<I, S> Accept<I, S> for Guard {
    type Stream = Guarded<I>;
    type Service = S;
    type Future = Ready<io::Result<(Guarded<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            tracing::warn!(
                max = self.limits.max_connections,
                "connection limit reached; a new connection is closed"
            );
            return std::future::ready(Err(io::Error::other("connection limit reached")));
        };
        std::future::ready(Ok((
            Guarded {
                place: Some(permit),
                inner: stream,
                idle: self.limits.idle,
                deadline: Box::pin(sleep(self.limits.first_byte)),
            },
            service,
        )))
    }
}

/// A stream counted against the limit while it lives, whose reads fail once it has been silent
/// past its deadline.
pub(crate) struct Guarded<I> {
    /// The connection's place: given back when the server shuts its side, before the peer can
    /// see the close (and, declared before the stream, first on drop), so that a peer that saw
    /// its connection end can open another.
    place: Option<OwnedSemaphorePermit>,
    inner: I,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<I> Guarded<I> {
    /// Bytes moved: the connection has `idle` again from now.
    fn progressed(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// An operation that could not proceed: pending until the deadline, then an error.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection made no progress past its deadline",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(outcome) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => self.stalled(cx),
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
            Poll::Ready(Ok(n)) if n > 0 => {
                self.progressed();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.stalled(cx),
            other => other,
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
            Poll::Ready(Ok(n)) if n > 0 => {
                self.progressed();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.stalled(cx),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
