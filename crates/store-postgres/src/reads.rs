//! Read queries. Each reads committed state at the time of the call: nothing here is answered
//! from memory that another node could have made stale.

use deadpool_postgres::GenericClient;
use selene_kms_core::{
    AuditRecord, Checkpoint, PolicyDocument, Purpose, RefId, SecretKind, SecretName,
    SecretSnapshot, ServiceKeys, TenantId, TtlBounds, VersionState, state::mark_revoked,
};
use selene_kms_store::backend::{
    ErrorKind, FIRST_GENERATION_SECRETS, IdempotencyScope, MAX_KEPT_INPUTS, SealedRecord,
    SecretListing, StoreError, StoreResult, TenantSummary, VersionListing, purpose_name,
    resealed_secret_ref, stored_record,
};
use tokio_postgres::Row;

use crate::codec::{col, col_u64, stored_tenant, to_db};
use crate::sql;

/// A value read with a version check: unchanged since the version the caller holds, or loaded.
pub(crate) enum Fresh<T> {
    /// The database is still at the version the caller holds.
    Unchanged(u64),
    /// The database moved (or the caller held nothing): the value at this version.
    Loaded(u64, T),
}

/// The version the caller holds as a parameter; versions start at 1, so -1 matches none.
fn held(version: Option<u64>) -> i64 {
    version.and_then(|v| to_db(v).ok()).unwrap_or(-1)
}

/// A stored value that does not parse: tampering or corruption.
pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::new(ErrorKind::Corrupt, format!("{what} does not parse"))
}

/// The first twelve columns of a read of secret `s` in the shape [`secret_row`] parses: its
/// state version, and its snapshot unless the last two are NULL, which they are when the state
/// version is `$held` (an SQL expression: the version the reader holds).
macro_rules! snapshot_columns {
    ($held:literal) => {
        concat!(
            "s.state_version, s.secret_ref, s.kind, s.ttl_min_ms, s.ttl_max_ms,
             s.ttl_default_ms, s.handle_ttl_ms, s.staged IS NOT NULL,
             s.purpose, s.min_decryption_version,
             CASE WHEN s.state_version = ",
            $held,
            " THEN NULL ELSE COALESCE((
                 SELECT max(v.version) FROM versions v
                 WHERE v.tenant_id = s.tenant_id AND v.secret_name = s.secret_name), 0) END,
             CASE WHEN s.state_version = ",
            $held,
            " THEN NULL ELSE ARRAY(
                 SELECT v.version FROM versions v
                 WHERE v.tenant_id = s.tenant_id AND v.secret_name = s.secret_name
                   AND v.state = 'REVOKED'
                 ORDER BY v.version) END"
        )
    };
}
pub(crate) use snapshot_columns;

/// One secret's snapshot, in one statement (one consistent view of the secret and its
/// versions). The versions are read only when `have` is not the current state version, and then
/// as the highest version and the revoked ones (index probes), not row by row: versions are
/// 1..=n by construction (compare-and-set, primary key).
pub(crate) async fn secret(
    client: &impl GenericClient,
    tenant: &TenantId,
    name: &SecretName,
    have: Option<u64>,
) -> StoreResult<Option<Fresh<SecretSnapshot>>> {
    const WHAT: &str = "secret read";
    let Some(row) = sql::row(
        client,
        concat!(
            "SELECT ",
            snapshot_columns!("$3"),
            " FROM secrets s WHERE s.tenant_id = $1 AND s.secret_name = $2"
        ),
        &[&tenant.as_str(), &name.as_str(), &held(have)],
        WHAT,
    )
    .await?
    else {
        return Ok(None);
    };
    secret_row(&row).map(Some)
}

/// A secret row in the shape of [`secret`]'s first twelve columns: its state version, and its
/// snapshot unless the last two columns are NULL (the reader holds that version already).
pub(crate) fn secret_row(row: &Row) -> StoreResult<Fresh<SecretSnapshot>> {
    const WHAT: &str = "secret read";
    let state_version = col_u64(row, 0, WHAT)?;
    let (Some(current), Some(revoked)) = (
        col::<Option<i64>>(row, 10, WHAT)?,
        col::<Option<Vec<i64>>>(row, 11, WHAT)?,
    ) else {
        return Ok(Fresh::Unchanged(state_version));
    };
    let mut versions = vec![
        VersionState::Active;
        usize::try_from(current).map_err(|_| corrupt("a secret's versions"))?
    ];
    for version in revoked {
        let version = u64::try_from(version).map_err(|_| corrupt("a secret's versions"))?;
        if !mark_revoked(&mut versions, version) {
            return Err(corrupt("a secret's versions"));
        }
    }
    let kind: String = col(row, 2, WHAT)?;
    let ttl = TtlBounds::new(
        col_u64(row, 3, WHAT)?,
        col_u64(row, 4, WHAT)?,
        col_u64(row, 5, WHAT)?,
    )
    .ok_or_else(|| corrupt("a secret row"))?;
    let snapshot = SecretSnapshot {
        secret_ref: col(row, 1, WHAT)?,
        state_version,
        kind: SecretKind::from_name(&kind).ok_or_else(|| corrupt("a secret row"))?,
        versions,
        staged: col(row, 7, WHAT)?,
        ttl,
        handle_ttl_ms: col_u64(row, 6, WHAT)?,
        purpose: Purpose::from_name(&col::<String>(row, 8, WHAT)?)
            .ok_or_else(|| corrupt("a secret row"))?,
        min_decryption_version: col_u64(row, 9, WHAT)?,
    };
    Ok(Fresh::Loaded(state_version, snapshot))
}

/// The tenant's policy document, if one was set; the document is read only when `have` is not
/// the current policy version.
pub(crate) async fn policy(
    client: &impl GenericClient,
    tenant: &TenantId,
    have: Option<u64>,
) -> StoreResult<Option<Fresh<PolicyDocument>>> {
    const WHAT: &str = "policy read";
    let row = sql::row(
        client,
        "SELECT policy_version, CASE WHEN policy_version = $2 THEN NULL ELSE policy_json END
         FROM tenants WHERE tenant_id = $1 AND policy_json IS NOT NULL",
        &[&tenant.as_str(), &held(have)],
        WHAT,
    )
    .await?;
    let Some(row) = row else { return Ok(None) };
    let version = col_u64(&row, 0, WHAT)?;
    match col::<Option<String>>(&row, 1, WHAT)? {
        None => Ok(Some(Fresh::Unchanged(version))),
        Some(json) => {
            let doc = serde_json::from_str(&json).map_err(|_| corrupt("a stored policy"))?;
            Ok(Some(Fresh::Loaded(version, doc)))
        }
    }
}

/// Every secret of a tenant with its versions, metadata only.
pub(crate) async fn list_secrets(
    client: &impl GenericClient,
    tenant: &TenantId,
) -> StoreResult<Vec<SecretListing>> {
    const WHAT: &str = "secret listing";
    let rows = sql::rows(
        client,
        "SELECT s.secret_name, s.secret_ref, s.kind, v.version, v.state, v.created_at_ms,
                s.purpose, s.min_decryption_version
         FROM secrets s JOIN versions v
           ON v.tenant_id = s.tenant_id AND v.secret_name = s.secret_name
         WHERE s.tenant_id = $1 ORDER BY s.secret_name, v.version",
        &[&tenant.as_str()],
        WHAT,
    )
    .await?;
    let mut out: Vec<SecretListing> = Vec::new();
    for row in &rows {
        let name: String = col(row, 0, WHAT)?;
        let version = VersionListing {
            version: col_u64(row, 3, WHAT)?,
            state: if col::<&str>(row, 4, WHAT)? == "REVOKED" {
                VersionState::Revoked.name()
            } else {
                VersionState::Active.name()
            },
            created_at_ms: col_u64(row, 5, WHAT)?,
        };
        match out.last_mut() {
            Some(last) if last.secret_name == name => {
                last.current_version = version.version;
                last.versions.push(version);
            }
            _ => out.push(SecretListing {
                secret_name: name,
                secret_ref: col(row, 1, WHAT)?,
                kind: SecretKind::from_name(col(row, 2, WHAT)?).map_or("UNKNOWN", SecretKind::name),
                purpose: purpose_name(col(row, 6, WHAT)?),
                min_decryption_version: col_u64(row, 7, WHAT)?,
                current_version: version.version,
                versions: vec![version],
            }),
        }
    }
    Ok(out)
}

/// The record stored under an idempotency key.
pub(crate) async fn idempotency(
    client: &impl GenericClient,
    scope: &IdempotencyScope,
) -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
    const WHAT: &str = "idempotency read";
    let row = sql::row(
        client,
        "SELECT fingerprint, bundle FROM idempotency
         WHERE tenant_id = $1 AND caller = $2 AND key = $3",
        &[
            &scope.tenant.as_str(),
            &scope.caller.as_str(),
            &scope.key.as_str(),
        ],
        WHAT,
    )
    .await?;
    row.map(|row| Ok((col(&row, 0, WHAT)?, col(&row, 1, WHAT)?)))
        .transpose()
}

/// Whether a handle or credential was revoked.
pub(crate) async fn is_revoked(
    client: &impl GenericClient,
    tenant: &TenantId,
    id: &RefId,
) -> StoreResult<bool> {
    Ok(sql::row(
        client,
        "SELECT 1 FROM revoked_refs WHERE tenant_id = $1 AND ref_id = $2",
        &[&tenant.as_str(), &id.as_str()],
        "revocation read",
    )
    .await?
    .is_some())
}

/// One version's sealed material.
pub(crate) async fn sealed_version(
    client: &impl GenericClient,
    tenant: &TenantId,
    name: &SecretName,
    version: u64,
) -> StoreResult<Vec<u8>> {
    let row = sql::row(
        client,
        "SELECT sealed FROM versions WHERE tenant_id = $1 AND secret_name = $2 AND version = $3",
        &[&tenant.as_str(), &name.as_str(), &to_db(version)?],
        "material read",
    )
    .await?
    .ok_or_else(|| StoreError::new(ErrorKind::NotFound, "no such version"))?;
    col(&row, 0, "material read")
}

/// Audit records of a tenant with `seq > after_seq`, in order, at most `limit`.
pub(crate) async fn audit_records(
    client: &impl GenericClient,
    tenant: &TenantId,
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<AuditRecord>> {
    const WHAT: &str = "audit read";
    let rows = sql::rows(
        client,
        "SELECT seq, record FROM audit WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        &[
            &tenant.as_str(),
            &i64::try_from(after_seq).unwrap_or(i64::MAX),
            &i64::try_from(limit).unwrap_or(i64::MAX),
        ],
        WHAT,
    )
    .await?;
    rows.iter()
        .map(|row| stored_record(tenant.as_str(), col_u64(row, 0, WHAT)?, col(row, 1, WHAT)?))
        .collect()
}

/// Audit records of a tenant with `seq > after_seq`, each with the inputs sealed beside it.
pub(crate) async fn sealed_records(
    client: &impl GenericClient,
    tenant: &TenantId,
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<SealedRecord>> {
    const WHAT: &str = "audit read";
    let rows = sql::rows(
        client,
        // Inputs larger than any the KMS writes are read as empty, and so as unreadable, never
        // into memory.
        "SELECT a.seq, a.record,
                CASE WHEN octet_length(i.sealed) > $4 THEN ''::bytea ELSE i.sealed END
         FROM audit a
         LEFT JOIN decision_inputs i ON i.tenant_id = a.tenant_id AND i.seq = a.seq
         WHERE a.tenant_id = $1 AND a.seq > $2 ORDER BY a.seq LIMIT $3",
        &[
            &tenant.as_str(),
            &i64::try_from(after_seq).unwrap_or(i64::MAX),
            &i64::try_from(limit).unwrap_or(i64::MAX),
            &i32::try_from(MAX_KEPT_INPUTS).unwrap_or(i32::MAX),
        ],
        WHAT,
    )
    .await?;
    rows.iter()
        .map(|row| {
            let record =
                stored_record(tenant.as_str(), col_u64(row, 0, WHAT)?, col(row, 1, WHAT)?)?;
            Ok((record, col(row, 2, WHAT)?))
        })
        .collect()
}

/// Every tenant that has an audit chain.
pub(crate) async fn audit_tenants(client: &impl GenericClient) -> StoreResult<Vec<TenantId>> {
    const WHAT: &str = "tenant listing";
    let rows = sql::rows(
        client,
        "SELECT tenant_id FROM tenants WHERE audit_seq > 0 ORDER BY tenant_id",
        &[],
        WHAT,
    )
    .await?;
    rows.iter()
        .map(|row| stored_tenant(col(row, 0, WHAT)?))
        .collect()
}

/// Stored checkpoints of a tenant, in order.
pub(crate) async fn checkpoints(
    client: &impl GenericClient,
    tenant: &TenantId,
) -> StoreResult<Vec<Checkpoint>> {
    const WHAT: &str = "checkpoint read";
    let rows = sql::rows(
        client,
        "SELECT checkpoint FROM checkpoints WHERE tenant_id = $1 ORDER BY seq",
        &[&tenant.as_str()],
        WHAT,
    )
    .await?;
    rows.iter()
        .map(|row| serde_json::from_str(col(row, 0, WHAT)?).map_err(|_| corrupt("a checkpoint")))
        .collect()
}

/// Every tenant with a chain, the system chain aside, by id. A tenant's row is made when a
/// batch first locks it, even if every unit was refused; only one that has a record counts,
/// as in the embedded store, which makes the row with the first record.
pub(crate) async fn tenants(client: &impl GenericClient) -> StoreResult<Vec<TenantSummary>> {
    const WHAT: &str = "tenant listing";
    let rows = sql::rows(
        client,
        "SELECT t.tenant_id, t.policy_json, t.policy_version,
                (SELECT count(*) FROM secrets s WHERE s.tenant_id = t.tenant_id)
         FROM tenants t WHERE t.audit_seq > 0 AND t.tenant_id <> $1 ORDER BY t.tenant_id",
        &[&TenantId::SYSTEM],
        WHAT,
    )
    .await?;
    rows.iter()
        .map(|row| {
            let tenant = TenantId::try_from(col::<String>(row, 0, WHAT)?)
                .map_err(|_| corrupt("a tenant id"))?;
            TenantSummary::from_stored(
                tenant,
                col::<Option<&str>>(row, 1, WHAT)?,
                col_u64(row, 2, WHAT)?,
                col_u64(row, 3, WHAT)?,
            )
        })
        .collect()
}

/// Gives every secret whose stored ref is of the first generation its second-generation ref
/// (see [`resealed_secret_ref`]). Nodes opening at once write the same values.
pub(crate) async fn reseal_secret_refs(
    client: &impl GenericClient,
    keys: &ServiceKeys,
) -> StoreResult<()> {
    const WHAT: &str = "secret ref reseal";
    let stale = sql::rows(client, FIRST_GENERATION_SECRETS, &[], WHAT).await?;
    for row in &stale {
        let (tenant, name): (&str, &str) = (col(row, 0, WHAT)?, col(row, 1, WHAT)?);
        let secret_ref = resealed_secret_ref(keys, tenant, name)?;
        sql::execute(
            client,
            "UPDATE secrets SET secret_ref = $3 WHERE tenant_id = $1 AND secret_name = $2",
            &[&tenant, &name, &secret_ref],
            WHAT,
        )
        .await?;
    }
    Ok(())
}
