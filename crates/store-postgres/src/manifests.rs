//! The store's signed manifests: which chains moved since the latest one, appending one (the
//! first node to take a sequence number wins it), and reading them back; and sealing the
//! records of a store from before record MACs.

use deadpool_postgres::{Client, GenericClient};
use selene_kms_core::{AuditRecord, ChainHead, Manifest, ManifestKind, ServiceKeys};
use selene_kms_store::backend::{
    ErrorKind, Head, StoreError, StoreResult, from_json, head_mac, head_of_row, sealed_already,
    sealed_from_before_macs,
};

use crate::codec::{col, col_u64, stored_tenant, to_db};
use crate::error::pg;
use crate::sql;

/// Every chain's head. Read from the chain-head rows without locking them, so commits never
/// wait for a manifest; each node knows what its manifests named, so it lists every chain and
/// leaves out what did not move (nothing the database says about what moved is trusted).
pub(crate) async fn chain_heads(
    client: &impl GenericClient,
    keys: &ServiceKeys,
) -> StoreResult<Vec<ChainHead>> {
    const WHAT: &str = "chain heads";
    let rows = sql::rows(
        client,
        "SELECT tenant_id, audit_seq, audit_head, audit_head_mac FROM tenants
         WHERE audit_seq > 0 ORDER BY tenant_id",
        &[],
        WHAT,
    )
    .await?;
    rows.iter()
        .map(|row| {
            let tenant = stored_tenant(col(row, 0, WHAT)?)?;
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

/// Appends `manifest`; `false` when its sequence number is taken.
pub(crate) async fn append(client: &impl GenericClient, manifest: &Manifest) -> StoreResult<bool> {
    let json = serde_json::to_string(manifest)
        .map_err(|_| StoreError::new(ErrorKind::Invalid, "a manifest does not encode"))?;
    let appended = sql::execute(
        client,
        "INSERT INTO manifests (seq, is_full, manifest) VALUES ($1, $2, $3)
         ON CONFLICT (seq) DO NOTHING",
        &[
            &to_db(manifest.seq)?,
            &(manifest.kind == ManifestKind::Full),
            &json,
        ],
        "manifest append",
    )
    .await?;
    Ok(appended == 1)
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

/// Seals the records written before records carried MACs, and gives each head row its MAC,
/// in one transaction that holds commits off; only for a store without manifests.
pub(crate) async fn seal_records_from_before_macs(
    client: &mut Client,
    keys: &ServiceKeys,
) -> StoreResult<u64> {
    const WHAT: &str = "sealing records from before MACs";
    let tx = client.transaction().await.map_err(pg(WHAT))?;
    // Commits update the chain-head rows: none runs while records are sealed.
    tx.batch_execute("LOCK TABLE tenants IN SHARE ROW EXCLUSIVE MODE")
        .await
        .map_err(pg(WHAT))?;
    let manifests = sql::row(&tx, "SELECT COUNT(*) FROM manifests", &[], WHAT)
        .await?
        .map(|row| col_u64(&row, 0, WHAT))
        .transpose()?
        .unwrap_or(0);
    if manifests > 0 {
        return Err(sealed_already());
    }
    let rows = sql::rows(&tx, "SELECT tenant_id, seq, record FROM audit", &[], WHAT).await?;
    let texts = rows
        .iter()
        .map(|row| col::<&str>(row, 2, WHAT))
        .collect::<StoreResult<Vec<_>>>()?;
    let sealed = sealed_from_before_macs(keys, &texts)?;
    for (row, record) in rows.iter().zip(&sealed) {
        sql::execute(
            &tx,
            "UPDATE audit SET record = $3 WHERE tenant_id = $1 AND seq = $2",
            &[
                &col::<&str>(row, 0, WHAT)?,
                &col::<i64>(row, 1, WHAT)?,
                record,
            ],
            WHAT,
        )
        .await?;
    }
    let sealed = u64::try_from(sealed.len()).unwrap_or(u64::MAX);
    let heads = sql::rows(
        &tx,
        "SELECT t.tenant_id, t.audit_seq, t.audit_head, a.record FROM tenants t
         LEFT JOIN audit a ON a.tenant_id = t.tenant_id AND a.seq = t.audit_seq
         WHERE t.audit_seq > 0 AND t.audit_head_mac IS NULL",
        &[],
        WHAT,
    )
    .await?;
    for row in &heads {
        let tenant = stored_tenant(col(row, 0, WHAT)?)?;
        let head = Head {
            seq: col_u64(row, 1, WHAT)?,
            digest: col::<String>(row, 2, WHAT)?,
        };
        // A head row is sealed only when it names the chain's record at that position.
        let named = col::<Option<&str>>(row, 3, WHAT)?
            .map(|text| from_json::<AuditRecord>(text, "an audit record"))
            .transpose()?;
        if named.is_none_or(|r| r.digest != head.digest) {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                format!("the head row of {tenant}'s audit chain names no record of it"),
            ));
        }
        sql::execute(
            &tx,
            "UPDATE tenants SET audit_head_mac = $2 WHERE tenant_id = $1",
            &[&tenant.as_str(), &head_mac(keys, &tenant, &head).to_vec()],
            WHAT,
        )
        .await?;
    }
    tx.commit().await.map_err(pg(WHAT))?;
    Ok(sealed)
}
