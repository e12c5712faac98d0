//! What a run counts, and how it is reported: a text summary for people and
//! the same figures as JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};

/// Request kinds the tool issues.
/// (`verify` is the final read-back of all of a user's memories, in pages of 100.)
pub const KINDS: [&str; 7] = [
    "store", "search", "get", "list", "delete", "verify", "erase",
];

/// Everything the workers record, shared between them.
#[derive(Default)]
pub struct Tally {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    errors: BTreeMap<String, u64>,
    leaks: u64,
    leak_samples: Vec<String>,
    lost: u64,
    stale: u64,
    checked: u64,
    probes: u64,
    users_done: usize,
}

/// The most leak descriptions kept for the report.
const MAX_SAMPLES: usize = 20;

impl Tally {
    /// Records one answered request of `kind`.
    pub fn request(&self, kind: &'static str, took: Duration) {
        self.inner
            .lock()
            .latencies
            .entry(kind)
            .or_default()
            .push(took);
    }

    /// Records a request of `kind` that got an unexpected answer.
    pub fn error(&self, kind: &'static str, status: &str) {
        *self
            .inner
            .lock()
            .errors
            .entry(format!("{kind} {status}"))
            .or_default() += 1;
    }

    /// Records a foreign memory in a response (or a foreign id that worked).
    pub fn leak(&self, what: String) {
        let mut inner = self.inner.lock();
        inner.leaks += 1;
        if inner.leak_samples.len() < MAX_SAMPLES {
            inner.leak_samples.push(what);
        }
    }

    /// Records acknowledged memories that could no longer be read.
    pub fn lost(&self, n: u64) {
        self.inner.lock().lost += n;
    }

    /// Records a deleted memory that was still returned.
    pub fn stale(&self) {
        self.inner.lock().stale += 1;
    }

    /// Records one memory in a response judged against the caller's canaries.
    pub fn checked(&self) {
        self.inner.lock().checked += 1;
    }

    /// Records one get or delete aimed at another user's live id.
    pub fn probe(&self) {
        self.inner.lock().probes += 1;
    }

    /// Records one user whose script finished.
    pub fn user_done(&self) {
        self.inner.lock().users_done += 1;
    }

    /// A one-line progress snapshot.
    pub fn progress(&self, elapsed: Duration, users: usize) -> String {
        let inner = self.inner.lock();
        let requests: usize = inner.latencies.values().map(Vec::len).sum();
        let errors: u64 = inner.errors.values().sum();
        format!(
            "[{:>7.1}s] users {}/{} · requests {} ({:.0}/s) · errors {} · leaks {}",
            elapsed.as_secs_f64(),
            inner.users_done,
            users,
            requests,
            requests as f64 / elapsed.as_secs_f64().max(1e-9),
            errors,
            inner.leaks
        )
    }

    /// Users done, and requests, rate, errors and leaks for the progress bar.
    pub fn bar_status(&self, elapsed: Duration) -> (usize, String) {
        let inner = self.inner.lock();
        let requests: usize = inner.latencies.values().map(Vec::len).sum();
        let errors: u64 = inner.errors.values().sum();
        let line = format!(
            "requests {} ({:.0}/s) · errors {} · leaks {}",
            requests,
            requests as f64 / elapsed.as_secs_f64().max(1e-9),
            errors,
            inner.leaks
        );
        (inner.users_done, line)
    }

    /// The final figures.
    pub fn summary(&self, elapsed: Duration, server: ServerDelta) -> Summary {
        let inner = self.inner.lock();
        let mut kinds = BTreeMap::new();
        let mut total = 0;
        for kind in KINDS {
            let Some(samples) = inner.latencies.get(kind) else {
                continue;
            };
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            total += sorted.len();
            kinds.insert(kind, KindStats::from_sorted(&sorted));
        }
        Summary {
            elapsed,
            total,
            kinds,
            errors: inner.errors.clone(),
            leaks: inner.leaks,
            leak_samples: inner.leak_samples.clone(),
            lost: inner.lost,
            stale: inner.stale,
            checked: inner.checked,
            probes: inner.probes,
            errors_total: inner.errors.values().sum(),
            users_done: inner.users_done,
            server,
        }
    }
}

/// Latency figures of one request kind.
pub struct KindStats {
    count: usize,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    max: Duration,
}

impl KindStats {
    fn from_sorted(sorted: &[Duration]) -> Self {
        // Nearest-rank percentiles: the value below which `q` of samples lie.
        let at = |q: f64| {
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1]
        };
        Self {
            count: sorted.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: *sorted.last().expect("only built for kinds with samples"),
        }
    }
}

/// Counter changes on the server over the run, read from `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerDelta {
    /// Points the guard dropped (`cordon_guard_dropped_total`).
    pub guard_dropped: Option<u64>,
    /// Store calls on a shared collection (`cordon_shared_collection_requests_total`).
    pub shared_collection_requests: Option<u64>,
}

/// The end-of-run figures.
pub struct Summary {
    elapsed: Duration,
    total: usize,
    kinds: BTreeMap<&'static str, KindStats>,
    errors: BTreeMap<String, u64>,
    /// Foreign memories seen in responses.
    pub leaks: u64,
    leak_samples: Vec<String>,
    /// Acknowledged memories that went missing.
    pub lost: u64,
    /// Deleted memories still returned.
    pub stale: u64,
    /// Memories in responses that were judged.
    pub checked: u64,
    /// Gets and deletes aimed at another user's live id.
    pub probes: u64,
    /// Requests that failed or got an unexpected answer.
    pub errors_total: u64,
    users_done: usize,
    /// What the server's counters say about the run.
    pub server: ServerDelta,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn or_na(v: Option<u64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

impl Summary {
    /// Requests per second over the whole run.
    pub fn throughput(&self) -> f64 {
        self.total as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Requests answered (any status).
    pub fn answered(&self) -> usize {
        self.total
    }

    /// The report people read.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nrequests: {} in {:.1}s ({:.1} req/s), users finished: {}",
            self.total,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.users_done
        );
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>10} {:>10} {:>10} {:>10}",
            "kind", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"
        );
        for (kind, s) in &self.kinds {
            let _ = writeln!(
                out,
                "{:<8} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                kind,
                s.count,
                ms(s.p50),
                ms(s.p95),
                ms(s.p99),
                ms(s.max)
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let _ = writeln!(out, "errors (kind status: count):");
            for (what, n) in &self.errors {
                let _ = writeln!(out, "  {what}: {n}");
            }
        }
        let _ = writeln!(
            out,
            "server: guard dropped {} foreign points; {} store calls touched a shared collection",
            or_na(self.server.guard_dropped),
            or_na(self.server.shared_collection_requests)
        );
        let _ = writeln!(
            out,
            "checked: {} memories in responses; {} probes at other users' live ids",
            self.checked, self.probes
        );
        let _ = writeln!(out, "lost: {}", self.lost);
        let _ = writeln!(out, "stale: {}", self.stale);
        let _ = writeln!(out, "leaks: {}", self.leaks);
        for sample in &self.leak_samples {
            let _ = writeln!(out, "  leak: {sample}");
        }
        out
    }

    /// The same figures for machines.
    pub fn json(&self, config: Value) -> Value {
        let latency: serde_json::Map<String, Value> = self
            .kinds
            .iter()
            .map(|(kind, s)| {
                (
                    (*kind).to_owned(),
                    json!({
                        "count": s.count,
                        "p50_ms": ms(s.p50),
                        "p95_ms": ms(s.p95),
                        "p99_ms": ms(s.p99),
                        "max_ms": ms(s.max),
                    }),
                )
            })
            .collect();
        json!({
            "config": config,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "requests_total": self.total,
            "throughput_rps": self.throughput(),
            "users_finished": self.users_done,
            "latency": latency,
            "errors": self.errors,
            "server": {
                "guard_dropped": self.server.guard_dropped,
                "shared_collection_requests": self.server.shared_collection_requests,
            },
            "checked": self.checked,
            "foreign_probes": self.probes,
            "lost": self.lost,
            "stale": self.stale,
            "leaks": self.leaks,
            "leak_samples": self.leak_samples,
        })
    }
}
