//! Secret refs of the first generation, resealed. A secret's ref is stable, so one sealed by an
//! earlier build (whose nonce was an unkeyed hash of the name) would be handed out for ever; a
//! store opened by this build gives every such secret its second-generation ref instead, so
//! that no ref it hands out lets a name be tested offline. Refs already handed out still open.

use selene_kms_core::{SecretName, ServiceKeys, TenantId, refs};

use crate::error::{ErrorKind, StoreError, StoreResult};

/// The statement, the same in both databases, that lists the secrets (tenant, name) whose stored
/// ref is of the first generation.
pub const FIRST_GENERATION_SECRETS: &str =
    "SELECT tenant_id, secret_name FROM secrets WHERE substr(secret_ref, 1, 5) = 'ksr1_'";

/// The second-generation ref of a stored secret.
pub fn resealed_secret_ref(keys: &ServiceKeys, tenant: &str, name: &str) -> StoreResult<String> {
    let corrupt = || StoreError::new(ErrorKind::Corrupt, "a stored secret's name does not parse");
    let tenant = TenantId::try_from(tenant).map_err(|_| corrupt())?;
    let name = SecretName::try_from(name).map_err(|_| corrupt())?;
    Ok(refs::secret_ref(keys, &tenant, &name))
}
