//! `selene-kms-server`: the OS-facing host of PH1.KMS.
//!
//! [`Engine`] is the host logic as a library (everything but HTTP and authentication), so Selene
//! OS can embed the KMS in-process over the embedded store; [`serve`] is the HTTP/JSON host of it.
#![forbid(unsafe_code)]

mod auth;
mod engine;
mod http;
mod metrics;
mod openapi;
mod serve;
mod store_error;
mod tls;

pub use auth::{AuthError, Authenticator, hash_token, new_token, provision_tokens};
pub use engine::{
    AdminError, Caller, CreatedSecret, DEFAULT_IDEMPOTENCY_RETENTION_MS, Engine, KmsAnswer,
    NewSecretRequest, Redeemed, StageRequest, TtlRequest,
};
pub use http::{AppState, DEFAULT_BODY_LIMIT, router};
pub use metrics::Metrics;
pub use openapi::document as openapi_document;
pub use serve::{Listening, ServeOptions, serve};
pub use tls::TlsOptions;
