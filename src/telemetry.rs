//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default
//! `info`), and the audit trail ([`crate::audit`]) as JSON lines to a sink of
//! its own.

use std::io::IsTerminal as _;

use tracing::Level;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

use crate::audit;
use crate::settings::AuditSink;

/// Default filter. qdrant-edge 0.7 warns "Feature flags not initialized!" on
/// every shard open and offers no public way to initialise them, so that one
/// target is held to errors.
const DEFAULT_FILTER: &str = "info,qdrant_edge::common::flags=error";

/// Always added, whatever `RUST_LOG` says: rmcp logs whole MCP requests and
/// results (memory text, decrypted or not) at debug, and argument errors
/// quoting the values at warn; the MCP module logs what matters itself.
const RMCP_FILTER: &str = "rmcp=error";

/// Installs the global subscriber; `json` selects JSON lines for the log.
/// Keep the returned guard until exit: it flushes the audit file writer.
pub fn init(json: bool, audit_sink: &AuditSink) -> Option<WorkerGuard> {
    // Audit events go to their own sink only. Excluded by a directive, not
    // by a filter function: a function has no level hint, and without one
    // `log` records (qdrant-edge logs through `log`) are built and
    // dispatched at every level (the full-disk test in tests/binary took
    // 50 s instead of 10 s).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
        .add_directive(
            format!("{}=off", audit::TARGET)
                .parse()
                .expect("a valid directive"),
        )
        .add_directive(RMCP_FILTER.parse().expect("a valid directive"));
    let log = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let log = if json {
        log.json().with_filter(filter).boxed()
    } else {
        log.with_filter(filter).boxed()
    };
    let only_audit = Targets::new().with_target(audit::TARGET, Level::INFO);
    let (audit_layer, guard) = match audit_sink {
        AuditSink::Off => (None, None),
        AuditSink::Stdout => (
            Some(
                fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stdout)
                    .with_filter(only_audit)
                    .boxed(),
            ),
            None,
        ),
        AuditSink::Dir(dir) => {
            let appender = tracing_appender::rolling::daily(dir, "audit.log");
            // Lossless: an audit line waits for the writer rather than vanish.
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(appender);
            (
                Some(
                    fmt::layer()
                        .json()
                        .with_current_span(false)
                        .with_span_list(false)
                        .with_ansi(false)
                        .with_writer(writer)
                        .with_filter(only_audit)
                        .boxed(),
                ),
                Some(guard),
            )
        }
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(audit_layer)
        .try_init();
    guard
}
