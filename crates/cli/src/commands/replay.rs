//! `selene-kms audit replay`: every decision of a tenant's chain re-derived and compared with
//! its record, through a server or offline on a stopped store.

use std::path::PathBuf;
use std::process::ExitCode;

use selene_kms_client::Method;
use selene_kms_core::{ReplayReport, TenantId};

use super::{open_at, store_location};
use crate::client::{As, Client};
use crate::config::Config;
use crate::failure::Failure;
use crate::output::say;
use crate::{Connection, output};

/// Where a replay runs.
pub(crate) struct ReplayAt {
    pub(crate) tenant: String,
    pub(crate) after_seq: u64,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) store: Option<String>,
    pub(crate) conn: Connection,
}

/// Replays and reports; exits 1 when a decision differs or the chain does not hold.
pub(crate) async fn run(config: &Config, at: ReplayAt, json: bool) -> Result<ExitCode, Failure> {
    let report = match &at.data_dir {
        Some(dir) => offline(config, &at, dir).await?,
        None => {
            let client = Client::new(&at.conn, config)?;
            let body = serde_json::json!({"after_seq": at.after_seq});
            let path = format!("/v1/admin/tenants/{}/replay", at.tenant);
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
    config: &Config,
    at: &ReplayAt,
    dir: &std::path::Path,
) -> Result<ReplayReport, String> {
    let tenant = TenantId::try_from(at.tenant.as_str())
        .map_err(|_| format!("{:?} is not a tenant id", at.tenant))?;
    let location = store_location(at.store.clone(), config, dir)?;
    let store = open_at(&location, dir).await?;
    let over = selene_kms_store::replay::replay(&*store, &tenant, at.after_seq)
        .await
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("tenant {tenant} has no audit chain"))?;
    if at.after_seq > over.head_seq {
        return Err(format!(
            "--after-seq {} is past the head of {tenant}'s chain ({})",
            at.after_seq, over.head_seq
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
