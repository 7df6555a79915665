//! Simulation ids: the binding between a dry run and its commit.
//!
//! A `simulation_id` is an HMAC, under a key derived from the service secret, of the request's
//! defining fields and the secret's state version. Keyed, so that a caller cannot mint one
//! without a dry run (which would skip the seed's Access → Simulation ordering). Private to the
//! core for the same reason: only `issue` computes one, at the end of a dry run.

use hmac::Mac;
use subtle::ConstantTimeEq;

use crate::encode::Encoder;
use crate::keys::ServiceKeys;
use crate::refs::push_hex;
use crate::request::KmsRequest;

const PREFIX: &str = "kms_sim:";

/// The simulation id of `request` against a secret at `state_version`.
pub(crate) fn simulation_id(
    keys: &ServiceKeys,
    request: &KmsRequest,
    state_version: u64,
) -> String {
    let mut e = Encoder::with_domain("selene-kms/simulation/v1");
    request.encode_defining_fields(&mut e);
    e.u64(state_version);
    let mut mac = keys.simulation.clone();
    mac.update(e.as_slice());
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(PREFIX.len() + 32);
    out.push_str(PREFIX);
    for b in tag.iter().take(16) {
        push_hex(&mut out, *b);
    }
    out
}

/// Whether `presented` is the simulation id of `request` at `state_version`, compared in
/// constant time.
pub(crate) fn matches(
    keys: &ServiceKeys,
    request: &KmsRequest,
    state_version: u64,
    presented: &str,
) -> bool {
    let expected = simulation_id(keys, request, state_version);
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}
