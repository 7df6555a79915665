//! The host's randomness: fresh material for generated secrets and their rotations, and caller
//! tokens. The core draws none; the store draws only what its envelope encryption needs (data
//! keys, nonces, the service secret), so every secret *value* a tenant stores comes from here.

use selene_kms_core::SecretMaterial;
use selene_kms_core::material::MATERIAL_LEN;
use selene_kms_store::{ErrorKind, StoreError, StoreResult};
use zeroize::Zeroizing;

/// `N` bytes from the OS random source; a failing source refuses the request (`Unavailable`).
pub fn random_bytes<const N: usize>() -> StoreResult<Zeroizing<[u8; N]>> {
    let mut out = Zeroizing::new([0u8; N]);
    getrandom::fill(out.as_mut())
        .map_err(|_| StoreError::new(ErrorKind::Unavailable, "the OS random source failed"))?;
    Ok(out)
}

/// Fresh material for a generated secret or a rotation.
pub fn generate_material() -> StoreResult<SecretMaterial> {
    Ok(SecretMaterial::from_slice(
        random_bytes::<MATERIAL_LEN>()?.as_ref(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ() {
        let (a, b) = (generate_material(), generate_material());
        let (a, b) = (a.expect("material"), b.expect("material"));
        assert_eq!(a.expose().len(), MATERIAL_LEN);
        assert_ne!(a.expose(), b.expose());
    }
}
