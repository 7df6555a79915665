//! `selene-kms-core`: the pure, deterministic heart of PH1.KMS.
//!
//! No I/O, no clock, no randomness, no async: time, keys and state snapshots are arguments, so
//! the same request, state and keys always give the same bundle. The host runs the seed's
//! sequence with these pieces:
//!
//! 1. [`KmsRequest::from_json`]: schema and names (raw wire types → validated newtypes);
//! 2. [`evaluate`] (`KMS_ACCESS_EVALUATE`): enablement, authorization, TTL bounds, `secret_ref`;
//!    returns an [`AccessGrant`] that only the policy module can make;
//! 3. [`issue`] (`KMS_MATERIAL_ISSUE`): consumes the grant with a [`SecretSnapshot`] and returns
//!    the [`MaterialBundle`] and the [`StateChange`] to commit, or a [`Refusal`];
//! 4. the host commits the change with an [`AuditRecord`] and answers with the bundle.
//!
//! Redemption follows the same habit: [`redeem::check`] turns an opened ref into a
//! [`MaterialGrant`], which the store's material read consumes. Sealing refs and computing
//! simulation ids stay inside the core, so neither token has a back door.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

mod encode;
mod redacted;
mod simulation;

pub mod audit;
pub mod crypto;
pub mod diagnostics;
pub mod export;
pub mod ids;
pub mod keys;
pub mod manifest;
pub mod material;
pub mod pipeline;
pub mod policy;
pub mod principal;
pub mod purpose;
pub mod reason;
pub mod redeem;
pub mod refs;
pub mod refusal;
pub mod replay;
pub mod request;
pub mod role;
pub mod state;
pub mod wire;

pub use audit::{AuditAction, AuditRecord, ChainBreak, ChainVerifier, Checkpoint};
pub use diagnostics::{Diagnostic, Problem, Subject};
pub use export::{ExportLine, TenantWalk};
pub use ids::{CorrelationId, EngineId, IdempotencyKey, SecretName, TenantId, TurnId, UserId};
pub use keys::{Column, ServiceKeys, ServiceSecret};
pub use manifest::{ChainHead, Manifest, ManifestChain, ManifestKind};
pub use material::SecretMaterial;
pub use pipeline::{Issued, issue};
pub use policy::{AccessGrant, Policy, PolicyDocument, evaluate};
pub use principal::{PrincipalId, PrincipalName, SpiffeId, TenantScope, TokenId};
pub use purpose::Purpose;
pub use reason::{REGISTRY, ReasonCode, ReasonInfo};
pub use redeem::MaterialGrant;
pub use refs::{GrantClaims, OpenedGrant, RefGeneration, RefId, RefKind};
pub use refusal::Refusal;
pub use replay::{DecisionInputs, Kept, Replay, ReplayReport};
pub use request::{KmsRequest, RejectedRequest, RequestContext, Requester, RevokeTarget};
pub use role::Role;
pub use state::{SecretKind, SecretSnapshot, StateChange, TtlBounds, VersionState};
pub use wire::{
    MaterialBundle, Operation, RawKmsRequest, RawRevokeTarget, Tombstone, TombstoneTarget,
    ValidationStatus,
};
