//! `selene-kms-client`: a typed client of the selene-kms HTTP API.
//!
//! One [`Client`] per credential: it sends its bearer token on every call, trusts the CA you
//! give it (beside the bundled web roots), presents a client certificate for mTLS, and retries
//! what is safe to retry (reads, and KMS requests, which carry an idempotency key) when the
//! server was not reached or answered 502–504. It follows no redirect. Every refusal is an [`Error`] carrying the server's reason code.
//!
//! ```no_run
//! use selene_kms_client::{Client, Operation, kms_request};
//!
//! # async fn run() -> Result<(), selene_kms_client::Error> {
//! let os = Client::builder("https://kms.internal:8750")
//!     .token(std::env::var("SELENE_KMS_OS_TOKEN").unwrap_or_default())
//!     .ca_certificate_pem(std::fs::read("ca.pem").unwrap_or_default())
//!     .build()?;
//! // A handle for the connector: an opaque ref, never the value.
//! let request = kms_request("acme", Operation::GetHandle, "payments/stripe", "PH1.CONNECTOR");
//! let bundle = os.kms(&request).await?;
//! println!("handle expires at {:?}", bundle.expires_at_ms);
//!
//! // A rotation: the dry run's plan, then its commit.
//! let mut rotate = kms_request("acme", Operation::Rotate, "payments/stripe", "PH1.OS");
//! rotate.requester_user_id = Some("u-admin".to_owned());
//! let rotated = os.plan_and_commit(&rotate).await?;
//! println!("now at version {:?}", rotated.rotated_version);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod answers;
mod error;

use std::time::Duration;

pub use reqwest::Method;
use selene_kms_core::RefKind;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

pub use answers::{Answer, Plaintext, Redeemed, Used};
pub use error::Error;
pub use selene_kms_core::crypto::{CryptoOp, RawCryptoRequest};
pub use selene_kms_core::{
    AuditRecord, MaterialBundle, Operation, PolicyDocument, RawKmsRequest as KmsRequest,
    RawRevokeTarget as RevokeTarget,
};

/// How many times an idempotent call is retried by default.
pub const DEFAULT_RETRIES: u32 = 2;

/// Builds a [`Client`].
#[must_use]
pub struct ClientBuilder {
    url: String,
    token: Option<Zeroizing<String>>,
    ca: Option<Vec<u8>>,
    identity: Option<Zeroizing<Vec<u8>>>,
    timeout: Duration,
    retries: u32,
}

impl ClientBuilder {
    /// The token to send (`Authorization: Bearer …`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Zeroizing::new(token.into()));
        self
    }

    /// A CA certificate (PEM) to trust for an `https` URL, beside the bundled web roots.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// A client certificate and its key, in one PEM, for servers that require mTLS.
    pub fn client_identity_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some(Zeroizing::new(pem.into()));
        self
    }

    /// How long one attempt may take (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times an idempotent call is retried (default [`DEFAULT_RETRIES`]).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The client; refused when a certificate does not parse.
    pub fn build(self) -> Result<Client, Error> {
        // No redirects: a redirected POST would carry its body (staged material, a ref) to
        // wherever the answer pointed.
        let mut http = reqwest::Client::builder()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &self.ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| Error::Invalid("the CA certificate is not PEM".to_owned()))?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &self.identity {
            let identity = reqwest::Identity::from_pem(pem).map_err(|_| {
                Error::Invalid("the client identity is not a PEM certificate and key".to_owned())
            })?;
            http = http.identity(identity);
        }
        Ok(Client {
            http: http
                .build()
                .map_err(|e| Error::Invalid(format!("HTTP client: {e}")))?,
            url: self.url.trim_end_matches('/').to_owned(),
            token: self.token,
            retries: self.retries,
        })
    }
}

/// A request body, wiped when dropped.
struct Wiped(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Whether a call may be sent again: it changes nothing, or carries an idempotency key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Safe,
    Never,
}

/// A client of one server, acting as one principal.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<Zeroizing<String>>,
    retries: u32,
}

impl Client {
    /// A builder for a client of the server at `url` (`https://host:8750`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: None,
            ca: None,
            identity: None,
            timeout: Duration::from_secs(30),
            retries: DEFAULT_RETRIES,
        }
    }

    /// This client with another token (same server, TLS and retries).
    #[must_use]
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            token: Some(Zeroizing::new(token.into())),
            ..self.clone()
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one request to `path` (with its query) and answers its status and body, whatever
    /// the status: the route-agnostic call under every typed one. Only transport failures are
    /// errors here.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, Error> {
        let retry = if method == Method::GET || method == Method::HEAD {
            Retry::Safe
        } else {
            Retry::Never
        };
        self.send(method, path, body, retry).await
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        retry: Retry,
    ) -> Result<Answer, Error> {
        let attempts = if retry == Retry::Safe {
            self.retries.saturating_add(1)
        } else {
            1
        };
        // Serialized once, into a buffer wiped when the last attempt is done with it: a body
        // can carry staged material or a ref.
        let body = body
            .map(|b| {
                serde_json::to_vec(b)
                    .map(|json| bytes::Bytes::from_owner(Wiped(Zeroizing::new(json))))
                    .map_err(|_| Error::Invalid("the request does not encode".to_owned()))
            })
            .transpose()?;
        let mut pause = Duration::from_millis(50);
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.url));
            if let Some(token) = &self.token {
                request = request.bearer_auth(token.as_str());
            }
            if let Some(b) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.bytes().await {
                        // The answer's own buffer where it can be, not a copy: the caller wipes
                        // what it read.
                        Ok(bytes) => Ok(Answer {
                            status,
                            body: Vec::from(bytes),
                        }),
                        Err(e) => Err(error::unreachable(&self.url, &e)),
                    }
                }
                Err(e) => Err(error::unreachable(&self.url, &e)),
            };
            match outcome {
                Ok(answer) if matches!(answer.status, 502..=504) => {
                    last = Some(Ok(answer));
                }
                Err(e) => last = Some(Err(e)),
                done => return done,
            }
        }
        last.unwrap_or_else(|| Err(Error::Invalid("no attempt was made".to_owned())))
    }

    /// A call whose success is JSON of type `T`; any other answer is an [`Error`].
    async fn json<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        retry: Retry,
    ) -> Result<T, Error> {
        self.send(method, path, body, retry).await?.parse()
    }

    // ---------------------------------------------------------------- KMS requests (role os)

    /// `POST /v1/kms/requests`: one KMS request. An allowed request answers its bundle; a
    /// refusal is [`Error::Refused`] with the refusal bundle as its body. Retried like a read:
    /// the idempotency key makes a retry return the first answer.
    pub async fn kms(&self, request: &KmsRequest) -> Result<MaterialBundle, Error> {
        self.json(Method::POST, "/v1/kms/requests", Some(request), Retry::Safe)
            .await
    }

    /// A mutation (ROTATE, REVOKE) as the contract wants it: a dry run under its own key, then
    /// the commit with the plan's `simulation_id` under `request`'s key. The plan is answered as
    /// an error if refused; a commit refused as stale (the secret moved in between) is too.
    pub async fn plan_and_commit(&self, request: &KmsRequest) -> Result<MaterialBundle, Error> {
        let mut plan = request.clone();
        plan.dry_run = Some(true);
        plan.simulation_id = None;
        plan.idempotency_key = Some(idempotency_key("plan"));
        let planned = self.kms(&plan).await?;
        let mut commit = request.clone();
        commit.dry_run = None;
        commit.simulation_id = planned.simulation_id;
        self.kms(&commit).await
    }

    // ---------------------------------------------------------------- redemption (role executor)

    /// `POST /v1/material/redeem` of a handle (`ksh2_…`) or an ephemeral credential (`kse2_…`).
    /// Not retried: every redemption is audited.
    pub async fn redeem(&self, tenant_id: &str, reference: &str) -> Result<Redeemed, Error> {
        // Borrowed, so that the only copy of the ref is the wiped body.
        #[derive(Serialize)]
        struct Redeem<'a> {
            tenant_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            secret_handle: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            ephemeral_credential_ref: Option<&'a str>,
        }
        let credential = RefKind::of(reference) == Some(RefKind::Credential);
        let body = Redeem {
            tenant_id,
            secret_handle: (!credential).then_some(reference),
            ephemeral_credential_ref: credential.then_some(reference),
        };
        self.send(
            Method::POST,
            "/v1/material/redeem",
            Some(&body),
            Retry::Never,
        )
        .await?
        .redeemed()
    }

    // ---------------------------------------------------------------- crypto (role executor)

    /// `POST /v1/crypto/{op}` with a handle to a key: `mac`, `sign`, `verify`, `encrypt` or
    /// `decrypt`. Not retried: every use is audited. The key never leaves the server.
    pub async fn crypto(&self, op: CryptoOp, request: &RawCryptoRequest) -> Result<Used, Error> {
        let path = format!("/v1/crypto/{}", op.name());
        self.send(Method::POST, &path, Some(request), Retry::Never)
            .await?
            .used(op.name())
    }

    // ---------------------------------------------------------------- admin (role admin)

    /// `POST /v1/admin/tenants/{tenant_id}/secrets`: `{"secret_name", "material_b64"?,
    /// "ephemeral_ttl_ms"?, "handle_ttl_ms"?, "purpose"?}` → `{"secret_ref","version"}`.
    pub async fn create_secret(
        &self,
        tenant_id: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let path = format!("/v1/admin/tenants/{tenant_id}/secrets");
        self.json(Method::POST, &path, Some(body), Retry::Never)
            .await
    }

    /// `PATCH /v1/admin/tenants/{tenant_id}/secrets/{secret_name}`: a key's terms,
    /// `{"min_decryption_version"}`. Not retried.
    pub async fn update_secret(
        &self,
        tenant_id: &str,
        secret_name: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let path = secret_path(tenant_id, secret_name);
        self.json(Method::PATCH, &path, Some(body), Retry::Never)
            .await
    }

    /// `GET /v1/admin/tenants/{tenant_id}/secrets/{secret_name}/public-key`: the public key of
    /// every version of an Ed25519 key.
    pub async fn public_keys(
        &self,
        tenant_id: &str,
        secret_name: &str,
    ) -> Result<serde_json::Value, Error> {
        let path = format!("{}/public-key", secret_path(tenant_id, secret_name));
        self.json::<_, ()>(Method::GET, &path, None, Retry::Safe)
            .await
    }

    /// `GET /v1/admin/tenants/{tenant_id}/secrets`: metadata of every secret, never a value.
    pub async fn list_secrets(&self, tenant_id: &str) -> Result<serde_json::Value, Error> {
        let path = format!("/v1/admin/tenants/{tenant_id}/secrets");
        self.json::<_, ()>(Method::GET, &path, None, Retry::Safe)
            .await
    }

    /// `POST /v1/admin/tenants/{tenant_id}/staged-versions`: the next rotation's material of an
    /// imported secret.
    pub async fn stage(
        &self,
        tenant_id: &str,
        secret_name: &str,
        material: &[u8],
    ) -> Result<serde_json::Value, Error> {
        use base64::Engine as _;
        // Borrowed, so that the copies of the material are the wiped encoding and body.
        #[derive(Serialize)]
        struct Stage<'a> {
            secret_name: &'a str,
            material_b64: &'a str,
        }
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(material));
        let body = Stage {
            secret_name,
            material_b64: &encoded,
        };
        let path = format!("/v1/admin/tenants/{tenant_id}/staged-versions");
        self.send(Method::POST, &path, Some(&body), Retry::Never)
            .await?
            .parse()
    }

    /// `PUT /v1/admin/tenants/{tenant_id}/policy` → `{"policy_version"}`. Not retried: every
    /// put stores a new version, and a retry could land after another admin's change.
    pub async fn put_policy(
        &self,
        tenant_id: &str,
        policy: &PolicyDocument,
    ) -> Result<serde_json::Value, Error> {
        let path = format!("/v1/admin/tenants/{tenant_id}/policy");
        self.json(Method::PUT, &path, Some(policy), Retry::Never)
            .await
    }

    /// `GET /v1/admin/tenants/{tenant_id}/policy`.
    pub async fn policy(&self, tenant_id: &str) -> Result<PolicyDocument, Error> {
        let path = format!("/v1/admin/tenants/{tenant_id}/policy");
        self.json::<_, ()>(Method::GET, &path, None, Retry::Safe)
            .await
    }

    /// `POST /v1/admin/tenants/{tenant_id}/policy/simulate`: the impact of a candidate policy
    /// on the recorded decisions (after `after_seq`), changing nothing.
    pub async fn simulate_policy(
        &self,
        tenant_id: &str,
        policy: &PolicyDocument,
        after_seq: Option<u64>,
    ) -> Result<serde_json::Value, Error> {
        let path = format!("/v1/admin/tenants/{tenant_id}/policy/simulate");
        let mut body = serde_json::json!({ "policy": policy });
        if let Some(seq) = after_seq {
            body["after_seq"] = seq.into();
        }
        // Not retried: every simulation is an audit record.
        self.json(Method::POST, &path, Some(&body), Retry::Never)
            .await
    }

    /// `POST /v1/admin/tenants/{tenant_id}/replay`: every decision of the chain (after
    /// `after_seq`) derived again and compared with its record.
    pub async fn replay(
        &self,
        tenant_id: &str,
        after_seq: Option<u64>,
    ) -> Result<serde_json::Value, Error> {
        let path = format!("/v1/admin/tenants/{tenant_id}/replay");
        let body = after_seq.map(|seq| serde_json::json!({ "after_seq": seq }));
        self.json(Method::POST, &path, body.as_ref(), Retry::Never)
            .await
    }

    /// `GET /v1/admin/tenants`: the caller's tenants.
    pub async fn tenants(&self) -> Result<serde_json::Value, Error> {
        self.json::<_, ()>(Method::GET, "/v1/admin/tenants", None, Retry::Safe)
            .await
    }

    // ---------------------------------------------------------------- principals

    /// `POST /v1/admin/principals`: `{"name","role","tenants","ttl_ms"?,"spiffe_id"?}`; the
    /// answer carries the first token, shown once.
    pub async fn create_principal(
        &self,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        self.json(
            Method::POST,
            "/v1/admin/principals",
            Some(body),
            Retry::Never,
        )
        .await
    }

    /// `GET /v1/admin/principals`: never a token or verifier.
    pub async fn principals(&self) -> Result<serde_json::Value, Error> {
        self.json::<_, ()>(Method::GET, "/v1/admin/principals", None, Retry::Safe)
            .await
    }

    /// `POST /v1/admin/principals/{principal_id}/tokens`: a new token, shown once.
    pub async fn issue_token(
        &self,
        principal_id: &str,
        ttl_ms: Option<u64>,
    ) -> Result<serde_json::Value, Error> {
        let path = format!("/v1/admin/principals/{principal_id}/tokens");
        let body = serde_json::json!({ "ttl_ms": ttl_ms });
        self.json(Method::POST, &path, Some(&body), Retry::Never)
            .await
    }

    /// `DELETE /v1/admin/principals/{principal_id}/tokens/{token_id}`.
    pub async fn revoke_token(
        &self,
        principal_id: &str,
        token_id: &str,
    ) -> Result<serde_json::Value, Error> {
        let path = format!("/v1/admin/principals/{principal_id}/tokens/{token_id}");
        self.json::<_, ()>(Method::DELETE, &path, None, Retry::Never)
            .await
    }

    /// `DELETE /v1/admin/principals/{principal_id}`: the principal and every token of it.
    pub async fn revoke_principal(&self, principal_id: &str) -> Result<serde_json::Value, Error> {
        let path = format!("/v1/admin/principals/{principal_id}");
        self.json::<_, ()>(Method::DELETE, &path, None, Retry::Never)
            .await
    }

    /// `GET /v1/auth/whoami` (any role).
    pub async fn whoami(&self) -> Result<serde_json::Value, Error> {
        self.json::<_, ()>(Method::GET, "/v1/auth/whoami", None, Retry::Safe)
            .await
    }

    // ---------------------------------------------------------------- audit

    /// `GET /v1/audit`: a page of a chain (`after_seq` exclusive, at most 1,000 records).
    pub async fn audit(
        &self,
        tenant_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, Error> {
        #[derive(serde::Deserialize)]
        struct Page {
            records: Vec<AuditRecord>,
        }
        let path = format!("/v1/audit?tenant_id={tenant_id}&after_seq={after_seq}&limit={limit}");
        let page: Page = self
            .json::<_, ()>(Method::GET, &path, None, Retry::Safe)
            .await?;
        Ok(page.records)
    }

    /// `GET /v1/audit/export`: JSON Lines of records, checkpoints and manifests (one tenant, or
    /// every chain the caller may read).
    pub async fn audit_export(&self, tenant_id: Option<&str>) -> Result<String, Error> {
        let path = match tenant_id {
            Some(t) => format!("/v1/audit/export?tenant_id={t}"),
            None => "/v1/audit/export".to_owned(),
        };
        self.send::<()>(Method::GET, &path, None, Retry::Safe)
            .await?
            .text()
    }

    /// `GET /v1/audit/public-key`: the key the server says it signs with. Verify against a key
    /// pinned when the store was made, never against this one alone.
    pub async fn audit_public_key(&self) -> Result<String, Error> {
        let answer: serde_json::Value = self
            .json::<_, ()>(Method::GET, "/v1/audit/public-key", None, Retry::Safe)
            .await?;
        answer["audit_public_key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Invalid("the answer names no key".to_owned()))
    }

    // ---------------------------------------------------------------- operations

    /// `GET /healthz`: whether the process serves.
    pub async fn healthy(&self) -> Result<bool, Error> {
        Ok(self.call(Method::GET, "/healthz", None).await?.status == 200)
    }

    /// `GET /readyz`: whether the store can commit.
    pub async fn ready(&self) -> Result<bool, Error> {
        Ok(self.call(Method::GET, "/readyz", None).await?.status == 200)
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, Error> {
        self.send::<()>(Method::GET, "/metrics", None, Retry::Safe)
            .await?
            .text()
    }

    /// `GET /v1/openapi.json`: the API's OpenAPI 3.1 document.
    pub async fn openapi(&self) -> Result<serde_json::Value, Error> {
        self.json::<_, ()>(Method::GET, "/v1/openapi.json", None, Retry::Safe)
            .await
    }
}

/// The path of one secret: its name is one path segment, its slashes percent-encoded (names
/// hold nothing else that needs it).
pub fn secret_path(tenant_id: &str, secret_name: &str) -> String {
    format!(
        "/v1/admin/tenants/{tenant_id}/secrets/{}",
        secret_name.replace('/', "%2F")
    )
}

/// A KMS request with fresh correlation, turn and idempotency ids; set the other fields
/// (`requester_user_id`, `requested_ttl_ms`, `revoke_target`, …) on what it returns.
pub fn kms_request(
    tenant_id: &str,
    operation: Operation,
    secret_name: &str,
    requester_engine_id: &str,
) -> KmsRequest {
    KmsRequest {
        correlation_id: Some(idempotency_key("corr")),
        turn_id: Some("client".to_owned()),
        idempotency_key: Some(idempotency_key("req")),
        tenant_id: Some(tenant_id.to_owned()),
        operation: Some(operation),
        secret_name: Some(secret_name.to_owned()),
        requester_engine_id: Some(requester_engine_id.to_owned()),
        ..KmsRequest::default()
    }
}

/// A fresh idempotency key: `prefix`, the time, and 64 random bits.
pub fn idempotency_key(prefix: &str) -> String {
    let mut random = [0u8; 8];
    // A key only needs to be unique: the time alone is a fallback.
    let _ = getrandom::fill(&mut random);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{millis}-{hex}")
}
