//! `/v1/openapi.json`: the OpenAPI document, with every schema derived from the Rust types the
//! server actually (de)serializes.

use std::sync::OnceLock;

use selene_kms_core::redeem::RawRedeemRequest;
use selene_kms_core::{AuditRecord, Checkpoint, MaterialBundle, PolicyDocument, RawKmsRequest};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, RefOr,
    Required, ResponseBuilder, Schema,
};

use crate::engine::{AdminError, NewSecretRequest, StageRequest};

fn json(schema: &str) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(RefOr::<Schema>::Ref(Ref::from_schema_name(schema))))
        .build()
}

struct Route {
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    role: Option<&'static str>,
    request: Option<&'static str>,
    response: Option<&'static str>,
    tenant_param: bool,
}

const ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Post,
        path: "/v1/kms/requests",
        summary: "Run one KMS request (GET_HANDLE, ISSUE_EPHEMERAL, ROTATE, REVOKE).",
        role: Some("os"),
        request: Some("RawKmsRequest"),
        response: Some("MaterialBundle"),
        tenant_param: false,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/material/redeem",
        summary: "Redeem a handle or credential for its material (executor only).",
        role: Some("executor"),
        request: Some("RawRedeemRequest"),
        response: None,
        tenant_param: false,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/admin/tenants/{tenant_id}/secrets",
        summary: "Create a secret (generated, or imported from material_b64).",
        role: Some("admin"),
        request: Some("NewSecretRequest"),
        response: None,
        tenant_param: true,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/admin/tenants/{tenant_id}/secrets",
        summary: "List a tenant's secrets (metadata only).",
        role: Some("admin"),
        request: None,
        response: None,
        tenant_param: true,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/admin/tenants/{tenant_id}/staged-versions",
        summary: "Stage material for the next rotation of an imported secret.",
        role: Some("admin"),
        request: Some("StageRequest"),
        response: None,
        tenant_param: true,
    },
    Route {
        method: HttpMethod::Put,
        path: "/v1/admin/tenants/{tenant_id}/policy",
        summary: "Replace a tenant's policy.",
        role: Some("admin"),
        request: Some("PolicyDocument"),
        response: None,
        tenant_param: true,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/admin/tenants/{tenant_id}/policy",
        summary: "Read a tenant's policy.",
        role: Some("admin"),
        request: None,
        response: Some("PolicyDocument"),
        tenant_param: true,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/audit",
        summary: "Read a tenant's audit chain (query: tenant_id, after_seq, limit).",
        role: Some("admin"),
        request: None,
        response: None,
        tenant_param: false,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/audit/export",
        summary: "Export audit chains as JSON Lines with signed checkpoints (query: tenant_id).",
        role: Some("admin"),
        request: None,
        response: None,
        tenant_param: false,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/audit/public-key",
        summary: "The Ed25519 key that verifies audit checkpoints.",
        role: None,
        request: None,
        response: None,
        tenant_param: false,
    },
    Route {
        method: HttpMethod::Get,
        path: "/healthz",
        summary: "Liveness.",
        role: None,
        request: None,
        response: None,
        tenant_param: false,
    },
    Route {
        method: HttpMethod::Get,
        path: "/readyz",
        summary: "Readiness: the store answers and its recent commits went through.",
        role: None,
        request: None,
        response: None,
        tenant_param: false,
    },
    Route {
        method: HttpMethod::Get,
        path: "/metrics",
        summary: "Prometheus metrics.",
        role: None,
        request: None,
        response: None,
        tenant_param: false,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/openapi.json",
        summary: "This document.",
        role: None,
        request: None,
        response: None,
        tenant_param: false,
    },
];

fn build() -> OpenApi {
    let mut paths = Paths::new();
    for r in ROUTES {
        let mut op = OperationBuilder::new().summary(Some(r.summary));
        if let Some(req) = r.request {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json(req))
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        if r.tenant_param {
            op = op.parameter(
                ParameterBuilder::new()
                    .name("tenant_id")
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .build(),
            );
        }
        let mut ok = ResponseBuilder::new().description("Success.");
        if let Some(resp) = r.response {
            ok = ok.content("application/json", json(resp));
        }
        op = op.response("200", ok.build());
        op = op.response(
            "4XX",
            ResponseBuilder::new()
                .description("Refused, with a reason code (a refusal bundle on KMS routes).")
                .content("application/json", json(r.response.unwrap_or("AdminError")))
                .build(),
        );
        if let Some(role) = r.role {
            op = op
                .security(utoipa::openapi::security::SecurityRequirement::new::<
                    _,
                    _,
                    &str,
                >("bearer", []))
                .description(Some(format!("Bearer token with role `{role}`.")));
        }
        paths.add_path_operation(r.path, vec![r.method.clone()], op.build());
    }
    let components = ComponentsBuilder::new()
        .schema_from::<RawKmsRequest>()
        .schema_from::<MaterialBundle>()
        .schema_from::<RawRedeemRequest>()
        .schema_from::<PolicyDocument>()
        .schema_from::<AuditRecord>()
        .schema_from::<Checkpoint>()
        .schema_from::<NewSecretRequest>()
        .schema_from::<StageRequest>()
        .schema_from::<AdminError>()
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

/// The document, serialized once.
pub fn document() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| build().to_pretty_json().unwrap_or_default())
        .clone()
}
