//! A flooding user: `--flood-clients` connections of one extra user that
//! store and search back to back, as fast as the server lets them, for as
//! long as the normal users run. Its own answers are counted by kind (ok,
//! 429, 503, other) and kept out of the normal users' latency figures, so a
//! run with and a run without it show what one flooder costs everyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Value, json};

/// Answers the flooder got.
#[derive(Debug, Default)]
pub struct FloodTally {
    ok: AtomicU64,
    limited: AtomicU64,
    shed: AtomicU64,
    other: AtomicU64,
}

impl FloodTally {
    fn count(&self, status: u16) {
        let counter = match status {
            200..=299 => &self.ok,
            429 => &self.limited,
            503 => &self.shed,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The tally as JSON.
    pub fn json(&self, clients: usize) -> Value {
        json!({
            "clients": clients,
            "ok": self.ok.load(Ordering::Relaxed),
            "rate_limited_429": self.limited.load(Ordering::Relaxed),
            "shed_503": self.shed.load(Ordering::Relaxed),
            "other": self.other.load(Ordering::Relaxed),
        })
    }

    /// One line for the text report.
    pub fn line(&self, clients: usize) -> String {
        format!(
            "flood: {clients} clients of one user · ok {} · 429 {} · 503 {} · other {}",
            self.ok.load(Ordering::Relaxed),
            self.limited.load(Ordering::Relaxed),
            self.shed.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

/// Erases the flooder's memories (best effort: the run is over).
pub async fn erase(http: &reqwest::Client, base: &str, token: &str) {
    let _ = http
        .delete(format!("{base}/v1/memories"))
        .bearer_auth(token)
        .send()
        .await;
}

/// Starts `clients` flooding tasks as `token`; they stop once `stop` is set.
pub fn start(
    http: reqwest::Client,
    base: String,
    token: String,
    clients: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<FloodTally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (http, base, token, stop, tally) = (
                http.clone(),
                base.clone(),
                token.clone(),
                stop.clone(),
                tally.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let texts: Vec<Value> = (0..16)
                        .map(|i| json!({ "text": format!("flood {c}-{n}-{i}: a note about nothing in particular, written again and again") }))
                        .collect();
                    let store = http
                        .post(format!("{base}/v1/memories"))
                        .bearer_auth(&token)
                        .json(&json!({ "memories": texts }))
                        .send()
                        .await;
                    tally.count(store.map_or(0, |r| r.status().as_u16()));
                    let search = http
                        .post(format!("{base}/v1/memories/search"))
                        .bearer_auth(&token)
                        .json(&json!({ "query": format!("note {n}") }))
                        .send()
                        .await;
                    tally.count(search.map_or(0, |r| r.status().as_u16()));
                }
            })
        })
        .collect()
}
