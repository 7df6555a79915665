//! State equals the chain: what a chain's verified records say about its tenant (versions and
//! revocations of each secret, the policy, revoked handles and credentials) or about the
//! principals (on the system chain), and where the store holds something else: an un-revoked
//! version or handle, an edited policy, a principal or token put back as it was before its
//! revocation.

use std::collections::{BTreeMap, BTreeSet};

use selene_kms_core::{AuditAction, AuditRecord, RefId, SecretName, TenantId, TombstoneTarget};

use crate::error::{ErrorKind, StoreResult};
use crate::store::Store;

/// A secret as its chain tells it.
#[derive(Debug, Default)]
struct SecretTold {
    versions: u64,
    revoked: BTreeSet<u64>,
    /// A REVOKE from a build before records named what they revoked: the revoked set is not
    /// known.
    revocations_untold: bool,
    /// The terms its creation set (none in records of earlier builds), and that record.
    terms: Option<(String, u64)>,
    /// Whether material is staged, and the record that says so (not known once a rotation of
    /// an earlier build, which did not say whether it took staged material, came after).
    staged: Option<(bool, u64)>,
    /// The oldest version a key decrypts, and the record that set it (none: 1, as created).
    min_decryption: Option<(u64, u64)>,
    seq: u64,
}

/// A principal as the system chain tells it.
#[derive(Debug, Default)]
struct PrincipalTold {
    revoked: bool,
    tokens: BTreeMap<String, bool>,
    seq: u64,
}

/// What one chain's records say, folded in order.
#[derive(Debug, Default)]
pub(crate) struct Told {
    /// The latest policy: version, document digest (none in records of earlier builds), seq.
    policy: Option<(u64, Option<String>, u64)>,
    /// A SET_POLICY from a build before records named the version: the policy is not known.
    policy_untold: bool,
    secrets: BTreeMap<String, SecretTold>,
    principals: BTreeMap<String, PrincipalTold>,
    /// Revocations of single handles and credentials: the ref's id, until when, the record.
    revoked_refs: Vec<(String, u64, u64)>,
    /// Some secret was created under a first-generation ref, which the store has resealed
    /// since: such secrets cannot be matched to their records.
    first_generation_refs: bool,
}

impl Told {
    /// Takes in the next verified record. Refusals, dry runs and idempotent replays changed
    /// nothing.
    pub(crate) fn take(&mut self, r: &AuditRecord) {
        if !r.reason_code.is_ok() || r.dry_run || r.replayed {
            return;
        }
        let Some(action) = r.operation else { return };
        match action {
            AuditAction::SetPolicy => match r.policy_version {
                Some(version) => {
                    self.policy = Some((version, r.policy_digest.clone(), r.seq));
                    self.policy_untold = false;
                }
                None => self.policy_untold = true,
            },
            AuditAction::CreateSecret => {
                if let Some(secret_ref) = &r.secret_ref {
                    self.first_generation_refs |= secret_ref.starts_with("ksr1_");
                    self.secrets.insert(
                        secret_ref.clone(),
                        SecretTold {
                            versions: 1,
                            terms: r.terms_digest.clone().map(|d| (d, r.seq)),
                            staged: Some((false, r.seq)),
                            seq: r.seq,
                            ..SecretTold::default()
                        },
                    );
                }
            }
            AuditAction::Rotate => {
                if let (Some(s), Some(version)) = (self.secret(r), r.rotated_version) {
                    s.versions = s.versions.max(version);
                    s.seq = r.seq;
                    match r.took_staged {
                        Some(true) => s.staged = Some((false, r.seq)),
                        Some(false) => {}
                        None => s.staged = None,
                    }
                }
            }
            AuditAction::StageVersion => {
                if let Some(s) = self.secret(r) {
                    s.staged = Some((true, r.seq));
                }
            }
            AuditAction::UpdateSecret => {
                if let (Some(s), Some(min)) = (self.secret(r), r.min_decryption_version) {
                    s.min_decryption = Some((min, r.seq));
                }
            }
            AuditAction::Revoke => {
                let (target, version) = (r.revoked_target, r.revoked_version);
                let revoked_ref = match target {
                    Some(TombstoneTarget::Handle) => r.handle_id.as_ref(),
                    Some(TombstoneTarget::EphemeralCredential) => r.credential_id.as_ref(),
                    _ => None,
                };
                if let (Some(id), Some(until)) = (revoked_ref, r.revoked_until_ms) {
                    self.revoked_refs.push((id.clone(), until, r.seq));
                    return;
                }
                if let Some(s) = self.secret(r) {
                    match (target, version) {
                        (Some(TombstoneTarget::Version), Some(v)) => {
                            s.revoked.insert(v);
                        }
                        (Some(TombstoneTarget::AllVersions), _) => {
                            s.revoked.extend(1..=s.versions);
                        }
                        (None, _) => s.revocations_untold = true,
                        _ => return,
                    }
                    s.seq = r.seq;
                }
            }
            AuditAction::PrincipalCreate => {
                if let Some(p) = &r.target_principal_id {
                    let told = self.principals.entry(p.clone()).or_default();
                    told.seq = r.seq;
                    if let Some(t) = &r.target_token_id {
                        told.tokens.insert(t.clone(), false);
                    }
                }
            }
            AuditAction::TokenCreate | AuditAction::TokenRevoke => {
                if let (Some(p), Some(t)) = (&r.target_principal_id, &r.target_token_id) {
                    let told = self.principals.entry(p.clone()).or_default();
                    told.seq = r.seq;
                    told.tokens
                        .insert(t.clone(), action == AuditAction::TokenRevoke);
                }
            }
            AuditAction::PrincipalRevoke => {
                if let Some(p) = &r.target_principal_id {
                    let told = self.principals.entry(p.clone()).or_default();
                    told.seq = r.seq;
                    told.revoked = true;
                    told.tokens.values_mut().for_each(|revoked| *revoked = true);
                }
            }
            AuditAction::GetHandle
            | AuditAction::IssueEphemeral
            | AuditAction::Redeem
            | AuditAction::PolicySimulate
            | AuditAction::Mac
            | AuditAction::Sign
            | AuditAction::Verify
            | AuditAction::Encrypt
            | AuditAction::Decrypt => {}
        }
    }

    fn secret(&mut self, r: &AuditRecord) -> Option<&mut SecretTold> {
        self.secrets.get_mut(r.secret_ref.as_deref()?)
    }
}

/// The first place where the store holds something other than what `tenant`'s chain says.
pub(crate) async fn first_difference(
    store: &dyn Store,
    tenant: &TenantId,
    told: &Told,
    now_ms: u64,
) -> StoreResult<Option<String>> {
    if *tenant == TenantId::system() {
        return principals_differ(store, told).await;
    }
    if let Some(found) = policy_differs(store, tenant, told).await? {
        return Ok(Some(found));
    }
    if let Some(found) = secrets_differ(store, tenant, told).await? {
        return Ok(Some(found));
    }
    revocations_differ(store, tenant, told, now_ms).await
}

/// How far past a revocation's expiry a verifier looks away from it: servers prune expired
/// revocations every ten minutes, by their own clocks.
const PRUNE_MARGIN_MS: u64 = 15 * 60 * 1000;

/// Every revocation of a handle or credential the chain tells is still held until it expires
/// (then it may be pruned).
async fn revocations_differ(
    store: &dyn Store,
    tenant: &TenantId,
    told: &Told,
    now_ms: u64,
) -> StoreResult<Option<String>> {
    // Per ref, the revocation that holds longest.
    let mut latest: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (id, until, seq) in &told.revoked_refs {
        let entry = latest.entry(id.as_str()).or_insert((*until, *seq));
        if *until > entry.0 {
            *entry = (*until, *seq);
        }
    }
    // One about to expire may be pruned already by a server whose clock is ahead.
    let due = now_ms.saturating_add(PRUNE_MARGIN_MS);
    for (id, (until, seq)) in latest {
        let id = RefId::from_stored(id.to_owned());
        if until > due && !store.is_revoked(tenant, &id).await? {
            return Ok(Some(format!(
                "the handle or credential {} that record {seq} revoked is no longer revoked",
                id.as_str()
            )));
        }
    }
    Ok(None)
}

async fn policy_differs(
    store: &dyn Store,
    tenant: &TenantId,
    told: &Told,
) -> StoreResult<Option<String>> {
    if told.policy_untold {
        return Ok(None);
    }
    let stored = store.policy_document(tenant).await?;
    Ok(match (&told.policy, stored) {
        (None, None) => None,
        (None, Some((_, version))) => Some(format!(
            "the policy (version {version}) was set by no record"
        )),
        (Some((version, _, seq)), None) => {
            Some(format!("no policy, but record {seq} set version {version}"))
        }
        (Some((version, digest, seq)), Some((doc, stored_version))) => {
            let edited = digest.as_ref().is_some_and(|d| *d != doc.digest());
            (*version != stored_version || edited)
                .then(|| format!("the policy is not the one record {seq} set"))
        }
    })
}

async fn secrets_differ(
    store: &dyn Store,
    tenant: &TenantId,
    told: &Told,
) -> StoreResult<Option<String>> {
    let stored = store.list_secrets(tenant).await?;
    let mut seen = BTreeSet::new();
    for listing in &stored {
        let name = &listing.secret_name;
        let Some(s) = told.secrets.get(&listing.secret_ref) else {
            if told.first_generation_refs {
                continue;
            }
            return Ok(Some(format!("secret {name} was created by no record")));
        };
        seen.insert(listing.secret_ref.as_str());
        let numbers: Vec<u64> = listing.versions.iter().map(|v| v.version).collect();
        if !numbers.iter().copied().eq(1..=s.versions) {
            return Ok(Some(format!(
                "secret {name} has versions {numbers:?}; record {} leaves 1 to {}",
                s.seq, s.versions
            )));
        }
        let stored = match stored_snapshot(store, tenant, name).await {
            Ok(stored) => stored,
            // Terms that are not the ones the KMS wrote (see `terms`): named, like any other.
            Err(e) if e.kind == ErrorKind::Corrupt => {
                return Ok(Some(format!("secret {name}: {}", e.message)));
            }
            Err(e) => return Err(e),
        };
        if let Some((terms, seq)) = &s.terms
            && stored
                .as_ref()
                .is_none_or(|snapshot| snapshot.terms_digest() != *terms)
        {
            return Ok(Some(format!(
                "secret {name}: its kind, TTL bounds, handle lifetime or purpose are not those \
                 record {seq} set"
            )));
        }
        let (min, min_seq) = s.min_decryption.unwrap_or((1, s.seq));
        if let Some(snapshot) = &stored
            && snapshot.min_decryption_version != min
        {
            return Ok(Some(format!(
                "secret {name}: its minimum decryption version is {}; record {min_seq} leaves \
                 it {min}",
                snapshot.min_decryption_version
            )));
        }
        if let (Some((staged, seq)), Some(snapshot)) = (s.staged, &stored)
            && snapshot.staged != staged
        {
            return Ok(Some(format!(
                "secret {name}: staged material is {}; record {seq} leaves it {}",
                present_or_not(snapshot.staged),
                present_or_not(staged)
            )));
        }
        if s.revocations_untold {
            continue;
        }
        let revoked: BTreeSet<u64> = listing
            .versions
            .iter()
            .filter(|v| v.state == "REVOKED")
            .map(|v| v.version)
            .collect();
        if revoked != s.revoked {
            return Ok(Some(format!(
                "secret {name}: the revoked versions are not those record {} leaves",
                s.seq
            )));
        }
    }
    Ok(told
        .secrets
        .iter()
        .find(|(secret_ref, _)| {
            !seen.contains(secret_ref.as_str()) && !secret_ref.starts_with("ksr1_")
        })
        .map(|(_, s)| format!("a secret record {} created is gone", s.seq)))
}

async fn stored_snapshot(
    store: &dyn Store,
    tenant: &TenantId,
    name: &str,
) -> StoreResult<Option<std::sync::Arc<selene_kms_core::SecretSnapshot>>> {
    let Ok(name) = SecretName::try_from(name) else {
        return Ok(None);
    };
    store.secret(tenant, &name).await
}

async fn principals_differ(store: &dyn Store, told: &Told) -> StoreResult<Option<String>> {
    let stored = store.principals().await?;
    for listing in &stored {
        let id = listing.principal.principal_id.as_str();
        let Some(p) = told.principals.get(id) else {
            return Ok(Some(format!("principal {id} was created by no record")));
        };
        if listing.principal.revoked_at_ms.is_some() != p.revoked {
            return Ok(Some(format!(
                "principal {id} is {}; record {} leaves it {}",
                live_or_revoked(listing.principal.revoked_at_ms.is_some()),
                p.seq,
                live_or_revoked(p.revoked)
            )));
        }
        for token in &listing.tokens {
            let token_id = token.token_id.as_str();
            let revoked = token.revoked_at_ms.is_some();
            match p.tokens.get(token_id) {
                None => {
                    return Ok(Some(format!("token {token_id} was created by no record")));
                }
                Some(told_revoked) if *told_revoked != revoked => {
                    return Ok(Some(format!(
                        "token {token_id} is {}; the chain leaves it {}",
                        live_or_revoked(revoked),
                        live_or_revoked(*told_revoked)
                    )));
                }
                Some(_) => {}
            }
        }
    }
    let stored: BTreeSet<&str> = stored
        .iter()
        .map(|l| l.principal.principal_id.as_str())
        .collect();
    Ok(told
        .principals
        .iter()
        .find(|(id, _)| !stored.contains(id.as_str()))
        .map(|(id, p)| format!("principal {id}, created by record {}, is gone", p.seq)))
}

const fn present_or_not(staged: bool) -> &'static str {
    if staged { "there" } else { "not there" }
}

const fn live_or_revoked(revoked: bool) -> &'static str {
    if revoked { "revoked" } else { "live" }
}
