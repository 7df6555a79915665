//! `selene-kms serve`: the HTTP/JSON API over the embedded store, or over PostgreSQL as one of
//! several nodes sharing it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use selene_kms_server::{ConnectionLimits, Engine, ServeOptions, TlsOptions, serve};

use super::{data_dir, mark_record_macs, open_at, store_location};
use crate::config::Config;
use crate::failure::Failure;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Data directory made by `selene-kms init`.
    #[arg(long, env = "SELENE_KMS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `postgres://…` to serve the store `init --store` made there (the data directory then
    /// holds only the root key); default: the embedded store in the data directory.
    #[arg(long, env = "SELENE_KMS_STORE", hide_env_values = true)]
    store: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8750].
    #[arg(long, env = "SELENE_KMS_LISTEN")]
    listen: Option<SocketAddr>,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates it signed (mTLS).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address.
    #[arg(long)]
    allow_plaintext: bool,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Most connections open at once; the excess is closed at accept [default: 4096].
    #[arg(long, env = "SELENE_KMS_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Append each signed manifest to this file as a JSON line: keep it where the database's
    /// writer cannot reach, and give it to `audit verify --witness-file` to reveal a store
    /// rolled back to an earlier state.
    #[arg(long, env = "SELENE_KMS_WITNESS_FILE")]
    witness_file: Option<PathBuf>,
    /// Let the process dump core: off by default, since its memory holds the root key, caller
    /// credentials and material in use.
    #[arg(long)]
    allow_core_dumps: bool,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SELENE_KMS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log that cannot be written (stderr on a full disk) must not take requests down with
    // it: by default the subscriber reports its write errors with `eprintln!`, which panics
    // when stderr fails, inside whichever request was logging.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A hang-up (SIGHUP) asks a running server to reload its TLS material; its default action
/// would end the process, so it is caught from the start, before the store opens. Tokio keeps a
/// signal caught for the life of the process; the server listens for it once it serves.
fn survive_hang_ups() {
    #[cfg(unix)]
    if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tracing::warn!(error = %e, "cannot catch SIGHUP");
    }
}

/// A write past the process's file size limit (`RLIMIT_FSIZE`) raises SIGXFSZ, whose default
/// action ends the process. Catching it turns the write into an `EFBIG` error instead: the store
/// refuses the requests it cannot record, like on a full disk, and serves again once the limit
/// is raised. The handler stays installed for the life of the process.
fn survive_file_size_limit() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::from_raw(libc::SIGXFSZ)) {
            Ok(mut limit) => {
                tokio::spawn(async move {
                    while limit.recv().await.is_some() {
                        tracing::error!(
                            "a write went past the file size limit; requests that need one are refused"
                        );
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot catch SIGXFSZ"),
        }
    }
}

/// Keeps the process's memory out of core files and away from other processes of its user: a
/// core limit of zero (no core file on a crash) and not dumpable (no `ptrace` attach, no
/// `/proc/PID/mem` for anyone but root). Done before the root key is read.
#[cfg(target_os = "linux")]
fn forbid_core_dumps() -> Result<(), String> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    setrlimit(Resource::Core, none).map_err(|e| format!("cannot turn core dumps off: {e}"))?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|e| format!("cannot make the process undumpable: {e}"))
}

#[cfg(not(target_os = "linux"))]
fn forbid_core_dumps() -> Result<(), String> {
    Err("core dumps can be turned off only on Linux: pass --allow-core-dumps".to_owned())
}

pub(crate) async fn run(config: &Config, args: ServeArgs) -> Result<ExitCode, Failure> {
    if !args.allow_core_dumps {
        forbid_core_dumps()?;
    }
    let s = &config.server;
    let format = args.log_format.unwrap_or(match s.log_format.as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    });
    init_logging(format);
    survive_file_size_limit();
    survive_hang_ups();
    let dir = data_dir(args.data_dir, config)?;
    let listen = match args.listen {
        Some(l) => l,
        None => match &s.listen {
            Some(text) => text
                .parse()
                .map_err(|_| "[server].listen is not an address".to_owned())?,
            None => ServeOptions::default().listen,
        },
    };
    let tls = match (
        args.tls_cert.or(s.tls_cert.clone()),
        args.tls_key.or(s.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => Some(TlsOptions {
            cert,
            key,
            client_ca: args.tls_client_ca.or(s.tls_client_ca.clone()),
        }),
        (None, None) => None,
        _ => return Err("TLS needs both a certificate and a key".into()),
    };
    let defaults = ServeOptions::default();
    let options = ServeOptions {
        listen,
        tls,
        allow_plaintext_non_loopback: args.allow_plaintext || s.allow_plaintext.unwrap_or(false),
        body_limit: s.body_limit_bytes.unwrap_or(defaults.body_limit),
        request_timeout: s
            .request_timeout_ms
            .map_or(defaults.request_timeout, Duration::from_millis),
        header_read_timeout: defaults.header_read_timeout,
        shutdown_grace: defaults.shutdown_grace,
        idempotency_retention_ms: s
            .idempotency_retention_hours
            .map_or(defaults.idempotency_retention_ms, |h| h * 3_600_000),
        connections: ConnectionLimits {
            max_connections: args
                .max_connections
                .or(s.max_connections)
                .unwrap_or(defaults.connections.max_connections),
            ..defaults.connections
        },
        witness_file: args.witness_file,
        // The key `init` pinned beside the store, if it is there: the console verifies against it.
        pinned_audit_key: std::fs::read_to_string(super::init::public_key_path(&dir))
            .ok()
            .map(|k| k.trim().to_owned()),
    };
    if options.connections.max_connections == 0 {
        return Err("--max-connections must be at least 1".to_owned().into());
    }
    let location = store_location(args.store, config, &dir)?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "selene-kms starting");
    let store = open_at(&location, &dir).await?;
    tracing::info!(store = %location.describe(), "store open");
    let engine = Arc::new(Engine::new(store.clone()));
    let listening = serve(engine.clone(), options)
        .await
        .map_err(|e| e.to_string())?;
    // Served: this store's records carry MACs from here on.
    if let Err(e) = mark_record_macs(&dir) {
        tracing::warn!(error = %e, "cannot mark the data directory");
    }
    stop_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    listening.shutdown().await.map_err(|e| e.to_string())?;
    drop(engine);
    // Dropping the last handle drains the writer. Every acknowledged commit is durable already.
    drop(store);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
