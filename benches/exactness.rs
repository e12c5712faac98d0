//! How exact the engines' nearest-neighbour search is: recall@10 of Cordon's
//! engine search for one user against the exact cosine top 10 over the same
//! vectors, at several collection sizes.
//!
//! Texts are synthetic memory sentences (seeded), embedded once by the real
//! model and cached under the target directory; 200 held-out sentences are
//! the queries. Each size is written into a fresh collection of one user
//! through the engine (the embedded one in a temporary directory, or a Qdrant
//! server at `QDRANT_URL`), which on Qdrant is then given time to build its
//! index (collection green) before the queries run.
//!
//! ```text
//! cargo bench --bench exactness -- edge 1000,20000,100000
//! QDRANT_URL=http://127.0.0.1:6334 cargo bench --bench exactness -- qdrant 1000,20000,100000
//! ```

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cordon::embed::DIMENSIONS;
use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use cordon::store::Engine;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const QUERIES: usize = 200;
const K: usize = 10;

const WHO: &[&str] = &[
    "my sister",
    "my manager",
    "the dentist",
    "our neighbour",
    "my cousin",
    "the landlord",
    "my coach",
    "my best friend",
    "the plumber",
    "my aunt",
    "the vet",
    "my flatmate",
    "the courier",
    "my mentor",
];
const DID: &[&str] = &[
    "recommended",
    "borrowed",
    "forgot about",
    "asked me about",
    "cooked",
    "ordered",
    "fixed",
    "complained about",
    "paid for",
    "booked",
    "lost",
    "painted",
    "returned",
    "photographed",
];
const WHAT: &[&str] = &[
    "the blue kettle",
    "a jazz record",
    "the garden hose",
    "two cinema tickets",
    "a rain jacket",
    "the hiking map",
    "a bottle of olive oil",
    "the spare key",
    "a chess set",
    "the bike pump",
    "a pot of basil",
    "the old laptop",
    "a box of tea",
    "the wedding photos",
    "a yoga mat",
    "the tax forms",
    "a train pass",
    "the birthday cake",
    "a sourdough starter",
    "the car seat",
];
const WHEN: &[&str] = &[
    "last Monday",
    "on Friday evening",
    "during the holidays",
    "after the meeting",
    "this morning",
    "in March",
    "before the trip",
    "at the weekend",
    "yesterday",
    "two weeks ago",
    "at lunch",
];
const WHERE: &[&str] = &[
    "at the market",
    "in Lisbon",
    "at work",
    "near the station",
    "at the lake",
    "in the garage",
    "online",
    "at the library",
    "in the park",
    "at my parents' house",
];

/// `n` distinct sentences.
fn texts(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let pick = |rng: &mut StdRng, list: &[&'static str]| *list.choose(rng).expect("a list");
        let text = format!(
            "{} {} {} {} {} (note {})",
            pick(&mut rng, WHO),
            pick(&mut rng, DID),
            pick(&mut rng, WHAT),
            pick(&mut rng, WHEN),
            pick(&mut rng, WHERE),
            rng.random_range(0..1000),
        );
        if seen.insert(text.clone()) {
            out.push(text);
        }
    }
    out
}

/// The embeddings of `texts`, from the cache file `name` or the model.
fn vectors(runtime: &tokio::runtime::Runtime, name: &str, texts: &[String]) -> Vec<Vec<f32>> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| support::repo("target"));
    let path = dir.join(format!("exactness-{name}-{}.f32", texts.len()));
    if let Ok(mut file) = std::fs::File::open(&path) {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).expect("cache read");
        if bytes.len() == texts.len() * DIMENSIONS * 4 {
            return bytes
                .chunks_exact(DIMENSIONS * 4)
                .map(|v| {
                    v.chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().expect("four bytes")))
                        .collect()
                })
                .collect();
        }
    }
    let embedder = runtime.block_on(async { support::embedder() });
    let owner = OwnerHash::derive(&Secret::new(vec![7; 32]), "bench", "embedder");
    let start = Instant::now();
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(256) {
        let encoded = runtime
            .block_on(embedder.embed(&owner, chunk.to_vec()))
            .expect("embedding");
        out.extend(encoded.vectors);
        if out.len() % 10_240 == 0 {
            eprintln!(
                "embedded {} of {} ({:.0?})",
                out.len(),
                texts.len(),
                start.elapsed()
            );
        }
    }
    let mut file = std::fs::File::create(&path).expect("cache file");
    for v in &out {
        for x in v {
            file.write_all(&x.to_le_bytes()).expect("cache write");
        }
    }
    out
}

/// The exact top `K` ids (indexes into `stored`) for `query`.
fn exact(stored: &[Vec<f32>], query: &[f32]) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = stored
        .iter()
        .enumerate()
        .map(|(i, v)| (v.iter().zip(query).map(|(a, b)| a * b).sum(), i))
        .collect();
    scored.select_nth_unstable_by(K, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(K);
    scored.into_iter().map(|(_, i)| i).collect()
}

fn engine(runtime: &tokio::runtime::Runtime, kind: &str, dir: &std::path::Path) -> Arc<dyn Engine> {
    match kind {
        "edge" => Arc::new(Arc::new(
            cordon::store::edge::EdgeEngine::open(cordon::store::edge::EdgeSettings {
                data_dir: dir.to_owned(),
                collection_prefix: format!("exact{}_", std::process::id()),
                name_hex_chars: 32,
                max_open_shards: 8,
                drill_skip_read_filter: false,
                purge_after: Duration::from_secs(3600),
                wal_growth_bytes: cordon::store::edge::pool::WAL_GROWTH_BYTES,
                min_free_bytes: 0,
            })
            .expect("an embedded engine"),
        )),
        _ => {
            let url = std::env::var("QDRANT_URL").expect("QDRANT_URL for the qdrant engine");
            let _guard = runtime.enter();
            Arc::new(Arc::new(
                cordon::store::qdrant::QdrantEngine::connect(
                    cordon::store::qdrant::QdrantSettings {
                        connection: cordon::settings::QdrantConnection {
                            url,
                            api_key: None,
                            timeout: Duration::from_secs(120),
                            connect_timeout: Duration::from_secs(5),
                            replication: Default::default(),
                        },
                        collection_prefix: format!("exact{}_", std::process::id()),
                        name_hex_chars: 32,
                        drill_skip_read_filter: false,
                        max_collection_points: u64::MAX,
                        max_collections_per_node: u64::MAX,
                    },
                )
                .expect("a Qdrant engine"),
            ))
        }
    }
}

/// Waits until Qdrant reports the collection green (its index built).
fn settle(runtime: &tokio::runtime::Runtime, collection: &str) -> Duration {
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL");
    let client = qdrant_client::Qdrant::from_url(&url)
        .build()
        .expect("client");
    let start = Instant::now();
    loop {
        let info = runtime
            .block_on(client.collection_info(collection))
            .expect("collection info");
        let result = info.result.expect("a collection");
        if result.status == qdrant_client::qdrant::CollectionStatus::Green as i32 {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let kind = args.get(1).map(String::as_str).unwrap_or("edge").to_owned();
    let sizes: Vec<usize> = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("1000,20000")
        .split(',')
        .map(|s| s.parse().expect("a size"))
        .collect();
    let largest = *sizes.iter().max().expect("a size");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let stored_texts = texts(largest, 1);
    let query_texts = texts(QUERIES, 2);
    let stored = vectors(&runtime, "stored", &stored_texts);
    let queries = vectors(&runtime, "queries", &query_texts);
    println!("| engine | memories | recall@10 | search p50 ms | p99 ms | write s | index s |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = engine(&runtime, &kind, dir.path());
        let owner = OwnerHash::derive(&Secret::new(vec![9; 32]), "bench", &format!("user-{n}"));
        let memories: Vec<_> = stored[..n]
            .iter()
            .zip(&stored_texts)
            .enumerate()
            .map(|(i, (v, t))| support::search::memory(i, t.clone(), v.clone()))
            .collect();
        let ids: Vec<uuid::Uuid> = memories.iter().map(|m| m.id).collect();
        let start = Instant::now();
        for chunk in memories.chunks(500) {
            runtime
                .block_on(engine.upsert(&owner, chunk.to_vec()))
                .expect("write");
        }
        let written = start.elapsed();
        let indexed = if kind == "qdrant" {
            settle(
                &runtime,
                &owner.collection_name(&format!("exact{}_", std::process::id()), 32),
            )
        } else {
            Duration::ZERO
        };
        let mut hits = 0;
        let mut times = Vec::with_capacity(QUERIES);
        for query in &queries {
            let truth: std::collections::HashSet<uuid::Uuid> = exact(&stored[..n], query)
                .into_iter()
                .map(|i| ids[i])
                .collect();
            let start = Instant::now();
            let found = runtime
                .block_on(engine.search(&owner, support::search::query(query)))
                .expect("search");
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            hits += found.iter().filter(|p| truth.contains(&p.id)).count();
        }
        times.sort_by(f64::total_cmp);
        let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        println!(
            "| {kind} | {n} | {:.4} | {:.1} | {:.1} | {:.1} | {:.1} |",
            hits as f64 / (QUERIES * K) as f64,
            at(0.5),
            at(0.99),
            written.as_secs_f64(),
            indexed.as_secs_f64(),
        );
        runtime.block_on(engine.erase(&owner)).expect("erase");
        runtime.block_on(engine.shutdown());
    }
}
