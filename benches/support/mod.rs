//! Set-up shared by the criterion benches: the HS256 key and verifier they
//! all use, the model, and paths inside the repository.

// Each bench crate includes this module and uses a subset of it.
#![allow(dead_code)]

pub mod search;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cordon::auth::{Verifier, VerifierConfig, load_keys, mint_dev_token};
use cordon::embed::{EmbedSettings, Embedder};
use cordon::secret::Secret;

/// The HS256 secret the benches' tokens are signed with.
pub const HS256_SECRET: &str = "bench-hs256-secret-0123456789abcdef-0123";

/// A path inside the repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Claim rules as the server's defaults set them.
pub fn verifier_config() -> VerifierConfig {
    VerifierConfig {
        issuer: None,
        audience: None,
        tenant_claim: "tenant".into(),
        leeway_secs: 30,
        max_token_bytes: 8 * 1024,
    }
}

/// A verifier that accepts tokens signed with [`HS256_SECRET`].
pub fn hs256_verifier() -> Verifier {
    let secret = Secret::new(HS256_SECRET.as_bytes().to_vec());
    Verifier::new(
        load_keys(Some(&secret), None, None).expect("a 40-byte HS256 secret loads"),
        verifier_config(),
    )
}

/// An HS256 token for `(acme, sub)`, valid for an hour.
pub fn hs256_token(sub: &str) -> String {
    let secret = Secret::new(HS256_SECRET.as_bytes().to_vec());
    mint_dev_token(
        &secret,
        "tenant",
        "acme",
        sub,
        Duration::from_secs(3600),
        None,
        None,
    )
    .expect("minting with a 40-byte secret")
}

/// The model, run as the server runs it by default.
pub fn embedder() -> Embedder {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Embedder::start(&EmbedSettings {
        model_dir: repo("models"),
        model_file: cordon::embed::MODEL_FILE.to_owned(),
        workers: 1,
        intra_threads: cores,
        intra_spinning: true,
        max_batch: 32,
        queue_capacity: 1024,
        queue_per_user: 128,
    })
    .expect("model assets present: run `python3 models/fetch.py`")
}
