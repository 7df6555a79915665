//! Known answers: every crypto operation against the published vectors in `tests/vectors`
//! (RFC 4231 for HMAC-SHA256, RFC 8032 for Ed25519, NIST CAVP for AES-256-GCM).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use selene_kms_core::SecretMaterial;
use selene_kms_core::crypto::{Ciphertext, Input, NONCE_LEN, Output, Tag, perform, public_key};
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
        let Ok(Output::Mac(tag)) = perform(&key, 1, &input, NO_NONCE) else {
            panic!("case {} gives a tag", v["case"]);
        };
        // Case 5 publishes the tag truncated to 128 bits.
        assert_eq!(tag[..expected.len()], expected[..], "case {}", v["case"]);
        let verify = |tag: Vec<u8>| {
            let input = Input::Verify {
                data: data(v, "data"),
                tag: Tag::Mac(tag),
            };
            matches!(perform(&key, 1, &input, NO_NONCE), Ok(Output::Valid(true)))
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
        let Ok(Output::Signature(sig)) = perform(&seed, 1, &input, NO_NONCE) else {
            panic!("{} signs", v["name"]);
        };
        assert_eq!(sig, bytes(v, "signature"), "{}", v["name"]);
        let verify = |message: Zeroizing<Vec<u8>>, sig: Vec<u8>| {
            let input = Input::Verify {
                data: message,
                tag: Tag::Signature(sig),
            };
            matches!(perform(&seed, 1, &input, NO_NONCE), Ok(Output::Valid(true)))
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
        let input = Input::Encrypt {
            plaintext: data(v, "plaintext"),
            aad: data(v, "aad"),
        };
        let Ok(Output::Ciphertext(text)) = perform(&key, 7, &input, nonce) else {
            panic!("vector {i} encrypts");
        };
        let mut sealed = nonce.to_vec();
        sealed.extend(bytes(v, "ciphertext"));
        sealed.extend(bytes(v, "tag"));
        assert_eq!(
            text,
            format!("skc1:7:{}", URL_SAFE_NO_PAD.encode(&sealed)),
            "vector {i}"
        );
        let ciphertext = Ciphertext::parse(&text).expect("parses");
        assert_eq!(ciphertext.version, 7);
        let decrypt = |aad: Zeroizing<Vec<u8>>| {
            let input = Input::Decrypt {
                ciphertext: ciphertext.clone(),
                aad,
            };
            perform(&key, 7, &input, NO_NONCE)
        };
        let Ok(Output::Plaintext(plain)) = decrypt(data(v, "aad")) else {
            panic!("vector {i} decrypts");
        };
        assert_eq!(plain.to_vec(), bytes(v, "plaintext"), "vector {i}");
        let mut other_aad = data(v, "aad");
        other_aad.push(1);
        assert!(decrypt(other_aad).is_err(), "vector {i}");
    }
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
