//! Known answers: every crypto operation against the published vectors in `tests/vectors`
//! (RFC 4231 for HMAC-SHA256, RFC 8032 for Ed25519, NIST CAVP for AES-256-GCM).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use selene_kms_core::crypto::{
    Ciphertext, Input, KeyUse, NONCE_LEN, Output, Tag, aes_256_gcm_open, aes_256_gcm_seal, perform,
    public_key,
};
use selene_kms_core::{SecretMaterial, SecretName, TenantId};
use serde_json::Value;
use zeroize::Zeroizing;

fn vectors(file: &str) -> Vec<Value> {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("vector file");
    let doc: Value = serde_json::from_str(&text).expect("vector JSON");
    doc["vectors"].as_array().expect("a list").clone()
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(v[field].as_str().expect(field)).expect("hex")
}

fn data(v: &Value, field: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(bytes(v, field))
}

const NO_NONCE: [u8; NONCE_LEN] = [0; NONCE_LEN];

/// Version `version` of `acme`'s `keys/k`.
fn used(version: u64) -> KeyUse {
    KeyUse::new(
        TenantId::try_from("acme").expect("tenant"),
        SecretName::try_from("keys/k").expect("name"),
        version,
    )
}

#[test]
fn hmac_sha256_gives_rfc_4231s_tags_and_verifies_them() {
    let all = vectors("hmac_sha256_rfc4231.json");
    assert_eq!(all.len(), 7);
    for v in &all {
        let key = SecretMaterial::new(bytes(v, "key"));
        let expected = bytes(v, "mac");
        let input = Input::Mac {
            data: data(v, "data"),
        };
        let Ok(Output::Mac(tag)) = perform(&key, &used(1), &input, NO_NONCE) else {
            panic!("case {} gives a tag", v["case"]);
        };
        // Case 5 publishes the tag truncated to 128 bits.
        assert_eq!(tag[..expected.len()], expected[..], "case {}", v["case"]);
        let verify = |tag: Vec<u8>| {
            let input = Input::Verify {
                data: data(v, "data"),
                tag: Tag::Mac(tag),
            };
            matches!(
                perform(&key, &used(1), &input, NO_NONCE),
                Ok(Output::Valid(true))
            )
        };
        assert!(verify(tag.clone()), "case {}", v["case"]);
        let mut altered = tag;
        altered[0] ^= 1;
        assert!(!verify(altered), "case {}", v["case"]);
    }
}

#[test]
fn ed25519_gives_rfc_8032s_keys_and_signatures_and_verifies_them() {
    let all = vectors("ed25519_rfc8032.json");
    assert_eq!(all.len(), 4);
    for v in &all {
        let seed = SecretMaterial::new(bytes(v, "seed"));
        assert_eq!(
            public_key(&seed).expect("a seed").to_vec(),
            bytes(v, "public_key"),
            "{}",
            v["name"]
        );
        let input = Input::Sign {
            data: data(v, "message"),
        };
        let Ok(Output::Signature(sig)) = perform(&seed, &used(1), &input, NO_NONCE) else {
            panic!("{} signs", v["name"]);
        };
        assert_eq!(sig, bytes(v, "signature"), "{}", v["name"]);
        let verify = |message: Zeroizing<Vec<u8>>, sig: Vec<u8>| {
            let input = Input::Verify {
                data: message,
                tag: Tag::Signature(sig),
            };
            matches!(
                perform(&seed, &used(1), &input, NO_NONCE),
                Ok(Output::Valid(true))
            )
        };
        assert!(verify(data(v, "message"), sig.clone()), "{}", v["name"]);
        let mut other = data(v, "message");
        other.push(0);
        assert!(!verify(other, sig.clone()), "{}", v["name"]);
        assert!(
            !verify(data(v, "message"), sig[..63].to_vec()),
            "{}",
            v["name"]
        );
    }
}

#[test]
fn aes_256_gcm_gives_nists_ciphertexts_and_opens_them() {
    let all = vectors("aes_256_gcm_nist.json");
    assert!(all.len() >= 8);
    for (i, v) in all.iter().enumerate() {
        let key = SecretMaterial::new(bytes(v, "key"));
        let nonce: [u8; NONCE_LEN] = bytes(v, "nonce").try_into().expect("96-bit IV");
        let sealed =
            aes_256_gcm_seal(&key, nonce, &bytes(v, "plaintext"), &bytes(v, "aad")).expect("seals");
        let mut expected = nonce.to_vec();
        expected.extend(bytes(v, "ciphertext"));
        expected.extend(bytes(v, "tag"));
        assert_eq!(sealed, expected, "vector {i}");
        let opened = aes_256_gcm_open(&key, &sealed, &bytes(v, "aad")).expect("opens");
        assert_eq!(opened.to_vec(), bytes(v, "plaintext"), "vector {i}");
        let mut other_aad = bytes(v, "aad");
        other_aad.push(1);
        assert!(
            aes_256_gcm_open(&key, &sealed, &other_aad).is_err(),
            "vector {i}"
        );
    }
}

/// A ciphertext opens only as the key version of the secret it was sealed by, with its
/// associated data: relabelled to another version, or taken to another secret, it does not,
/// even when both hold the same key.
#[test]
fn a_ciphertext_is_bound_to_its_version_and_secret() {
    let key = SecretMaterial::new(vec![9; 32]);
    let input = Input::Encrypt {
        plaintext: Zeroizing::new(b"pay 10".to_vec()),
        aad: Zeroizing::new(b"order-1".to_vec()),
    };
    let Ok(Output::Ciphertext(text)) = perform(&key, &used(1), &input, [4; NONCE_LEN]) else {
        panic!("encrypts");
    };
    assert!(text.starts_with("skc1:1:"), "{text}");
    let decrypt = |text: &str, used: &KeyUse, aad: &[u8]| {
        let input = Input::Decrypt {
            ciphertext: Ciphertext::parse(text).expect("parses"),
            aad: Zeroizing::new(aad.to_vec()),
        };
        perform(&key, used, &input, NO_NONCE)
    };
    let Ok(Output::Plaintext(plain)) = decrypt(&text, &used(1), b"order-1") else {
        panic!("decrypts");
    };
    assert_eq!(plain.to_vec(), b"pay 10");
    let relabelled = text.replacen("skc1:1:", "skc1:2:", 1);
    assert!(decrypt(&relabelled, &used(2), b"order-1").is_err());
    let other = KeyUse::new(
        TenantId::try_from("acme").expect("tenant"),
        SecretName::try_from("keys/other").expect("name"),
        1,
    );
    assert!(decrypt(&text, &other, b"order-1").is_err());
    assert!(decrypt(&text, &used(1), b"order-2").is_err());
}

#[test]
fn a_ciphertext_has_one_spelling() {
    let body = URL_SAFE_NO_PAD.encode([0u8; 28]);
    assert_eq!(
        Ciphertext::parse(&format!("skc1:3:{body}")).map(|c| c.version),
        Some(3)
    );
    for bad in [
        format!("skc1:03:{body}"),
        format!("skc1:0:{body}"),
        format!("skc1:+3:{body}"),
        format!("skc1::{body}"),
        format!("skc2:3:{body}"),
        format!("skc1:3:{body}="),
        format!("skc1:3:{}", URL_SAFE_NO_PAD.encode([0u8; 27])),
        "skc1:3".to_owned(),
    ] {
        assert!(Ciphertext::parse(&bad).is_none(), "{bad}");
    }
}
