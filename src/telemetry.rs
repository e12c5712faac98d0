//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default `info`).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Default filter. qdrant-edge 0.7 warns "Feature flags not initialized!" on
/// every shard open and offers no public way to initialise them, so that one
/// target is held to errors.
const DEFAULT_FILTER: &str = "info,qdrant_edge::common::flags=error";

/// Installs the global subscriber; `json` selects JSON lines.
pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
