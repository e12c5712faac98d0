//! Reading the server's own counters from `/metrics`.

use super::LoadError;
use super::report::ServerDelta;

/// The counters the report needs, as they stand now; `None` for one the
/// server does not export.
pub async fn counters(http: &reqwest::Client, base: &str) -> Result<ServerDelta, LoadError> {
    let url = format!("{base}/metrics");
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| LoadError::Server(format!("cannot reach {url}: {e}")))?;
    if !response.status().is_success() {
        return Err(LoadError::Server(format!(
            "{url} answered {}",
            response.status()
        )));
    }
    let text = response
        .text()
        .await
        .map_err(|e| LoadError::Server(format!("reading {url}: {e}")))?;
    Ok(ServerDelta {
        guard_dropped: sum(&text, "cordon_guard_dropped_total"),
        shared_collection_requests: sum(&text, "cordon_shared_collection_requests_total"),
    })
}

/// Sums every sample of `metric` (all label sets) in the text exposition.
fn sum(text: &str, metric: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0) += v as u64;
        }
    }
    found
}
