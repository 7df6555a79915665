//! `selene-kms init`: a new store with its root key and its bootstrap principals, one per role,
//! each with a token shown once.
//!
//! The embedded store lives in the data directory. With `--store postgres://…` the schema, the
//! service secret and the tokens go to the database, and the data directory holds only the root
//! key file, which every node of that database needs a copy of.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use selene_kms_server::{Engine, now_ms};
use std::sync::Arc;

use selene_kms_backends::{StoreLocation, open_store};
use selene_kms_store::manifest::Manifester;
use selene_kms_store::{ErrorKind, RootKey, Store};
use zeroize::Zeroizing;

use super::{data_dir, key_path, mark_record_macs, open_at, record_macs_marked, store_location};
use crate::config::Config;
use crate::failure::Failure;
use crate::output;
use crate::output::say;

#[derive(Args)]
pub(crate) struct InitArgs {
    /// Directory for the database and the root key file (created if missing).
    #[arg(long, env = "SELENE_KMS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `postgres://…` to put the store in PostgreSQL (several nodes); default: the embedded
    /// store in the data directory.
    #[arg(long, env = "SELENE_KMS_STORE", hide_env_values = true)]
    store: Option<String>,
}

/// The file in a data directory that pins the audit public key: `audit verify` trusts it (or a
/// key given on the command line), never a key served by the server it verifies.
pub(crate) fn public_key_path(dir: &Path) -> PathBuf {
    dir.join("audit-public-key")
}

/// Writes the store's audit public key into the data directory; a pinned key already there
/// must be the store's (a stale or planted file is refused, not kept).
pub(crate) fn pin_public_key(dir: &Path, store: &dyn Store) -> Result<String, String> {
    let key = selene_kms_core::audit::public_key_hex(store.keys());
    let path = public_key_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(pinned) if pinned.trim() == key => {}
        Ok(_) => {
            return Err(format!(
                "{} does not hold this store's audit key: remove it, or verify against the key \
                 you trust",
                path.display()
            ));
        }
        Err(_) => std::fs::write(&path, format!("{key}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
    }
    Ok(key)
}

/// A bootstrap principal: its role, its token (shown once) and its id.
pub(crate) struct Bootstrap {
    pub(crate) role: String,
    pub(crate) token: Zeroizing<String>,
    pub(crate) principal_id: String,
}

/// Creates `dir`, owner-only.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// The root key: `$SELENE_KMS_ROOT_KEY` when set, else a new key file in `dir`. Also says
/// whether a file was created (to remove it if initialisation then fails).
fn new_root_key(dir: &Path) -> Result<(RootKey, bool), String> {
    match RootKey::from_env().map_err(|e| e.message)? {
        Some(k) => Ok((k, false)),
        None => RootKey::create_file(&key_path(dir))
            .map(|k| (k, true))
            .map_err(|e| e.message),
    }
}

/// Creates the bootstrap principals of `store`, one per role, for every tenant.
async fn bootstrap(store: Arc<dyn Store>) -> Result<Vec<Bootstrap>, String> {
    let made = Engine::new(store)
        .bootstrap(now_ms())
        .await
        .map_err(|e| format!("cannot create the bootstrap principals: {e}"))?;
    Ok(made
        .0
        .into_iter()
        .map(|(role, created)| Bootstrap {
            role: role.name().to_owned(),
            token: Zeroizing::new(created.token.expose().to_owned()),
            principal_id: created.principal_id,
        })
        .collect())
}

/// A store from before principals (its unkeyed caller tokens were dropped when it was
/// migrated) gets its bootstrap principals and its pinned key; any other initialised store is
/// refused.
/// What `init` did to a store that exists.
struct Upgrade {
    store: Arc<dyn Store>,
    made: Vec<Bootstrap>,
    sealed: u64,
}

/// Brings a store from an earlier build up to this one: bootstrap principals for one that has
/// none, and MACs for records written before records carried them (only while the store has no
/// manifest: the operator vouches for what it holds, once). Anything else is initialised.
async fn upgrade(dir: &Path, location: &StoreLocation) -> Result<Upgrade, String> {
    let refused = || format!("{} is already initialised", dir.display());
    let store = open_at(location, dir).await.map_err(|_| refused())?;
    let has_principals = !store.principals().await.map_err(|e| e.message)?.is_empty();
    let has_manifests = store.latest_full_manifest().await.map_err(|e| e.message)? > 0;
    let sealed = if has_manifests {
        0
    } else if record_macs_marked(dir) {
        // Records without MACs where this directory's KMS wrote them with MACs were stripped.
        return Err(format!(
            "{} has held this store with record MACs, and its manifests are gone: nothing is \
             sealed (`selene-kms audit verify --data-dir` and a witness show what changed)",
            dir.display()
        ));
    } else {
        store
            .seal_records_from_before_macs()
            .await
            .map_err(|e| e.message)?
    };
    if has_principals && sealed == 0 {
        return Err(refused());
    }
    pin_public_key(dir, &*store)?;
    mark_record_macs(dir)?;
    // A store adopted from a build before manifests gets its first one.
    Manifester::first(store.clone(), now_ms())
        .await
        .map_err(|e| format!("cannot sign a manifest: {}", e.message))?;
    let made = if has_principals {
        Vec::new()
    } else {
        bootstrap(store.clone()).await?
    };
    Ok(Upgrade {
        store,
        made,
        sealed,
    })
}

pub(crate) async fn init_store(
    dir: &Path,
    location: &StoreLocation,
) -> Result<(Arc<dyn Store>, Vec<Bootstrap>), String> {
    prepare_dir(dir)?;
    if key_path(dir).exists() || location.exists() == Some(true) {
        return Err(format!("{} is already initialised", dir.display()));
    }
    let (root, created) = new_root_key(dir)?;
    let store = match open_store(location, root, true).await {
        Ok(store) => store,
        Err(e) => {
            if created {
                let _ = std::fs::remove_file(key_path(dir));
            }
            return Err(match e.kind {
                ErrorKind::AlreadyExists => {
                    format!("{} is already initialised", location.describe())
                }
                _ => e.message,
            });
        }
    };
    pin_public_key(dir, &*store)?;
    // Marked before the tokens are made: a failure here loses no token shown once.
    mark_record_macs(dir)?;
    let made = bootstrap(store.clone()).await?;
    Ok((store, made))
}

pub(crate) async fn run(config: &Config, args: InitArgs, json: bool) -> Result<ExitCode, Failure> {
    let dir = data_dir(args.data_dir, config)?;
    let location = store_location(args.store, config, &dir)?;
    let (opened, made, sealed, verb) = match init_store(&dir, &location).await {
        Ok((opened, made)) => (opened, made, 0, "Initialised"),
        // Re-running `init` is how a store from an earlier build is brought up to this one.
        Err(_) if key_path(&dir).exists() => {
            let up = upgrade(&dir, &location).await?;
            (up.store, up.made, up.sealed, "Upgraded")
        }
        Err(e) => return Err(e.into()),
    };
    // Pinned by `init_store` or `upgrade`, which checked any file already there.
    let public_key = selene_kms_core::audit::public_key_hex(opened.keys());
    let store = location.describe();
    if json {
        let map = |f: &dyn Fn(&Bootstrap) -> &str| {
            made.iter()
                .map(|b| (b.role.clone(), serde_json::Value::from(f(b))))
                .collect::<serde_json::Map<_, _>>()
        };
        output::json(&serde_json::json!({
            "data_dir": dir,
            "store": store,
            "tokens": map(&|b| b.token.as_str()),
            "principals": map(&|b| b.principal_id.as_str()),
            "audit_public_key": public_key,
            "sealed_records": sealed,
        }));
    } else {
        say!("{verb} {store}, data directory {}.", dir.display());
        if sealed > 0 {
            say!(
                "Sealed {sealed} audit records written before records carried MACs; a signed \
                 manifest now names every chain."
            );
        }
        if !made.is_empty() {
            say!(
                "Bootstrap principals, each with a token (shown once, stored only as keyed MACs):"
            );
            let rows: Vec<Vec<String>> = made
                .iter()
                .map(|b| vec![b.role.clone(), b.principal_id.clone(), b.token.to_string()])
                .collect();
            output::table(&["role", "principal_id", "token"], &rows);
        }
        say!(
            "Audit public key, pinned in {} (give it to whoever verifies the audit):\n{public_key}",
            public_key_path(&dir).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
