//! Running the HTTP host: listen, serve (TLS or plain), prune retained records, sign manifests,
//! shut down gracefully (in-flight requests and their commits finish, a last manifest names
//! them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use selene_kms_store::StoreError;
use selene_kms_store::manifest::Manifester;
use tokio::sync::Mutex;

use axum::http::StatusCode;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use tokio::task::JoinHandle;
use tower_http::timeout::TimeoutLayer;

use crate::connections::{ConnectionLimits, Guard};
use crate::engine::{DEFAULT_IDEMPOTENCY_RETENTION_MS, Engine};
use crate::http::{AppState, DEFAULT_BODY_LIMIT, router};
use crate::metrics::Metrics;
use crate::tls::TlsOptions;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS material; plain HTTP when absent.
    pub tls: Option<TlsOptions>,
    /// Allow plain HTTP on a non-loopback address (off by default).
    pub allow_plaintext_non_loopback: bool,
    /// Largest request body.
    pub body_limit: usize,
    /// Longest time a request may take.
    pub request_timeout: Duration,
    /// Longest time a client may take to send a request's headers (slow clients are cut off).
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// How long idempotency records are kept.
    pub idempotency_retention_ms: u64,
    /// How many connections may be open, and how long one may stay silent.
    pub connections: ConnectionLimits,
    /// Where each signed manifest is also appended (out of the database writer's reach).
    pub witness_file: Option<PathBuf>,
    /// The audit public key `init` pinned (hex), which the console's verification checks the
    /// store's key against.
    pub pinned_audit_key: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8750)),
            tls: None,
            allow_plaintext_non_loopback: false,
            body_limit: DEFAULT_BODY_LIMIT,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            idempotency_retention_ms: DEFAULT_IDEMPOTENCY_RETENTION_MS,
            connections: ConnectionLimits::default(),
            witness_file: None,
            pinned_audit_key: None,
        }
    }
}

/// A running server.
pub struct Listening {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    handle: Handle<SocketAddr>,
    grace: Duration,
    server: JoinHandle<std::io::Result<()>>,
    pruner: JoinHandle<()>,
    signer: JoinHandle<()>,
    reloader: JoinHandle<()>,
    manifester: Arc<Mutex<Manifester>>,
    state: Arc<AppState>,
}

impl Listening {
    /// Stops accepting, lets in-flight requests finish (up to the grace period), signs a last
    /// manifest over what they wrote, and returns.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.handle.graceful_shutdown(Some(self.grace));
        self.pruner.abort();
        self.reloader.abort();
        let served = match self.server.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        self.signer.abort();
        let failed = sign_due(&self.manifester, &self.state.metrics, true).await;
        served?;
        failed.map_or(Ok(()), |e| Err(std::io::Error::other(e.message)))
    }
}

/// How often a manifest is due while chains move.
const MANIFEST_EVERY: Duration = Duration::from_secs(1);

/// Largest read buffer for a request head; larger headers are refused.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Bounds what a client can make the server hold: a slow client is cut off after `header_timeout`
/// and a request head may not exceed [`MAX_HEAD_BYTES`].
fn limit_http1(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header_timeout: Duration,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.to_owned())
}

/// Starts serving `engine`; returns once listening.
pub async fn serve(engine: Arc<Engine>, options: ServeOptions) -> std::io::Result<Listening> {
    if options.tls.is_none()
        && !options.listen.ip().is_loopback()
        && !options.allow_plaintext_non_loopback
    {
        return Err(invalid(
            "refusing plain HTTP on a non-loopback address: give --tls-cert/--tls-key, or --allow-plaintext",
        ));
    }
    // Listening for hang-ups from here on keeps one from ending the process (its default).
    let hangups = hangups();
    let guard = Guard::new(options.connections);
    let state = Arc::new(AppState {
        auth: engine.authenticator(),
        engine: engine.clone(),
        metrics: Metrics::default(),
        body_limit: options.body_limit,
        pinned_audit_key: options.pinned_audit_key.clone(),
        witness_file: options.witness_file.clone(),
        connections: guard.clone(),
    });
    let app = router(state.clone()).layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        options.request_timeout,
    ));
    // Checked before listening: a store whose manifests do not hold is not served. The first
    // manifest of this process (a full one) is signed before anything is served.
    let manifester = engine
        .manifester(options.witness_file.as_deref())
        .await
        .map_err(|e| std::io::Error::other(e.message))?;
    let manifester = Arc::new(Mutex::new(manifester));
    sign_due(&manifester, &state.metrics, false).await;
    let listener = std::net::TcpListener::bind(options.listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = Handle::new();
    let header_timeout = options.header_read_timeout;
    let mut reload = None;
    let server = match &options.tls {
        None => {
            let mut server = axum_server::from_tcp(listener)?
                .acceptor(guard)
                .handle(handle.clone());
            limit_http1(server.http_builder(), header_timeout);
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move { server.serve(app).await })
        }
        Some(tls) => {
            let config = RustlsConfig::from_config(tls.server_config()?);
            reload = Some((tls.clone(), config.clone()));
            let mut server = axum_server::from_tcp_rustls(listener, config)?
                .map(|tls| tls.acceptor(guard))
                .handle(handle.clone());
            limit_http1(server.http_builder(), header_timeout);
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move { server.serve(app).await })
        }
    };
    let retention = options.idempotency_retention_ms;
    let pruned = engine.clone();
    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            match pruned.prune(crate::now_ms(), retention).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "pruned expired records"),
                Ok(_) => {}
                Err(e) => tracing::warn!(kind = ?e.kind, "pruning failed"),
            }
        }
    });
    let signer = tokio::spawn(sign_manifests(manifester.clone(), state.clone()));
    let reloader = tokio::spawn(on_hangup(hangups, reload, state.clone()));
    tracing::info!(%addr, tls = options.tls.is_some(), "selene-kms serving");
    Ok(Listening {
        addr,
        handle,
        grace: options.shutdown_grace,
        server,
        pruner,
        signer,
        reloader,
        manifester,
        state,
    })
}

/// The SIGHUPs this process receives.
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

/// The stream of SIGHUPs this process receives; installing it also keeps a hang-up from ending
/// the process (its default action).
#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

/// What a SIGHUP reloads: the TLS options, and the configuration that serves them.
type Reload = Option<(TlsOptions, RustlsConfig)>;

/// At every SIGHUP, reloads the certificate, key and client CA from their files: new
/// connections get the new ones, open connections keep theirs; a set that does not load is
/// refused, logged and counted, and the one in use kept. Without TLS there is nothing to reload.
async fn on_hangup(hangups: Hangups, reload: Reload, state: Arc<AppState>) {
    #[cfg(unix)]
    if let Some(mut hangups) = hangups {
        while hangups.recv().await.is_some() {
            let Some((tls, config)) = &reload else {
                tracing::info!("SIGHUP: nothing to reload without TLS");
                continue;
            };
            // Counted once it holds, so that whoever watches the counter sees it in effect.
            match tls.server_config() {
                Ok(new) => {
                    config.reload_from_config(new);
                    state.metrics.tls_reload(true);
                    tracing::info!("TLS certificate, key and client CA reloaded");
                }
                Err(e) => {
                    state.metrics.tls_reload(false);
                    tracing::error!(error = %e, "TLS reload refused; the certificate in use is kept");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hangups, reload, state);
}

/// Signs the store's manifests while serving: each second, a manifest of the chains that
/// moved (or, after a minute without one, of none).
async fn sign_manifests(manifester: Arc<Mutex<Manifester>>, state: Arc<AppState>) {
    let start = tokio::time::Instant::now() + MANIFEST_EVERY;
    let mut tick = tokio::time::interval_at(start, MANIFEST_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sign_due(&manifester, &state.metrics, false).await;
    }
}

/// Signs a manifest if one is due (always with `force`), counting and logging the outcome.
async fn sign_due(
    manifester: &Mutex<Manifester>,
    metrics: &Metrics,
    force: bool,
) -> Option<StoreError> {
    let now = crate::now_ms();
    match manifester.lock().await.tick(now, force).await {
        Ok(Some(_)) => {
            metrics.manifest_signed(now);
            None
        }
        Ok(None) => None,
        Err(e) => {
            metrics.manifest_failure();
            tracing::error!(kind = ?e.kind, error = %e.message, "signing a manifest failed");
            Some(e)
        }
    }
}
