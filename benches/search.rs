//! Engine search, and what Cordon's isolation adds to it.
//!
//! - `engine_search/N`: the embedded engine searching one user's collection
//!   of N memories (owner filter included), for N = 1, 100 and 10,000.
//! - `isolation/{bare,cordon}/N`: the same query vector on a bare qdrant-edge
//!   shard with the same storage settings and the same points, called
//!   directly on the bench thread (no token, no owner filter, no guard, no
//!   hop to the blocking pool), against Cordon's whole in-process path
//!   (verify the token, derive the owner hash, then the engine: shard lookup,
//!   blocking-pool hop, owner-filtered search; then the guard). With
//!   `engine_search/N` in between, the ratios split the overhead into the
//!   engine adapter's part and the token-and-guard part.
//! - `endpoint/{bare,cordon}`: the same query text over 100 real memories:
//!   embedded and searched on a bare shard, against Cordon's search endpoint
//!   over HTTP (a server in this process, on a loopback port).
//!
//! ```text
//! cargo bench --bench search
//! ```

mod support;

use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use cordon::app::Application;
use cordon::embed::DIMENSIONS;
use cordon::guard::Guard;
use cordon::guarded::GuardedStore;
use cordon::metrics::Metrics;
use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use cordon::settings::ServeArgs;
use cordon::store::edge::{EdgeEngine, EdgeSettings, shard_config};
use cordon::store::{Engine, NewMemory, SearchQuery};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use qdrant_edge::{
    EdgeShard, NamedQuery, Payload, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, QueryEnum, QueryRequest, ScoringQuery, UpdateOperation,
    VectorStructPersisted, WithPayloadInterface, WithVector,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use tempfile::TempDir;
use uuid::Uuid;

const SERVER_SECRET: &str = "bench-server-secret-0123456789abcdef-0123";
const LIMIT: usize = 10;

fn unit_vector(rng: &mut StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIMENSIONS)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn memory(i: usize, text: String, vector: Vec<f32>) -> NewMemory {
    let mut metadata = Map::new();
    metadata.insert("n".into(), json!(i));
    NewMemory {
        id: Uuid::now_v7(),
        text,
        metadata,
        created_at: 1_763_900_000_000,
        vector,
        request: None,
        sealed: None,
    }
}

/// A bare qdrant-edge shard holding the same points Cordon stores.
fn bare_shard(dir: &Path, owner: &OwnerHash, memories: &[NewMemory]) -> EdgeShard {
    let shard = EdgeShard::load(dir, Some(shard_config())).expect("a new shard");
    for chunk in memories.chunks(500) {
        let points = chunk
            .iter()
            .cloned()
            .map(|m| {
                let (id, vector, payload) = m.into_parts(&owner.to_hex());
                PointStructPersisted {
                    id: PointId::Uuid(id),
                    vector: VectorStructPersisted::Single(vector),
                    payload: Some(Payload(payload)),
                }
            })
            .collect();
        shard
            .update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
            .expect("upsert");
    }
    shard.flush();
    shard
}

/// Nearest points with no filter of any kind.
fn bare_search(shard: &EdgeShard, vector: &[f32]) -> usize {
    shard
        .query(QueryRequest {
            prefetches: vec![],
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: vector.to_vec().into(),
                using: None,
            }))),
            filter: None,
            score_threshold: None,
            limit: LIMIT,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        })
        .expect("bare search")
        .len()
}

/// Cordon's embedded engine behind the guard, in a temporary directory.
fn cordon_store(dir: &Path) -> (Arc<EdgeEngine>, GuardedStore) {
    let engine = Arc::new(
        EdgeEngine::open(EdgeSettings {
            data_dir: dir.to_owned(),
            collection_prefix: cordon::owner::COLLECTION_PREFIX.into(),
            name_hex_chars: 32,
            max_open_shards: 64,
            drill_skip_read_filter: false,
            purge_after: std::time::Duration::from_secs(60),
            wal_growth_bytes: cordon::store::edge::pool::WAL_GROWTH_BYTES,
            min_free_bytes: 0,
        })
        .expect("an engine"),
    );
    let store = GuardedStore::new(
        Arc::new(engine.clone()),
        Guard::new(Arc::new(Metrics::default())),
    );
    (engine, store)
}

fn query(vector: &[f32]) -> SearchQuery {
    SearchQuery {
        vector: vector.to_vec(),
        limit: LIMIT,
        min_score: None,
        metadata: vec![],
        tags: Vec::new(),
    }
}

fn engine_and_isolation(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let secret = Secret::new(SERVER_SECRET.as_bytes().to_vec());
    let verifier = support::hs256_verifier();
    let token = support::hs256_token("alice");
    let owner = OwnerHash::derive(&secret, "acme", "alice");
    let mut rng = StdRng::seed_from_u64(7);
    let probe = unit_vector(&mut rng);

    let mut engine_group = c.benchmark_group("engine_search");
    let mut sized = Vec::new();
    for n in [1usize, 100, 10_000] {
        let memories: Vec<NewMemory> = (0..n)
            .map(|i| {
                memory(
                    i,
                    format!("memory {i} of a user with a realistic sentence length"),
                    unit_vector(&mut rng),
                )
            })
            .collect();
        let dir = TempDir::new().expect("temp dir");
        let (engine, store) = cordon_store(dir.path());
        runtime.block_on(async {
            for chunk in memories.chunks(500) {
                store.put(&owner, chunk.to_vec()).await.expect("put");
            }
        });
        let found = runtime
            .block_on(engine.search(&owner, query(&probe)))
            .expect("search");
        assert_eq!(found.len(), n.min(LIMIT));
        engine_group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.to_async(&runtime)
                .iter(|| async { engine.search(&owner, query(&probe)).await.expect("search") })
        });
        // The directory goes last: dropping the store flushes its shards.
        sized.push((n, memories, store, dir));
    }
    engine_group.finish();

    let mut group = c.benchmark_group("isolation");
    for (n, memories, store, _dir) in sized.iter().filter(|(n, ..)| *n >= 100) {
        let bare_dir = TempDir::new().expect("temp dir");
        let shard = bare_shard(bare_dir.path(), &owner, memories);
        assert_eq!(bare_search(&shard, &probe), LIMIT);
        group.bench_with_input(BenchmarkId::new("bare", n), n, |b, _| {
            b.iter(|| bare_search(&shard, &probe))
        });
        group.bench_with_input(BenchmarkId::new("cordon", n), n, |b, _| {
            b.to_async(&runtime).iter(|| async {
                let principal = verifier.verify(&token).expect("the bench token verifies");
                let caller = OwnerHash::derive(&secret, &principal.tenant, &principal.subject);
                let found = store.search(&caller, query(&probe)).await.expect("search");
                assert_eq!(found.len(), LIMIT);
            })
        });
    }
    group.finish();
}

/// Wraps the server's own flags, so the bench configures it as a user would.
#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    args: ServeArgs,
}

fn endpoint(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let embedder = support::embedder();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let data = TempDir::new().expect("temp dir");
    let threads = cores.to_string();
    // Every flag that shapes the measured path is given, so that CORDON_*
    // variables in the environment cannot change what is measured.
    let settings = Serve::parse_from([
        "bench",
        "--store",
        "edge",
        "--collection-hex-chars",
        "32",
        "--collision-drill",
        "false",
        "--embed-threads",
        &threads,
        "--embed-max-batch",
        "32",
        "--max-in-flight",
        "512",
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        &data.path().display().to_string(),
        "--model-dir",
        &support::repo("models").display().to_string(),
        "--server-secret",
        SERVER_SECRET,
        "--jwt-hs256-secret",
        support::HS256_SECRET,
    ])
    .args
    .into_settings()
    .expect("bench settings are valid");
    let app = runtime
        .block_on(Application::build_with_embedder(settings, embedder.clone()))
        .expect("the server starts");
    let base = format!("http://{}", app.local_addr());
    runtime.spawn(app.run_until(std::future::pending()));

    let token = support::hs256_token("alice");
    let owner = OwnerHash::derive(
        &Secret::new(SERVER_SECRET.as_bytes().to_vec()),
        "acme",
        "alice",
    );
    let texts: Vec<String> = (0..100)
        .map(|i| {
            format!(
                "memory {i}: my sister prefers oat milk in coffee and books Thai food on Fridays"
            )
        })
        .collect();
    let http = reqwest::Client::new();
    let query_text = "what does my sister like to drink";
    let (memories, bare_dir) = runtime.block_on(async {
        for chunk in texts.chunks(50) {
            let body = json!({ "memories": chunk.iter().map(|t| json!({ "text": t })).collect::<Vec<Value>>() });
            let response = http
                .post(format!("{base}/v1/memories"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("store request");
            assert_eq!(response.status(), 201);
        }
        let vectors = embedder.embed(&owner, texts.clone()).await.expect("embed").vectors;
        let memories: Vec<NewMemory> = texts
            .iter()
            .zip(vectors)
            .enumerate()
            .map(|(i, (t, v))| memory(i, t.clone(), v))
            .collect();
        (memories, TempDir::new().expect("temp dir"))
    });
    let shard = bare_shard(bare_dir.path(), &owner, &memories);

    let mut group = c.benchmark_group("endpoint");
    group.sample_size(30);
    group.bench_function("bare", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut encoded = embedder
                .embed(&owner, vec![query_text.to_owned()])
                .await
                .expect("embed");
            let vector = encoded.vectors.pop().expect("one vector");
            assert_eq!(bare_search(&shard, &vector), LIMIT);
        })
    });
    // The HTTP floor: the same client and server, a route that does no work
    // (no token, no model, no store), so that "cordon" minus "bare" can be
    // split into what any request costs here and what the search path adds.
    group.bench_function("http_floor", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .expect("healthz request");
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.expect("JSON body");
            assert_eq!(body["status"], "ok");
        })
    });
    group.bench_function("cordon", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = http
                .post(format!("{base}/v1/memories/search"))
                .bearer_auth(&token)
                .json(&json!({ "query": query_text, "limit": LIMIT }))
                .send()
                .await
                .expect("search request");
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.expect("JSON body");
            assert_eq!(body["results"].as_array().map(Vec::len), Some(LIMIT));
        })
    });
    group.finish();
    // Stop the server (its shards flush on drop) while its directory exists.
    drop(shard);
    drop(runtime);
    drop(data);
}

criterion_group!(benches, engine_and_isolation, endpoint);
criterion_main!(benches);
