//! `selene-kms-server`: the OS-facing host of PH1.KMS.
//!
//! [`Engine`] is the host logic as a library (everything but HTTP and authentication), so Selene
//! OS can embed the KMS in-process over the embedded store; [`serve`] is the HTTP/JSON host of it.
//!
//! The engine's API is typed: requests are the core's validated types, answers are typed values,
//! and no JSON crosses it except the bytes a KMS answer must be repeated with.
//!
//! | call | takes | answers |
//! | --- | --- | --- |
//! | [`Engine::kms`] | [`Caller`], [`KmsRequest`](selene_kms_core::KmsRequest) | [`KmsAnswer`]: the [`MaterialBundle`](selene_kms_core::MaterialBundle) and its exact bytes |
//! | [`Engine::kms_rejected`] | [`RejectedRequest`](selene_kms_core::RejectedRequest) | [`KmsAnswer`] (the refusal, audited) |
//! | [`Engine::redeem`] | [`RedeemRequest`](selene_kms_core::redeem::RedeemRequest) | [`Redeemed`] material, or a [`Refusal`](selene_kms_core::Refusal) |
//! | [`Engine::create_secret`] | [`NewSecretRequest`] | [`CreatedSecret`], or an [`AdminError`] |
//! | [`Engine::stage`] | [`StageRequest`] | `()`, or an [`AdminError`] |
//! | [`Engine::put_policy`] | [`Policy`](selene_kms_core::Policy) | the policy version, or an [`AdminError`] |
//! | [`Engine::get_policy`] | | [`PolicyDocument`](selene_kms_core::PolicyDocument), or an [`AdminError`] |
//! | [`Engine::list_secrets`] | | [`SecretListing`](selene_kms_store::SecretListing)s, or an [`AdminError`] |
//! | [`Engine::audit_page`], [`Engine::audit_export`] | | [`AuditRecord`](selene_kms_core::AuditRecord)s; the JSON Lines export |
//! | [`Engine::create_principal`], [`Engine::issue_token`] | [`NewPrincipalRequest`], [`NewTokenRequest`] | [`CreatedPrincipal`], [`IssuedTokenAnswer`] (tokens shown once) |
//! | [`Engine::revoke_token`], [`Engine::revoke_principal`] | ids | `()`, or an [`AdminError`] |
//! | [`Engine::list_principals`], [`Engine::list_tenants`] | | [`PrincipalView`]s; [`TenantSummary`](selene_kms_store::TenantSummary)s |
//!
//! Every call takes the [`Caller`] it acts for: its principal is named
//! in the audit record, and its tenant scope is enforced (`KMS_FORBIDDEN_TENANT`). Every call
//! takes the clock reading as `now_ms`, so an embedder decides what time it is.
//!
//! # Embedding
//!
//! Open a store, make an engine, run a request:
//!
//! ```
//! use std::sync::Arc;
//!
//! use selene_kms_core::{
//!     KmsRequest, Policy, PolicyDocument, PrincipalId, PrincipalName, ReasonCode, Role, TenantId,
//! };
//! use selene_kms_server::{Caller, Engine, NewSecretRequest, now_ms};
//! use selene_kms_store::RootKey;
//! use selene_kms_store_sqlite::{SqliteOptions, SqliteStore};
//!
//! # async fn embed() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let root = RootKey::create_file(&dir.path().join("root.key"))?;
//! let options = SqliteOptions { path: dir.path().join("kms.db"), create: true };
//! let engine = Engine::new(Arc::new(SqliteStore::open(&options, root)?));
//!
//! // In process, the embedder asserts who acts; each principal is named in the audit records.
//! let caller = |name: &str, role| {
//!     let id = PrincipalId::from_random(*selene_kms_server::random_bytes::<16>().unwrap());
//!     Caller::asserted(id, PrincipalName::try_from(name).expect("a valid name"), role)
//! };
//! let (admin, os) = (caller("operator", Role::Admin), caller("selene-os", Role::Os));
//!
//! let tenant = TenantId::try_from("acme").expect("a valid tenant id");
//! let document: PolicyDocument = serde_json::from_value(serde_json::json!({
//!     "rules": [{"secret_names": ["payments/*"], "engines": ["PH1.OS"],
//!                "operations": ["GET_HANDLE"]}]
//! }))?;
//! engine.put_policy(&admin, &tenant, &Policy::try_from(&document)?, now_ms()).await?;
//! let secret = NewSecretRequest {
//!     secret_name: "payments/stripe".to_owned(),
//!     material_b64: None,
//!     ephemeral_ttl_ms: None,
//!     handle_ttl_ms: None,
//!     purpose: None,
//! };
//! engine.create_secret(&admin, &tenant, secret, now_ms()).await?;
//!
//! let request = KmsRequest::try_from(selene_kms_core::RawKmsRequest {
//!     correlation_id: Some("c-1".to_owned()),
//!     turn_id: Some("t-1".to_owned()),
//!     idempotency_key: Some("k-1".to_owned()),
//!     tenant_id: Some("acme".to_owned()),
//!     operation: Some(selene_kms_core::Operation::GetHandle),
//!     secret_name: Some("payments/stripe".to_owned()),
//!     requester_engine_id: Some("PH1.OS".to_owned()),
//!     ..Default::default()
//! })
//! .map_err(|rejected| rejected.refusal)?;
//! let answer = engine.kms(&os, &request, now_ms()).await;
//! assert_eq!(answer.reason(), ReasonCode::OkMaterialIssue);
//! assert!(answer.bundle().secret_handle.is_some());
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(embed()).unwrap();
//! ```
#![forbid(unsafe_code)]

mod auth;
mod clock;
mod connections;
mod engine;
mod http;
mod metrics;
mod openapi;
mod random;
mod serve;
mod store_error;
mod tls;

pub use auth::{AuthError, Authenticator, IssuedToken, Presented, new_token};
pub use clock::now_ms;
pub use connections::ConnectionLimits;
pub use engine::{
    AdminError, AuditFilter, AuditPage, Bootstrapped, Caller, CreatedPrincipal, CreatedSecret,
    CryptoAnswer, DEFAULT_IDEMPOTENCY_RETENTION_MS, Engine, IssuedTokenAnswer, KeySource,
    KmsAnswer, MAX_CREDENTIAL_TTL_MS, NewPrincipalRequest, NewSecretRequest, NewTokenRequest,
    PrincipalView, PublicKeys, Redeemed, StageRequest, TokenView, TtlRequest, UpdateSecretRequest,
    UpdatedSecret, Verification, WhoAmI,
};
pub use http::{AppState, CRYPTO_BODY_LIMIT, DEFAULT_BODY_LIMIT, router};
pub use metrics::Metrics;
pub use openapi::document as openapi_document;
pub use random::{generate_material, random_bytes};
pub use serve::{Listening, ServeOptions, serve};
pub use tls::TlsOptions;
