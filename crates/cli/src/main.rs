//! `selene-kms`: the command line of the PH1.KMS secret and key broker.
//!
//! Glue only: parse arguments, read the config file, call the store, the server or the HTTP API,
//! print. Every command takes `--json`.
#![forbid(unsafe_code)]

mod client;
mod commands;
mod config;
mod failure;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use failure::Failure;

/// Every request allocates and frees dozens of small buffers across threads (HTTP, JSON, the
/// commit hand-off); glibc's allocator spent about 8% of the server's request threads on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Secret and key broker: opaque handles, ephemeral credentials, rotation and revocation, with a
/// tamper-evident audit chain that never holds a secret value.
#[derive(Parser)]
#[command(
    name = "selene-kms",
    version,
    after_help = "Start here:\n  selene-kms quickstart                 # the whole job on a temporary store\n  selene-kms init --data-dir ./kms      # a real store; prints one token per role, once\n  selene-kms serve --data-dir ./kms     # serve it on 127.0.0.1:8750\n\nClient commands read SELENE_KMS_URL, SELENE_KMS_ADMIN_TOKEN, SELENE_KMS_OS_TOKEN and\nSELENE_KMS_EXECUTOR_TOKEN, or the [client] table of --config."
)]
struct Cli {
    /// TOML config file (`[server]` and `[client]` tables); flags and environment variables win.
    #[arg(long, global = true, env = "SELENE_KMS_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a store: database, root key file (mode 0600) and one bootstrap principal per
    /// role, each with a token.
    #[command(
        after_help = "Example:\n  selene-kms init --data-dir ./kms\n  selene-kms init --data-dir ./kms --json > tokens.json\n\nThe tokens are printed once and stored only as keyed MACs. The root key comes from\n$SELENE_KMS_ROOT_KEY (64 hex characters) when set; otherwise DIR/root.key is created.\nRun again on a store from before principals to give it its bootstrap principals."
    )]
    Init(commands::init::InitArgs),
    /// Serve the HTTP/JSON API.
    #[command(
        after_help = "Examples:\n  selene-kms serve --data-dir ./kms\n  selene-kms serve --data-dir ./kms --listen 0.0.0.0:8750 --tls-cert cert.pem --tls-key key.pem\n  selene-kms serve --data-dir ./kms --tls-cert c.pem --tls-key k.pem --tls-client-ca ca.pem  # mTLS"
    )]
    Serve(commands::serve::ServeArgs),
    /// Show the whole job on a fresh temporary store, end to end over HTTP.
    #[command(after_help = "Example:\n  selene-kms quickstart")]
    Quickstart,
    /// Provision and manage secrets.
    #[command(subcommand)]
    Secret(commands::secret::SecretCommand),
    /// Read or replace a tenant's policy.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
    /// Manage principals and their tokens (admins of every tenant).
    #[command(subcommand)]
    Principal(commands::principal::PrincipalCommand),
    /// Show the principal a role's token authenticates as.
    #[command(after_help = "Example:\n  selene-kms whoami --role os")]
    Whoami(commands::principal::WhoamiArgs),
    /// Verify, export or read the audit chain.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// Manage the root key.
    #[command(subcommand, name = "root-key")]
    RootKey(RootKeyCommand),
    /// Send one KMS request (JSON, from a file or `-` for stdin) as the `os` caller.
    #[command(
        after_help = "Example:\n  echo '{\"correlation_id\":\"c-1\",\"turn_id\":\"t-1\",\"idempotency_key\":\"k-1\",\n        \"tenant_id\":\"acme\",\"operation\":\"GET_HANDLE\",\"secret_name\":\"payments/stripe\",\n        \"requester_engine_id\":\"PH1.CONNECTOR\"}' | selene-kms request -"
    )]
    Request(commands::request::RequestArgs),
    /// Copy a serving embedded store into one file, consistently, without stopping it.
    #[command(
        after_help = "Example:\n  selene-kms backup --data-dir ./kms --out kms-2026-11-29.db\n\nThe copy holds everything the store holds, sealed, but not the root key: keep the key\napart. A PostgreSQL store is backed up with PostgreSQL's tools (docs/backup.md)."
    )]
    Backup(commands::backup::BackupArgs),
    /// Make a new data directory from a backup, under the root key of the store it came from;
    /// every audit chain is verified before the store is called restored.
    #[command(
        after_help = "Example:\n  mkdir -m 700 ./kms-restored && cp ./kms/root.key ./kms-restored/\n  selene-kms restore --in kms-2026-11-29.db --data-dir ./kms-restored\n  selene-kms serve --data-dir ./kms-restored\n\nThe root key is DIR/root.key or $SELENE_KMS_ROOT_KEY; a key that does not open the backup\nis refused and nothing is restored."
    )]
    Restore(commands::backup::RestoreArgs),
    /// Redeem a handle or an ephemeral credential for its material (the executor's token): the
    /// raw value on stdout, or into an owner-only file.
    #[command(
        after_help = "Examples:\n  selene-kms redeem acme \"$HANDLE\" --out ./stripe.key\n  printf '%s' \"$CREDENTIAL\" | selene-kms redeem acme - | some-tool --password-stdin"
    )]
    Redeem(commands::redeem::RedeemArgs),
    /// Use a key through its handle (the executor's token): mac, sign, verify, encrypt,
    /// decrypt. The key never leaves the server.
    #[command(subcommand)]
    Crypto(commands::crypto::CryptoCommand),
    /// Print a completion script for a shell.
    #[command(
        after_help = "Example:\n  selene-kms completions bash > /etc/bash_completion.d/selene-kms"
    )]
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum RootKeyCommand {
    /// Rewrap every data key under a new root key and replace the key file; material stays as
    /// it is.
    #[command(
        after_help = "Example (the embedded store's server must be stopped):\n  selene-kms root-key rotate --data-dir ./kms"
    )]
    Rotate(commands::root_key::RotateArgs),
}

/// Where to reach a running server.
#[derive(Args, Clone, Debug)]
pub(crate) struct Connection {
    /// Server URL.
    #[arg(long, env = "SELENE_KMS_URL")]
    url: Option<String>,
    /// CA certificate (PEM) to trust for an https URL.
    #[arg(long, env = "SELENE_KMS_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Client certificate and key, one PEM file, for servers that require mTLS.
    #[arg(long, env = "SELENE_KMS_CLIENT_IDENTITY")]
    client_identity: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            output::fail(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let config = config::Config::load(cli.config.as_deref()).map_err(Failure::from)?;
        match cli.command {
            Command::Init(args) => commands::init::run(&config, args, cli.json).await,
            Command::Serve(args) => commands::serve::run(&config, args).await,
            Command::Quickstart => commands::quickstart::run(cli.json)
                .await
                .map_err(Failure::from),
            Command::Secret(c) => commands::secret::run(&config, c, cli.json).await,
            Command::Policy(c) => commands::policy::run(&config, c, cli.json).await,
            Command::Principal(c) => commands::principal::run(&config, c, cli.json).await,
            Command::Whoami(args) => commands::principal::whoami(&config, args, cli.json).await,
            Command::Audit(c) => commands::audit::run(&config, c, cli.json).await,
            Command::RootKey(RootKeyCommand::Rotate(args)) => {
                commands::root_key::rotate(&config, args, cli.json).await
            }
            Command::Request(args) => commands::request::run(&config, args, cli.json).await,
            Command::Backup(args) => commands::backup::backup_run(&config, args, cli.json),
            Command::Restore(args) => commands::backup::restore_run(args, cli.json).await,
            Command::Redeem(args) => commands::redeem::run(&config, args, cli.json).await,
            Command::Crypto(c) => commands::crypto::run(&config, c, cli.json).await,
            Command::Completions { shell } => {
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "selene-kms", &mut script);
                output::write(format_args!("{}", String::from_utf8_lossy(&script)));
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(failure) => {
            failure.report(cli.json);
            failure.exit_code()
        }
    }
}
