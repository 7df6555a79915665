//! `selene-kms backup` and `selene-kms restore`: a consistent copy of a serving embedded store,
//! and a new data directory made from one.
//!
//! The copy holds no root key: a restore takes the key of the store it came from (the data
//! directory's `root.key`, or `$SELENE_KMS_ROOT_KEY`), opens the copy with it and verifies every
//! audit chain against the store before it calls the directory restored. A key that does not
//! open the copy, or a copy that does not verify, leaves no store behind.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use selene_kms_backends::{StoreLocation, backup, open_store};
use selene_kms_core::manifest::Witnessed;
use selene_kms_server::now_ms;
use selene_kms_store::verify::verify_store;
use selene_kms_store::{ErrorKind, Store};

use super::init::{pin_public_key, prepare_dir};
use super::{
    create_owner_only, data_dir, db_path, key_path, mark_record_macs, root_key, store_location,
};
use crate::config::Config;
use crate::failure::Failure;
use crate::output;
use crate::output::say;

#[derive(Args)]
pub(crate) struct BackupArgs {
    /// The store's data directory.
    #[arg(long, env = "SELENE_KMS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// With a PostgreSQL store (refused: PostgreSQL's own tools back it up).
    #[arg(long, env = "SELENE_KMS_STORE", hide_env_values = true)]
    store: Option<String>,
    /// The backup file to create (it must not exist); readable by its owner only.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub(crate) struct RestoreArgs {
    /// The backup file.
    #[arg(long = "in")]
    input: PathBuf,
    /// A data directory without a store, where the restored store goes. Its root key is the one
    /// of the store the backup came from: DIR/root.key, or $SELENE_KMS_ROOT_KEY.
    #[arg(long)]
    data_dir: PathBuf,
}

pub(crate) fn backup_run(
    config: &Config,
    args: BackupArgs,
    json: bool,
) -> Result<ExitCode, Failure> {
    let dir = data_dir(args.data_dir, config)?;
    let location = store_location(args.store, config, &dir)?;
    let bytes = backup(&location, &args.out).map_err(|e| match e.kind {
        ErrorKind::Invalid => e.message,
        _ => format!("{}: {}", args.out.display(), e.message),
    })?;
    if json {
        output::json(&serde_json::json!({ "out": args.out, "bytes": bytes }));
    } else {
        say!(
            "Backed up {} into {} ({bytes} bytes). It holds no root key: keep the key apart.",
            location.describe(),
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a restore found in the copy.
struct Restored {
    tenants: usize,
    records: u64,
    audit_public_key: String,
}

/// The files a store at `db` consists of while open: the database, its log, the log's index,
/// and the lock.
fn store_files(db: &Path) -> [PathBuf; 4] {
    ["db", "db-wal", "db-shm", "lock"].map(|extension| db.with_extension(extension))
}

pub(crate) async fn restore_run(args: RestoreArgs, json: bool) -> Result<ExitCode, Failure> {
    let dir = &args.data_dir;
    let db = db_path(dir);
    // `symlink_metadata`: a dangling link counts as taken too.
    if store_files(&db)
        .iter()
        .any(|f| f.symlink_metadata().is_ok())
    {
        return Err(format!(
            "{} already holds a store (or what is left of one): restore into a new data \
             directory",
            dir.display()
        )
        .into());
    }
    if std::env::var_os(selene_kms_store::ROOT_KEY_ENV).is_none() && !key_path(dir).exists() {
        return Err(format!(
            "no root key: the backup holds none; copy the root.key of the store it came from \
             into {}, or set {}",
            dir.display(),
            selene_kms_store::ROOT_KEY_ENV
        )
        .into());
    }
    let root = root_key(dir)?;
    prepare_dir(dir)?;
    // The copy is opened and verified under a name `serve` never opens, and takes the store's
    // name only once it holds: an interrupted restore leaves no store that was not verified.
    let restoring = dir.join("restoring.db");
    let outcome = match copy_owner_only(&args.input, &restoring) {
        Ok(()) => restore_into(dir, &restoring, root).await,
        Err(e) => Err(e),
    };
    let outcome = outcome.and_then(|restored| {
        // A hard link fails if the name is taken: no store is ever replaced.
        std::fs::hard_link(&restoring, &db)
            .map(|()| restored)
            .map_err(|e| format!("cannot name the restored store {}: {e}", db.display()))
    });
    for leftover in store_files(&restoring) {
        let _ = std::fs::remove_file(leftover);
    }
    let restored = outcome?;
    report(dir, &restored, json);
    Ok(ExitCode::SUCCESS)
}

/// Copies `from` into a new file `to`, readable by its owner only from its creation.
fn copy_owner_only(from: &Path, to: &Path) -> Result<(), String> {
    let mut source =
        std::fs::File::open(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    let mut target = create_owner_only(to)?;
    std::io::copy(&mut source, &mut target)
        .and_then(|_| target.sync_all())
        .map_err(|e| format!("cannot copy {}: {e}", from.display()))
}

/// Opens the copied store under the key and verifies it; pins its audit key on success. The
/// store is closed when this returns, its log folded into the file.
async fn restore_into(
    dir: &Path,
    db: &Path,
    root: selene_kms_store::RootKey,
) -> Result<Restored, String> {
    let store = open_store(&StoreLocation::Embedded(db.to_path_buf()), root, false)
        .await
        .map_err(|e| match e.kind {
            ErrorKind::Corrupt => format!(
                "the root key does not open this backup ({}): restore with the key of the store \
                 it was taken from",
                e.message
            ),
            _ => format!("not a selene-kms backup: {}", e.message),
        })?;
    let verified = verified(&*store).await?;
    pin_public_key(dir, &*store)?;
    mark_record_macs(dir)?;
    drop(store);
    // Closing the last connection folds the log into the file and removes it; a log still
    // there would hold writes the file lacks.
    if db.with_extension("db-wal").exists() {
        return Err("the restored store did not close cleanly".to_owned());
    }
    Ok(verified)
}

/// Verifies every chain of the restored store, and what its state says against them.
async fn verified(store: &dyn Store) -> Result<Restored, String> {
    let report = verify_store(store, None, &Witnessed::default(), now_ms())
        .await
        .map_err(|e| e.message)?;
    if report.chains.is_empty() {
        // Every store in use has at least the chain of its principals' creation.
        return Err("the backup holds no audit chain: nothing restored".to_owned());
    }
    if !report.holds() {
        let why = report
            .manifests_broken
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| {
                report.chains.iter().find_map(|c| {
                    let what =
                        c.broken.as_ref().map(ToString::to_string).or_else(|| {
                            c.differs.as_ref().map(|d| format!("state differs: {d}"))
                        })?;
                    Some(format!("tenant {}: {what}", c.tenant))
                })
            })
            .unwrap_or_else(|| "it does not verify".to_owned());
        return Err(format!(
            "the backup does not verify, nothing restored: {why}"
        ));
    }
    Ok(Restored {
        tenants: report.chains.len(),
        records: report.chains.iter().map(|c| c.records).sum(),
        audit_public_key: selene_kms_core::audit::public_key_hex(store.keys()),
    })
}

fn report(dir: &Path, restored: &Restored, json: bool) {
    if json {
        output::json(&serde_json::json!({
            "data_dir": dir,
            "verified": true,
            "tenants": restored.tenants,
            "records": restored.records,
            "audit_public_key": restored.audit_public_key,
        }));
    } else {
        say!(
            "Restored {} audit records of {} chains into {}; every chain verifies.\nServe it with: \
             selene-kms serve --data-dir {} (and stop serving the store it was copied from: two \
             copies of one store would fork its chains).",
            restored.records,
            restored.tenants,
            dir.display(),
            dir.display()
        );
    }
}
