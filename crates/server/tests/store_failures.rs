//! Store failures, injected beneath the engine, get the answer of the one mapping on every path:
//! KMS requests, redemptions, admin calls and authentication.
//!
//! The cases marked "was" answered otherwise before the mapping was shared; each of those old
//! answers was a bug (a missing secret or a stale plan answered as an unavailable audit log, a
//! database outage during redemption answered as an internal error, corruption answered as
//! something to retry).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reqwest::StatusCode;
use selene_kms_backends::{StoreLocation, open_store};
use selene_kms_core::redeem::RedeemRequest;
use selene_kms_core::{
    AuditRecord, ChainHead, Checkpoint, KmsRequest, Manifest, MaterialGrant, Policy,
    PolicyDocument, PrincipalId, PrincipalName, ReasonCode, RefId, Refusal, Role, SecretMaterial,
    SecretName, SecretSnapshot, ServiceKeys, SpiffeId, TenantId,
};
use selene_kms_server::{
    AdminError, Caller, Engine, KmsAnswer, NewSecretRequest, Redeemed, ServeOptions, StageRequest,
    serve,
};
use selene_kms_store::{
    BatchHistogram, Change, CommitUnit, Credential, ErrorKind, IdempotencyRecord, IdempotencyScope,
    PrincipalListing, PrincipalRecord, Receipt, RootKey, SecretListing, Store, StoreError,
    StoreResult, StoredPolicy, TenantSummary,
};
use serde_json::{Value, json};

const NOW: u64 = 1_767_225_600_000;

/// The store calls a fault can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Secret,
    IsRevoked,
    Material,
    /// A commit that changes a secret (or creates one).
    ChangeCommit,
    /// A commit that changes nothing: an audit record, perhaps with an idempotency record.
    PlainCommit,
    Credential,
}

struct Fault {
    call: Call,
    kind: ErrorKind,
    times: usize,
}

/// A real embedded store that fails the chosen call with the chosen kind.
struct Faulty {
    inner: Arc<dyn Store>,
    fault: Mutex<Option<Fault>>,
}

impl Faulty {
    fn fail(&self, call: Call, kind: ErrorKind, times: usize) {
        *self.fault.lock().expect("fault") = Some(Fault { call, kind, times });
    }

    fn heal(&self) {
        *self.fault.lock().expect("fault") = None;
    }

    fn check(&self, call: Call) -> StoreResult<()> {
        let mut fault = self.fault.lock().expect("fault");
        match fault.as_mut() {
            Some(f) if f.call == call && f.times > 0 => {
                f.times -= 1;
                Err(StoreError::new(f.kind, "injected"))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Store for Faulty {
    fn keys(&self) -> &Arc<ServiceKeys> {
        self.inner.keys()
    }
    async fn policy(&self, tenant: &TenantId) -> StoreResult<Option<StoredPolicy>> {
        self.inner.policy(tenant).await
    }
    async fn policy_document(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Option<(PolicyDocument, u64)>> {
        self.inner.policy_document(tenant).await
    }
    async fn secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> StoreResult<Option<Arc<SecretSnapshot>>> {
        self.check(Call::Secret)?;
        self.inner.secret(tenant, name).await
    }
    async fn list_secrets(&self, tenant: &TenantId) -> StoreResult<Vec<SecretListing>> {
        self.inner.list_secrets(tenant).await
    }
    async fn idempotency(
        &self,
        scope: &IdempotencyScope,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        self.inner.idempotency(scope).await
    }
    async fn is_revoked(&self, tenant: &TenantId, id: &RefId) -> StoreResult<bool> {
        self.check(Call::IsRevoked)?;
        self.inner.is_revoked(tenant, id).await
    }
    async fn material(&self, grant: MaterialGrant) -> StoreResult<SecretMaterial> {
        self.check(Call::Material)?;
        self.inner.material(grant).await
    }
    async fn commit(&self, unit: CommitUnit) -> StoreResult<Receipt> {
        self.check(match unit.change {
            Change::None => Call::PlainCommit,
            _ => Call::ChangeCommit,
        })?;
        self.inner.commit(unit).await
    }
    async fn audit_records(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        self.inner.audit_records(tenant, after_seq, limit).await
    }
    async fn kept_records(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<selene_kms_store::KeptRecord>> {
        self.inner.kept_records(tenant, after_seq, limit).await
    }
    async fn audit_tenants(&self) -> StoreResult<Vec<TenantId>> {
        self.inner.audit_tenants().await
    }
    async fn checkpoints(&self, tenant: &TenantId) -> StoreResult<Vec<Checkpoint>> {
        self.inner.checkpoints(tenant).await
    }
    async fn credential(&self, verifier: &[u8; 32]) -> StoreResult<Option<Credential>> {
        self.check(Call::Credential)?;
        self.inner.credential(verifier).await
    }
    async fn principal_by_spiffe(
        &self,
        spiffe_id: &SpiffeId,
    ) -> StoreResult<Option<PrincipalRecord>> {
        self.inner.principal_by_spiffe(spiffe_id).await
    }
    async fn principals(&self) -> StoreResult<Vec<PrincipalListing>> {
        self.inner.principals().await
    }
    async fn auth_epoch(&self) -> StoreResult<u64> {
        self.inner.auth_epoch().await
    }
    async fn tenants(&self) -> StoreResult<Vec<TenantSummary>> {
        self.inner.tenants().await
    }
    async fn rotate_root_key(&self, new_root: RootKey) -> StoreResult<u64> {
        self.inner.rotate_root_key(new_root).await
    }
    async fn prune(&self, now_ms: u64, idempotency_retention_ms: u64) -> StoreResult<u64> {
        self.inner.prune(now_ms, idempotency_retention_ms).await
    }
    async fn chain_heads(&self, moved_only: bool) -> StoreResult<Vec<ChainHead>> {
        self.inner.chain_heads(moved_only).await
    }
    async fn append_manifest(&self, manifest: &Manifest) -> StoreResult<bool> {
        self.inner.append_manifest(manifest).await
    }
    async fn manifests(&self, after_seq: u64, limit: usize) -> StoreResult<Vec<Manifest>> {
        self.inner.manifests(after_seq, limit).await
    }
    async fn seal_records_from_before_macs(&self) -> StoreResult<u64> {
        self.inner.seal_records_from_before_macs().await
    }
    async fn latest_full_manifest(&self) -> StoreResult<u64> {
        self.inner.latest_full_manifest().await
    }
    fn batch_histogram(&self) -> &BatchHistogram {
        self.inner.batch_histogram()
    }
    fn write_health(&self) -> &selene_kms_store::WriteHealth {
        self.inner.write_health()
    }
    async fn ready(&self) -> bool {
        self.inner.ready().await
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<Faulty>,
    engine: Arc<Engine>,
    tenant: TenantId,
    handle: String,
}

fn caller(name: &str, role: Role) -> Caller {
    let id = PrincipalId::from_random([name.len() as u8; 16]);
    Caller::asserted(id, PrincipalName::try_from(name).expect("name"), role)
}

fn os() -> Caller {
    caller("selene-os", Role::Os)
}

fn admin() -> Caller {
    caller("operator", Role::Admin)
}

fn request(op: &str, key: &str) -> Value {
    json!({
        "correlation_id": "c-1", "turn_id": "t-1", "idempotency_key": key,
        "tenant_id": "acme", "operation": op, "secret_name": "payments/stripe",
        "requester_engine_id": "PH1.OS", "requester_user_id": "u-admin"
    })
}

fn validated(request: &Value) -> KmsRequest {
    KmsRequest::from_json(request.to_string().as_bytes()).expect("a valid request")
}

/// An answer's code, once its bytes are seen to carry the same.
fn kms_reason(a: &KmsAnswer) -> ReasonCode {
    let body: Value = serde_json::from_slice(a.bytes()).unwrap_or(Value::Null);
    assert_eq!(
        body["reason_code"].as_str(),
        Some(a.reason().name()),
        "the bytes carry the answer's code"
    );
    a.reason()
}

fn redeem_reason(r: &Result<Redeemed, Refusal>) -> ReasonCode {
    r.as_ref()
        .map_or_else(|refusal| refusal.reason, |_| ReasonCode::OkMaterialIssue)
}

/// The code, and the status any host answers it with.
fn expect(answered: ReasonCode, status: u16, reason: &str, what: &str) {
    assert_eq!(
        (answered.http_status(), answered.name()),
        (status, reason),
        "{what}"
    );
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = RootKey::create_file(&dir.path().join("root.key")).expect("root key");
        let location = StoreLocation::Embedded(dir.path().join("kms.db"));
        let inner = open_store(&location, root, true).await.expect("store");
        let store = Arc::new(Faulty {
            inner,
            fault: Mutex::new(None),
        });
        let engine = Arc::new(Engine::new(store.clone() as Arc<dyn Store>));
        let tenant = TenantId::try_from("acme").expect("tenant");
        let policy = json!({
            "rules": [{"secret_names": ["*"], "engines": ["PH1.OS"],
                       "operations": ["GET_HANDLE", "ROTATE", "REVOKE"]}],
            "admins": ["u-admin"]
        });
        let policy: PolicyDocument = serde_json::from_value(policy).expect("document");
        let policy = Policy::try_from(&policy).expect("policy");
        engine
            .put_policy(&admin(), &tenant, &policy, NOW)
            .await
            .expect("put");
        // A generated secret rotates without staged material; an imported one takes staging.
        for (name, material) in [("payments/stripe", None), ("imported/k", Some("Y2FuYXJ5"))] {
            let secret = NewSecretRequest {
                secret_name: name.to_owned(),
                material_b64: material.map(str::to_owned),
                ephemeral_ttl_ms: None,
                handle_ttl_ms: None,
                purpose: None,
            };
            engine
                .create_secret(&admin(), &tenant, secret, NOW)
                .await
                .expect("created");
        }
        let got = engine
            .kms(&os(), &validated(&request("GET_HANDLE", "h")), NOW)
            .await;
        assert!(got.is_ok());
        let handle = got.bundle().secret_handle.clone().expect("handle");
        Self {
            _dir: dir,
            store,
            engine,
            tenant,
            handle,
        }
    }

    async fn get_handle(&self, key: &str) -> ReasonCode {
        let req = validated(&request("GET_HANDLE", key));
        kms_reason(&self.engine.kms(&os(), &req, NOW).await)
    }

    /// A dry run, then its commit; the commit's answer.
    async fn rotate(&self, key: &str) -> ReasonCode {
        let mut dry = validated(&request("ROTATE", &format!("{key}-plan")));
        dry.dry_run = true;
        let plan = self.engine.kms(&os(), &dry, NOW).await;
        assert!(plan.is_ok(), "dry run");
        let mut commit = validated(&request("ROTATE", key));
        commit.simulation_id = plan.bundle().simulation_id.clone();
        kms_reason(&self.engine.kms(&os(), &commit, NOW).await)
    }

    async fn redeem(&self) -> Result<Redeemed, Refusal> {
        let body = json!({"tenant_id": "acme", "secret_handle": self.handle}).to_string();
        let req = RedeemRequest::from_json(body.as_bytes()).expect("a valid redemption");
        self.engine
            .redeem(&caller("executor", Role::Executor), &req, NOW)
            .await
    }

    async fn stage(&self) -> Result<(), AdminError> {
        let req = StageRequest {
            secret_name: "imported/k".to_owned(),
            material_b64: "bmV4dA==".to_owned(),
        };
        self.engine.stage(&admin(), &self.tenant, req, NOW).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_requests_answer_store_failures_by_the_one_mapping() {
    let s = Setup::new().await;
    let cases = [
        // Unchanged.
        (
            Call::Secret,
            ErrorKind::Unavailable,
            503,
            "KMS_AUDIT_UNAVAILABLE",
        ),
        (
            Call::Secret,
            ErrorKind::Corrupt,
            500,
            "PH1_KMS_INTERNAL_PIPELINE_ERROR",
        ),
        // Was 503 KMS_AUDIT_UNAVAILABLE.
        (
            Call::Secret,
            ErrorKind::NotFound,
            404,
            "KMS_SECRET_NOT_FOUND",
        ),
        (
            Call::PlainCommit,
            ErrorKind::Invalid,
            422,
            "PH1_KMS_VALIDATION_FAILED",
        ),
    ];
    for (i, (call, kind, status, reason)) in cases.into_iter().enumerate() {
        s.store.fail(call, kind, usize::MAX);
        let r = s.get_handle(&format!("get-{i}")).await;
        expect(
            r,
            status,
            reason,
            &format!("GET_HANDLE, {call:?} fails {kind:?}"),
        );
    }
    // A mutation's commit: was 503 KMS_AUDIT_UNAVAILABLE for a secret gone under it.
    s.store
        .fail(Call::ChangeCommit, ErrorKind::NotFound, usize::MAX);
    let r = s.rotate("rotate-gone").await;
    expect(r, 404, "KMS_SECRET_NOT_FOUND", "ROTATE, secret gone");
    // A mutation that loses every race: was 409 KMS_IDEMPOTENCY_IN_FLIGHT, though no other
    // request held the key.
    s.store
        .fail(Call::ChangeCommit, ErrorKind::StateConflict, usize::MAX);
    let r = s.rotate("rotate-stale").await;
    expect(r, 409, "KMS_SIMULATION_STALE", "ROTATE, every commit lost");
    // One lost race is retried, and then succeeds.
    s.store
        .fail(Call::ChangeCommit, ErrorKind::StateConflict, 1);
    let r = s.rotate("rotate-once").await;
    expect(
        r,
        200,
        "PH1_KMS_OK_MATERIAL_ISSUE",
        "ROTATE, one commit lost",
    );
    // An audit-only unit cannot be stale: a lost race is committed again, not answered as one.
    s.store.fail(Call::PlainCommit, ErrorKind::StateConflict, 1);
    let r = s.get_handle("get-after-race").await;
    expect(
        r,
        200,
        "PH1_KMS_OK_MATERIAL_ISSUE",
        "GET_HANDLE, one audit commit lost",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redemptions_answer_store_failures_by_the_one_mapping() {
    let s = Setup::new().await;
    let cases = [
        // Unchanged.
        (
            Call::Secret,
            ErrorKind::Unavailable,
            503,
            "KMS_AUDIT_UNAVAILABLE",
        ),
        (
            Call::PlainCommit,
            ErrorKind::Unavailable,
            503,
            "KMS_AUDIT_UNAVAILABLE",
        ),
        (
            Call::Material,
            ErrorKind::Corrupt,
            500,
            "PH1_KMS_INTERNAL_PIPELINE_ERROR",
        ),
        // Was 503 KMS_AUDIT_UNAVAILABLE: corruption is not worth a retry.
        (
            Call::Secret,
            ErrorKind::Corrupt,
            500,
            "PH1_KMS_INTERNAL_PIPELINE_ERROR",
        ),
        (
            Call::IsRevoked,
            ErrorKind::Corrupt,
            500,
            "PH1_KMS_INTERNAL_PIPELINE_ERROR",
        ),
        (
            Call::PlainCommit,
            ErrorKind::Corrupt,
            500,
            "PH1_KMS_INTERNAL_PIPELINE_ERROR",
        ),
        // Was 500 PH1_KMS_INTERNAL_PIPELINE_ERROR: an outage is worth a retry.
        (
            Call::Material,
            ErrorKind::Unavailable,
            503,
            "KMS_AUDIT_UNAVAILABLE",
        ),
    ];
    for (call, kind, status, reason) in cases {
        s.store.fail(call, kind, usize::MAX);
        let r = s.redeem().await;
        expect(
            redeem_reason(&r),
            status,
            reason,
            &format!("redeem, {call:?} fails {kind:?}"),
        );
        assert!(r.is_err(), "nothing released");
    }
    s.store.heal();
    let r = s.redeem().await;
    expect(
        redeem_reason(&r),
        200,
        "PH1_KMS_OK_MATERIAL_ISSUE",
        "redeem, healed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_answer_store_failures_by_the_one_mapping() {
    let s = Setup::new().await;
    let cases = [
        // Unchanged.
        (ErrorKind::Unavailable, 503, "KMS_AUDIT_UNAVAILABLE"),
        (ErrorKind::Corrupt, 500, "PH1_KMS_INTERNAL_PIPELINE_ERROR"),
        (ErrorKind::NotFound, 404, "KMS_SECRET_NOT_FOUND"),
        (ErrorKind::AlreadyExists, 409, "KMS_SECRET_EXISTS"),
        (ErrorKind::Invalid, 422, "PH1_KMS_VALIDATION_FAILED"),
        // Was 503 KMS_AUDIT_UNAVAILABLE: the state moved; nothing is wrong with the store.
        (ErrorKind::StateConflict, 409, "KMS_SIMULATION_STALE"),
    ];
    for (kind, status, reason) in cases {
        s.store.fail(Call::ChangeCommit, kind, usize::MAX);
        let r = s.stage().await.expect_err("refused");
        expect(
            r.reason_code,
            status,
            reason,
            &format!("stage, commit fails {kind:?}"),
        );
    }
    s.store.heal();
    assert_eq!(s.stage().await, Ok(()), "stage, healed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_credential_store_is_an_outage_and_a_corrupt_row_proves_nobody() {
    let s = Setup::new().await;
    let made = s.engine.bootstrap(NOW).await.expect("bootstrap");
    let admin_token = made.0[0].1.token.expose().to_owned();
    let listening = serve(
        s.engine.clone(),
        ServeOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..ServeOptions::default()
        },
    )
    .await
    .expect("serves");
    let url = format!("http://{}/v1/admin/tenants/acme/secrets", listening.addr);
    let http = reqwest::Client::new();
    // A store that cannot answer is an outage; a credential row that fails its check was
    // written without the root key, and authenticates nobody.
    for (kind, status, reason) in [
        (ErrorKind::Unavailable, 503, "KMS_AUDIT_UNAVAILABLE"),
        (ErrorKind::Corrupt, 401, "KMS_UNAUTHENTICATED"),
    ] {
        s.store.fail(Call::Credential, kind, usize::MAX);
        let r = http
            .get(&url)
            .bearer_auth(&admin_token)
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::from_u16(status).expect("status"));
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["reason_code"], reason, "token lookup fails {kind:?}");
    }
    s.store.heal();
    let r = http
        .get(&url)
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    listening.shutdown().await.expect("clean shutdown");
}
