//! `cordon keys`: the offline side of encryption at rest.
//!
//! `generate` prints a fresh KEK; `rotate` re-wraps every user's data key
//! under the current KEK (`CORDON_KEK`), unwrapping with the previous one
//! (`CORDON_KEK_PREVIOUS`); `migrate` seals the memories of a deployment
//! that stored them in the clear. All read the same settings as
//! `cordon serve`, and run with the server stopped (the embedded engine's
//! data directory lock makes sure of it).

use std::process::ExitCode;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use crate::seal::kek::LocalKek;
use crate::seal::{migrate, rotate};
use crate::settings::{ServeArgs, Settings};

/// What `cordon keys` does.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random KEK (64 hex digits) for CORDON_KEK or CORDON_KEK_FILE.
    Generate,
    /// Re-wrap every data key under CORDON_KEK, unwrapping with CORDON_KEK_PREVIOUS; resumable.
    Rotate(Box<ServeArgs>),
    /// Seal memories stored in the clear under CORDON_KEK, so the server can start with it; resumable.
    Migrate(Box<ServeArgs>),
}

/// Runs one `cordon keys` command.
pub fn run(command: KeysCommand) -> ExitCode {
    let (name, outcome) = match command {
        KeysCommand::Generate => {
            println!("{}", LocalKek::generate().as_str());
            return ExitCode::SUCCESS;
        }
        KeysCommand::Rotate(args) => ("rotate", rotate_keys(*args)),
        KeysCommand::Migrate(args) => ("migrate", migrate_memories(*args)),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("cordon keys {name}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Settings, a runtime and a progress bar, which both long commands need.
fn prepare(
    args: ServeArgs,
    unit: &str,
) -> Result<(Settings, tokio::runtime::Runtime, ProgressBar), String> {
    let settings = args.into_settings().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} ({{eta}} left)"))
            .expect("the progress template is valid"),
    );
    Ok((settings, runtime, bar))
}

fn rotate_keys(args: ServeArgs) -> Result<ExitCode, String> {
    let (settings, runtime, bar) = prepare(args, "keys")?;
    let progress = |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let (kek, report) = runtime
        .block_on(rotate::run(&settings, &progress))
        .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    println!(
        "keys under KEK {kek}: {} re-wrapped now, {} already, {} erased meanwhile, {} failed",
        report.rotated, report.current, report.gone, report.failed
    );
    if report.failed > 0 {
        eprintln!(
            "cordon keys rotate: {} keys were not re-wrapped (see the log); fix the KEK settings and run it again",
            report.failed
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn migrate_memories(args: ServeArgs) -> Result<ExitCode, String> {
    let (settings, runtime, bar) = prepare(args, "collections")?;
    let progress = |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let report = runtime
        .block_on(migrate::run(&settings, &progress))
        .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    println!(
        "sealed {} memories of {} users; the server can start with CORDON_KEK now",
        report.sealed, report.owners
    );
    Ok(ExitCode::SUCCESS)
}
