//! The command line: `cordon serve`, `token`, `keys`, `signing-key`, `verify`,
//! `tier`, `export`, `import` and `load`.

mod keys;
mod signing;
mod tier;
mod transfer;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::{Application, shutdown_signal};
use crate::auth::{Claims, Signer};
use crate::secret::Secret;
use crate::settings::ServeArgs;
use crate::telemetry;

/// Cordon: long-term memory for AI agents, one user at a time.
#[derive(Debug, Parser)]
#[command(name = "cordon", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(Box<ServeArgs>),
    /// Print a token signed with the HS256 secret or a private key.
    Token(TokenArgs),
    /// Manage the keys of encryption at rest.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Manage the key that signs erase receipts and scope statements.
    #[command(subcommand)]
    SigningKey(signing::SigningCommand),
    /// Check an erase receipt or a scope statement offline, against saved public keys.
    Verify(signing::VerifyArgs),
    /// Move memories between namespace tiers (per-user and shared collections).
    #[command(subcommand)]
    Tier(tier::TierCommand),
    /// Write one user's memories as NDJSON, through the API with their token.
    Export(transfer::ExportArgs),
    /// Store NDJSON memories for one user, through the API with their token.
    Import(transfer::ImportArgs),
    /// Drive a running Cordon with many users and count leaks.
    Load(Box<crate::load::LoadArgs>),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Tenant claim value.
    #[arg(long)]
    tenant: String,
    /// Subject (`sub`) claim value.
    #[arg(long)]
    sub: String,
    /// Lifetime, e.g. `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// HS256 secret to sign with.
    #[arg(long, env = "CORDON_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<Secret>,
    /// A private key (PEM: RSA, P-256 or Ed25519) to sign with instead, for a
    /// server configured with its public key.
    #[arg(long)]
    private_key_pem: Option<std::path::PathBuf>,
    /// `kid` header, for a server reading a JWKS.
    #[arg(long)]
    kid: Option<String>,
    /// Name of the tenant claim.
    #[arg(long, env = "CORDON_JWT_TENANT_CLAIM", default_value = "tenant")]
    jwt_tenant_claim: String,
    /// `iss` claim to include.
    #[arg(long, env = "CORDON_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// `aud` claim to include.
    #[arg(long, env = "CORDON_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit in `{s}`; use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

/// Parses the command line and runs the chosen command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(args) => token(args),
        Command::Serve(args) => serve(*args),
        Command::Keys(command) => keys::run(command),
        Command::SigningKey(command) => signing::run(command),
        Command::Verify(args) => signing::verify(args),
        Command::Tier(command) => tier::run(command),
        Command::Export(args) => transfer::export(args),
        Command::Import(args) => transfer::import(args),
        Command::Load(args) => crate::load::main(*args),
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let claims = Claims {
        tenant_claim: &args.jwt_tenant_claim,
        ttl: args.ttl,
        issuer: args.jwt_issuer.as_deref(),
        audience: args.jwt_audience.as_deref(),
    };
    let minted = Signer::from_options(
        args.jwt_hs256_secret.as_ref(),
        args.private_key_pem.as_deref(),
        args.kid,
    )
    .and_then(|signer| signer.mint(&claims, &args.tenant, &args.sub));
    match minted {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cordon token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    // Before the settings, so that what loading them logs is not lost.
    let _audit_writer = telemetry::init(
        args.log_json,
        &crate::settings::AuditSink::parse(&args.audit),
    );
    let workers = args.worker_threads;
    let settings = match args.into_settings() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("cordon serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::redact_from_now(&settings.secrets(), &settings.store.collection_prefix);
    telemetry::log_panics();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // Measured on 2 cores (benches/RESULTS.md, "Embedding under load"): with as many
    // request threads as cores, they and the model's threads take turns on
    // the cores, and 16 single-text clients got 13% fewer texts through.
    builder.worker_threads(workers.unwrap_or(cores.saturating_sub(1)).max(1));
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cordon serve: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("cordon serve: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %app.local_addr(), "cordon listening");
        match app.run_until(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cordon serve: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units_parse() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
