//! The optional TOML config file. Flags and environment variables take precedence over it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A store connection string from the config file. It may hold a password, so its `Debug`
/// shows it redacted.
#[derive(Default, Deserialize)]
#[serde(transparent)]
pub(crate) struct StoreUrl(pub(crate) String);

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&selene_kms_backends::redact(&self.0))
    }
}

/// `[server]`: how `serve` and `init` run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    pub(crate) data_dir: Option<PathBuf>,
    /// `postgres://…` for PostgreSQL; absent for the embedded store in the data directory.
    pub(crate) store: Option<StoreUrl>,
    pub(crate) listen: Option<String>,
    pub(crate) log_format: Option<String>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) tls_client_ca: Option<PathBuf>,
    pub(crate) allow_plaintext: Option<bool>,
    pub(crate) body_limit_bytes: Option<usize>,
    pub(crate) request_timeout_ms: Option<u64>,
    pub(crate) idempotency_retention_hours: Option<u64>,
    pub(crate) max_connections: Option<usize>,
}

/// `[client]`: how client commands reach a server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientSection {
    pub(crate) url: Option<String>,
    pub(crate) admin_token: Option<String>,
    pub(crate) os_token: Option<String>,
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) client_identity: Option<PathBuf>,
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    pub(crate) server: ServerSection,
    #[serde(default)]
    pub(crate) client: ClientSection,
}

impl Config {
    /// Reads the file, if one is given.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self, String> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        // The parser's message quotes the offending line, which may hold a token: keep only
        // the position.
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" at byte {}", s.start))
                .unwrap_or_default();
            format!("config {} is not valid{at}", path.display())
        })
    }
}
