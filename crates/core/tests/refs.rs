//! Opaque refs: known-answer vectors, and refusal of forged, altered, truncated and foreign refs.

mod common;

use base64::Engine as _;
use common::*;
use selene_kms_core::{
    EngineId, GrantClaims, MaterialBundle, Policy, RefGeneration, RefKind, SecretName, ServiceKeys,
    ServiceSecret, TenantId, UserId, refs,
};
use serde::Deserialize;
use serde_json::json;
use sha2::Digest as _;

const VECTORS: &str = include_str!("../testdata/ref_vectors.json");
/// Refs of the first generation, as that build sealed them.
const FIRST_GENERATION: &str = include_str!("../testdata/ref_vectors_v1.json");

#[derive(Deserialize)]
struct Vector {
    service_secret_hex: String,
    tenant_id: String,
    idempotency_key: String,
    kind: String,
    secret_name: String,
    version: u64,
    engine: String,
    user: Option<String>,
    issued_at_ms: u64,
    expires_at_ms: u64,
    expected_secret_ref: String,
    expected_ref: String,
    expected_ref_id: String,
}

fn keys_from_hex(hex: &str) -> ServiceKeys {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    ServiceKeys::derive(&ServiceSecret::from_bytes(bytes))
}

fn kind(name: &str) -> RefKind {
    match name {
        "handle" => RefKind::Handle,
        "credential" => RefKind::Credential,
        other => panic!("unknown kind {other}"),
    }
}

fn claims(v: &Vector) -> GrantClaims {
    GrantClaims {
        secret_name: SecretName::try_from(v.secret_name.as_str()).expect("valid"),
        version: v.version,
        engine: EngineId::try_from(v.engine.as_str()).expect("valid"),
        user: v
            .user
            .as_deref()
            .map(|u| UserId::try_from(u).expect("valid")),
        issued_at_ms: v.issued_at_ms,
        expires_at_ms: v.expires_at_ms,
    }
}

/// The request, policy and snapshot under which `issue` seals the vector's ref: a handle living
/// as long as the secret's handle TTL, or a credential asking for that TTL.
fn issue_vector(v: &Vector, keys: &ServiceKeys) -> MaterialBundle {
    let lifetime = v.expires_at_ms - v.issued_at_ms;
    let mut raw = json!({
        "correlation_id": "c-1", "turn_id": "t-1", "idempotency_key": v.idempotency_key,
        "tenant_id": v.tenant_id, "secret_name": v.secret_name,
        "requester_engine_id": v.engine, "requester_user_id": v.user,
    });
    match kind(&v.kind) {
        RefKind::Handle => raw["operation"] = json!("GET_HANDLE"),
        _ => {
            raw["operation"] = json!("ISSUE_EPHEMERAL");
            raw["requested_ttl_ms"] = json!(lifetime);
        }
    }
    let everyone = Policy::from_json(
        br#"{"rules":[{"secret_names":["*"],"engines":["*"],"operations":["GET_HANDLE","ISSUE_EPHEMERAL"]}]}"#,
    )
    .expect("valid");
    let tenant = TenantId::try_from(v.tenant_id.as_str()).expect("valid");
    let name = SecretName::try_from(v.secret_name.as_str()).expect("valid");
    let mut snapshot = secret(usize::try_from(v.version).expect("small"));
    snapshot.secret_ref = refs::secret_ref(keys, &tenant, &name);
    snapshot.handle_ttl_ms = lifetime;
    let (bundle, _) = run(
        &parse(&raw),
        Some(&everyone),
        Some(&snapshot),
        keys,
        v.issued_at_ms,
    )
    .expect("allowed");
    bundle
}

/// The sealing format is pinned: these refs were produced by this implementation and recorded;
/// any change to key derivation, encoding, padding or AEAD breaks every outstanding ref. Sealing
/// is private to the core, so the refs are made here the one public way, through the pipeline
/// (the crate's unit tests also check the sealing function itself against the same file).
#[test]
fn known_answer_vectors_issue_and_open() {
    let vectors: Vec<Vector> = serde_json::from_str(VECTORS).expect("vector file parses");
    assert!(vectors.len() >= 4);
    for v in &vectors {
        let keys = keys_from_hex(&v.service_secret_hex);
        let tenant = TenantId::try_from(v.tenant_id.as_str()).expect("valid");
        let name = SecretName::try_from(v.secret_name.as_str()).expect("valid");
        let bundle = issue_vector(v, &keys);
        let sealed = match kind(&v.kind) {
            RefKind::Handle => bundle.secret_handle,
            _ => bundle.ephemeral_credential_ref,
        };
        assert_eq!(
            sealed.as_deref(),
            Some(v.expected_ref.as_str()),
            "seal of {}",
            v.idempotency_key
        );
        assert_eq!(
            bundle.secret_ref.as_deref(),
            Some(v.expected_secret_ref.as_str())
        );
        let opened =
            refs::open_grant(&keys, kind(&v.kind), &tenant, &v.expected_ref).expect("opens");
        assert_eq!(opened.claims(), &claims(v));
        assert_eq!(opened.kind(), kind(&v.kind));
        assert_eq!(opened.tenant(), &tenant);
        assert_eq!(opened.id().as_str(), v.expected_ref_id);
        assert_eq!(
            refs::ref_id(kind(&v.kind), &v.expected_ref).as_ref(),
            Some(opened.id())
        );
        assert_eq!(
            refs::open_secret_ref(&keys, &tenant, &v.expected_secret_ref).expect("opens"),
            name
        );
    }
}

fn a_handle(keys: &ServiceKeys) -> String {
    let v = parse(&request("GET_HANDLE"));
    let (bundle, _) = run(&v, Some(&policy()), Some(&secret(1)), keys, NOW).expect("allowed");
    bundle.secret_handle.expect("issued")
}

#[test]
fn altered_truncated_and_foreign_refs_are_refused() {
    let keys = keys();
    let acme = TenantId::try_from("acme").expect("valid");
    let globex = TenantId::try_from("globex").expect("valid");
    let handle = a_handle(&keys);
    assert!(refs::open_grant(&keys, RefKind::Handle, &acme, &handle).is_ok());

    // Every single-character alteration of the body fails.
    let prefix = 5;
    for i in prefix..handle.len() {
        let mut bytes = handle.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).expect("ascii");
        if altered != handle {
            assert!(
                refs::open_grant(&keys, RefKind::Handle, &acme, &altered).is_err(),
                "alteration at {i} opened"
            );
        }
    }
    // Truncations fail.
    for cut in [prefix, prefix + 10, handle.len() - 1, handle.len() - 4] {
        assert!(refs::open_grant(&keys, RefKind::Handle, &acme, &handle[..cut]).is_err());
    }
    // Another tenant, another kind, another store's keys: all refused.
    assert!(refs::open_grant(&keys, RefKind::Handle, &globex, &handle).is_err());
    let as_credential = handle.replacen("ksh2_", "kse2_", 1);
    assert!(refs::open_grant(&keys, RefKind::Credential, &acme, &as_credential).is_err());
    assert!(refs::open_grant(&other_keys(), RefKind::Handle, &acme, &handle).is_err());
    // Garbage of every shape.
    for junk in [
        "",
        "ksh2_",
        "ksh2_!!!!",
        "ksh2_AAAA",
        &"ksh2_".repeat(300),
        "ksr2_AAAA",
        "ksh3_AAAA",
        &handle.replacen("ksh2_", "ksh3_", 1),
        // A body of one generation under the other's prefix: the associated data differs.
        &handle.replacen("ksh2_", "ksh1_", 1),
    ] {
        assert!(refs::open_grant(&keys, RefKind::Handle, &acme, junk).is_err());
    }
}

/// Refs sealed before the nonce was keyed (the first generation, recorded by that build) are
/// honoured until they expire: they open with the same claims and the same ids, so revocations
/// recorded against them still hold.
#[test]
fn first_generation_refs_still_open_as_they_did() {
    let vectors: Vec<Vector> = serde_json::from_str(FIRST_GENERATION).expect("vector file parses");
    assert!(vectors.len() >= 4);
    for v in &vectors {
        assert!(v.expected_ref.starts_with("ksh1_") || v.expected_ref.starts_with("kse1_"));
        let keys = keys_from_hex(&v.service_secret_hex);
        let tenant = TenantId::try_from(v.tenant_id.as_str()).expect("valid");
        let opened =
            refs::open_grant(&keys, kind(&v.kind), &tenant, &v.expected_ref).expect("opens");
        assert_eq!(opened.claims(), &claims(v));
        assert_eq!(opened.generation(), RefGeneration::First);
        assert_eq!(opened.id().as_str(), v.expected_ref_id);
        let relabelled = v.expected_ref.replacen("1_", "2_", 1);
        assert!(
            refs::open_grant(&keys, kind(&v.kind), &tenant, &relabelled).is_err(),
            "a first-generation body under the second generation's prefix"
        );
        let name = SecretName::try_from(v.secret_name.as_str()).expect("valid");
        assert_eq!(
            refs::open_secret_ref(&keys, &tenant, &v.expected_secret_ref).expect("opens"),
            name
        );
    }
}

/// The nonce is a keyed PRF of kind, tenant and seed: one name's refs in two tenants, or in two
/// stores, share nothing but the prefix, and a guessed name cannot be tested against a ref
/// without the store's keys (the first generation's unkeyed nonce let it).
#[test]
fn refs_of_one_name_are_unlinkable_across_tenants_and_stores() {
    let name = SecretName::try_from("payments/stripe").expect("valid");
    let acme = TenantId::try_from("acme").expect("valid");
    let globex = TenantId::try_from("globex").expect("valid");
    let raw = |r: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(r.strip_prefix("ksr2_").expect("second generation"))
            .expect("base64")
    };
    let refs = [
        refs::secret_ref(&keys(), &acme, &name),
        refs::secret_ref(&keys(), &globex, &name),
        refs::secret_ref(&other_keys(), &acme, &name),
    ];
    for (i, a) in refs.iter().enumerate() {
        for b in &refs[i + 1..] {
            let (a, b) = (raw(a), raw(b));
            let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            assert!(shared < 4, "refs share a {shared}-byte prefix");
        }
    }
    // The first generation's nonce was SHA-256 of a domain, the kind and the name: from the
    // name alone, anyone could recompute it. The second generation's is not that value.
    let unkeyed = sha2::Sha256::new()
        .chain_update(b"selene-kms/ref-nonce/v1")
        .chain_update([1u8])
        .chain_update(name.as_str())
        .finalize();
    assert_ne!(&raw(&refs[0])[..12], &unkeyed[..12]);
}

#[test]
fn refs_reveal_neither_tenant_nor_name_nor_version() {
    let keys = keys();
    let handle = a_handle(&keys);
    for clear in ["acme", "payments", "stripe", "PH1.CONNECTOR", "u-42"] {
        assert!(!handle.contains(clear));
    }
    // Names of different lengths within one padding block give refs of one length.
    let acme = TenantId::try_from("acme").expect("valid");
    let a = refs::secret_ref(&keys, &acme, &SecretName::try_from("a").expect("valid"));
    let b = refs::secret_ref(
        &keys,
        &acme,
        &SecretName::try_from("abcdefghij/k").expect("valid"),
    );
    assert_eq!(a.len(), b.len());
    assert_ne!(a, b);
}
