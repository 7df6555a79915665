//! `selene-kms audit replay`: every decision of a tenant's chain re-derived and compared with
//! its record, through a server or offline on a stopped store.

use std::path::Path;
use std::process::ExitCode;

use selene_kms_client::Method;
use selene_kms_core::{ReplayReport, TenantId};

use selene_kms_backends::StoreLocation;

use super::{OfflineStore, open_at};
use crate::client::{As, Client};
use crate::config::Config;
use crate::failure::Failure;
use crate::output::say;
use crate::{Connection, output};

/// Where a replay runs.
pub(crate) struct ReplayAt {
    pub(crate) tenant: String,
    pub(crate) after_seq: u64,
    pub(crate) offline: OfflineStore,
    pub(crate) conn: Connection,
}

/// Replays and reports; exits 1 when a decision differs or the chain does not hold.
pub(crate) async fn run(config: &Config, at: ReplayAt, json: bool) -> Result<ExitCode, Failure> {
    let ReplayAt {
        tenant,
        after_seq,
        offline: store,
        conn,
    } = at;
    let report = match store.location(config)? {
        Some((dir, location)) => offline(&tenant, after_seq, &dir, &location).await?,
        None => {
            let client = Client::new(&conn, config)?;
            let body = serde_json::json!({ "after_seq": after_seq });
            let path = format!("/v1/admin/tenants/{tenant}/replay");
            let answer = client
                .send(Method::POST, &path, As::Admin, Some(&body))
                .await?;
            if !answer.status.is_success() {
                return Err(answer.failure("replay"));
            }
            serde_json::from_value(answer.json())
                .map_err(|_| "the server's replay report does not parse".to_owned())?
        }
    };
    if json {
        output::json(&serde_json::to_value(&report).unwrap_or_default());
    } else {
        print(&report);
    }
    Ok(if report.differ == 0 && report.broken.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn offline(
    tenant: &str,
    after_seq: u64,
    dir: &Path,
    location: &StoreLocation,
) -> Result<ReplayReport, String> {
    let tenant =
        TenantId::try_from(tenant).map_err(|_| format!("{tenant:?} is not a tenant id"))?;
    let store = open_at(location, dir).await?;
    let over = selene_kms_store::replay::replay(&*store, &tenant, after_seq)
        .await
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("tenant {tenant} has no audit chain"))?;
    if after_seq > over.head_seq {
        return Err(format!(
            "--after-seq {after_seq} is past the head of {tenant}'s chain ({})",
            over.head_seq
        ));
    }
    Ok(over.answer)
}

fn print(report: &ReplayReport) {
    say!(
        "Replayed {} decisions of {} ({} records): {} matched, {} differ.",
        report.decisions,
        report.tenant_id,
        report.records,
        report.matched,
        report.differ
    );
    if let Some(first) = &report.first_difference {
        say!("First difference at record {}: {}.", first.seq, first.why);
        say!("  recorded: {}", first.recorded);
        say!("  replayed: {}", first.replayed);
    }
    if let Some(broken) = &report.broken {
        say!("The chain does not hold: {broken}; nothing from there on was replayed.");
    }
}
