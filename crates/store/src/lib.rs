//! `selene-kms-store`: the storage contract of selene-kms, and everything its backends share.
//!
//! The [`Store`] trait is the whole contract between the host and a backend: snapshots to read,
//! and one atomic [`CommitUnit`] per request (state change + idempotency record + audit record).
//! The backends live in crates of their own (`selene-kms-store-sqlite`, the embedded default;
//! `selene-kms-store-postgres`, for several nodes sharing one database) and are built from
//! [`backend`]: the one commit algorithm, envelope encryption, audit chaining and the numbers
//! both databases store, so that a rule both need is written once, here.
#![forbid(unsafe_code)]

mod chain;
mod codec;
mod commit;
mod envelope;
mod error;
mod health;
pub mod manifest;
mod model;
pub mod replay;
mod resealed;
mod state_check;
mod stats;
mod store;
mod stored_principals;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod verify;

pub use chain::CHECKPOINT_EVERY;
pub use envelope::{ROOT_KEY_ENV, RootKey};
pub use error::{ErrorKind, StoreError, StoreResult};
pub use health::{FAILING_FOR, WriteHealth};
pub use model::{
    Change, CommitUnit, Credential, IdempotencyRecord, IdempotencyScope, IdempotencyWrite,
    KeptRecord, MAX_KEPT_INPUTS, NewPrincipal, NewSecret, NewToken, PrincipalListing,
    PrincipalRecord, Receipt, Remembered, SecretListing, StoredPolicy, TenantSummary, TokenRecord,
    VersionListing,
};
pub use stats::{BATCH_BOUNDS, BatchHistogram, FLUSH_BOUNDS, FlushHistogram, MAX_BATCH};
pub use store::Store;

/// The kit a backend crate is built from; hosts have no use for it.
///
/// It hands out no raw sealing or unwrapping: a backend opens material only with
/// [`DataKey::open_granted`](backend::DataKey::open_granted), which takes redemption's grant,
/// and handles the service secret only through functions that never show its bytes.
///
/// ```compile_fail
/// fn read(key: &selene_kms_store::backend::DataKey, t: &selene_kms_core::TenantId,
///         n: &selene_kms_core::SecretName, sealed: &[u8]) {
///     // Material without a grant: `open` is not part of the kit.
///     let _ = key.open(t, n, todo!(), todo!(), sealed);
/// }
/// ```
///
/// A backend reads the committed state a batch [`Needs`](backend::Needs), hands it to
/// [`plan`](backend::plan), and writes the [`Writes`](backend::Writes) it decided.
pub mod backend {
    pub use crate::chain::*;
    pub use crate::codec::*;
    pub use crate::commit::*;
    pub use crate::envelope::{
        DataKey, Rewrapped, RootKey, RootKeys, SharedRoot, new_service_secret, open_service_secret,
        opens_service_secret, revocation_step, rewrap_all,
    };
    pub use crate::error::*;
    pub use crate::health::*;
    pub use crate::model::*;
    pub use crate::resealed::*;
    pub use crate::stats::*;
    pub use crate::store::*;
    pub use crate::stored_principals::*;
}
