//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default
//! `info`), and the audit trail ([`crate::audit`]) as JSON lines to a sink of
//! its own.
//!
//! Cordon's own events carry hashed tags only; the libraries under it do
//! not know what is secret. qdrant-edge logs its file paths (which hold
//! collection names) at info, and at trace the tokenizer replays the text
//! it normalises character by character. So the tokenizer and rmcp are held
//! to warnings and errors whatever `RUST_LOG` says, and every line of the
//! log passes [`redact`] on its way out, whichever crate wrote it: the
//! configured secrets, anything shaped like a bearer JWT, the hex of a
//! collection name and any long run of hex digits (a full owner hash) are
//! replaced, at every level.

use std::io::IsTerminal as _;
use std::sync::RwLock;

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
/// quoting the values at warn; the MCP module logs what matters itself. The
/// tokenizer logs every character of the texts it normalises at trace.
const HELD_DOWN: [&str; 2] = ["rmcp=error", "tokenizers=warn"];

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
        );
    let filter = HELD_DOWN.iter().fold(filter, |filter, directive| {
        filter.add_directive(directive.parse().expect("a valid directive"))
    });
    let log = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| RedactingStderr);
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

/// Sends panic messages through the log, and so through [`redact`], instead
/// of straight to standard error: a library's panic can name a file path
/// that holds a collection name (qdrant-edge's "Failed to flush <path>").
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
        tracing::error!(%location, "panic: {message}");
    }));
}

/// What the log must never show, set once the settings are read.
struct Redaction {
    secrets: Vec<Vec<u8>>,
    prefix: Vec<u8>,
}

static REDACTION: RwLock<Option<Redaction>> = RwLock::new(None);

/// Shortest run of hex digits replaced wherever it stands: a collection
/// name's hex (32 by default) or a whole owner hash (64).
const LONG_HEX: usize = 32;

/// Tells the log what to redact from now on: these secrets, and collection
/// names under `prefix`.
pub fn redact_from_now(secrets: &[&crate::secret::Secret], prefix: &str) {
    let redaction = Redaction {
        secrets: secrets
            .iter()
            .map(|s| s.expose().to_vec())
            .filter(|s| s.len() >= 8)
            .collect(),
        prefix: prefix.as_bytes().to_vec(),
    };
    if let Ok(mut slot) = REDACTION.write() {
        *slot = Some(redaction);
    }
}

/// Standard error, through [`redact`].
struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let redacted = match REDACTION.read() {
            Ok(slot) => match slot.as_ref() {
                Some(r) => redact(line, &r.secrets, &r.prefix),
                None => redact(line, &[], crate::owner::COLLECTION_PREFIX.as_bytes()),
            },
            Err(_) => redact(line, &[], crate::owner::COLLECTION_PREFIX.as_bytes()),
        };
        std::io::stderr().write_all(&redacted)?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `line` with every secret, JWT-shaped token, collection name's hex (after
/// `prefix`) and run of [`LONG_HEX`] or more hex digits replaced.
pub fn redact(line: &[u8], secrets: &[Vec<u8>], prefix: &[u8]) -> Vec<u8> {
    let mut line = line.to_vec();
    for secret in secrets {
        line = replace_all(&line, secret, b"<secret>");
    }
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        // A JWT: `eyJ` (base64url of `{"`) and three dot-separated parts.
        if line[i..].starts_with(b"eyJ") && (i == 0 || !is_b64(line[i - 1])) {
            let mut end = i;
            let mut dots = 0;
            while end < line.len() && (is_b64(line[end]) || (line[end] == b'.' && dots < 2)) {
                dots += usize::from(line[end] == b'.');
                end += 1;
            }
            if dots == 2 {
                out.extend_from_slice(b"<token>");
                i = end;
                continue;
            }
        }
        // A collection name: the prefix, then hex digits to a word's end.
        if !prefix.is_empty() && line[i..].starts_with(prefix) {
            let start = i + prefix.len();
            let mut end = start;
            while end < line.len() && line[end].is_ascii_hexdigit() {
                end += 1;
            }
            if end > start && line.get(end).is_none_or(|b| !b.is_ascii_alphanumeric()) {
                out.extend_from_slice(prefix);
                out.extend_from_slice("\u{2026}".as_bytes());
                i = end;
                continue;
            }
        }
        // A long run of hex digits, as a whole word.
        if line[i].is_ascii_hexdigit() && (i == 0 || !line[i - 1].is_ascii_alphanumeric()) {
            let mut end = i;
            while end < line.len() && line[end].is_ascii_hexdigit() {
                end += 1;
            }
            if end - i >= LONG_HEX && line.get(end).is_none_or(|b| !b.is_ascii_alphanumeric()) {
                out.extend_from_slice(b"<hex>");
                i = end;
                continue;
            }
        }
        out.push(line[i]);
        i += 1;
    }
    out
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = memchr::memmem::find(rest, needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(line: &str, secrets: &[&str]) -> String {
        let secrets: Vec<Vec<u8>> = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
        String::from_utf8(redact(line.as_bytes(), &secrets, b"cordon_")).expect("utf-8")
    }

    #[test]
    fn secrets_tokens_collection_names_and_owner_hashes_are_replaced() {
        let name = format!("cordon_{}", "ab12".repeat(8));
        let line = format!(
            "Wal {{ path: \"/data/shards/{name}/wal\" }} key=admin-key-0123456789 auth=Bearer eyJhbGciOi.eyJzdWIiOiJh.c2ln owner={}",
            "0f".repeat(32)
        );
        let out = redacted(&line, &["admin-key-0123456789"]);
        assert!(!out.contains(&name), "{out}");
        assert!(out.contains("shards/cordon_\u{2026}/wal"), "{out}");
        assert!(!out.contains("admin-key-0123456789"), "{out}");
        assert!(out.contains("Bearer <token>"), "{out}");
        assert!(out.contains("owner=<hex>"), "{out}");
    }

    #[test]
    fn ordinary_words_ids_and_system_collections_are_left_alone() {
        let line = "cordon_access cordon_keys cordon_guard_dropped_total id=01a243e2-1217-76cb-a0f5-b752f4b6420d tag=87196d78257a";
        assert_eq!(redacted(line, &[]), line);
    }
}
