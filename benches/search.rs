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

use cordon::embed::DIMENSIONS;
use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use cordon::store::{Engine, NewMemory};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::search::{
    LIMIT, QUERY, SERVER_SECRET, SearchServer, bare_search, bare_shard, cordon_store, memory, query,
};
use tempfile::TempDir;

fn unit_vector(rng: &mut StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIMENSIONS)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
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

fn endpoint(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let embedder = support::embedder();
    let server = SearchServer::start(&runtime, &embedder);
    let owner = &server.owner;
    let http = reqwest::Client::new();

    let mut group = c.benchmark_group("endpoint");
    group.sample_size(30);
    group.bench_function("bare", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut encoded = embedder
                .embed(owner, vec![QUERY.to_owned()])
                .await
                .expect("embed");
            let vector = encoded.vectors.pop().expect("one vector");
            assert_eq!(bare_search(&server.shard, &vector), LIMIT);
        })
    });
    // The HTTP floor: the same client and server, a route that does no work
    // (no token, no model, no store), so that "cordon" minus "bare" can be
    // split into what any request costs here and what the search path adds.
    group.bench_function("http_floor", |b| {
        b.to_async(&runtime).iter(|| server.healthz(&http))
    });
    group.bench_function("cordon", |b| {
        b.to_async(&runtime).iter(|| server.http_search(&http))
    });
    group.finish();
    // Stop the server (its shards flush on drop) while its directory exists.
    drop(runtime);
    drop(server);
}

criterion_group!(benches, engine_and_isolation, endpoint);
criterion_main!(benches);
