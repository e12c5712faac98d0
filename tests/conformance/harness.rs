//! Building a guarded store over each engine, and synthetic vectors.

use std::sync::Arc;
use std::time::Duration;

use cordon::embed::DIMENSIONS;
use cordon::guard::Guard;
use cordon::guarded::GuardedStore;
use cordon::metrics::Metrics;
use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use cordon::settings::QdrantConnection;
use cordon::store::edge::{EdgeEngine, EdgeSettings};
use cordon::store::qdrant::{QdrantEngine, QdrantSettings};
use cordon::store::{Engine, NewMemory};
use qdrant_client::Qdrant;
use serde_json::{Map, Value};
use tempfile::TempDir;
use uuid::Uuid;

/// Where an engine keeps its collections.
enum Backend {
    Edge(TempDir),
    Qdrant(TestCollections),
}

/// A test's collections on a shared Qdrant, all under one prefix, removed
/// when dropped.
pub struct TestCollections {
    client: Qdrant,
    prefix: String,
}

impl TestCollections {
    /// A fresh prefix of the test's own.
    pub fn new() -> Self {
        Self {
            client: qdrant_client(),
            prefix: format!(
                "cordon_test_{}_",
                &Uuid::new_v4().simple().to_string()[..12]
            ),
        }
    }

    /// The prefix every collection of the test is named under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

pub struct Harness {
    pub store: GuardedStore,
    pub metrics: Arc<Metrics>,
    backend: Backend,
    name_hex_chars: usize,
    collision_drill: bool,
    secret: Secret,
}

impl Harness {
    pub fn owner(&self, sub: &str) -> OwnerHash {
        OwnerHash::derive(&self.secret, "conformance", sub)
    }

    /// The collection prefix of a Qdrant harness.
    pub fn qdrant_prefix(&self) -> Option<&str> {
        match &self.backend {
            Backend::Qdrant(c) => Some(&c.prefix),
            Backend::Edge(_) => None,
        }
    }

    /// How many user collections (shard directories) exist right now.
    pub async fn collections(&self) -> usize {
        match &self.backend {
            Backend::Edge(dir) => std::fs::read_dir(dir.path().join("shards"))
                .expect("shards dir")
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("cordon_"))
                .count(),
            Backend::Qdrant(c) => qdrant_collections(&c.client, &c.prefix).await.len(),
        }
    }

    /// A second replica over the same storage: a separate engine for the
    /// server (as a second Cordon process would be), the same one for the
    /// embedded engine (one process owns a data directory).
    pub fn replica(&self) -> GuardedStore {
        match &self.backend {
            Backend::Edge(_) => self.store.clone(),
            Backend::Qdrant(c) => GuardedStore::new(
                qdrant_engine(&c.prefix, self.name_hex_chars, self.collision_drill),
                Guard::new(self.metrics.clone()),
            ),
        }
    }

    /// Stops the engine and starts a new one over the same storage, as a
    /// restarted process would.
    pub async fn reopen(self) -> Harness {
        let Harness {
            store,
            metrics,
            backend,
            name_hex_chars,
            collision_drill,
            secret,
        } = self;
        store.shutdown().await;
        // The old engine (and, for the embedded one, its directory lock) must
        // be gone before a new one opens the same storage.
        drop(store);
        let engine = match &backend {
            Backend::Edge(dir) => edge_engine(dir, name_hex_chars, collision_drill),
            Backend::Qdrant(c) => qdrant_engine(&c.prefix, name_hex_chars, collision_drill),
        };
        Harness {
            store: GuardedStore::new(engine, Guard::new(metrics.clone())),
            metrics,
            backend,
            name_hex_chars,
            collision_drill,
            secret,
        }
    }
}

impl Drop for TestCollections {
    fn drop(&mut self) {
        // Test collections on a shared Qdrant are removed even when the test
        // failed. Drop cannot await, so a short-lived runtime does it, with a
        // client of its own: the test's client runs its connection on the
        // test's runtime, which is blocked here. Best effort: a panic here,
        // during a failed test's unwinding, would abort the whole run.
        let prefix = self.prefix.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(client) = Qdrant::from_url(&qdrant_url())
                    .skip_compatibility_check()
                    .build()
                else {
                    return;
                };
                let Ok(list) = client.list_collections().await else {
                    return;
                };
                for c in list
                    .collections
                    .into_iter()
                    .filter(|c| c.name.starts_with(&prefix))
                {
                    let _ = client.delete_collection(c.name).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

fn secret() -> Secret {
    Secret::new(b"conformance-secret-0123456789abcdef".to_vec())
}

fn edge_engine(dir: &TempDir, name_hex_chars: usize, collision_drill: bool) -> Arc<dyn Engine> {
    let engine = EdgeEngine::open(EdgeSettings {
        data_dir: dir.path().to_owned(),
        collection_prefix: cordon::owner::COLLECTION_PREFIX.into(),
        name_hex_chars,
        max_open_shards: 8,
        drill_skip_read_filter: collision_drill,
        purge_after: std::time::Duration::from_secs(60),
        wal_growth_bytes: cordon::store::edge::pool::WAL_GROWTH_BYTES,
        min_free_bytes: 0,
    })
    .expect("engine opens");
    Arc::new(Arc::new(engine))
}

/// The embedded qdrant-edge engine over a fresh directory.
pub async fn embedded(name_hex_chars: usize, collision_drill: bool) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = Arc::new(Metrics::default());
    Harness {
        store: GuardedStore::new(
            edge_engine(&dir, name_hex_chars, collision_drill),
            Guard::new(metrics.clone()),
        ),
        metrics,
        backend: Backend::Edge(dir),
        name_hex_chars,
        collision_drill,
        secret: secret(),
    }
}

pub fn qdrant_url() -> String {
    std::env::var("QDRANT_URL")
        .expect("the Qdrant half needs QDRANT_URL, the gRPC URL of a Qdrant 1.18+ server")
}

pub fn qdrant_engine(
    prefix: &str,
    name_hex_chars: usize,
    collision_drill: bool,
) -> Arc<dyn Engine> {
    let engine = QdrantEngine::connect(QdrantSettings {
        connection: QdrantConnection {
            url: qdrant_url(),
            api_key: std::env::var("QDRANT_API_KEY").ok().map(Secret::new),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            replication: Default::default(),
        },
        collection_prefix: prefix.to_owned(),
        name_hex_chars,
        drill_skip_read_filter: collision_drill,
        max_collection_points: 0,
        max_collections_per_node: 0,
    })
    .expect("client builds");
    Arc::new(Arc::new(engine))
}

pub fn qdrant_client() -> Qdrant {
    let mut builder = Qdrant::from_url(&qdrant_url()).skip_compatibility_check();
    if let Ok(key) = std::env::var("QDRANT_API_KEY") {
        builder = builder.api_key(key);
    }
    builder.build().expect("client builds")
}

async fn qdrant_collections(client: &Qdrant, prefix: &str) -> Vec<String> {
    client
        .list_collections()
        .await
        .expect("Qdrant lists collections")
        .collections
        .into_iter()
        .map(|c| c.name)
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The Qdrant server engine at `QDRANT_URL`, under a collection prefix of
/// its own so that tests running side by side (and collided names in the
/// drill) never meet another test's collections.
pub async fn qdrant(name_hex_chars: usize, collision_drill: bool) -> Harness {
    let collections = TestCollections::new();
    let engine = qdrant_engine(&collections.prefix, name_hex_chars, collision_drill);
    engine
        .ready()
        .await
        .expect("QDRANT_URL answers and is 1.18+");
    let metrics = Arc::new(Metrics::default());
    Harness {
        store: GuardedStore::new(engine, Guard::new(metrics.clone())),
        metrics,
        backend: Backend::Qdrant(collections),
        name_hex_chars,
        collision_drill,
        secret: secret(),
    }
}

/// A unit vector along axis `axis`, tilted towards axis `axis + 1` by `tilt`.
pub fn vector(axis: usize, tilt: f32) -> Vec<f32> {
    let mut v = vec![0f32; DIMENSIONS];
    v[axis % DIMENSIONS] = 1.0;
    v[(axis + 1) % DIMENSIONS] = tilt;
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

pub fn memory(text: &str, vector: Vec<f32>, metadata: Value) -> NewMemory {
    NewMemory {
        id: Uuid::now_v7(),
        text: text.to_owned(),
        metadata: metadata.as_object().cloned().unwrap_or_else(Map::new),
        created_at: 1,
        vector,
        request: None,
        sealed: None,
        expires_at: None,
        version: 1,
        updated_at: None,
        terms: Vec::new(),
    }
}
