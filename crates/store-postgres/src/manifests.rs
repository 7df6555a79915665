//! The store's signed manifests: which chains moved since the latest one, appending one (the
//! first node to take a sequence number wins it), and reading them back.

use deadpool_postgres::{Client, GenericClient};
use selene_kms_core::{ChainHead, Manifest, ManifestKind, ServiceKeys, TenantId};
use selene_kms_store::backend::{ErrorKind, Head, StoreError, StoreResult, from_json, head_of_row};

use crate::codec::{col, col_u64, to_db};
use crate::error::pg;
use crate::sql;

/// Every chain's head, or those past the head the latest manifest named. Read from the
/// chain-head rows without locking them, so commits never wait for a manifest.
pub(crate) async fn chain_heads(
    client: &impl GenericClient,
    keys: &ServiceKeys,
    moved_only: bool,
) -> StoreResult<Vec<ChainHead>> {
    const WHAT: &str = "chain heads";
    let rows = sql::rows(
        client,
        "SELECT t.tenant_id, t.audit_seq, t.audit_head, t.audit_head_mac FROM tenants t
         LEFT JOIN manifested m ON m.tenant_id = t.tenant_id
         WHERE t.audit_seq > 0 AND (NOT $1 OR t.audit_seq > COALESCE(m.seq, 0))
         ORDER BY t.tenant_id",
        &[&moved_only],
        WHAT,
    )
    .await?;
    rows.iter()
        .map(|row| {
            let tenant = TenantId::chain(col(row, 0, WHAT)?)
                .map_err(|_| StoreError::new(ErrorKind::Corrupt, "a tenant id is invalid"))?;
            let head = Head {
                seq: col_u64(row, 1, WHAT)?,
                digest: col::<String>(row, 2, WHAT)?,
            };
            // Only heads the KMS wrote are signed.
            let head = head_of_row(keys, &tenant, head, col(row, 3, WHAT)?)?;
            Ok(ChainHead {
                tenant_id: tenant.as_str().to_owned(),
                seq: head.seq,
                digest: head.digest,
            })
        })
        .collect()
}

/// Appends `manifest` and notes the heads it names, in one transaction; `false` when its
/// sequence number is taken.
pub(crate) async fn append(client: &mut Client, manifest: &Manifest) -> StoreResult<bool> {
    const WHAT: &str = "manifest append";
    let json = serde_json::to_string(manifest)
        .map_err(|_| StoreError::new(ErrorKind::Invalid, "a manifest does not encode"))?;
    let tx = client.transaction().await.map_err(pg(WHAT))?;
    let appended = sql::execute(
        &tx,
        "INSERT INTO manifests (seq, is_full, manifest) VALUES ($1, $2, $3)
         ON CONFLICT (seq) DO NOTHING",
        &[
            &to_db(manifest.seq)?,
            &(manifest.kind == ManifestKind::Full),
            &json,
        ],
        WHAT,
    )
    .await?;
    if appended == 0 {
        return Ok(false);
    }
    let mut tenants = Vec::with_capacity(manifest.heads.len());
    let mut seqs = Vec::with_capacity(manifest.heads.len());
    for h in &manifest.heads {
        tenants.push(h.tenant_id.as_str());
        seqs.push(to_db(h.seq)?);
    }
    sql::execute(
        &tx,
        "INSERT INTO manifested (tenant_id, seq) SELECT * FROM unnest($1::text[], $2::bigint[])
         ON CONFLICT (tenant_id) DO UPDATE SET seq = GREATEST(manifested.seq, EXCLUDED.seq)",
        &[&tenants, &seqs],
        WHAT,
    )
    .await?;
    tx.commit().await.map_err(pg(WHAT))?;
    Ok(true)
}

/// Manifests after `after_seq`, in order, at most `limit`.
pub(crate) async fn after(
    client: &impl GenericClient,
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<Manifest>> {
    const WHAT: &str = "manifest read";
    let rows = sql::rows(
        client,
        "SELECT manifest FROM manifests WHERE seq > $1 ORDER BY seq LIMIT $2",
        &[
            &i64::try_from(after_seq).unwrap_or(i64::MAX),
            &i64::try_from(limit).unwrap_or(i64::MAX),
        ],
        WHAT,
    )
    .await?;
    rows.iter()
        .map(|row| from_json(col(row, 0, WHAT)?, "a manifest"))
        .collect()
}

/// The latest full manifest's sequence number (0 for none).
pub(crate) async fn latest_full(client: &impl GenericClient) -> StoreResult<u64> {
    const WHAT: &str = "manifest read";
    let row = sql::row(
        client,
        "SELECT COALESCE(MAX(seq), 0) FROM manifests WHERE is_full",
        &[],
        WHAT,
    )
    .await?
    .ok_or_else(|| StoreError::new(ErrorKind::Unavailable, "manifest read: no row"))?;
    col_u64(&row, 0, WHAT)
}
