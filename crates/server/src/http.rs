//! The HTTP/JSON host: routes, authentication and roles, body limits, and uniform JSON errors.
//!
//! Handlers are thin: authenticate, read the clock once, call the engine, answer. Every error has
//! a reason code; bodies are never logged.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use selene_kms_core::{ReasonCode, TenantId};
use selene_kms_store::Role;
use serde::Deserialize;

use crate::auth::{AuthError, Authenticator};
use crate::engine::{Caller, Engine, Reply, admin_error};
use crate::metrics::{Metrics, RouteClass};
use crate::store_error::reason_for;

/// Largest request body accepted (a KMS request is well under 4 KiB; imported material ≤ 8 KiB).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

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

fn reply(state: &AppState, r: Reply) -> Response {
    state.metrics.count(r.operation, r.reason);
    respond(r.status, Bytes::from_owner(ArcBytes(r.body)))
}

/// Lets an `Arc<[u8]>` body be sent without a copy.
struct ArcBytes(Arc<[u8]>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn error(state: &AppState, operation: Option<&'static str>, reason: ReasonCode) -> Response {
    let mut r = admin_error(reason);
    r.operation = operation;
    reply(state, r)
}

fn now_ms() -> u64 {
    selene_kms_store::now_ms()
}

/// Authenticates and checks the role.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    role: Role,
    operation: Option<&'static str>,
) -> Result<Caller, Response> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.auth.authenticate(header).await {
        Ok(c) if c.role == role => Ok(c),
        Ok(_) => Err(error(state, operation, ReasonCode::ForbiddenRole)),
        Err(AuthError::Unauthenticated) => {
            let mut r = error(state, operation, ReasonCode::Unauthenticated);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(r)
        }
        Err(AuthError::Store(kind)) => Err(error(state, operation, reason_for(kind))),
    }
}

/// Checks the content type and reads the body within the limit.
async fn json_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    operation: Option<&'static str>,
) -> Result<Bytes, Response> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(error(state, operation, ReasonCode::UnsupportedMediaType));
    }
    axum::body::to_bytes(body, state.body_limit)
        .await
        .map_err(|_| error(state, operation, ReasonCode::PayloadTooLarge))
}

fn tenant(state: &AppState, raw: &str) -> Result<TenantId, Response> {
    TenantId::try_from(raw).map_err(|_| error(state, None, ReasonCode::InputSchemaInvalid))
}

async fn kms_request(State(state): Shared, headers: HeaderMap, body: Body) -> Response {
    const OP: Option<&str> = Some("UNPARSED");
    let caller = match authorize(&state, &headers, Role::Os, OP).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bytes = match json_body(&state, &headers, body, OP).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let r = state.engine.kms_request(&caller, &bytes, now_ms()).await;
    reply(&state, r.with_default_operation("UNPARSED"))
}

async fn redeem(State(state): Shared, headers: HeaderMap, body: Body) -> Response {
    const OP: Option<&str> = Some("REDEEM");
    if let Err(r) = authorize(&state, &headers, Role::Executor, OP).await {
        return r;
    }
    let bytes = match json_body(&state, &headers, body, OP).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let r = state.engine.redeem(&bytes, now_ms()).await;
    reply(&state, r)
}

const ADMIN: Option<&str> = Some("ADMIN");

/// The admin routes that write.
#[derive(Clone, Copy)]
enum AdminWrite {
    CreateSecret,
    Stage,
    PutPolicy,
}

/// Admin writes share one shape: role, tenant, body, engine call.
async fn admin_write(
    State(state): Shared,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Body,
    what: AdminWrite,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Admin, ADMIN).await {
        return r;
    }
    let tenant = match tenant(&state, &tenant_id) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let bytes = match json_body(&state, &headers, body, ADMIN).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let engine = &state.engine;
    let r = match what {
        AdminWrite::CreateSecret => engine.create_secret(&tenant, &bytes, now_ms()).await,
        AdminWrite::Stage => engine.stage(&tenant, &bytes, now_ms()).await,
        AdminWrite::PutPolicy => engine.put_policy(&tenant, &bytes, now_ms()).await,
    };
    reply(&state, r.with_default_operation("ADMIN"))
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
    headers: HeaderMap,
    what: AdminRead,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Admin, ADMIN).await {
        return r;
    }
    let tenant = match tenant(&state, &tenant_id) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let r = match what {
        AdminRead::Secrets => state.engine.list_secrets(&tenant).await,
        AdminRead::Policy => state.engine.get_policy(&tenant).await,
    };
    reply(&state, r.with_default_operation("ADMIN"))
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
}

/// Role check and query parsing shared by the audit routes.
async fn admin_query<T>(
    state: &AppState,
    headers: &HeaderMap,
    query: Result<Query<T>, QueryRejection>,
) -> Result<T, Response> {
    authorize(state, headers, Role::Admin, ADMIN).await?;
    query
        .map(|Query(q)| q)
        .map_err(|_| error(state, ADMIN, ReasonCode::InputSchemaInvalid))
}

async fn audit(
    State(state): Shared,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let q = match admin_query(&state, &headers, query).await {
        Ok(q) => q,
        Err(r) => return r,
    };
    let Some(raw) = q.tenant_id else {
        return error(&state, ADMIN, ReasonCode::UpstreamInputMissing);
    };
    let tenant = match tenant(&state, &raw) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let r = state
        .engine
        .audit_page(
            &tenant,
            q.after_seq.unwrap_or(0),
            q.limit.unwrap_or(crate::engine::DEFAULT_AUDIT_PAGE),
        )
        .await;
    reply(&state, r.with_default_operation("ADMIN"))
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
    headers: HeaderMap,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Response {
    let q = match admin_query(&state, &headers, query).await {
        Ok(q) => q,
        Err(r) => return r,
    };
    let tenant = match q
        .tenant_id
        .as_deref()
        .map(|t| tenant(&state, t))
        .transpose()
    {
        Ok(t) => t,
        Err(r) => return r,
    };
    let r = state.engine.audit_export(tenant.as_ref(), now_ms()).await;
    let mut response = reply(&state, r.with_default_operation("ADMIN"));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

async fn public_key(State(state): Shared) -> Response {
    let body = serde_json::json!({ "audit_public_key": state.engine.audit_public_key() });
    respond(200, serde_json::to_vec(&body).unwrap_or_default())
}

async fn healthz() -> Response {
    respond(200, &br#"{"status":"ok"}"#[..])
}

async fn readyz(State(state): Shared) -> Response {
    if state.engine.ready().await {
        respond(200, &br#"{"status":"ready"}"#[..])
    } else {
        respond(503, &br#"{"status":"unavailable"}"#[..])
    }
}

/// The no-op JSON route: a response of about a bundle's size with no engine work. It is the HTTP
/// floor against which the KMS routes are measured.
async fn noop() -> Response {
    respond(
        200,
        &br#"{"validation_status":"OK","reason_code":"PH1_KMS_OK_MATERIAL_ISSUE","diagnostics":[],"operation":"GET_HANDLE","secret_ref":"ksr1_noop","secret_handle":"ksh1_noop","ephemeral_credential_ref":null,"expires_at_ms":0,"rotated_version":null,"revoked":null,"dry_run":false,"simulation_id":null,"audit_seq":0}"#[..],
    )
}

async fn metrics(State(state): Shared) -> Response {
    let mut r = respond(200, state.metrics.render(state.engine.batch_histogram()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn openapi() -> Response {
    respond(200, crate::openapi::document())
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
        (_, p) if p.starts_with("/v1/admin/") || p.starts_with("/v1/audit") => RouteClass::Admin,
        _ => RouteClass::Other,
    }
}

/// Latency metrics and one debug log line per request (method, path, status; never bodies or
/// headers).
async fn observe(State(state): Shared, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let class = class_of(request.method(), request.uri().path());
    let method = request.method().clone();
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    state.metrics.observe(class, elapsed);
    tracing::debug!(%method, route = ?class, status = response.status().as_u16(), micros = elapsed.as_micros() as u64, "request");
    response
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let write = |what: AdminWrite| {
        move |state: Shared, path: Path<String>, headers: HeaderMap, body: Body| {
            admin_write(state, path, headers, body, what)
        }
    };
    let read = |what: AdminRead| {
        move |state: Shared, path: Path<String>, headers: HeaderMap| {
            admin_read(state, path, headers, what)
        }
    };
    let tenants = Router::new()
        .route(
            "/{tenant_id}/secrets",
            post(write(AdminWrite::CreateSecret)).get(read(AdminRead::Secrets)),
        )
        .route(
            "/{tenant_id}/staged-versions",
            post(write(AdminWrite::Stage)),
        )
        .route(
            "/{tenant_id}/policy",
            get(read(AdminRead::Policy)).put(write(AdminWrite::PutPolicy)),
        );
    Router::new()
        .route("/v1/kms/requests", post(kms_request))
        .route("/v1/material/redeem", post(redeem))
        .nest("/v1/admin/tenants", tenants)
        .route("/v1/audit", get(audit))
        .route("/v1/audit/export", get(audit_export))
        .route("/v1/audit/public-key", get(public_key))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/noop", get(noop))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

impl Reply {
    fn with_default_operation(mut self, op: &'static str) -> Self {
        if self.operation.is_none() {
            self.operation = Some(op);
        }
        self
    }
}
