//! The HTTP/JSON host: routes, authentication and roles, body limits, and uniform JSON errors.
//!
//! Handlers are thin: authenticate, read the clock once, parse the body into the core's
//! validated type, call the engine's typed API, encode its answer. Bytes in and bytes out are this
//! module's business (with [`bodies`]), never the engine's. Every error has a reason code; bodies
//! are never logged. The routes are one table ([`routes`]), each with the [`Endpoint`] that
//! documents it, so the router and the OpenAPI document cannot drift apart.

pub(crate) mod bodies;
mod console;
mod credentials;
mod principals;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{MethodRouter, on};
use selene_kms_core::crypto::{CryptoOp, CryptoRequest};
use selene_kms_core::redeem::RedeemRequest;
use selene_kms_core::{
    KmsRequest, MaterialBundle, Operation, Policy, Problem, ReasonCode, Role, Subject, TenantId,
};
use serde::Deserialize;
use zeroize::Zeroize;

use crate::auth::{AuthError, Authenticator, Presented};
use crate::connections::Guard;
use crate::engine::{AdminError, AuditFilter, Caller, Engine, KeySource, KmsAnswer};
use crate::metrics::{Metrics, RouteClass, Scrape};
use crate::now_ms;
use crate::openapi::{self, Endpoint};
use crate::store_error::reason_for;
use credentials::{Acted, Credentials};
use principals::Listing;

/// Largest request body accepted (a KMS request is well under 4 KiB; imported material ≤ 8 KiB).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
/// Largest body of a crypto request: 64 KiB of plaintext and 64 KiB of associated data, each in
/// base64, with room for the handle and the other fields. Data beyond 64 KiB in a body within
/// this limit is refused by the core (413).
pub const CRYPTO_BODY_LIMIT: usize = 192 * 1024;

/// Shared state of the HTTP host.
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Token authentication.
    pub auth: Authenticator,
    /// Counters.
    pub metrics: Metrics,
    /// Largest body accepted.
    pub body_limit: usize,
    /// The audit public key `init` pinned in the data directory (hex), if the server was given
    /// one: what `GET /v1/audit/verify` checks the store's key against by default.
    pub pinned_audit_key: Option<String>,
    /// The witness file this server appends its manifests to, if any: a verification checks the
    /// store against it too.
    pub witness_file: Option<std::path::PathBuf>,
    /// The bound on open connections, which counts them.
    pub(crate) connections: Guard,
}

type Shared = State<Arc<AppState>>;

fn respond(status: u16, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Counts the answer (by operation and reason code) and sends it with the reason's status, or
/// with `status` when the route answers a success with another (201, 202).
fn reply(
    state: &AppState,
    status: u16,
    operation: Option<&'static str>,
    reason: ReasonCode,
    body: impl Into<Body>,
) -> Response {
    state.metrics.count(operation, reason);
    let mut response = respond(status, body);
    response.extensions_mut().insert(reason);
    response
}

/// Lets an `Arc<[u8]>` body be sent without a copy.
struct ArcBytes(Arc<[u8]>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The body a route refuses with before its own work starts (authentication, content type, size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `{"reason_code", "message"}`.
    Admin,
    /// A refusal bundle, as every answer of `POST /v1/kms/requests` is (the v1 contract). The
    /// request was not read, so it names no operation and is no dry run.
    Bundle,
}

/// An error answered with an [`AdminError`] body.
fn error(state: &AppState, operation: Option<&'static str>, reason: ReasonCode) -> Response {
    refused(state, operation, reason, Shape::Admin)
}

/// A refusal in `shape`, with the reason's status.
fn refused(
    state: &AppState,
    operation: Option<&'static str>,
    reason: ReasonCode,
    shape: Shape,
) -> Response {
    let mut response = match shape {
        Shape::Admin => admin_reply(state, operation, Err(reason.into())),
        Shape::Bundle => {
            let bundle = MaterialBundle::refusal(reason, Vec::new(), None, false);
            reply(
                state,
                reason.http_status(),
                operation,
                reason,
                bodies::json(&bundle),
            )
        }
    };
    if reason == ReasonCode::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// What an admin route answers: a success status and its body, or an error.
type AdminOutcome = Result<(u16, Vec<u8>), AdminError>;

fn admin_reply(
    state: &AppState,
    operation: Option<&'static str>,
    outcome: AdminOutcome,
) -> Response {
    match outcome {
        Ok((status, body)) => reply(state, status, operation, ReasonCode::OkMaterialIssue, body),
        Err(e) => {
            let reason = e.reason_code;
            reply(
                state,
                reason.http_status(),
                operation,
                reason,
                bodies::json(&e),
            )
        }
    }
}

/// A failed authentication: counted, logged with its source address (never its credential),
/// refused in `shape`.
fn unauthenticated(
    state: &AppState,
    credentials: &Credentials,
    operation: Option<&'static str>,
    shape: Shape,
) -> Response {
    state.metrics.auth_failure();
    tracing::warn!(source = ?credentials.source, "authentication failed");
    refused(state, operation, ReasonCode::Unauthenticated, shape)
}

/// Authenticates and checks the role (any role when `None`); a refusal comes in `shape`.
async fn authorize(
    state: &AppState,
    credentials: &Credentials,
    role: Option<Role>,
    operation: Option<&'static str>,
    shape: Shape,
) -> Result<Arc<Caller>, Response> {
    let presented = Presented {
        authorization: credentials.authorization.as_deref(),
        spiffe_id: credentials.spiffe_id.as_ref(),
    };
    let reason = match state.auth.authenticate(&presented, now_ms()).await {
        Ok(c) if role.is_none_or(|r| c.role == r) => {
            credentials.acted.record(&c);
            return Ok(c);
        }
        Ok(_) => ReasonCode::ForbiddenRole,
        Err(AuthError::Unauthenticated) => {
            return Err(unauthenticated(state, credentials, operation, shape));
        }
        Err(AuthError::Store(kind)) => reason_for(kind),
    };
    Err(refused(state, operation, reason, shape))
}

/// Authenticates, reads the body, and authenticates again. A caller that does not
/// authenticate (or has another role) is refused before its body is read, whatever the body
/// (DESIGN.md's order of checks: 401 first); and the credential is checked again once the
/// request is whole, as close to the work it authorises as possible, so that a body trickled
/// in after a revocation has answered meets the revocation.
async fn authorized_body(
    state: &AppState,
    credentials: &Credentials,
    headers: &HeaderMap,
    body: Body,
    rule: BodyRule,
) -> Result<(Arc<Caller>, Bytes), Response> {
    let BodyRule {
        role,
        operation,
        shape,
        need,
        limit,
    } = rule;
    authorize(state, credentials, Some(role), operation, shape).await?;
    let limit = limit.map_or(state.body_limit, |l| l.max(state.body_limit));
    let bytes = json_body(state, headers, body, operation, shape, need, limit).await?;
    let caller = authorize(state, credentials, Some(role), operation, shape).await?;
    Ok((caller, bytes))
}

/// Whether a route's body may be left out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    /// No body at all (and no content type) is an empty one.
    Optional,
}

/// Who may send a route's body, how its refusals look, and whether it may be left out.
#[derive(Clone, Copy)]
struct BodyRule {
    role: Role,
    operation: Option<&'static str>,
    shape: Shape,
    need: Need,
    /// The route's own body limit, if the server's does not fit it.
    limit: Option<usize>,
}

impl BodyRule {
    /// An executor route's (redemption, crypto), within `limit` when it needs more room than
    /// the server's limit gives.
    fn executor(operation: Option<&'static str>, limit: Option<usize>) -> Self {
        Self {
            role: Role::Executor,
            operation,
            shape: Shape::Admin,
            need: Need::Required,
            limit,
        }
    }

    /// An admin route's.
    fn admin(need: Need) -> Self {
        Self {
            role: Role::Admin,
            operation: ADMIN,
            shape: Shape::Admin,
            need,
            limit: None,
        }
    }
}

/// [`authorized_body`] for the admin routes.
async fn admin_body(
    state: &AppState,
    credentials: &Credentials,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Arc<Caller>, Bytes), Response> {
    authorized_body(
        state,
        credentials,
        headers,
        body,
        BodyRule::admin(Need::Required),
    )
    .await
}

/// Checks the content type and reads the body within the limit; a refusal comes in `shape`.
async fn json_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    operation: Option<&'static str>,
    shape: Shape,
    need: Need,
    limit: usize,
) -> Result<Bytes, Response> {
    let content_type = headers.get(header::CONTENT_TYPE);
    let is_json = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    let unsupported = || refused(state, operation, ReasonCode::UnsupportedMediaType, shape);
    if !is_json && (need == Need::Required || content_type.is_some()) {
        return Err(unsupported());
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| refused(state, operation, ReasonCode::PayloadTooLarge, shape))?;
    if !is_json && !bytes.is_empty() {
        return Err(unsupported());
    }
    Ok(bytes)
}

fn tenant(state: &AppState, raw: &str) -> Result<TenantId, Response> {
    TenantId::try_from(raw).map_err(|_| error(state, None, ReasonCode::InputSchemaInvalid))
}

/// A tenant of a route's path, refused before its body is parsed when it lies outside the
/// caller's scope (the engine checks it again, for embedders).
fn scoped_tenant(state: &AppState, caller: &Caller, raw: &str) -> Result<TenantId, Response> {
    let tenant = tenant(state, raw)?;
    caller
        .may_name(&tenant)
        .map_err(|reason| error(state, ADMIN, reason))?;
    Ok(tenant)
}

/// The chain an audit query must name.
fn required_chain(state: &AppState, raw: Option<&str>) -> Result<TenantId, Response> {
    let raw = raw.ok_or_else(|| error(state, ADMIN, ReasonCode::UpstreamInputMissing))?;
    chain(state, raw)
}

/// A chain's id in an audit query: a tenant's, or the system chain's.
fn chain(state: &AppState, raw: &str) -> Result<TenantId, Response> {
    TenantId::chain(raw).map_err(|_| error(state, None, ReasonCode::InputSchemaInvalid))
}

async fn kms_request(
    State(state): Shared,
    credentials: Credentials,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rule = BodyRule {
        role: Role::Os,
        operation: UNPARSED,
        shape: Shape::Bundle,
        need: Need::Required,
        limit: None,
    };
    let (caller, bytes) = match authorized_body(&state, &credentials, &headers, body, rule).await {
        Ok(authorized) => authorized,
        Err(r) => return r,
    };
    let answer = match KmsRequest::from_json(&bytes) {
        Ok(req) => state.engine.kms(&caller, &req, now_ms()).await,
        Err(rejected) => state.engine.kms_rejected(&caller, rejected, now_ms()).await,
    };
    kms_reply(&state, answer)
}

/// A KMS request's answer: its bundle, with the status of its reason code.
fn kms_reply(state: &AppState, answer: KmsAnswer) -> Response {
    // A bundle names its operation whenever the request got far enough to say it.
    let operation = answer
        .bundle()
        .operation
        .map_or("UNPARSED", Operation::name);
    let reason = answer.reason();
    let (_, bytes) = answer.into_parts();
    reply(
        state,
        reason.http_status(),
        Some(operation),
        reason,
        Bytes::from_owner(ArcBytes(bytes)),
    )
}

const UNPARSED: Option<&str> = Some("UNPARSED");

/// `POST /v1/admin/tenants/{tenant_id}/requests`: a ROTATE or REVOKE sent by an admin (the
/// console's), for a tenant of the path. Admins may already change secrets and policies; this
/// lets them do it through the same pipeline, policy, dry run and audit as the OS does. Handles
/// and credentials are never issued here.
async fn admin_request(
    State(state): Shared,
    Path(tenant_id): Path<String>,
    credentials: Credentials,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rule = BodyRule {
        role: Role::Admin,
        operation: UNPARSED,
        shape: Shape::Bundle,
        need: Need::Required,
        limit: None,
    };
    let (caller, bytes) = match authorized_body(&state, &credentials, &headers, body, rule).await {
        Ok(authorized) => authorized,
        Err(r) => return r,
    };
    if let Err(reason) = TenantId::try_from(tenant_id.as_str())
        .map_err(|_| ReasonCode::InputSchemaInvalid)
        .and_then(|t| caller.may_name(&t))
    {
        return refused(&state, UNPARSED, reason, Shape::Bundle);
    }
    let answer = match KmsRequest::from_json(&bytes) {
        Ok(req) if req.tenant_id.as_str() != tenant_id => {
            return refused(
                &state,
                UNPARSED,
                ReasonCode::InputSchemaInvalid,
                Shape::Bundle,
            );
        }
        Ok(req) if !req.operation.is_mutation() => {
            return refused(&state, UNPARSED, ReasonCode::ForbiddenRole, Shape::Bundle);
        }
        Ok(req) => state.engine.kms(&caller, &req, now_ms()).await,
        Err(rejected) => state.engine.kms_rejected(&caller, rejected, now_ms()).await,
    };
    kms_reply(&state, answer)
}

async fn redeem(
    State(state): Shared,
    credentials: Credentials,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const OP: Option<&str> = Some("REDEEM");
    let rule = BodyRule::executor(OP, None);
    let (caller, bytes) = match authorized_body(&state, &credentials, &headers, body, rule).await {
        Ok(authorized) => authorized,
        Err(r) => return r,
    };
    let outcome = match RedeemRequest::from_json(&bytes) {
        Ok(req) => state.engine.redeem(&caller, &req, now_ms()).await,
        Err(refusal) => Err(refusal),
    };
    match outcome {
        Ok(redeemed) => reply(
            &state,
            200,
            OP,
            ReasonCode::OkMaterialIssue,
            Bytes::from_owner(bodies::redeemed(&redeemed)),
        ),
        Err(refusal) => {
            let reason = refusal.reason;
            let body = bodies::redeem_refusal(&refusal);
            reply(&state, reason.http_status(), OP, reason, body)
        }
    }
}

/// `POST /v1/crypto/{op}`: one handler per operation, each its own route.
async fn crypto(
    state: Shared,
    credentials: Credentials,
    headers: HeaderMap,
    body: Body,
    op: CryptoOp,
) -> Response {
    let State(state) = state;
    let operation = Some(op.action().name());
    let rule = BodyRule::executor(operation, Some(CRYPTO_BODY_LIMIT));
    let (caller, bytes) = match authorized_body(&state, &credentials, &headers, body, rule).await {
        Ok(authorized) => authorized,
        Err(r) => return r,
    };
    let parsed = CryptoRequest::from_json(op, &bytes);
    // The body held the caller's data in base64: wiped once parsed, when this is its only copy.
    if let Ok(mut body) = bytes.try_into_mut() {
        body.zeroize();
    }
    let outcome = match parsed {
        Ok(req) => state.engine.crypto(&caller, &req, now_ms()).await,
        Err(refusal) => Err(refusal),
    };
    match outcome {
        Ok(answer) => reply(
            &state,
            200,
            operation,
            ReasonCode::OkMaterialIssue,
            Bytes::from_owner(bodies::crypto_answer(&answer)),
        ),
        Err(refusal) => {
            let reason = refusal.reason;
            let error = AdminError {
                diagnostics: refusal.diagnostics,
                ..reason.into()
            };
            reply(
                &state,
                reason.http_status(),
                operation,
                reason,
                bodies::json(&error),
            )
        }
    }
}

const ADMIN: Option<&str> = Some("ADMIN");

/// The admin routes on one secret.
#[derive(Clone, Copy)]
enum SecretRoute {
    Update,
    PublicKey,
}

/// `PATCH` of a secret's terms and `GET` of its public keys.
async fn secret_route(
    State(state): Shared,
    Path((tenant_id, secret_name)): Path<(String, String)>,
    credentials: Credentials,
    headers: HeaderMap,
    body: Body,
    what: SecretRoute,
) -> Response {
    let caller = match what {
        SecretRoute::Update => match admin_body(&state, &credentials, &headers, body).await {
            Ok((caller, bytes)) => (caller, Some(bytes)),
            Err(r) => return r,
        },
        SecretRoute::PublicKey => {
            match authorize(&state, &credentials, Some(Role::Admin), ADMIN, Shape::Admin).await {
                Ok(caller) => (caller, None),
                Err(r) => return r,
            }
        }
    };
    let (caller, bytes) = caller;
    let tenant = match scoped_tenant(&state, &caller, &tenant_id) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let engine = &state.engine;
    let outcome: AdminOutcome = async {
        match bytes {
            Some(bytes) => {
                let req = bodies::parse(&bytes)?;
                let updated = engine
                    .update_secret(&caller, &tenant, &secret_name, req, now_ms())
                    .await?;
                Ok((200, bodies::json(&updated)))
            }
            None => {
                let keys = engine.public_keys(&caller, &tenant, &secret_name).await?;
                Ok((200, bodies::json(&keys)))
            }
        }
    }
    .await;
    admin_reply(&state, ADMIN, outcome)
}

/// The admin routes that take a body (all but the last two write).
#[derive(Clone, Copy)]
enum AdminWrite {
    CreateSecret,
    Stage,
    PutPolicy,
    SimulatePolicy,
    Replay,
}

/// Admin writes share one shape: role, tenant, body, engine call.
async fn admin_write(
    State(state): Shared,
    Path(tenant_id): Path<String>,
    credentials: Credentials,
    headers: HeaderMap,
    body: Body,
    what: AdminWrite,
) -> Response {
    // A replay's body is optional.
    let need = match what {
        AdminWrite::Replay => Need::Optional,
        _ => Need::Required,
    };
    let (caller, bytes) =
        match authorized_body(&state, &credentials, &headers, body, BodyRule::admin(need)).await {
            Ok(authorized) => authorized,
            Err(r) => return r,
        };
    let tenant = match scoped_tenant(&state, &caller, &tenant_id) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let engine = &state.engine;
    let outcome: AdminOutcome = match what {
        AdminWrite::CreateSecret => {
            async {
                let req = bodies::parse(&bytes)?;
                let created = engine
                    .create_secret(&caller, &tenant, req, now_ms())
                    .await?;
                Ok((201, bodies::created(&created)))
            }
            .await
        }
        AdminWrite::Stage => {
            async {
                let req = bodies::parse(&bytes)?;
                engine.stage(&caller, &tenant, req, now_ms()).await?;
                Ok((202, bodies::staged()))
            }
            .await
        }
        AdminWrite::PutPolicy => {
            async {
                let policy = Policy::from_json(&bytes).map_err(|r| AdminError::from(r.reason))?;
                let version = engine
                    .put_policy(&caller, &tenant, &policy, now_ms())
                    .await?;
                Ok((200, bodies::policy_version(version)))
            }
            .await
        }
        AdminWrite::SimulatePolicy => {
            async {
                let req: bodies::SimulateRequest = bodies::parse(&bytes)?;
                let document = serde_json::to_vec(&req.policy)
                    .map_err(|_| AdminError::from(ReasonCode::InputSchemaInvalid))?;
                let policy =
                    Policy::from_json(&document).map_err(|r| AdminError::from(r.reason))?;
                let after_seq = req.after_seq.unwrap_or(0);
                let impact = engine
                    .simulate_policy(&caller, &tenant, &policy, after_seq, now_ms())
                    .await?;
                Ok((200, bodies::json(&impact)))
            }
            .await
        }
        AdminWrite::Replay => {
            async {
                let req: bodies::ReplayRequest = bodies::parse_optional(&bytes)?;
                let report = engine
                    .replay(&caller, &tenant, req.after_seq.unwrap_or(0))
                    .await?;
                Ok((200, bodies::json(&report)))
            }
            .await
        }
    };
    admin_reply(&state, ADMIN, outcome)
}

/// The admin routes that read a tenant's state.
#[derive(Clone, Copy)]
enum AdminRead {
    Secrets,
    Policy,
}

async fn admin_read(
    State(state): Shared,
    Path(tenant_id): Path<String>,
    credentials: Credentials,
    what: AdminRead,
) -> Response {
    let caller = match authorize(&state, &credentials, Some(Role::Admin), ADMIN, Shape::Admin).await
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    let tenant = match tenant(&state, &tenant_id) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let outcome = match what {
        AdminRead::Secrets => state
            .engine
            .list_secrets(&caller, &tenant)
            .await
            .map(bodies::secrets),
        AdminRead::Policy => state
            .engine
            .get_policy(&caller, &tenant)
            .await
            .map(|doc| bodies::json(&doc)),
    };
    admin_reply(&state, ADMIN, outcome.map(|body| (200, body)))
}

/// `GET /v1/audit` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// The tenant whose chain to read.
    tenant_id: Option<String>,
    /// Records with a greater sequence number (exclusive).
    after_seq: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    /// Only records of this operation.
    operation: Option<String>,
    /// Only records of this requester engine.
    engine: Option<String>,
    /// Only records with this reason code.
    reason_code: Option<String>,
}

/// Role check and query parsing shared by the audit routes.
async fn admin_query<T>(
    state: &AppState,
    credentials: &Credentials,
    query: Result<Query<T>, QueryRejection>,
) -> Result<(Arc<Caller>, T), Response> {
    let caller = authorize(state, credentials, Some(Role::Admin), ADMIN, Shape::Admin).await?;
    query
        .map(|Query(q)| (caller, q))
        .map_err(|_| error(state, ADMIN, ReasonCode::InputSchemaInvalid))
}

async fn audit(
    State(state): Shared,
    credentials: Credentials,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let (caller, q) = match admin_query(&state, &credentials, query).await {
        Ok(q) => q,
        Err(r) => return r,
    };
    let tenant = match required_chain(&state, q.tenant_id.as_deref()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    // A name that is no operation or reason code is refused rather than scanned for in vain.
    fn named<T: serde::de::DeserializeOwned>(
        value: Option<String>,
        subject: Subject,
    ) -> Result<Option<T>, AdminError> {
        value
            .filter(|v| !v.is_empty())
            .map(|v| {
                serde_json::from_value(serde_json::Value::String(v))
                    .map_err(|_| AdminError::invalid(subject, Problem::Unknown))
            })
            .transpose()
    }
    let filter = match (
        named(q.operation, Subject::Operation),
        named(q.reason_code, Subject::ReasonCode),
    ) {
        (Ok(operation), Ok(reason_code)) => AuditFilter {
            operation,
            engine: q.engine.filter(|v| !v.is_empty()),
            reason_code,
        },
        (Err(e), _) | (_, Err(e)) => return admin_reply(&state, ADMIN, Err(e)),
    };
    let outcome = state
        .engine
        .audit_page(
            &caller,
            &tenant,
            q.after_seq.unwrap_or(0),
            q.limit.unwrap_or(crate::engine::DEFAULT_AUDIT_PAGE),
            &filter,
        )
        .await
        .map(|page| (200, bodies::json(&page)));
    admin_reply(&state, ADMIN, outcome)
}

/// `GET /v1/audit/verify` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyQuery {
    /// The chain to verify.
    tenant_id: Option<String>,
    /// The audit public key to check the store's against (hex); the pinned one when absent.
    public_key: Option<String>,
}

async fn audit_verify(
    State(state): Shared,
    credentials: Credentials,
    query: Result<Query<VerifyQuery>, QueryRejection>,
) -> Response {
    let (caller, q) = match admin_query(&state, &credentials, query).await {
        Ok(q) => q,
        Err(r) => return r,
    };
    let tenant = match required_chain(&state, q.tenant_id.as_deref()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Err(reason) = caller.may_name(&tenant) {
        return error(&state, ADMIN, reason);
    }
    let key = match (&q.public_key, &state.pinned_audit_key) {
        (Some(given), _) => (given.as_str(), KeySource::Given),
        (None, Some(pinned)) => (pinned.as_str(), KeySource::Pinned),
        (None, None) => {
            let missing = AdminError::invalid(Subject::PublicKey, Problem::Missing);
            return admin_reply(&state, ADMIN, Err(missing));
        }
    };
    let outcome = state
        .engine
        .audit_verification(
            &caller,
            &tenant,
            key,
            state.witness_file.as_deref(),
            now_ms(),
        )
        .await
        .map(|v| (200, bodies::json(&v)));
    admin_reply(&state, ADMIN, outcome)
}

/// `GET /v1/audit/export` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportQuery {
    /// One tenant; every tenant when absent.
    tenant_id: Option<String>,
}

async fn audit_export(
    State(state): Shared,
    credentials: Credentials,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Response {
    let (caller, q) = match admin_query(&state, &credentials, query).await {
        Ok(q) => q,
        Err(r) => return r,
    };
    let tenant = match q.tenant_id.as_deref().map(|t| chain(&state, t)).transpose() {
        Ok(t) => t,
        Err(r) => return r,
    };
    let outcome = state
        .engine
        .audit_export(&caller, tenant.as_ref(), now_ms())
        .await
        .map(|lines| (200, lines));
    let mut response = admin_reply(&state, ADMIN, outcome);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

async fn public_key(State(state): Shared) -> Response {
    respond(
        200,
        bodies::audit_public_key(state.engine.audit_public_key()),
    )
}

async fn healthz() -> Response {
    respond(200, bodies::status("ok"))
}

async fn readyz(State(state): Shared) -> Response {
    if state.engine.ready().await {
        respond(200, bodies::status("ready"))
    } else {
        respond(503, bodies::status("unavailable"))
    }
}

/// The no-op JSON route: a response of about a bundle's size with no engine work. It is the HTTP
/// floor against which the KMS routes are measured.
async fn noop() -> Response {
    respond(
        200,
        &br#"{"validation_status":"OK","reason_code":"PH1_KMS_OK_MATERIAL_ISSUE","diagnostics":[],"operation":"GET_HANDLE","secret_ref":"ksr2_noop","secret_handle":"ksh2_noop","ephemeral_credential_ref":null,"expires_at_ms":0,"rotated_version":null,"revoked":null,"dry_run":false,"simulation_id":null,"audit_seq":0}"#[..],
    )
}

/// How long a scrape waits to learn whether the store is ready; past it, it is not.
const SCRAPE_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

async fn metrics(State(state): Shared) -> Response {
    let scrape = Scrape {
        batches: state.engine.batch_histogram(),
        health: state.engine.write_health(),
        // A scrape must answer while the database hangs, when its counters matter most.
        ready: tokio::time::timeout(SCRAPE_READY_WAIT, state.engine.ready())
            .await
            .unwrap_or(false),
        open_connections: state.connections.open(),
    };
    let mut r = respond(200, state.metrics.render(&scrape));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

async fn openapi_document() -> Response {
    respond(200, openapi::document())
}

async fn not_found(State(state): Shared) -> Response {
    error(&state, None, ReasonCode::RouteNotFound)
}

async fn method_not_allowed(State(state): Shared) -> Response {
    error(&state, None, ReasonCode::MethodNotAllowed)
}

fn class_of(method: &Method, path: &str) -> RouteClass {
    match (method, path) {
        (&Method::POST, "/v1/kms/requests") => RouteClass::Kms,
        (&Method::POST, "/v1/material/redeem") => RouteClass::Redeem,
        (&Method::POST, p) if p.starts_with("/v1/crypto/") => RouteClass::Crypto,
        (_, p) if p.starts_with("/v1/admin/") || p.starts_with("/v1/audit") => RouteClass::Admin,
        _ => RouteClass::Other,
    }
}

/// Latency metrics and one log line per request at info: method, route template (never the
/// path itself, which can name tenants and secrets), status, reason code, the principal it
/// authenticated as, and duration; never a body, a header, a token or a value.
async fn observe(State(state): Shared, mut request: Request, next: Next) -> Response {
    let start = Instant::now();
    let class = class_of(request.method(), request.uri().path());
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let acted = Acted::default();
    request.extensions_mut().insert(acted.clone());
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    state.metrics.observe(class, elapsed);
    tracing::info!(
        %method,
        route = route.as_ref().map_or("unmatched", MatchedPath::as_str),
        status = response.status().as_u16(),
        reason_code = response.extensions().get::<ReasonCode>().map_or("-", |r| r.name()),
        principal_id = acted.principal_id().as_deref().unwrap_or("-"),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// One route: its documentation and its handler.
pub(crate) struct Route {
    pub(crate) endpoint: &'static Endpoint,
    handler: MethodRouter<Arc<AppState>>,
}

/// `endpoint` served by `handler`, on the endpoint's own method.
fn at<H, T>(endpoint: &'static Endpoint, handler: H) -> Route
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    Route {
        endpoint,
        handler: on(endpoint.verb.filter(), handler),
    }
}

/// Every route the server has, each once. The router is built from this table and nothing else,
/// and so is the OpenAPI document.
pub(crate) fn routes() -> Vec<Route> {
    let write = |what: AdminWrite| {
        move |state: Shared,
              path: Path<String>,
              credentials: Credentials,
              headers: HeaderMap,
              body: Body| { admin_write(state, path, credentials, headers, body, what) }
    };
    let list = |what: Listing| {
        move |state: Shared, credentials: Credentials| principals::listing(state, credentials, what)
    };
    let use_key = |op: CryptoOp| {
        move |state: Shared, credentials: Credentials, headers: HeaderMap, body: Body| {
            crypto(state, credentials, headers, body, op)
        }
    };
    let secret = |what: SecretRoute| {
        move |state: Shared,
              path: Path<(String, String)>,
              credentials: Credentials,
              headers: HeaderMap,
              body: Body| { secret_route(state, path, credentials, headers, body, what) }
    };
    let read = |what: AdminRead| {
        move |state: Shared, path: Path<String>, credentials: Credentials| {
            admin_read(state, path, credentials, what)
        }
    };
    vec![
        at(&openapi::KMS_REQUESTS, kms_request),
        at(&openapi::ADMIN_REQUESTS, admin_request),
        at(&openapi::REDEEM, redeem),
        at(&openapi::CRYPTO_MAC, use_key(CryptoOp::Mac)),
        at(&openapi::CRYPTO_SIGN, use_key(CryptoOp::Sign)),
        at(&openapi::CRYPTO_VERIFY, use_key(CryptoOp::Verify)),
        at(&openapi::CRYPTO_ENCRYPT, use_key(CryptoOp::Encrypt)),
        at(&openapi::CRYPTO_DECRYPT, use_key(CryptoOp::Decrypt)),
        at(&openapi::CREATE_SECRET, write(AdminWrite::CreateSecret)),
        at(&openapi::LIST_SECRETS, read(AdminRead::Secrets)),
        at(&openapi::UPDATE_SECRET, secret(SecretRoute::Update)),
        at(&openapi::SECRET_PUBLIC_KEY, secret(SecretRoute::PublicKey)),
        at(&openapi::STAGE, write(AdminWrite::Stage)),
        at(&openapi::PUT_POLICY, write(AdminWrite::PutPolicy)),
        at(&openapi::GET_POLICY, read(AdminRead::Policy)),
        at(&openapi::SIMULATE_POLICY, write(AdminWrite::SimulatePolicy)),
        at(&openapi::REPLAY, write(AdminWrite::Replay)),
        at(&openapi::CREATE_PRINCIPAL, principals::create),
        at(&openapi::LIST_PRINCIPALS, list(Listing::Principals)),
        at(&openapi::ISSUE_TOKEN, principals::issue_token),
        at(&openapi::REVOKE_TOKEN, principals::revoke_token),
        at(&openapi::REVOKE_PRINCIPAL, principals::revoke),
        at(&openapi::WHOAMI, principals::whoami),
        at(&openapi::LIST_TENANTS, list(Listing::Tenants)),
        at(&openapi::AUDIT, audit),
        at(&openapi::AUDIT_EXPORT, audit_export),
        at(&openapi::AUDIT_VERIFY, audit_verify),
        at(&openapi::PUBLIC_KEY, public_key),
        at(&openapi::HEALTHZ, healthz),
        at(&openapi::READYZ, readyz),
        at(&openapi::NOOP, noop),
        at(&openapi::METRICS, metrics),
        at(&openapi::OPENAPI, openapi_document),
        at(&openapi::UI_PAGE, console::page),
        at(&openapi::UI_SCRIPT, console::script),
        at(&openapi::UI_STYLE, console::style),
    ]
}

/// The documentation of every route, in table order.
pub(crate) fn endpoints() -> Vec<&'static Endpoint> {
    routes().into_iter().map(|r| r.endpoint).collect()
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    // Two methods on one path merge into one method router; the same method twice panics.
    let router = routes().into_iter().fold(Router::new(), |router, r| {
        router.route(r.endpoint.path, r.handler)
    });
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}
