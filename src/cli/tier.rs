//! `cordon tier`: moving a deployment's memories between namespace tiers.
//!
//! `migrate` reads the same settings as `cordon serve` and moves every
//! memory stored under another tier's naming into the one they configure
//! (see [`crate::store::tier`]); it runs with the server stopped (the
//! embedded engine's data directory lock makes sure of it) and finishes a
//! run that was cut short when run again.

use std::collections::HashSet;
use std::process::ExitCode;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use crate::settings::ServeArgs;
use crate::store::tier;

/// Most shards each side of a move keeps open: two engines share the
/// process's memory maps.
const MIGRATE_OPEN_SHARDS: usize = 64;

/// What `cordon tier` does.
#[derive(Debug, Subcommand)]
pub enum TierCommand {
    /// Move every memory into the tier these settings name (CORDON_TIER, CORDON_COLLECTION_HEX_CHARS), from any other found; resumable.
    Migrate(Box<ServeArgs>),
}

/// Runs one `cordon tier` command.
pub fn run(command: TierCommand) -> ExitCode {
    let TierCommand::Migrate(args) = command;
    match migrate(*args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("cordon tier migrate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(args: ServeArgs) -> Result<ExitCode, String> {
    let mut settings = args.into_settings().map_err(|e| e.to_string())?;
    settings.store.max_open_shards = settings.store.max_open_shards.min(MIGRATE_OPEN_SHARDS);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} users ({eta} left)")
            .expect("the progress template is valid"),
    );
    let progress = |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let promoting =
        settings.store.tier == crate::settings::Tier::Shared && settings.store.promote_after > 0;
    let report = runtime
        .block_on(async {
            let opened = crate::store::open_engine(&settings)?;
            let placements = crate::store::open_placements(&settings)?;
            // Users promoted out of the shared tier keep their own
            // collections while promotion stays on; otherwise everyone
            // moves, and the registry goes once they have.
            let records = placements.load().await?;
            // A move still running would be copied over half done.
            let unfinished = records
                .values()
                .filter(|record| record.phase.unfinished())
                .count();
            if unfinished > 0 {
                return Err(crate::store::StoreError::Layout(format!(
                    "{unfinished} users are moving to a shard of their own: start the server in the shared tier until the moves finish (`cordon_promotions_total`), then run this again"
                )));
            }
            let stay: HashSet<String> = if promoting {
                records.into_keys().collect()
            } else {
                HashSet::new()
            };
            let report = tier::migrate(
                opened.engine.as_ref(),
                |len| opened.beside(&settings, len),
                &stay,
                &progress,
            )
            .await;
            opened.engine.shutdown().await;
            if report.is_ok() && !promoting {
                placements.clear().await?;
            }
            report
        })
        .map_err(|e| format!("{e} (run the command again to finish the move)"))?;
    bar.finish_and_clear();
    if report.layouts.is_empty() {
        println!(
            "every memory is stored as these settings name it ({} hex characters); nothing to move",
            settings.store.name_hex_chars
        );
    } else {
        println!(
            "moved {} memories of {} users into collections named by {} hex characters; removed {} emptied collections",
            report.memories, report.owners, settings.store.name_hex_chars, report.removed
        );
    }
    Ok(ExitCode::SUCCESS)
}
