//! `cordon signing-key` and `cordon verify`: the offline side of signed
//! receipts and scope statements ([`crate::receipt`]).
//!
//! `signing-key generate` prints a fresh private key for
//! `CORDON_SIGNING_KEY_FILE`; `signing-key public` prints the public keys
//! the server with the same settings serves at the well-known path. `verify`
//! checks a receipt or statement against those keys, with no server: the
//! keys come from a file saved earlier, or from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use crate::receipt::{self, Signer};
use crate::settings::ServeArgs;

/// What `cordon signing-key` does.
#[derive(Debug, Subcommand)]
pub enum SigningCommand {
    /// Print a new random Ed25519 private key (64 hex digits) for CORDON_SIGNING_KEY_FILE.
    Generate,
    /// Print the public keys (JWKS) that the server with these settings serves and signs with.
    Public(Box<ServeArgs>),
}

/// Checks a signed receipt or scope statement offline.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// A file holding the token, or an erase answer (JSON with `receipt`); `-` reads standard input.
    #[arg(default_value = "-")]
    input: String,
    /// A JWKS file, as saved from /.well-known/cordon-signing-keys.json or `cordon signing-key public`.
    #[arg(
        long,
        required_unless_present = "public_key",
        conflicts_with = "public_key"
    )]
    keys: Option<PathBuf>,
    /// A public key (base64url or 64 hex digits), instead of a JWKS file.
    #[arg(long)]
    public_key: Option<String>,
}

/// Runs one `cordon signing-key` command.
pub fn run(command: SigningCommand) -> ExitCode {
    match command {
        SigningCommand::Generate => {
            println!("{}", receipt::generate().as_str());
            ExitCode::SUCCESS
        }
        SigningCommand::Public(args) => match public(*args) {
            Ok(jwks) => {
                println!("{jwks}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cordon signing-key public: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn public(args: ServeArgs) -> Result<String, String> {
    let settings = args.into_settings().map_err(|e| e.to_string())?;
    let signer = Signer::load(
        settings.checks.signing_key_file.as_deref(),
        &settings.checks.signing_previous_keys,
        &settings.server_secret,
    )
    .map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&signer.jwks()).map_err(|e| e.to_string())
}

/// Runs `cordon verify`: prints the claims and succeeds only when the
/// signature holds.
pub fn verify(args: VerifyArgs) -> ExitCode {
    match check(args) {
        Ok(claims) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&claims).unwrap_or_default()
            );
            eprintln!("cordon verify: signature OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cordon verify: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: VerifyArgs) -> Result<Value, String> {
    let text = if args.input == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))?
    } else {
        std::fs::read_to_string(&args.input).map_err(|e| format!("{}: {e}", args.input))?
    };
    // An erase answer as saved, or the bare token.
    let token = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(answer)) => answer
            .get("receipt")
            .and_then(Value::as_str)
            .ok_or("the JSON holds no `receipt`")?
            .to_owned(),
        _ => text.trim().to_owned(),
    };
    let keys = match (&args.keys, &args.public_key) {
        (_, Some(key)) => vec![receipt::parse_public(key).map_err(|e| e.to_string())?],
        (Some(path), None) => {
            let jwks =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let jwks: Value = serde_json::from_str(&jwks)
                .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
            let keys = receipt::keys_of_jwks(&jwks);
            if keys.is_empty() {
                return Err(format!("{}: no Ed25519 key in it", path.display()));
            }
            keys
        }
        (None, None) => return Err("give --keys or --public-key".into()),
    };
    let claims = receipt::verify(&token, &keys).map_err(|e| e.to_string())?;
    if claims["iss"] != receipt::ISSUER {
        return Err("signed, but not by a Cordon server (its `iss` is not `cordon`)".into());
    }
    if !claims["typ"]
        .as_str()
        .is_some_and(|t| t.starts_with("cordon."))
    {
        return Err("signed, but neither a receipt nor a scope statement".into());
    }
    Ok(claims)
}
