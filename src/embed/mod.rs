//! Local text embeddings: all-MiniLM-L6-v2 (int8 ONNX) through ONNX Runtime.
//!
//! [`Embedder`] is a cheap handle to the worker thread that owns the model
//! session (one by default; `CORDON_EMBED_WORKERS` starts more, each with a
//! session of its own). Requests queue as jobs; the worker drains whatever is queued into
//! one batch (dynamic batching), because ONNX Runtime on this class of machine
//! runs a batch of texts at a better per-text rate than one alone.
//! Each job carries its owner and its own reply channel, so a batch mixes
//! users' texts only inside the model call and every vector goes back to the
//! job that asked for it. Nothing is cached: the model weights are the only
//! thing users share.

mod batcher;
mod fair;
mod model;

use std::path::{Path, PathBuf};

pub use batcher::{EmbedStats, Embedder};
pub use model::{DIMENSIONS, Encoded, Layout, MAX_TOKENS, Model};

/// The model file Cordon runs by default: model.onnx's weights in the
/// graph models/pack.py writes, which skips the padding.
pub const MODEL_FILE: &str = "model-packed.onnx";
/// The plain export the packed graph is made from, also runnable.
pub const PLAIN_MODEL_FILE: &str = "model.onnx";
/// Tokenizer file name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// ONNX Runtime shared library file name.
pub const RUNTIME_FILE: &str = "libonnxruntime.so";

/// The command that fetches missing assets, quoted in start-up errors.
pub const FETCH_COMMAND: &str = "python3 models/fetch.py";

/// Embedding settings.
#[derive(Debug, Clone)]
pub struct EmbedSettings {
    /// Directory holding the model, tokenizer and ONNX Runtime library.
    pub model_dir: PathBuf,
    /// Model file inside `model_dir` (packed or plain graph, told apart by
    /// its inputs).
    pub model_file: String,
    /// Model workers, each with a session of its own, taking batches from
    /// the one queue.
    pub workers: usize,
    /// ONNX Runtime intra-op threads of each worker's session.
    pub intra_threads: usize,
    /// Whether those threads spin while waiting for work (ONNX Runtime's
    /// default), which costs the cores the request threads need between
    /// model calls.
    pub intra_spinning: bool,
    /// Most texts run through the model in one call.
    pub max_batch: usize,
    /// Most requests waiting for the worker; beyond this requests get 503.
    pub queue_capacity: usize,
    /// Most requests one user may have waiting; beyond this that user gets
    /// 429.
    pub queue_per_user: usize,
}

impl EmbedSettings {
    /// Path of one asset inside the model directory.
    pub fn asset(&self, name: &str) -> PathBuf {
        self.model_dir.join(name)
    }
}

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A model asset is missing at start-up.
    #[error("model asset {path} is missing; fetch it with `{FETCH_COMMAND}`")]
    MissingAsset {
        /// The missing file.
        path: PathBuf,
    },
    /// ONNX Runtime could not be loaded or initialised.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The tokenizer failed to load or to encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model returned an output of an unexpected shape.
    #[error("unexpected model output: {0}")]
    Output(String),
    /// The job queue is full.
    #[error("embedding queue is full")]
    Overloaded,
    /// This user already has their share of the queue waiting.
    #[error("this user's share of the embedding queue is full")]
    OwnerBusy,
    /// The worker thread is gone.
    #[error("embedding worker stopped")]
    WorkerGone,
}

/// Fails with [`EmbedError::MissingAsset`] naming the first absent file.
pub fn check_assets(settings: &EmbedSettings) -> Result<(), EmbedError> {
    for name in [settings.model_file.as_str(), TOKENIZER_FILE, RUNTIME_FILE] {
        let path = settings.asset(name);
        if !Path::new(&path).is_file() {
            return Err(EmbedError::MissingAsset { path });
        }
    }
    Ok(())
}
