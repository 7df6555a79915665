//! Any text as an audit export: verification never panics and never accepts what it cannot check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selene_kms_core::audit::{parse_public_key, public_key_hex};
use selene_kms_core::export::verify_export;
use selene_kms_core::{ServiceKeys, ServiceSecret};

fuzz_target!(|text: &str| {
    let keys = ServiceKeys::derive(&ServiceSecret::from_bytes([7; 32]));
    let key = parse_public_key(&public_key_hex(&keys)).expect("own key parses");
    if let Ok(summary) = verify_export(text, &key, &Default::default()) {
        // Accepting records means a manifest or checkpoint signed by this key covered them,
        // which random input cannot produce.
        assert_eq!(summary.records, 0, "an unsigned export was accepted");
    }
});
