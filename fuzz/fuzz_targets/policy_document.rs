//! Any bytes as a policy document: validation never panics, and a valid policy round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selene_kms_core::Policy;

fuzz_target!(|body: &[u8]| {
    if let Ok(policy) = Policy::from_json(body) {
        let again = serde_json::to_vec(policy.document()).expect("documents serialize");
        let reparsed = Policy::from_json(&again).expect("a stored policy parses again");
        assert_eq!(reparsed.document(), policy.document());
    }
});
