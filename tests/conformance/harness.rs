//! Building a guarded store over each engine, and synthetic vectors.

use std::sync::Arc;

use cordon::embed::DIMENSIONS;
use cordon::guard::Guard;
use cordon::metrics::Metrics;
use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use cordon::store::edge::{EdgeEngine, EdgeSettings};
use cordon::store::{NewMemory, Store};
use serde_json::{Map, Value};
use tempfile::TempDir;
use uuid::Uuid;

pub struct Harness {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub data_dir: Option<TempDir>,
    secret: Secret,
}

impl Harness {
    pub fn owner(&self, sub: &str) -> OwnerHash {
        OwnerHash::derive(&self.secret, "conformance", sub)
    }
}

/// The embedded qdrant-edge engine over a fresh directory.
pub async fn embedded(name_hex_chars: usize, collision_drill: bool) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = EdgeEngine::open(EdgeSettings {
        data_dir: dir.path().to_owned(),
        name_hex_chars,
        max_open_shards: 8,
        drill_skip_read_filter: collision_drill,
    })
    .expect("engine opens");
    let metrics = Arc::new(Metrics::default());
    Harness {
        store: Store::new(Arc::new(Arc::new(engine)), Guard::new(metrics.clone())),
        metrics,
        data_dir: Some(dir),
        secret: Secret::new(b"conformance-secret-0123456789abcdef".to_vec()),
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
    }
}
