//! `/v1/openapi.json`: the OpenAPI 3.1 document, with every schema derived from the Rust types the
//! server actually (de)serializes.
//!
//! Each route is described by one [`Endpoint`] here, and the router is built from the same
//! table (`http::routes`), which pairs every endpoint with its handler: a route cannot be served
//! without being documented, nor documented without being served.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use axum::routing::MethodFilter;
use selene_kms_core::crypto::RawCryptoRequest;
use selene_kms_core::redeem::RawRedeemRequest;
use selene_kms_core::{
    AuditRecord, MaterialBundle, PolicyDocument, REGISTRY, RawKmsRequest, ReasonCode,
};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, RefOr,
    Required, ResponseBuilder, Schema,
};
use utoipa::{PartialSchema, ToSchema};

use crate::engine::{
    AdminError, CreatedPrincipal, IssuedTokenAnswer, NewPrincipalRequest, NewSecretRequest,
    NewTokenRequest, PublicKeys, StageRequest, UpdateSecretRequest, UpdatedSecret, WhoAmI,
};
use crate::http::bodies;

/// The HTTP methods the server routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Verb {
    pub(crate) const fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Put => MethodFilter::PUT,
            Self::Patch => MethodFilter::PATCH,
            Self::Delete => MethodFilter::DELETE,
        }
    }

    const fn openapi(self) -> HttpMethod {
        match self {
            Self::Get => HttpMethod::Get,
            Self::Post => HttpMethod::Post,
            Self::Put => HttpMethod::Put,
            Self::Patch => HttpMethod::Patch,
            Self::Delete => HttpMethod::Delete,
        }
    }

    /// The lower-case name, as an OpenAPI path item keys its operations.
    #[cfg(test)]
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Post => "post",
            Self::Put => "put",
            Self::Patch => "patch",
            Self::Delete => "delete",
        }
    }
}

/// A body: JSON of a named component schema, or text of a media type.
#[derive(Clone, Copy)]
pub(crate) enum Body {
    Json(&'static str),
    /// `application/json` whose shape is not one of ours (this document).
    AnyJson,
    Text(&'static str),
}

/// What a parameter holds.
#[derive(Clone, Copy)]
enum Value {
    TenantId,
    /// A tenant id, or `_system` for the system chain.
    ChainId,
    PrincipalId,
    TokenId,
    SecretName,
    Count,
    /// Free text.
    Text,
}

/// A path or query parameter.
pub(crate) struct Param {
    name: &'static str,
    at: ParameterIn,
    required: bool,
    value: Value,
    description: &'static str,
}

const TENANT_PATH: Param = Param {
    name: "tenant_id",
    at: ParameterIn::Path,
    required: true,
    value: Value::TenantId,
    description: "The tenant.",
};

const SECRET_PATH: Param = Param {
    name: "secret_name",
    at: ParameterIn::Path,
    required: true,
    value: Value::SecretName,
    description: "The secret, percent-encoded (`payments%2Fstripe`).",
};

const PRINCIPAL_PATH: Param = Param {
    name: "principal_id",
    at: ParameterIn::Path,
    required: true,
    value: Value::PrincipalId,
    description: "The principal.",
};

const TOKEN_PATH: Param = Param {
    name: "token_id",
    at: ParameterIn::Path,
    required: true,
    value: Value::TokenId,
    description: "The token.",
};

/// What a route refuses with, beyond its success.
#[derive(Clone, Copy)]
pub(crate) enum Refusals {
    /// Never refuses.
    None,
    /// Only when the store is not ready (503).
    Unready,
    /// A bundle-shaped refusal with one of these statuses.
    Kms,
    /// A redemption refusal, or an [`AdminError`] from authentication and body checks.
    Redeem,
    /// An [`AdminError`] with one of the statuses every admin route shares, and these.
    Admin(&'static [u16]),
}

/// One route of the server: what the document says about it.
pub(crate) struct Endpoint {
    pub(crate) verb: Verb,
    /// The path template, in the syntax both axum and OpenAPI use (`{tenant_id}`).
    pub(crate) path: &'static str,
    summary: &'static str,
    /// The role whose credential the route takes (`any`: every role), if it takes one.
    pub(crate) role: Option<&'static str>,
    params: &'static [Param],
    request: Option<Request>,
    pub(crate) success: (u16, Body),
    refusals: Refusals,
}

/// A route's JSON request body, by its schema's name.
#[derive(Clone, Copy)]
enum Request {
    Required(&'static str),
    /// No body at all reads as an empty one.
    Optional(&'static str),
}

/// Statuses every authenticated route can refuse with: no or bad token, wrong role, and the
/// store failing under authentication.
const AUTHENTICATED: [u16; 4] = [401, 403, 500, 503];
/// Statuses of a route that reads a JSON body: bad JSON, too large, not JSON.
const WITH_BODY: [u16; 3] = [400, 413, 415];

/// `POST /v1/kms/requests`.
pub(crate) const KMS_REQUESTS: Endpoint = Endpoint {
    verb: Verb::Post,
    path: "/v1/kms/requests",
    summary: "Run one KMS request (GET_HANDLE, ISSUE_EPHEMERAL, ROTATE, REVOKE).",
    role: Some("os"),
    params: &[],
    request: Some(Request::Required("RawKmsRequest")),
    success: (200, Body::Json("MaterialBundle")),
    refusals: Refusals::Kms,
};

/// `POST /v1/material/redeem`.
pub(crate) const REDEEM: Endpoint = Endpoint {
    verb: Verb::Post,
    path: "/v1/material/redeem",
    summary: "Redeem a handle or credential for its material (executor only).",
    role: Some("executor"),
    params: &[],
    request: Some(Request::Required("RawRedeemRequest")),
    success: (200, Body::Json("RedeemAnswer")),
    refusals: Refusals::Redeem,
};

/// `POST /v1/admin/tenants/{tenant_id}/secrets`.
pub(crate) const CREATE_SECRET: Endpoint = Endpoint {
    verb: Verb::Post,
    path: "/v1/admin/tenants/{tenant_id}/secrets",
    summary: "Create a secret (generated, or imported from material_b64).",
    role: Some("admin"),
    params: &[TENANT_PATH],
    request: Some(Request::Required("NewSecretRequest")),
    success: (201, Body::Json("SecretCreated")),
    refusals: Refusals::Admin(&[409, 422]),
};

/// `GET /v1/admin/tenants/{tenant_id}/secrets`.
pub(crate) const LIST_SECRETS: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/admin/tenants/{tenant_id}/secrets",
    summary: "List a tenant's secrets (metadata only).",
    role: Some("admin"),
    params: &[TENANT_PATH],
    request: None,
    success: (200, Body::Json("SecretList")),
    refusals: Refusals::Admin(&[]),
};

/// `PATCH /v1/admin/tenants/{tenant_id}/secrets/{secret_name}`.
pub(crate) const UPDATE_SECRET: Endpoint = Endpoint {
    verb: Verb::Patch,
    path: "/v1/admin/tenants/{tenant_id}/secrets/{secret_name}",
    summary: "Change a key's terms: the oldest version decrypt accepts.",
    role: Some("admin"),
    params: &[TENANT_PATH, SECRET_PATH],
    request: Some(Request::Required("UpdateSecretRequest")),
    success: (200, Body::Json("UpdatedSecret")),
    refusals: Refusals::Admin(&[404, 409, 422]),
};

/// `GET /v1/admin/tenants/{tenant_id}/secrets/{secret_name}/public-key`.
pub(crate) const SECRET_PUBLIC_KEY: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/admin/tenants/{tenant_id}/secrets/{secret_name}/public-key",
    summary: "The public key of every version of an Ed25519 key.",
    role: Some("admin"),
    params: &[TENANT_PATH, SECRET_PATH],
    request: None,
    success: (200, Body::Json("PublicKeys")),
    refusals: Refusals::Admin(&[404, 422]),
};

/// A crypto operation's route: `POST /v1/crypto/{op}`, executor only, with a handle.
const fn crypto(path: &'static str, summary: &'static str, answer: &'static str) -> Endpoint {
    Endpoint {
        verb: Verb::Post,
        path,
        summary,
        role: Some("executor"),
        params: &[],
        request: Some(Request::Required("RawCryptoRequest")),
        success: (200, Body::Json(answer)),
        refusals: Refusals::Admin(&[404, 410, 422]),
    }
}

/// `POST /v1/crypto/mac`.
pub(crate) const CRYPTO_MAC: Endpoint = crypto(
    "/v1/crypto/mac",
    "HMAC-SHA256 of data_b64 with the key a handle names.",
    "MacAnswer",
);
/// `POST /v1/crypto/sign`.
pub(crate) const CRYPTO_SIGN: Endpoint = crypto(
    "/v1/crypto/sign",
    "An Ed25519 signature of data_b64 with the key a handle names.",
    "SignAnswer",
);
/// `POST /v1/crypto/verify`.
pub(crate) const CRYPTO_VERIFY: Endpoint = crypto(
    "/v1/crypto/verify",
    "Checks signature_b64 (Ed25519) or mac_b64 (HMAC-SHA256) over data_b64.",
    "VerifyAnswer",
);
/// `POST /v1/crypto/encrypt`.
pub(crate) const CRYPTO_ENCRYPT: Endpoint = crypto(
    "/v1/crypto/encrypt",
    "AES-256-GCM encryption of plaintext_b64 (with aad_b64) under the handle's version.",
    "EncryptAnswer",
);
/// `POST /v1/crypto/decrypt`.
pub(crate) const CRYPTO_DECRYPT: Endpoint = crypto(
    "/v1/crypto/decrypt",
    "AES-256-GCM decryption of a ciphertext under the version it names.",
    "DecryptAnswer",
);

/// `POST /v1/admin/tenants/{tenant_id}/staged-versions`.
pub(crate) const STAGE: Endpoint = Endpoint {
    verb: Verb::Post,
    path: "/v1/admin/tenants/{tenant_id}/staged-versions",
    summary: "Stage material for the next rotation of an imported secret.",
    role: Some("admin"),
    params: &[TENANT_PATH],
    request: Some(Request::Required("StageRequest")),
    success: (202, Body::Json("Staged")),
    refusals: Refusals::Admin(&[404, 409, 422]),
};

/// `PUT /v1/admin/tenants/{tenant_id}/policy`.
pub(crate) const PUT_POLICY: Endpoint = Endpoint {
    verb: Verb::Put,
    path: "/v1/admin/tenants/{tenant_id}/policy",
    summary: "Replace a tenant's policy.",
    role: Some("admin"),
    params: &[TENANT_PATH],
    request: Some(Request::Required("PolicyDocument")),
    success: (200, Body::Json("PolicyVersion")),
    refusals: Refusals::Admin(&[409, 422]),
};

/// `POST /v1/admin/tenants/{tenant_id}/policy/simulate`.
pub(crate) const SIMULATE_POLICY: Endpoint = Endpoint {
    verb: Verb::Post,
    path: "/v1/admin/tenants/{tenant_id}/policy/simulate",
    summary: "Show a candidate policy's impact on the recorded requests; changes nothing.",
    role: Some("admin"),
    params: &[TENANT_PATH],
    request: Some(Request::Required("SimulateRequest")),
    success: (200, Body::Json("PolicyImpact")),
    refusals: Refusals::Admin(&[404, 422]),
};

/// `POST /v1/admin/tenants/{tenant_id}/replay`.
pub(crate) const REPLAY: Endpoint = Endpoint {
    verb: Verb::Post,
    path: "/v1/admin/tenants/{tenant_id}/replay",
    summary: "Re-derive every decision of a tenant's chain and compare it with the record.",
    role: Some("admin"),
    params: &[TENANT_PATH],
    request: Some(Request::Optional("ReplayRequest")),
    success: (200, Body::Json("ReplayReport")),
    refusals: Refusals::Admin(&[404, 422]),
};

/// `GET /v1/admin/tenants/{tenant_id}/policy`.
pub(crate) const GET_POLICY: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/admin/tenants/{tenant_id}/policy",
    summary: "Read a tenant's policy.",
    role: Some("admin"),
    params: &[TENANT_PATH],
    request: None,
    success: (200, Body::Json("PolicyDocument")),
    refusals: Refusals::Admin(&[404]),
};

/// `POST /v1/admin/principals`.
pub(crate) const CREATE_PRINCIPAL: Endpoint = Endpoint {
    verb: Verb::Post,
    path: "/v1/admin/principals",
    summary: "Create a principal with its first token (shown once). Admins of every tenant only.",
    role: Some("admin"),
    params: &[],
    request: Some(Request::Required("NewPrincipalRequest")),
    success: (201, Body::Json("PrincipalCreated")),
    refusals: Refusals::Admin(&[409]),
};

/// `GET /v1/admin/principals`.
pub(crate) const LIST_PRINCIPALS: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/admin/principals",
    summary: "List principals and their tokens' metadata (never a token). Admins of every tenant only.",
    role: Some("admin"),
    params: &[],
    request: None,
    success: (200, Body::Json("PrincipalList")),
    refusals: Refusals::Admin(&[]),
};

/// `POST /v1/admin/principals/{principal_id}/tokens`.
pub(crate) const ISSUE_TOKEN: Endpoint = Endpoint {
    verb: Verb::Post,
    path: "/v1/admin/principals/{principal_id}/tokens",
    summary: "Issue another token to a principal (shown once); older tokens work until revoked.",
    role: Some("admin"),
    params: &[PRINCIPAL_PATH],
    request: Some(Request::Required("NewTokenRequest")),
    success: (201, Body::Json("TokenIssued")),
    refusals: Refusals::Admin(&[404]),
};

/// `DELETE /v1/admin/principals/{principal_id}/tokens/{token_id}`.
pub(crate) const REVOKE_TOKEN: Endpoint = Endpoint {
    verb: Verb::Delete,
    path: "/v1/admin/principals/{principal_id}/tokens/{token_id}",
    summary: "Revoke one token; from this answer on it authenticates on no node.",
    role: Some("admin"),
    params: &[PRINCIPAL_PATH, TOKEN_PATH],
    request: None,
    success: (200, Body::Json("Revoked")),
    refusals: Refusals::Admin(&[404]),
};

/// `DELETE /v1/admin/principals/{principal_id}`.
pub(crate) const REVOKE_PRINCIPAL: Endpoint = Endpoint {
    verb: Verb::Delete,
    path: "/v1/admin/principals/{principal_id}",
    summary: "Revoke a principal and every token of it (not the last admin of every tenant).",
    role: Some("admin"),
    params: &[PRINCIPAL_PATH],
    request: None,
    success: (200, Body::Json("Revoked")),
    refusals: Refusals::Admin(&[404, 409]),
};

/// `GET /v1/auth/whoami`.
pub(crate) const WHOAMI: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/auth/whoami",
    summary: "The principal the request's credential authenticates as.",
    role: Some("any"),
    params: &[],
    request: None,
    success: (200, Body::Json("WhoAmI")),
    refusals: Refusals::Admin(&[]),
};

/// `GET /v1/admin/tenants`.
pub(crate) const LIST_TENANTS: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/admin/tenants",
    summary: "The tenants the caller may name, with policy version, state and size.",
    role: Some("admin"),
    params: &[],
    request: None,
    success: (200, Body::Json("TenantList")),
    refusals: Refusals::Admin(&[]),
};

/// `GET /v1/audit`.
pub(crate) const AUDIT: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/audit",
    summary: "Read a tenant's audit chain, in sequence order.",
    role: Some("admin"),
    params: &[
        Param {
            name: "tenant_id",
            at: ParameterIn::Query,
            required: true,
            value: Value::ChainId,
            description: "The tenant whose chain to read, or `_system` for principal and token events.",
        },
        Param {
            name: "after_seq",
            at: ParameterIn::Query,
            required: false,
            value: Value::Count,
            description: "Only records with a greater sequence number (exclusive; default 0).",
        },
        Param {
            name: "limit",
            at: ParameterIn::Query,
            required: false,
            value: Value::Count,
            description: "At most this many records (default 100, at most 1000).",
        },
        Param {
            name: "operation",
            at: ParameterIn::Query,
            required: false,
            value: Value::Text,
            description: "Only records of this operation (`GET_HANDLE`, `SIGN`, …).",
        },
        Param {
            name: "engine",
            at: ParameterIn::Query,
            required: false,
            value: Value::Text,
            description: "Only records of this requester engine.",
        },
        Param {
            name: "reason_code",
            at: ParameterIn::Query,
            required: false,
            value: Value::Text,
            description: "Only records with this reason code. A filtered read looks at 10,000 \
                          records at most; `next_after_seq` says where to go on.",
        },
    ],
    request: None,
    success: (200, Body::Json("AuditPage")),
    refusals: Refusals::Admin(&[]),
};

/// `GET /v1/audit/verify`.
pub(crate) const AUDIT_VERIFY: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/audit/verify",
    summary: "Verify a tenant's chain and the store's state against it, and that the store signs with the pinned key (or the one given).",
    role: Some("admin"),
    params: &[
        Param {
            name: "tenant_id",
            at: ParameterIn::Query,
            required: true,
            value: Value::ChainId,
            description: "The chain to verify, or `_system`.",
        },
        Param {
            name: "public_key",
            at: ParameterIn::Query,
            required: false,
            value: Value::Text,
            description: "The audit public key to check (hex); the key `init` pinned when absent.",
        },
    ],
    request: None,
    success: (200, Body::Json("Verification")),
    refusals: Refusals::Admin(&[]),
};

/// `POST /v1/admin/tenants/{tenant_id}/requests`.
pub(crate) const ADMIN_REQUESTS: Endpoint = Endpoint {
    verb: Verb::Post,
    path: "/v1/admin/tenants/{tenant_id}/requests",
    summary: "A ROTATE or REVOKE by an admin (the console's), dry run or commit: the same pipeline, policy and audit as /v1/kms/requests.",
    role: Some("admin"),
    params: &[TENANT_PATH],
    request: Some(Request::Required("RawKmsRequest")),
    success: (200, Body::Json("MaterialBundle")),
    refusals: Refusals::Kms,
};

/// `GET /ui/`, the console's page.
pub(crate) const UI_PAGE: Endpoint = ui("/ui/", "The admin console.", "text/html");
/// `GET /ui/app.js`.
pub(crate) const UI_SCRIPT: Endpoint = ui(
    "/ui/app.js",
    "The admin console's script.",
    "text/javascript",
);
/// `GET /ui/app.css`.
pub(crate) const UI_STYLE: Endpoint = ui(
    "/ui/app.css",
    "The admin console's style sheet.",
    "text/css",
);

/// A console asset, compiled into the server.
const fn ui(path: &'static str, summary: &'static str, media: &'static str) -> Endpoint {
    Endpoint {
        verb: Verb::Get,
        path,
        summary,
        role: None,
        params: &[],
        request: None,
        success: (200, Body::Text(media)),
        refusals: Refusals::None,
    }
}

/// `GET /v1/audit/export`.
pub(crate) const AUDIT_EXPORT: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/audit/export",
    summary: "Export audit chains as JSON Lines: the store's signed manifests, then records and checkpoints, closed by a manifest signed at export time.",
    role: Some("admin"),
    params: &[Param {
        name: "tenant_id",
        at: ParameterIn::Query,
        required: false,
        value: Value::ChainId,
        description: "One tenant (or `_system`); every chain when absent.",
    }],
    request: None,
    success: (200, Body::Text("application/x-ndjson")),
    refusals: Refusals::Admin(&[]),
};

/// `GET /v1/audit/public-key`.
pub(crate) const PUBLIC_KEY: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/audit/public-key",
    summary: "The Ed25519 key that signs audit manifests and checkpoints.",
    role: None,
    params: &[],
    request: None,
    success: (200, Body::Json("AuditPublicKey")),
    refusals: Refusals::None,
};

/// `GET /healthz`.
pub(crate) const HEALTHZ: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/healthz",
    summary: "Liveness.",
    role: None,
    params: &[],
    request: None,
    success: (200, Body::Json("Status")),
    refusals: Refusals::None,
};

/// `GET /readyz`.
pub(crate) const READYZ: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/readyz",
    summary: "Readiness: the store answers and its recent commits went through.",
    role: None,
    params: &[],
    request: None,
    success: (200, Body::Json("Status")),
    refusals: Refusals::Unready,
};

/// `GET /v1/noop`.
pub(crate) const NOOP: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/noop",
    summary: "A fixed bundle-sized answer with no engine work: the HTTP floor benchmarks measure against.",
    role: None,
    params: &[],
    request: None,
    success: (200, Body::Json("MaterialBundle")),
    refusals: Refusals::None,
};

/// `GET /metrics`.
pub(crate) const METRICS: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/metrics",
    summary: "Metrics, OpenMetrics text (Prometheus scrapes it as it is).",
    role: None,
    params: &[],
    request: None,
    success: (200, Body::Text("application/openmetrics-text")),
    refusals: Refusals::None,
};

/// `GET /v1/openapi.json`.
pub(crate) const OPENAPI: Endpoint = Endpoint {
    verb: Verb::Get,
    path: "/v1/openapi.json",
    summary: "This document.",
    role: None,
    params: &[],
    request: None,
    success: (200, Body::AnyJson),
    refusals: Refusals::None,
};

fn schema_ref(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn content(body: Body) -> (&'static str, utoipa::openapi::Content) {
    let (media, schema): (_, RefOr<Schema>) = match body {
        Body::Json(name) => ("application/json", schema_ref(name)),
        Body::AnyJson => (
            "application/json",
            ObjectBuilder::new().schema_type(Type::Object).into(),
        ),
        Body::Text(media) => (media, String::schema()),
    };
    (media, ContentBuilder::new().schema(Some(schema)).build())
}

fn param_schema(value: Value) -> RefOr<Schema> {
    match value {
        Value::TenantId => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[a-z0-9][a-z0-9._-]{0,63}$"))
            .into(),
        Value::ChainId => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^([a-z0-9][a-z0-9._-]{0,63}|_system)$"))
            .into(),
        Value::PrincipalId => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^kp_[0-9a-f]{32}$"))
            .into(),
        Value::TokenId => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^kt_[0-9a-f]{32}$"))
            .into(),
        Value::SecretName => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[a-z0-9][a-z0-9._/-]{0,127}$"))
            .into(),
        Value::Count => u64::schema(),
        Value::Text => String::schema(),
    }
}

/// The statuses `endpoint` refuses with, each with the schemas of its body.
fn refusals(endpoint: &Endpoint) -> Vec<(u16, Vec<&'static str>)> {
    let with_body = endpoint.request.is_some();
    match endpoint.refusals {
        Refusals::None => Vec::new(),
        Refusals::Unready => vec![(503, vec!["Status"])],
        Refusals::Kms => [400, 401, 403, 404, 409, 410, 413, 415, 422, 500, 503]
            .into_iter()
            .map(|s| (s, vec!["MaterialBundle"]))
            .collect(),
        // Authentication and body checks refuse with an admin error; the redemption itself
        // with a redemption refusal; a failing store can stop either.
        Refusals::Redeem => [
            (400, vec!["RedeemRefusal"]),
            (401, vec!["AdminError"]),
            (403, vec!["AdminError"]),
            (404, vec!["RedeemRefusal"]),
            (409, vec!["RedeemRefusal"]),
            (410, vec!["RedeemRefusal"]),
            (413, vec!["AdminError"]),
            (415, vec!["AdminError"]),
            (422, vec!["RedeemRefusal"]),
            (500, vec!["RedeemRefusal", "AdminError"]),
            (503, vec!["RedeemRefusal", "AdminError"]),
        ]
        .into(),
        Refusals::Admin(more) => {
            let mut statuses: BTreeSet<u16> = AUTHENTICATED.into();
            // Every admin route validates its tenant or query: 400.
            statuses.insert(400);
            if with_body {
                statuses.extend(WITH_BODY);
            }
            statuses.extend(more);
            statuses
                .into_iter()
                .map(|s| (s, vec!["AdminError"]))
                .collect()
        }
    }
}

/// "Refused: CODE, CODE." for the registry's codes of `status`.
fn refusal_description(status: u16) -> String {
    let codes: Vec<&str> = REGISTRY
        .iter()
        .filter(|i| i.http_status == status)
        .map(|i| i.name)
        .collect();
    if codes.is_empty() {
        "Refused.".to_owned()
    } else {
        format!(
            "Refused. Reason codes of this status in REASON_CODES.md: {}.",
            codes.join(", ")
        )
    }
}

fn operation(endpoint: &Endpoint) -> utoipa::openapi::path::Operation {
    let mut op = OperationBuilder::new().summary(Some(endpoint.summary));
    for p in endpoint.params {
        op = op.parameter(
            ParameterBuilder::new()
                .name(p.name)
                .parameter_in(p.at.clone())
                .required(if p.required {
                    Required::True
                } else {
                    Required::False
                })
                .description(Some(p.description))
                .schema(Some(param_schema(p.value))),
        );
    }
    if let Some(req) = endpoint.request {
        let (schema, required) = match req {
            Request::Required(schema) => (schema, Required::True),
            Request::Optional(schema) => (schema, Required::False),
        };
        let (media, body) = content(Body::Json(schema));
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .content(media, body)
                .required(Some(required))
                .build(),
        ));
    }
    let (status, body) = endpoint.success;
    let (media, body) = content(body);
    op = op.response(
        status.to_string(),
        ResponseBuilder::new()
            .description("Success.")
            .content(media, body),
    );
    for (status, shapes) in refusals(endpoint) {
        let schema: RefOr<Schema> = match shapes.as_slice() {
            [one] => schema_ref(one),
            many => many
                .iter()
                .fold(OneOfBuilder::new(), |b, s| b.item(schema_ref(s)))
                .into(),
        };
        op = op.response(
            status.to_string(),
            ResponseBuilder::new()
                .description(refusal_description(status))
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(schema)).build(),
                ),
        );
    }
    if let Some(role) = endpoint.role {
        op = op
            .security(utoipa::openapi::security::SecurityRequirement::new::<
                _,
                _,
                &str,
            >("bearer", []))
            .description(Some(match role {
                "any" => "A bearer token (or a client certificate bound to a principal) of any \
                          role."
                    .to_owned(),
                role => format!(
                    "A bearer token (or a client certificate bound to a principal) with role \
                     `{role}`."
                ),
            }));
    }
    op.build()
}

/// Adds `T` and every schema it refers to.
fn with_schema<T: ToSchema>(components: ComponentsBuilder) -> ComponentsBuilder {
    let mut found = Vec::new();
    T::schemas(&mut found);
    components
        .schema(T::name(), T::schema())
        .schemas_from_iter(found)
}

fn build(endpoints: &[&Endpoint]) -> OpenApi {
    let mut paths = Paths::new();
    for endpoint in endpoints {
        paths.add_path_operation(
            endpoint.path,
            vec![endpoint.verb.openapi()],
            operation(endpoint),
        );
    }
    let mut components = ComponentsBuilder::new();
    components = with_schema::<RawKmsRequest>(components);
    components = with_schema::<MaterialBundle>(components);
    components = with_schema::<ReasonCode>(components);
    components = with_schema::<RawRedeemRequest>(components);
    components = with_schema::<bodies::RedeemAnswer>(components);
    components = with_schema::<bodies::RedeemRefusal>(components);
    components = with_schema::<PolicyDocument>(components);
    components = with_schema::<bodies::PolicyVersion>(components);
    components = with_schema::<bodies::SimulateRequest>(components);
    components = with_schema::<selene_kms_core::replay::PolicyImpact>(components);
    components = with_schema::<bodies::ReplayRequest>(components);
    components = with_schema::<selene_kms_core::ReplayReport>(components);
    components = with_schema::<AuditRecord>(components);
    components = with_schema::<crate::engine::AuditPage>(components);
    components = with_schema::<crate::engine::Verification>(components);
    components = with_schema::<bodies::AuditPublicKey>(components);
    components = with_schema::<NewSecretRequest>(components);
    components = with_schema::<UpdateSecretRequest>(components);
    components = with_schema::<UpdatedSecret>(components);
    components = with_schema::<PublicKeys>(components);
    components = with_schema::<RawCryptoRequest>(components);
    components = with_schema::<bodies::MacAnswer>(components);
    components = with_schema::<bodies::SignAnswer>(components);
    components = with_schema::<bodies::VerifyAnswer>(components);
    components = with_schema::<bodies::EncryptAnswer>(components);
    components = with_schema::<bodies::DecryptAnswer>(components);
    components = with_schema::<crate::engine::CreatedSecret>(components);
    components = with_schema::<bodies::SecretList>(components);
    components = with_schema::<StageRequest>(components);
    components = with_schema::<bodies::Staged>(components);
    components = with_schema::<bodies::Status>(components);
    components = with_schema::<AdminError>(components);
    components = with_schema::<NewPrincipalRequest>(components);
    components = with_schema::<CreatedPrincipal>(components);
    components = with_schema::<NewTokenRequest>(components);
    components = with_schema::<IssuedTokenAnswer>(components);
    components = with_schema::<bodies::PrincipalList>(components);
    components = with_schema::<bodies::Revoked>(components);
    components = with_schema::<WhoAmI>(components);
    components = with_schema::<bodies::TenantList>(components);
    let components = components
        .security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("selene-kms")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "PH1.KMS: opaque handles, ephemeral credentials, rotation and revocation, \
                     with a tamper-evident audit chain. Reason codes: REASON_CODES.md.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

/// The document of the server's routes, serialized once.
pub fn document() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        build(&crate::http::endpoints())
            .to_pretty_json()
            .unwrap_or_default()
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::from_str(&document()).unwrap_or(Value::Null)
    }

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = doc();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 20, "the document refers to its schemas");
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(r);
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} does not resolve"
            );
        }
    }

    /// The regression: operations that named no body, and 201/202 routes documented as 200.
    #[test]
    fn every_operation_documents_its_real_success() {
        let doc = doc();
        let create = &doc["paths"]["/v1/admin/tenants/{tenant_id}/secrets"]["post"]["responses"];
        assert!(create["201"]["content"]["application/json"].is_object());
        assert!(create["200"].is_null());
        let stage =
            &doc["paths"]["/v1/admin/tenants/{tenant_id}/staged-versions"]["post"]["responses"];
        assert!(stage["202"]["content"]["application/json"].is_object());
        for endpoint in crate::http::endpoints() {
            let (status, _) = endpoint.success;
            let op = &doc["paths"][endpoint.path][endpoint.verb.name()];
            let content = op["responses"][status.to_string()]["content"]
                .as_object()
                .map(|c| c.len());
            assert_eq!(
                content,
                Some(1),
                "{} {}",
                endpoint.verb.name(),
                endpoint.path
            );
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in params {
                assert!(p["schema"].is_object(), "{p}");
            }
        }
    }

    /// The document's operations are the route table's, both ways, each once.
    #[test]
    fn operations_are_the_route_table() {
        let table: Vec<(String, String)> = crate::http::endpoints()
            .iter()
            .map(|e| (e.verb.name().to_owned(), e.path.to_owned()))
            .collect();
        let unique: BTreeSet<_> = table.iter().cloned().collect();
        assert_eq!(unique.len(), table.len(), "a route listed twice");
        let doc = doc();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for verb in item.as_object().into_iter().flatten().map(|(k, _)| k) {
                documented.insert((verb.clone(), path.clone()));
            }
        }
        assert_eq!(documented, unique);
        assert!(documented.contains(&("get".to_owned(), "/v1/noop".to_owned())));
    }
}
