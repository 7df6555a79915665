//! What a request presents to authenticate, gathered from its parts: the `Authorization`
//! header, the SPIFFE id of a verified client certificate, and the source address (for the log
//! of failed authentications).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use selene_kms_core::SpiffeId;

use axum_server::tls::TlsInfo;

use crate::engine::Caller;
use crate::tls::peer_spiffe_id;

/// Whom a request authenticated as: set once by the check that authenticated it, read by the
/// request's log line.
#[derive(Clone, Default)]
pub(crate) struct Acted(Arc<OnceLock<Arc<Caller>>>);

impl Acted {
    /// Records the caller (the first authentication of the request stands).
    pub(crate) fn record(&self, caller: &Arc<Caller>) {
        let _ = self.0.set(caller.clone());
    }

    /// The principal, if the request authenticated.
    pub(crate) fn principal_id(&self) -> Option<String> {
        self.0.get().map(|c| c.principal_id.to_string())
    }
}

/// A request's credentials, not yet checked.
pub(crate) struct Credentials {
    /// The `Authorization` header's value.
    pub(crate) authorization: Option<String>,
    /// The URI SAN of the connection's verified client certificate, if it is a SPIFFE id.
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// Where the request came from.
    pub(crate) source: Option<SocketAddr>,
    /// Where to record whom it authenticated as.
    pub(crate) acted: Acted,
}

impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self {
            authorization: parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            spiffe_id: parts
                .extensions
                .get::<Arc<TlsInfo>>()
                .and_then(|info| peer_spiffe_id(info)),
            source: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
            acted: parts.extensions.get::<Acted>().cloned().unwrap_or_default(),
        })
    }
}
