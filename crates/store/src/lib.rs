//! `selene-kms-store`: durable state for selene-kms.
//!
//! The [`Store`] trait is the whole contract between the host and a backend: snapshots to read,
//! and one atomic [`CommitUnit`] per request (state change + idempotency record + audit record).
//! [`SqliteStore`] is the embedded default; [`PostgresStore`] serves several nodes sharing one
//! PostgreSQL database.
#![forbid(unsafe_code)]

mod chain;
mod clock;
mod codec;
mod commit;
mod envelope;
mod error;
mod health;
mod model;
mod postgres;
mod sqlite;
mod stats;
mod store;

pub mod verify;

pub use chain::CHECKPOINT_EVERY;
pub use clock::now_ms;
pub use envelope::{ROOT_KEY_ENV, RootKey, generate_material, random_key};
pub use error::{ErrorKind, StoreError, StoreResult};
pub use health::FAILING_FOR;
pub use model::{
    Change, CommitUnit, IdempotencyRecord, IdempotencyScope, IdempotencyWrite, NewSecret, Receipt,
    Role, SecretListing, StoredPolicy, VersionListing,
};
pub use postgres::{PostgresStore, redact};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use stats::{BATCH_BOUNDS, BatchHistogram, MAX_BATCH};
pub use store::Store;
