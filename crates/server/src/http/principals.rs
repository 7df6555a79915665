//! The identity routes: principals and tokens (admins of every tenant), `whoami` (any role), and
//! the tenant listing (admins, their own tenants only).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use selene_kms_core::Role;

use super::credentials::Credentials;
use super::{
    ADMIN, AdminOutcome, AppState, Shape, Shared, admin_body, admin_reply, authorize, bodies,
};
use crate::engine::{Caller, NewTokenRequest};
use crate::now_ms;

/// Authenticates an admin; a refusal is the route's answer.
async fn admin(state: &AppState, credentials: &Credentials) -> Result<Arc<Caller>, Response> {
    authorize(state, credentials, Some(Role::Admin), ADMIN, Shape::Admin).await
}

/// `POST /v1/admin/principals`.
pub(super) async fn create(
    State(state): Shared,
    credentials: Credentials,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let (caller, bytes) = admin_body(&state, &credentials, &headers, body).await?;
    let outcome: AdminOutcome = async {
        let req = bodies::parse(&bytes)?;
        let created = state
            .engine
            .create_principal(&caller, req, now_ms())
            .await?;
        Ok((201, bodies::json(&created)))
    }
    .await;
    Ok(admin_reply(&state, ADMIN, outcome))
}

/// The identity listings.
#[derive(Clone, Copy)]
pub(super) enum Listing {
    /// `GET /v1/admin/principals`: every principal (admins of every tenant).
    Principals,
    /// `GET /v1/admin/tenants`: the caller's tenants.
    Tenants,
}

pub(super) async fn listing(
    State(state): Shared,
    credentials: Credentials,
    what: Listing,
) -> Result<Response, Response> {
    let caller = admin(&state, &credentials).await?;
    let engine = &state.engine;
    let outcome = match what {
        Listing::Principals => engine
            .list_principals(&caller)
            .await
            .map(bodies::principals),
        Listing::Tenants => engine.list_tenants(&caller).await.map(bodies::tenants),
    };
    Ok(admin_reply(&state, ADMIN, outcome.map(|body| (200, body))))
}

/// `POST /v1/admin/principals/{principal_id}/tokens`. The body may be empty (no expiry).
pub(super) async fn issue_token(
    State(state): Shared,
    Path(principal): Path<String>,
    credentials: Credentials,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let (caller, bytes) = if headers.contains_key(axum::http::header::CONTENT_TYPE) {
        admin_body(&state, &credentials, &headers, body).await?
    } else {
        (admin(&state, &credentials).await?, axum::body::Bytes::new())
    };
    let outcome: AdminOutcome = async {
        let req = if bytes.is_empty() {
            NewTokenRequest::default()
        } else {
            bodies::parse(&bytes)?
        };
        let issued = state
            .engine
            .issue_token(&caller, &principal, req, now_ms())
            .await?;
        Ok((201, bodies::json(&issued)))
    }
    .await;
    Ok(admin_reply(&state, ADMIN, outcome))
}

/// `DELETE /v1/admin/principals/{principal_id}/tokens/{token_id}`.
pub(super) async fn revoke_token(
    State(state): Shared,
    Path((principal, token)): Path<(String, String)>,
    credentials: Credentials,
) -> Result<Response, Response> {
    let caller = admin(&state, &credentials).await?;
    let outcome = state
        .engine
        .revoke_token(&caller, &principal, &token, now_ms())
        .await
        .map(|()| (200, bodies::revoked()));
    Ok(admin_reply(&state, ADMIN, outcome))
}

/// `DELETE /v1/admin/principals/{principal_id}`.
pub(super) async fn revoke(
    State(state): Shared,
    Path(principal): Path<String>,
    credentials: Credentials,
) -> Result<Response, Response> {
    let caller = admin(&state, &credentials).await?;
    let outcome = state
        .engine
        .revoke_principal(&caller, &principal, now_ms())
        .await
        .map(|()| (200, bodies::revoked()));
    Ok(admin_reply(&state, ADMIN, outcome))
}

/// `GET /v1/auth/whoami`: any role.
pub(super) async fn whoami(
    State(state): Shared,
    credentials: Credentials,
) -> Result<Response, Response> {
    let caller = authorize(&state, &credentials, None, None, Shape::Admin).await?;
    Ok(admin_reply(
        &state,
        None,
        Ok((200, bodies::json(&caller.whoami()))),
    ))
}
