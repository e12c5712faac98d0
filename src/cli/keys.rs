//! `cordon keys`: the offline side of encryption at rest.
//!
//! `generate` prints a fresh KEK; `rotate` re-wraps every user's data key
//! under the current KEK (`CORDON_KEK`), unwrapping with the previous one
//! (`CORDON_KEK_PREVIOUS`). Both read the same settings as `cordon serve`.

use std::process::ExitCode;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use crate::seal::kek::LocalKek;
use crate::seal::{rotate, setup};
use crate::settings::{ServeArgs, StoreKind};

/// What `cordon keys` does.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random KEK (64 hex digits) for CORDON_KEK or CORDON_KEK_FILE.
    Generate,
    /// Re-wrap every data key under CORDON_KEK, unwrapping with CORDON_KEK_PREVIOUS; resumable.
    Rotate(Box<ServeArgs>),
}

/// Runs one `cordon keys` command.
pub fn run(command: KeysCommand) -> ExitCode {
    match command {
        KeysCommand::Generate => {
            println!("{}", LocalKek::generate().as_str());
            ExitCode::SUCCESS
        }
        KeysCommand::Rotate(args) => match rotate_keys(*args) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("cordon keys rotate: {message}");
                ExitCode::FAILURE
            }
        },
    }
}

fn rotate_keys(args: ServeArgs) -> Result<ExitCode, String> {
    let settings = args.into_settings().map_err(|e| e.to_string())?;
    let seal = settings
        .seal
        .as_ref()
        .ok_or("set CORDON_KEK (the new KEK) and CORDON_KEK_PREVIOUS (the old one)")?;
    // The embedded engine's keys must not change under a running server.
    let _lock = match settings.store.kind {
        StoreKind::Edge => Some(
            crate::store::edge::lock_data_dir(&settings.data_dir)
                .map_err(|e| format!("{e}; stop the server first"))?,
        ),
        StoreKind::Qdrant => None,
    };
    let keyring = setup::keyring(seal).map_err(|e| e.to_string())?;
    let vault = setup::vault_for(&settings).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} keys re-wrapped ({eta} left)")
            .expect("the progress template is valid"),
    );
    let report = runtime
        .block_on(rotate::rotate(&keyring, &*vault, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        }))
        .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    println!(
        "keys under KEK {}: {} re-wrapped now, {} already, {} erased meanwhile, {} failed",
        keyring.current().id(),
        report.rotated,
        report.current,
        report.gone,
        report.failed
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
