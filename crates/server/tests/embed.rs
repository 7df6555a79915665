//! The engine embedded in-process through its typed API alone: no HTTP, no JSON bodies. This is
//! how Selene OS runs the KMS, so every step of a secret's life is exercised here in types.

use std::sync::Arc;

use selene_kms_core::policy::RuleDocument;
use selene_kms_core::redeem::{RawRedeemRequest, RedeemRequest};
use selene_kms_core::{
    KmsRequest, Operation, Policy, PolicyDocument, PrincipalId, PrincipalName, RawKmsRequest,
    ReasonCode, Role, TenantId,
};
use selene_kms_server::{AuditFilter, Caller, Engine, NewSecretRequest, Redeemed};
use selene_kms_store::RootKey;
use selene_kms_store_sqlite::{SqliteOptions, SqliteStore};

const NOW: u64 = 1_767_225_600_000;

struct Embedded {
    _dir: tempfile::TempDir,
    engine: Engine,
    tenant: TenantId,
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

fn executor() -> Caller {
    caller("executor", Role::Executor)
}

/// A request from `engine` on behalf of the tenant's admin user.
fn request(operation: Operation, secret: &str, key: &str, engine: &str) -> KmsRequest {
    KmsRequest::try_from(RawKmsRequest {
        correlation_id: Some("c-1".to_owned()),
        turn_id: Some("t-1".to_owned()),
        idempotency_key: Some(key.to_owned()),
        tenant_id: Some("acme".to_owned()),
        operation: Some(operation),
        secret_name: Some(secret.to_owned()),
        requester_engine_id: Some(engine.to_owned()),
        requester_user_id: Some("u-admin".to_owned()),
        ..RawKmsRequest::default()
    })
    .expect("a valid request")
}

fn policy() -> PolicyDocument {
    PolicyDocument {
        rules: vec![RuleDocument {
            secret_names: vec!["payments/*".to_owned()],
            engines: vec!["PH1.OS".to_owned()],
            operations: vec![Operation::GetHandle, Operation::Rotate],
        }],
        admins: vec!["u-admin".to_owned()],
        require_admin_for_rotation: true,
        enabled: true,
        not_before_ms: None,
    }
}

fn new_secret(name: &str, material_b64: Option<&str>) -> NewSecretRequest {
    NewSecretRequest {
        secret_name: name.to_owned(),
        material_b64: material_b64.map(str::to_owned),
        ephemeral_ttl_ms: None,
        handle_ttl_ms: None,
        purpose: None,
    }
}

impl Embedded {
    fn open() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = RootKey::create_file(&dir.path().join("root.key")).expect("root key");
        let options = SqliteOptions {
            path: dir.path().join("kms.db"),
            create: true,
        };
        let store = SqliteStore::open(&options, root).expect("store");
        Self {
            _dir: dir,
            engine: Engine::new(Arc::new(store)),
            tenant: TenantId::try_from("acme").expect("tenant"),
        }
    }

    /// A policy set and two secrets created (a generated one and an imported one).
    async fn provisioned() -> Self {
        let e = Self::open();
        let document = policy();
        let valid = Policy::try_from(&document).expect("a valid policy");
        let version = e.engine.put_policy(&admin(), &e.tenant, &valid, NOW).await;
        assert_eq!(version, Ok(1), "first policy version");
        assert_eq!(e.engine.get_policy(&admin(), &e.tenant).await, Ok(document));
        for (name, material) in [
            ("payments/stripe", None),
            ("payments/imported", Some("Y2FuYXJ5")),
        ] {
            let created = e
                .engine
                .create_secret(&admin(), &e.tenant, new_secret(name, material), NOW)
                .await
                .expect("created");
            assert_eq!(created.version, 1);
            assert!(created.secret_ref.starts_with("ksr2_"), "an opaque ref");
        }
        e
    }

    async fn redeem(&self, handle: &str) -> Result<Redeemed, selene_kms_core::Refusal> {
        let req = RedeemRequest::try_from(RawRedeemRequest {
            tenant_id: Some("acme".to_owned()),
            secret_handle: Some(handle.to_owned()),
            ephemeral_credential_ref: None,
        })
        .expect("a valid redemption");
        self.engine.redeem(&executor(), &req, NOW).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_creates_secrets_and_sets_the_policy() {
    let e = Embedded::provisioned().await;
    let listed = e
        .engine
        .list_secrets(&admin(), &e.tenant)
        .await
        .expect("listing");
    let mut names: Vec<&str> = listed.iter().map(|s| s.secret_name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["payments/imported", "payments/stripe"]);
    // The same name again is refused with its code, typed.
    let again = e
        .engine
        .create_secret(
            &admin(),
            &e.tenant,
            new_secret("payments/stripe", None),
            NOW,
        )
        .await
        .expect_err("exists");
    assert_eq!(again.reason_code, ReasonCode::SecretExists);
    // Bad input is refused before the store sees it.
    let bad = e
        .engine
        .create_secret(
            &admin(),
            &e.tenant,
            new_secret("payments/x", Some("not base64!")),
            NOW,
        )
        .await
        .expect_err("refused");
    assert_eq!(bad.reason_code, ReasonCode::InputSchemaInvalid);
    // Every change left its audit record.
    let page = e
        .engine
        .audit_page(&admin(), &e.tenant, 0, 100, &AuditFilter::default())
        .await
        .expect("audit");
    let records = page.records;
    assert_eq!(records.len(), 3, "a policy and two secrets");
    assert_eq!(page.next_after_seq, None, "the chain ends there");
    let creations = AuditFilter {
        operation: Some(selene_kms_core::AuditAction::CreateSecret),
        ..AuditFilter::default()
    };
    let filtered = e
        .engine
        .audit_page(&admin(), &e.tenant, 0, 1, &creations)
        .await
        .expect("audit");
    assert_eq!(filtered.records.len(), 1);
    assert_eq!(
        filtered.records[0].operation.map(|o| o.name()),
        Some("CREATE_SECRET")
    );
    assert_eq!(
        filtered.next_after_seq,
        Some(filtered.records[0].seq),
        "one per page"
    );
    let export = e.engine.audit_export(&admin(), Some(&e.tenant), NOW).await;
    let lines = export.expect("export").split(|b| *b == b'\n').count();
    assert!(lines > records.len(), "a line per record, and more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_handle_is_allowed_refused_and_replayed_byte_for_byte() {
    let e = Embedded::provisioned().await;
    let allowed = request(Operation::GetHandle, "payments/stripe", "get-1", "PH1.OS");
    let first = e.engine.kms(&os(), &allowed, NOW).await;
    assert!(first.is_ok(), "{first:?}");
    assert_eq!(first.reason(), ReasonCode::OkMaterialIssue);
    assert!(first.bundle().secret_handle.is_some());
    assert!(first.bundle().audit_seq.is_some(), "audited");
    // The bytes are the bundle's own encoding.
    let parsed: selene_kms_core::MaterialBundle =
        serde_json::from_slice(first.bytes()).expect("bundle bytes");
    assert_eq!(&parsed, first.bundle());

    // A retry of the same request is the same answer, byte for byte.
    let retry = e.engine.kms(&os(), &allowed, NOW + 1000).await;
    assert_eq!(retry.bytes(), first.bytes());
    assert_eq!(retry.bundle(), first.bundle());

    // An engine no rule names is refused, with nothing material in the bundle.
    let stranger = request(Operation::GetHandle, "payments/stripe", "get-2", "PH1.X");
    let refused = e.engine.kms(&os(), &stranger, NOW).await;
    assert!(!refused.is_ok());
    assert_eq!(refused.reason(), ReasonCode::NotAuthorized);
    assert_eq!(refused.bundle().secret_handle, None);
    assert!(refused.bundle().audit_seq.is_some(), "refusals are audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_is_audited_when_its_tenant_is_known() {
    let e = Embedded::provisioned().await;
    let rejected = KmsRequest::try_from(RawKmsRequest {
        tenant_id: Some("acme".to_owned()),
        operation: Some(Operation::GetHandle),
        ..RawKmsRequest::default()
    })
    .expect_err("fields are missing");
    let answer = e.engine.kms_rejected(&os(), rejected, NOW).await;
    assert_eq!(answer.reason(), ReasonCode::UpstreamInputMissing);
    assert_eq!(
        answer.bundle().audit_seq,
        Some(4),
        "after three admin records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_commits_the_plan_of_its_dry_run() {
    let e = Embedded::provisioned().await;
    let mut dry = request(
        Operation::Rotate,
        "payments/stripe",
        "rotate-plan",
        "PH1.OS",
    );
    dry.dry_run = true;
    let plan = e.engine.kms(&os(), &dry, NOW).await;
    assert!(plan.is_ok(), "{plan:?}");
    assert!(plan.bundle().dry_run);
    let simulation_id = plan.bundle().simulation_id.clone();
    assert!(simulation_id.is_some(), "a dry run names its plan");

    // Without the plan, a commit is refused.
    let blind = request(
        Operation::Rotate,
        "payments/stripe",
        "rotate-blind",
        "PH1.OS",
    );
    let refused = e.engine.kms(&os(), &blind, NOW).await;
    assert_eq!(refused.reason(), ReasonCode::SimulationRequired);

    let mut commit = request(Operation::Rotate, "payments/stripe", "rotate", "PH1.OS");
    commit.simulation_id = simulation_id;
    let rotated = e.engine.kms(&os(), &commit, NOW).await;
    assert_eq!(rotated.reason(), ReasonCode::OkMaterialIssue, "{rotated:?}");
    assert_eq!(rotated.bundle().rotated_version, Some(2));
    let listed = e
        .engine
        .list_secrets(&admin(), &e.tenant)
        .await
        .expect("listing");
    let stripe = listed
        .iter()
        .find(|s| s.secret_name == "payments/stripe")
        .expect("listed");
    assert_eq!(stripe.current_version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_redeems_for_its_material() {
    let e = Embedded::provisioned().await;
    let get = request(Operation::GetHandle, "payments/imported", "get-1", "PH1.OS");
    let answer = e.engine.kms(&os(), &get, NOW).await;
    let handle = answer.bundle().secret_handle.clone().expect("a handle");
    let Ok(redeemed) = e.redeem(&handle).await else {
        panic!("the handle redeems");
    };
    assert_eq!(redeemed.material.expose(), b"canary");
    assert_eq!(redeemed.version, 1);
    assert_eq!(Some(redeemed.expires_at_ms), answer.bundle().expires_at_ms);

    // An altered handle does not open: refused with its code, nothing released.
    let altered = format!("{handle}x");
    let Err(refusal) = e.redeem(&altered).await else {
        panic!("an altered handle is refused");
    };
    assert_eq!(refusal.reason, ReasonCode::HandleInvalid);
}
