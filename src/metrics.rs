//! Process counters, rendered in the Prometheus text format at `/metrics`.
//!
//! Counters and latency histograms, with no label that carries an identity:
//! a metric must never become a side channel for who stored what. Routes
//! are labelled by their template (`/v1/memories/{id}`), never by the path
//! a request asked for.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Counters shared by the whole process.
#[derive(Debug, Default)]
pub struct Metrics {
    guard_dropped_search: AtomicU64,
    guard_dropped_get: AtomicU64,
    guard_dropped_list: AtomicU64,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    admin_changes: Mutex<BTreeMap<&'static str, u64>>,
    lockouts: Mutex<BTreeMap<&'static str, u64>>,
    limit_hits: Mutex<BTreeMap<&'static str, u64>>,
    unsealing_failures: Mutex<BTreeMap<&'static str, u64>>,
    memories_stored: AtomicU64,
    memories_expired: AtomicU64,
    memories_updated: AtomicU64,
    duplicates_skipped: AtomicU64,
    searches: AtomicU64,
    shared_collection_requests: AtomicU64,
    promotions: AtomicU64,
    promotions_stopped: AtomicU64,
    isolation_breaches: AtomicU64,
    quarantined_reads: AtomicU64,
    canary_probes: AtomicU64,
    canary_breaches: AtomicU64,
    canary_failures: AtomicU64,
    access_log_dropped: AtomicU64,
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
}

/// Values read when `/metrics` is scraped rather than counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Texts waiting for the embedding model.
    pub embedding_queue_texts: usize,
    /// Shards the embedded engine holds open.
    pub open_shards: usize,
    /// The embedding workers' counts since start.
    pub embedding: crate::embed::EmbedStats,
}

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram: cumulative counts per bucket, their sum, their count.
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

impl Metrics {
    /// Counts one point dropped by the guard on `path`.
    pub fn guard_dropped(&self, path: &str) {
        let counter = match path {
            "search" => &self.guard_dropped_search,
            "get" => &self.guard_dropped_get,
            _ => &self.guard_dropped_list,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Points dropped by the guard since start.
    pub fn guard_dropped_total(&self) -> u64 {
        self.guard_dropped_search.load(Ordering::Relaxed)
            + self.guard_dropped_get.load(Ordering::Relaxed)
            + self.guard_dropped_list.load(Ordering::Relaxed)
    }

    /// Counts one refused token, by reason (a fixed word).
    pub fn auth_failed(&self, reason: &'static str) {
        *self.auth_failures.lock().entry(reason).or_default() += 1;
    }

    /// Records one answered request: `route` is the matched route's
    /// template, never the requested path.
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        *self
            .requests
            .lock()
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        self.latency
            .lock()
            .entry((route.to_owned(), method.to_owned()))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one lockout, by principal kind (`owner` or `client`).
    pub fn lockout(&self, principal: &'static str) {
        *self.lockouts.lock().entry(principal).or_default() += 1;
    }

    /// Counts one request refused by a limit, by limit name.
    pub fn limit_hit(&self, limit: &'static str) {
        *self.limit_hits.lock().entry(limit).or_default() += 1;
    }

    /// Counts one stored memory that did not open under its owner's key, by
    /// read path (it is also counted as a guard drop).
    pub fn unsealing_failed(&self, path: &'static str) {
        *self.unsealing_failures.lock().entry(path).or_default() += 1;
    }

    /// Counts one admin change, by kind (`revocation`, `min_version`,
    /// `tenant_enabled`, `tenant_disabled`).
    pub fn admin_change(&self, kind: &'static str) {
        *self.admin_changes.lock().entry(kind).or_default() += 1;
    }

    /// Counts stored memories.
    pub fn stored(&self, n: usize) {
        self.memories_stored.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts memories the expiry sweep deleted.
    pub fn expired(&self, n: usize) {
        self.memories_expired.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts one update of a memory.
    pub fn updated(&self) {
        self.memories_updated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts stores that added nothing, being near-duplicates.
    pub fn duplicates(&self, n: usize) {
        self.duplicates_skipped
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts one search.
    pub fn searched(&self) {
        self.searches.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one store call on a collection that holds another owner's
    /// points (collision drills only).
    pub fn shared_collection_touched(&self) {
        self.shared_collection_requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one user moved out of the shared tier (`finished`), or one
    /// move that stopped and waits to resume.
    pub fn promotion(&self, finished: bool) {
        let counter = if finished {
            &self.promotions
        } else {
            &self.promotions_stopped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one read failed closed on a guard drop.
    pub fn isolation_breach(&self) {
        self.isolation_breaches.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one read refused for a quarantined collection.
    pub fn quarantined_read(&self) {
        self.quarantined_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one canary round: clean, breached (a canary seen by the wrong
    /// user), or failed (a probe that could not run).
    pub fn canary(&self, outcome: crate::canary::Outcome) {
        use crate::canary::Outcome;
        let counter = match outcome {
            Outcome::Clean => &self.canary_probes,
            Outcome::Breach => &self.canary_breaches,
            Outcome::Failed => &self.canary_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one access-log entry given up on a full queue.
    pub fn access_log_dropped(&self) {
        self.access_log_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Canary rounds that found a breach since start.
    pub fn canary_breaches(&self) -> u64 {
        self.canary_breaches.load(Ordering::Relaxed)
    }

    /// Store calls on a shared collection since start.
    pub fn shared_collection_requests(&self) -> u64 {
        self.shared_collection_requests.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every counter, and of the gauges
    /// read at scrape time.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP cordon_embedding_queue_texts Texts waiting for the embedding model.\n# TYPE cordon_embedding_queue_texts gauge\ncordon_embedding_queue_texts {}",
            gauges.embedding_queue_texts
        );
        let _ = writeln!(
            out,
            "# HELP cordon_open_shards Shards of the embedded engine held open (0 on the Qdrant engine).\n# TYPE cordon_open_shards gauge\ncordon_open_shards {}",
            gauges.open_shards
        );
        let e = gauges.embedding;
        let _ = writeln!(
            out,
            "# HELP cordon_embedding_batches_total Batches the embedding workers took from the queue.\n# TYPE cordon_embedding_batches_total counter\ncordon_embedding_batches_total {}",
            e.batches
        );
        let _ = writeln!(
            out,
            "# HELP cordon_embedding_texts_total Texts in those batches.\n# TYPE cordon_embedding_texts_total counter\ncordon_embedding_texts_total {}",
            e.texts
        );
        let _ = writeln!(
            out,
            "# HELP cordon_embedding_model_calls_total Model calls (a batch runs as one or more length groups).\n# TYPE cordon_embedding_model_calls_total counter\ncordon_embedding_model_calls_total {}",
            e.model_calls
        );
        let _ = writeln!(
            out,
            "# HELP cordon_embedding_model_seconds_total Time inside model calls.\n# TYPE cordon_embedding_model_seconds_total counter\ncordon_embedding_model_seconds_total {}",
            e.model_seconds
        );
        out.push_str("# HELP cordon_http_requests_total Requests answered, by route template, method and status.\n# TYPE cordon_http_requests_total counter\n");
        for ((route, method, status), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "cordon_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP cordon_http_request_duration_seconds Time to answer, by route template and method.\n# TYPE cordon_http_request_duration_seconds histogram\n");
        for ((route, method), h) in self.latency.lock().iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\"");
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "cordon_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "cordon_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\ncordon_http_request_duration_seconds_sum{{{labels}}} {}\ncordon_http_request_duration_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push_str("# HELP cordon_guard_dropped_total Points dropped by the owner re-check (cross_tenant_leak_detected).\n");
        out.push_str("# TYPE cordon_guard_dropped_total counter\n");
        for (path, c) in [
            ("search", &self.guard_dropped_search),
            ("get", &self.guard_dropped_get),
            ("list", &self.guard_dropped_list),
        ] {
            let _ = writeln!(
                out,
                "cordon_guard_dropped_total{{path=\"{path}\"}} {}",
                get(c)
            );
        }
        for (name, help, label, counts) in [
            (
                "cordon_auth_failures_total",
                "Requests refused for a missing, invalid or revoked token, or a refused tenant, by reason.",
                "reason",
                &self.auth_failures,
            ),
            (
                "cordon_admin_changes_total",
                "Admin changes made through this process, by kind.",
                "kind",
                &self.admin_changes,
            ),
            (
                "cordon_lockouts_total",
                "Principals locked out after too many rejected attempts, by kind.",
                "principal",
                &self.lockouts,
            ),
            (
                "cordon_limit_hits_total",
                "Requests refused by a per-user limit or a lockout, by limit.",
                "limit",
                &self.limit_hits,
            ),
            (
                "cordon_unsealing_failures_total",
                "Stored memories dropped because they did not open under the caller's key (copied, altered or unsealed records), by path.",
                "path",
                &self.unsealing_failures,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, n) in counts.lock().iter() {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
            }
        }
        out.push_str("# HELP cordon_memories_stored_total Memories written.\n");
        out.push_str("# TYPE cordon_memories_stored_total counter\n");
        let _ = writeln!(
            out,
            "cordon_memories_stored_total {}",
            get(&self.memories_stored)
        );
        for (name, help, value) in [
            (
                "cordon_memories_expired_total",
                "Expired memories the sweep deleted.",
                &self.memories_expired,
            ),
            (
                "cordon_memories_updated_total",
                "Memories updated in place.",
                &self.memories_updated,
            ),
            (
                "cordon_duplicates_skipped_total",
                "Stored items that added nothing, being near-duplicates of the user's memories.",
                &self.duplicates_skipped,
            ),
            (
                "cordon_isolation_breaches_total",
                "Reads failed closed because the guard met another user's point (each quarantines its collection).",
                &self.isolation_breaches,
            ),
            (
                "cordon_quarantined_reads_total",
                "Reads refused because their collection is quarantined.",
                &self.quarantined_reads,
            ),
            (
                "cordon_canary_rounds_total",
                "Canary rounds in which every canary was seen by its own user only.",
                &self.canary_probes,
            ),
            (
                "cordon_canary_breaches_total",
                "Canary rounds in which a canary was seen by the wrong user, or a canary read failed closed.",
                &self.canary_breaches,
            ),
            (
                "cordon_access_log_dropped_total",
                "Access-log entries given up because the writer's queue stayed full (the log's storage too slow).",
                &self.access_log_dropped,
            ),
            (
                "cordon_canary_failures_total",
                "Canary rounds that could not run (the store or the model failed).",
                &self.canary_failures,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", get(value));
        }
        out.push_str("# HELP cordon_searches_total Searches served.\n");
        out.push_str("# TYPE cordon_searches_total counter\n");
        let _ = writeln!(out, "cordon_searches_total {}", get(&self.searches));
        out.push_str("# HELP cordon_shared_collection_requests_total Store calls on a collection that also held another owner's memories (counted in collision drills only; an export counts once per page).\n");
        out.push_str("# TYPE cordon_shared_collection_requests_total counter\n");
        let _ = writeln!(
            out,
            "cordon_shared_collection_requests_total {}",
            get(&self.shared_collection_requests)
        );
        out.push_str("# HELP cordon_promotions_total Users this process moved out of the shared tier to a collection of their own.\n");
        out.push_str("# TYPE cordon_promotions_total counter\n");
        let _ = writeln!(out, "cordon_promotions_total {}", get(&self.promotions));
        out.push_str("# HELP cordon_promotions_stopped_total Moves out of the shared tier that stopped on an error (each resumes at the user's next write or the next start).\n");
        out.push_str("# TYPE cordon_promotions_stopped_total counter\n");
        let _ = writeln!(
            out,
            "cordon_promotions_stopped_total {}",
            get(&self.promotions_stopped)
        );
        out
    }
}
