//! What the search benches share: points as Cordon stores them, a bare
//! qdrant-edge shard holding the same points, and a real Cordon server (in
//! this process, on a loopback port) holding 100 real memories of one user.

use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use cordon::app::Application;
use cordon::embed::Embedder;
use cordon::guard::Guard;
use cordon::guarded::GuardedStore;
use cordon::metrics::Metrics;
use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use cordon::settings::ServeArgs;
use cordon::store::edge::{EdgeEngine, EdgeSettings, shard_config};
use cordon::store::{NewMemory, SearchQuery};
use qdrant_edge::{
    EdgeShard, NamedQuery, Payload, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, QueryEnum, QueryRequest, ScoringQuery, UpdateOperation,
    VectorStructPersisted, WithPayloadInterface, WithVector,
};
use serde_json::{Map, Value, json};
use tempfile::TempDir;
use uuid::Uuid;

/// The server secret the search benches' owner hashes derive from.
pub const SERVER_SECRET: &str = "bench-server-secret-0123456789abcdef-0123";
/// Results per search.
pub const LIMIT: usize = 10;
/// The query of the endpoint benches.
pub const QUERY: &str = "what does my sister like to drink";

/// A memory as the store receives it, numbered `i` in its metadata.
pub fn memory(i: usize, text: String, vector: Vec<f32>) -> NewMemory {
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
        expires_at: None,
        version: 1,
        updated_at: None,
        terms: Vec::new(),
    }
}

/// A bare qdrant-edge shard holding the same points Cordon stores.
pub fn bare_shard(dir: &Path, owner: &OwnerHash, memories: &[NewMemory]) -> EdgeShard {
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
pub fn bare_search(shard: &EdgeShard, vector: &[f32]) -> usize {
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
pub fn cordon_store(dir: &Path) -> (Arc<EdgeEngine>, GuardedStore) {
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

/// A search for the `LIMIT` nearest to `vector`, no filter.
pub fn query(vector: &[f32]) -> SearchQuery {
    SearchQuery {
        vector: vector.to_vec(),
        limit: LIMIT,
        min_score: None,
        filter: Default::default(),
    }
}

/// Wraps the server's own flags, so the bench configures it as a user would.
#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    args: ServeArgs,
}

/// A Cordon server holding alice's 100 memories, and a bare shard holding
/// the same points.
pub struct SearchServer {
    /// The server's address, as `http://127.0.0.1:port`.
    pub base: String,
    /// The router the server serves, over the same state.
    pub router: axum::Router,
    /// alice's token.
    pub token: String,
    /// alice's owner hash.
    pub owner: OwnerHash,
    /// The memories, with the vectors the server stored.
    pub memories: Vec<NewMemory>,
    /// A bare shard holding the same points.
    pub shard: EdgeShard,
    // Dropped after the shard and the server, which flush into them.
    _dirs: (TempDir, TempDir),
}

impl SearchServer {
    /// alice's search over HTTP, checked (200 and `LIMIT` results); the
    /// response's body.
    pub async fn http_search(&self, http: &reqwest::Client) -> Value {
        let response = http
            .post(format!("{}/v1/memories/search", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "query": QUERY, "limit": LIMIT }))
            .send()
            .await
            .expect("search request");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(body["results"].as_array().map(Vec::len), Some(LIMIT));
        body
    }

    /// `GET /healthz` over HTTP, checked: the route that does no work.
    pub async fn healthz(&self, http: &reqwest::Client) {
        let response = http
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .expect("healthz request");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(body["status"], "ok");
    }

    /// Starts the server on `runtime` with `embedder` and stores the
    /// memories through its API.
    pub fn start(runtime: &tokio::runtime::Runtime, embedder: &Embedder) -> Self {
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
            &super::repo("models").display().to_string(),
            "--server-secret",
            SERVER_SECRET,
            "--jwt-hs256-secret",
            super::HS256_SECRET,
        ])
        .args
        .into_settings()
        .expect("bench settings are valid");
        let app = runtime
            .block_on(Application::build_with_embedder(settings, embedder.clone()))
            .expect("the server starts");
        let base = format!("http://{}", app.local_addr());
        let router = app.router();
        runtime.spawn(app.run_until(std::future::pending()));

        let token = super::hs256_token("alice");
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
        let memories = runtime.block_on(async {
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
            let vectors = embedder
                .embed(&owner, texts.clone())
                .await
                .expect("embed")
                .vectors;
            texts
                .iter()
                .zip(vectors)
                .enumerate()
                .map(|(i, (t, v))| memory(i, t.clone(), v))
                .collect::<Vec<_>>()
        });
        let bare_dir = TempDir::new().expect("temp dir");
        let shard = bare_shard(bare_dir.path(), &owner, &memories);
        Self {
            base,
            router,
            token,
            owner,
            memories,
            shard,
            _dirs: (data, bare_dir),
        }
    }
}
