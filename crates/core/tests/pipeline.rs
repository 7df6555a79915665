//! The pipeline's rules: simulation gate, compare-and-set, staged rotation, revocation targets,
//! redemption checks, and the order in which checks fail.

mod common;

use common::*;
use selene_kms_core::{
    ReasonCode, RefKind, SecretKind, StateChange, TombstoneTarget, VersionState, redeem,
    redeem::RedeemRequest,
};
use serde_json::json;

fn reason(
    r: Result<(selene_kms_core::MaterialBundle, StateChange), selene_kms_core::Refusal>,
) -> ReasonCode {
    match r {
        Ok((b, _)) => b.reason_code,
        Err(e) => e.reason,
    }
}

#[test]
fn mutations_need_a_fresh_simulation_of_the_same_fields() {
    let keys = keys();
    let policy = policy();
    let snapshot = secret(2);
    let v = admin_request("ROTATE");
    // No simulation id.
    assert_eq!(
        reason(run(&parse(&v), Some(&policy), Some(&snapshot), &keys, NOW)),
        ReasonCode::SimulationRequired
    );
    // The dry run changes nothing and shows the outcome.
    let mut dry = v.clone();
    dry["dry_run"] = json!(true);
    let (plan, change) = run(&parse(&dry), Some(&policy), Some(&snapshot), &keys, NOW).expect("ok");
    assert_eq!(change, StateChange::None);
    assert_eq!(plan.rotated_version, Some(3));
    let sim = plan.simulation_id.expect("present");
    // A forged id, an id for other fields, an id for an older state: all stale.
    let mut commit = v.clone();
    commit["simulation_id"] = json!("kms_sim:00000000000000000000000000000000");
    assert_eq!(
        reason(run(
            &parse(&commit),
            Some(&policy),
            Some(&snapshot),
            &keys,
            NOW
        )),
        ReasonCode::SimulationStale
    );
    commit["simulation_id"] = json!(sim);
    commit["previous_version"] = json!(2);
    assert_eq!(
        reason(run(
            &parse(&commit),
            Some(&policy),
            Some(&snapshot),
            &keys,
            NOW
        )),
        ReasonCode::SimulationStale
    );
    commit.as_object_mut().map(|o| o.remove("previous_version"));
    let mut moved = snapshot.clone();
    moved.state_version += 1;
    assert_eq!(
        reason(run(
            &parse(&commit),
            Some(&policy),
            Some(&moved),
            &keys,
            NOW
        )),
        ReasonCode::SimulationStale
    );
    // The matching commit goes through.
    let (bundle, change) =
        run(&parse(&commit), Some(&policy), Some(&snapshot), &keys, NOW).expect("ok");
    assert_eq!(bundle.rotated_version, Some(3));
    assert_eq!(bundle.simulation_id, None);
    assert_eq!(
        change,
        StateChange::Rotate {
            new_version: 3,
            from_staged: false
        }
    );
}

#[test]
fn rotation_checks_previous_version_and_staged_material() {
    let keys = keys();
    let policy = policy();
    let mut v = admin_request("ROTATE");
    v["previous_version"] = json!(1);
    assert_eq!(
        reason(simulate_then_commit(&v, &policy, &secret(2), &keys)),
        ReasonCode::VersionConflict
    );
    v["previous_version"] = json!(2);
    let mut imported = secret(2);
    imported.kind = SecretKind::Imported;
    assert_eq!(
        reason(simulate_then_commit(&v, &policy, &imported, &keys)),
        ReasonCode::RotationFailed
    );
    imported.staged = true;
    let (_, change) = simulate_then_commit(&v, &policy, &imported, &keys).expect("ok");
    assert_eq!(
        change,
        StateChange::Rotate {
            new_version: 3,
            from_staged: true
        }
    );
}

#[test]
fn revocation_targets_give_tombstones_and_revoked_things_fail_closed() {
    let keys = keys();
    let policy = policy();
    let snapshot = secret(2);
    let mut v = admin_request("REVOKE");
    v["revoke_target"] = json!({"version": 2});
    let (bundle, change) = simulate_then_commit(&v, &policy, &snapshot, &keys).expect("ok");
    let tomb = bundle.revoked.expect("tombstone");
    assert_eq!(
        (tomb.target, tomb.version),
        (TombstoneTarget::Version, Some(2))
    );
    assert_eq!(change, StateChange::RevokeVersion(2));

    // After the revocation, the current version is revoked: handles are refused.
    let mut after = snapshot.clone();
    after.versions[1] = VersionState::Revoked;
    after.state_version += 1;
    let get = parse(&request("GET_HANDLE"));
    assert_eq!(
        reason(run(&get, Some(&policy), Some(&after), &keys, NOW)),
        ReasonCode::Revoked
    );
    assert_eq!(
        reason(simulate_then_commit(&v, &policy, &after, &keys)),
        ReasonCode::Revoked
    );
    v["revoke_target"] = json!({"version": 9});
    assert_eq!(
        reason(simulate_then_commit(&v, &policy, &after, &keys)),
        ReasonCode::ValidationFailed
    );

    v["revoke_target"] = json!({"all_versions": true});
    let (bundle, change) = simulate_then_commit(&v, &policy, &after, &keys).expect("ok");
    assert_eq!(
        bundle.revoked.map(|t| t.target),
        Some(TombstoneTarget::AllVersions)
    );
    assert_eq!(change, StateChange::RevokeAllVersions);

    // A handle of this secret can be revoked; one of another tenant cannot even be opened.
    let (issued, _) = run(&get, Some(&policy), Some(&snapshot), &keys, NOW).expect("ok");
    let handle = issued.secret_handle.expect("issued");
    v["revoke_target"] = json!({"secret_handle": handle});
    let (bundle, change) = simulate_then_commit(&v, &policy, &snapshot, &keys).expect("ok");
    assert_eq!(
        bundle.revoked.map(|t| t.target),
        Some(TombstoneTarget::Handle)
    );
    assert!(
        matches!(change, StateChange::RevokeHandle { expires_at_ms, .. } if expires_at_ms == NOW + 3_600_000)
    );
    let mut foreign = v.clone();
    foreign["tenant_id"] = json!("globex");
    assert_eq!(
        reason(simulate_then_commit(&foreign, &policy, &snapshot, &keys)),
        ReasonCode::HandleInvalid
    );
}

#[test]
fn dry_runs_never_carry_a_usable_ref() {
    let keys = keys();
    for op in ["GET_HANDLE", "ISSUE_EPHEMERAL"] {
        let mut v = request(op);
        v["dry_run"] = json!(true);
        let (bundle, change) =
            run(&parse(&v), Some(&policy()), Some(&secret(1)), &keys, NOW).expect("ok");
        assert!(bundle.secret_handle.is_none() && bundle.ephemeral_credential_ref.is_none());
        assert!(bundle.simulation_id.is_some() && bundle.secret_ref.is_some());
        assert_eq!(change, StateChange::None);
    }
}

/// REASON_CODES.md: dry runs of GET_HANDLE and ISSUE_EPHEMERAL answer
/// `PH1_KMS_OK_ACCESS_EVALUATE` (they once answered `PH1_KMS_OK_MATERIAL_ISSUE`, issuing nothing);
/// dry runs of ROTATE and REVOKE keep the code their commit gives, and commits are unchanged.
#[test]
fn dry_runs_of_reads_answer_access_evaluate_and_mutations_keep_material_issue() {
    let keys = keys();
    for op in ["GET_HANDLE", "ISSUE_EPHEMERAL"] {
        let mut v = request(op);
        v["dry_run"] = json!(true);
        let (dry, _) = run(&parse(&v), Some(&policy()), Some(&secret(1)), &keys, NOW).expect("ok");
        assert_eq!(dry.reason_code, ReasonCode::OkAccessEvaluate, "{op}");
        assert!(dry.is_ok(), "{op}");
        v["dry_run"] = json!(false);
        let (commit, _) =
            run(&parse(&v), Some(&policy()), Some(&secret(1)), &keys, NOW).expect("ok");
        assert_eq!(commit.reason_code, ReasonCode::OkMaterialIssue, "{op}");
    }
    let mut rotate = admin_request("ROTATE");
    rotate["dry_run"] = json!(true);
    let (plan, _) = run(
        &parse(&rotate),
        Some(&policy()),
        Some(&secret(2)),
        &keys,
        NOW,
    )
    .expect("ok");
    assert_eq!(plan.reason_code, ReasonCode::OkMaterialIssue);
}

#[test]
fn missing_secrets_are_not_found_only_for_authorized_requesters() {
    let keys = keys();
    let req = parse(&request("GET_HANDLE"));
    assert_eq!(
        reason(run(&req, Some(&policy()), None, &keys, NOW)),
        ReasonCode::SecretNotFound
    );
}

#[test]
fn redemption_checks_tenant_expiry_revocation_and_version_state() {
    let keys = keys();
    let snapshot = secret(1);
    let (bundle, _) = run(
        &parse(&request("GET_HANDLE")),
        Some(&policy()),
        Some(&snapshot),
        &keys,
        NOW,
    )
    .expect("ok");
    let handle = bundle.secret_handle.expect("issued");
    let body = json!({"tenant_id": "acme", "secret_handle": handle}).to_string();
    let req = RedeemRequest::from_json(body.as_bytes()).expect("valid");
    let opened = req.open(&keys).expect("opens");
    assert_eq!(opened.kind(), RefKind::Handle);
    let allowing = policy();
    let check = |snap: Option<&selene_kms_core::SecretSnapshot>, revoked: bool, now: u64| {
        redeem::check(&opened, Some(&allowing), snap, revoked, now)
            .map(|g| {
                (
                    g.tenant().to_string(),
                    g.secret_name().to_string(),
                    g.version(),
                )
            })
            .map_err(|r| r.reason)
    };
    assert_eq!(
        check(Some(&snapshot), false, NOW + 1),
        Ok(("acme".into(), "payments/stripe".into(), 1)),
        "the grant names the ref's tenant, secret and version"
    );
    assert_eq!(
        check(Some(&snapshot), true, NOW + 1),
        Err(ReasonCode::Revoked)
    );
    assert_eq!(
        check(Some(&snapshot), false, NOW + 3_600_001),
        Err(ReasonCode::Expired)
    );
    let mut revoked = snapshot.clone();
    revoked.versions[0] = VersionState::Revoked;
    assert_eq!(
        check(Some(&revoked), false, NOW + 1),
        Err(ReasonCode::Revoked)
    );
    // The tenant's policy stops every use: disabled or missing, then the emergency brake.
    let with = |doc: serde_json::Value| {
        let policy =
            selene_kms_core::Policy::from_json(doc.to_string().as_bytes()).expect("policy");
        redeem::check(&opened, Some(&policy), Some(&snapshot), false, NOW + 1)
            .map(|_| ())
            .map_err(|r| r.reason)
    };
    let rules = json!([{"secret_names": ["*"], "engines": ["*"], "operations": ["GET_HANDLE"]}]);
    assert_eq!(
        with(json!({"rules": rules, "enabled": false})),
        Err(ReasonCode::Disabled)
    );
    assert_eq!(
        redeem::check(&opened, None, Some(&snapshot), false, NOW + 1)
            .map(|_| ())
            .map_err(|r| r.reason),
        Err(ReasonCode::Disabled),
        "no policy, no use"
    );
    assert_eq!(
        with(json!({"rules": rules, "not_before_ms": NOW + 1})),
        Err(ReasonCode::Revoked),
        "issued before the brake"
    );
    assert_eq!(with(json!({"rules": rules, "not_before_ms": NOW})), Ok(()));
    let foreign = json!({"tenant_id": "globex", "secret_handle": req.text}).to_string();
    let foreign = RedeemRequest::from_json(foreign.as_bytes()).expect("valid");
    assert_eq!(
        foreign.open(&keys).map(|_| ()).map_err(|r| r.reason),
        Err(ReasonCode::HandleInvalid)
    );
}
