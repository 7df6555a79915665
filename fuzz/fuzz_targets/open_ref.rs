//! Any text as an opaque ref: opening never panics, and what opens is canonical (a `secret_ref`
//! of the current generation that opens is exactly the one sealing its name gives; one of the
//! first generation, which still opens, reseals as the current one; a handle that opens has an
//! id).
#![no_main]

use libfuzzer_sys::fuzz_target;
use selene_kms_core::{RefKind, ServiceKeys, ServiceSecret, TenantId, refs};

fuzz_target!(|text: &str| {
    let keys = ServiceKeys::derive(&ServiceSecret::from_bytes([7; 32]));
    let tenant = TenantId::try_from("acme").expect("valid");
    for kind in [RefKind::Handle, RefKind::Credential] {
        if let Ok(opened) = refs::open_grant(&keys, kind, &tenant, text) {
            assert_eq!(refs::ref_id(kind, text).as_ref(), Some(opened.id()));
        }
    }
    if let Ok(name) = refs::open_secret_ref(&keys, &tenant, text) {
        let resealed = refs::secret_ref(&keys, &tenant, &name);
        if text.starts_with("ksr1_") {
            assert!(resealed.starts_with("ksr2_"));
        } else {
            assert_eq!(resealed, text);
        }
    }
});
