//! Crypto with handles: an executor uses a key through its handle, and the key never leaves.
//!
//! Like a redemption, every use is audited (refs and the key version only) before its result
//! is released: if the record cannot be written, nothing is released.

use selene_kms_core::crypto::{self, CryptoRequest, KeyUse, NONCE_LEN, Output};
use selene_kms_core::{AuditRecord, OpenedGrant, ReasonCode, RefKind, Refusal, TenantId, refs};

use super::redeem::{store_refusal, use_record};
use super::{Caller, Engine};
use crate::random::random_bytes;

/// What a crypto operation gives back. Not `Debug`: a decryption's plaintext is in it, wiped
/// when dropped.
pub struct CryptoAnswer {
    /// The result.
    pub output: Output,
    /// The key version used (a decryption: the ciphertext's).
    pub version: u64,
}

impl Engine {
    /// Runs one crypto operation with the key a handle names (executor callers only; the host
    /// checks the role). A refusal carries its reason code and diagnostics, never the handle or
    /// the data. A tenant outside the caller's scope is refused before anything is read.
    pub async fn crypto(
        &self,
        caller: &Caller,
        req: &CryptoRequest,
        now_ms: u64,
    ) -> Result<CryptoAnswer, Refusal> {
        caller.may_name(&req.tenant_id).map_err(Refusal::bare)?;
        let tenant = &req.tenant_id;
        let opened = match req.open(self.store.keys()) {
            Ok(o) => o,
            Err(refusal) => return Err(self.refused(caller, req, None, refusal, now_ms).await),
        };
        let read = self.ref_state(tenant, &opened).await?;
        let policy = read.policy.as_ref().map(|p| p.policy.as_ref());
        let secret = read.secret.as_deref();
        let checked = crypto::check(&opened, policy, secret, read.revoked, now_ms, &req.input);
        let grant = match checked {
            Ok(grant) => grant,
            Err(refusal) => {
                return Err(self
                    .refused(caller, req, Some(&opened), refusal, now_ms)
                    .await);
            }
        };
        let used = KeyUse::of(&grant);
        let version = grant.version();
        let key = match self.store.material(grant).await {
            Ok(key) => key,
            // Material that does not open is the mark of a store altered behind the KMS's back:
            // on record, like every refusal.
            Err(e) => {
                let refusal = store_refusal(e);
                return Err(self
                    .refused(caller, req, Some(&opened), refusal, now_ms)
                    .await);
            }
        };
        // The one nonce of this encryption, from the OS; the core draws no randomness.
        let nonce = match req.input {
            crypto::Input::Encrypt { .. } => *random_bytes::<NONCE_LEN>().map_err(store_refusal)?,
            _ => [0; NONCE_LEN],
        };
        let output = match crypto::perform(&key, &used, &req.input, nonce) {
            Ok(output) => output,
            Err(refusal) => {
                return Err(self
                    .refused(caller, req, Some(&opened), refusal, now_ms)
                    .await);
            }
        };
        let mut audit = record(
            caller,
            req,
            Some(&opened),
            ReasonCode::OkMaterialIssue,
            now_ms,
        );
        // Sealed afresh rather than taken from the row read: a ref edited in the database must
        // not make the record name another secret.
        let name = &opened.claims().secret_name;
        audit.secret_ref = Some(refs::secret_ref(self.store.keys(), tenant, name));
        audit.key_version = Some(version);
        // Not audited, not released.
        self.audit_only(tenant, audit, None)
            .await
            .map_err(store_refusal)?;
        Ok(CryptoAnswer { output, version })
    }

    /// Audits a refused use and gives back the refusal (or the store's, if even the record
    /// could not be written).
    async fn refused(
        &self,
        caller: &Caller,
        req: &CryptoRequest,
        opened: Option<&OpenedGrant>,
        refusal: Refusal,
        now_ms: u64,
    ) -> Refusal {
        let audit = record(caller, req, opened, refusal.reason, now_ms);
        match self.audit_only(&req.tenant_id, audit, None).await {
            Ok(_) => refusal,
            Err(e) => store_refusal(e),
        }
    }
}

fn record(
    caller: &Caller,
    req: &CryptoRequest,
    opened: Option<&OpenedGrant>,
    reason: ReasonCode,
    now_ms: u64,
) -> AuditRecord {
    let tenant: &TenantId = &req.tenant_id;
    let action = req.op().action();
    use_record(
        caller,
        tenant,
        action,
        opened,
        RefKind::Handle,
        reason,
        now_ms,
    )
}
