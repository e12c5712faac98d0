//! The search endpoint's own overhead, and where it goes.
//!
//! The overhead is Cordon's search over HTTP less what any search must do:
//! embed the query and search a bare shard of the same points. Both contain
//! a model call of about 4 ms whose time varies by more than the overhead,
//! so two separate measurements cannot be subtracted (criterion's
//! `endpoint/cordon` minus `endpoint/bare` came out between -0.9 and +0.9 ms
//! on one machine). Here every round measures each path once, in an order
//! that rotates, and the overhead is the median of the per-round
//! differences, so that a slow model call in one round cancels out.
//!
//! The same rounds split the overhead: the same search through the router
//! in this process (no socket, no HTTP client) separates the transport from
//! the handler, and model-free pieces are timed beside them: the token check
//! and owner hash, Cordon's store (engine adapter, owner filter, guard)
//! against the bare shard, and encoding the response's JSON.
//!
//! ```text
//! cargo bench --bench request_path            # 1000 rounds
//! cargo bench --bench request_path -- 300     # fewer
//! ```

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use serde_json::{Value, json};
use support::search::{
    LIMIT, QUERY, SERVER_SECRET, SearchServer, bare_search, cordon_store, query,
};
use tempfile::TempDir;
use tower::ServiceExt;

/// The paths timed in every round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `POST /v1/memories/search` over HTTP.
    Http,
    /// The same request through the router, in this process.
    Router,
    /// Embed the query, then search the bare shard.
    Bare,
    /// `GET /healthz` over HTTP: what any request costs here.
    Floor,
    /// Verify the token and derive the owner hash.
    Token,
    /// Search Cordon's store (adapter, owner filter, guard) with a vector.
    Store,
    /// Search the bare shard with the same vector.
    Shard,
    /// Encode ten results as the response's JSON.
    Json,
}

const PATHS: [Path; 8] = [
    Path::Http,
    Path::Router,
    Path::Bare,
    Path::Floor,
    Path::Token,
    Path::Store,
    Path::Shard,
    Path::Json,
];

fn main() {
    // `cargo bench` passes `--bench`; a bare number is the round count.
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let embedder = support::embedder();
    let server = SearchServer::start(&runtime, &embedder);
    let http = reqwest::Client::new();
    let verifier = support::hs256_verifier();
    let secret = Secret::new(SERVER_SECRET.as_bytes().to_vec());
    let store_dir = TempDir::new().expect("temp dir");
    let (_engine, store) = cordon_store(store_dir.path());
    runtime
        .block_on(store.put(&server.owner, server.memories.clone()))
        .expect("put");
    let vector = server.memories[0].vector.clone();
    let response_body = runtime.block_on(server.http_search(&http));
    let search_body = serde_json::to_vec(&json!({ "query": QUERY, "limit": LIMIT }))
        .expect("a JSON value encodes");

    let time = |path: Path| -> Duration {
        let started = Instant::now();
        match path {
            Path::Http => {
                runtime.block_on(server.http_search(&http));
            }
            Path::Router => runtime.block_on(async {
                let mut request = axum::http::Request::post("/v1/memories/search")
                    .header("authorization", format!("Bearer {}", server.token))
                    .header("content-type", "application/json")
                    .body(Body::from(search_body.clone()))
                    .expect("a valid request");
                request
                    .extensions_mut()
                    .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
                let response = server
                    .router
                    .clone()
                    .oneshot(request)
                    .await
                    .expect("the router answers");
                assert_eq!(response.status(), 200);
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("a body");
                let body: Value = serde_json::from_slice(&bytes).expect("JSON body");
                assert_eq!(body["results"].as_array().map(Vec::len), Some(LIMIT));
            }),
            Path::Bare => runtime.block_on(async {
                let mut encoded = embedder
                    .embed(&server.owner, vec![QUERY.to_owned()])
                    .await
                    .expect("embed");
                let vector = encoded.vectors.pop().expect("one vector");
                assert_eq!(bare_search(&server.shard, &vector), LIMIT);
            }),
            Path::Floor => runtime.block_on(server.healthz(&http)),
            Path::Token => {
                let principal = verifier
                    .verify(&server.token)
                    .expect("the bench token verifies");
                let owner = OwnerHash::derive(&secret, &principal.tenant, &principal.subject);
                assert_eq!(owner, server.owner);
            }
            Path::Store => runtime.block_on(async {
                let found = store
                    .search(&server.owner, query(&vector))
                    .await
                    .expect("search");
                assert_eq!(found.len(), LIMIT);
            }),
            Path::Shard => assert_eq!(bare_search(&server.shard, &vector), LIMIT),
            Path::Json => {
                let bytes = serde_json::to_vec(&response_body).expect("a JSON value encodes");
                assert!(bytes.len() > 100);
            }
        }
        started.elapsed()
    };

    for _ in 0..50 {
        for path in PATHS {
            time(path);
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); PATHS.len()];
    for round in 0..rounds {
        // Rotate the order, so that no path always follows the model call.
        for k in 0..PATHS.len() {
            let i = (k + round) % PATHS.len();
            samples[i].push(time(PATHS[i]).as_secs_f64() * 1e3);
        }
    }
    let of = |path: Path| &samples[PATHS.iter().position(|&p| p == path).expect("a timed path")];
    let diff =
        |a: Path, b: Path| -> Vec<f64> { of(a).iter().zip(of(b)).map(|(x, y)| x - y).collect() };

    println!("{rounds} rounds, each path once per round in rotating order; ms");
    println!();
    println!("| path | median | p10 | p90 |");
    println!("|---|---:|---:|---:|");
    let rows = [
        (Path::Http, "search over HTTP"),
        (Path::Router, "search through the router, in process"),
        (Path::Bare, "embed + bare shard search"),
        (Path::Floor, "`GET /healthz` over HTTP"),
        (Path::Token, "token check + owner hash"),
        (Path::Store, "Cordon's store search (vector given)"),
        (Path::Shard, "bare shard search (vector given)"),
        (Path::Json, "encode the 10 results as JSON"),
    ];
    for (path, name) in rows {
        let s = of(path);
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            quantile(s, 0.5),
            quantile(s, 0.1),
            quantile(s, 0.9)
        );
    }
    println!();
    println!("| paired difference | median | 95% interval of the median |");
    println!("|---|---:|---:|");
    let pairs = [
        (
            (Path::Http, Path::Bare),
            "overhead: HTTP search - (embed + bare search)",
        ),
        (
            (Path::Http, Path::Router),
            "of which transport: HTTP - router",
        ),
        (
            (Path::Router, Path::Bare),
            "of which handler: router - (embed + bare)",
        ),
        (
            (Path::Store, Path::Shard),
            "of the handler, the store: Cordon's - bare",
        ),
    ];
    for ((a, b), name) in pairs {
        let d = diff(a, b);
        let (lo, hi) = median_interval(&d);
        println!("| {name} | {:.3} | {lo:.3} .. {hi:.3} |", quantile(&d, 0.5));
    }
    drop(runtime);
    drop(store);
    drop(server);
}

/// The `q` quantile of `values` (nearest rank).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A distribution-free 95% interval for the median: the order statistics
/// n/2 -+ 1.96 sqrt(n)/2.
fn median_interval(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let half = 1.96 * n.sqrt() / 2.0;
    let lo = ((n / 2.0 - half).floor().max(0.0)) as usize;
    let hi = ((n / 2.0 + half).ceil() as usize).min(sorted.len() - 1);
    (sorted[lo], sorted[hi])
}
