//! `cordon keys migrate`: seals the memories of a deployment that stored
//! them in the clear, so that encryption at rest can be turned on.
//!
//! It runs with the server stopped (the embedded engine takes the data
//! directory's lock). The vault is first marked as being sealed, which no
//! server starts on; then every user's data key is made, every stored
//! payload is sealed in place, and the vault is marked sealed. An
//! interrupted run is finished by running it again: sealed payloads are
//! left as they are. On the embedded engine each shard is rewritten into a
//! fresh one, so no plain text stays in its files; on a Qdrant server the
//! payloads are overwritten, and Qdrant's own files may keep the old text
//! until its WAL and segments are compacted (the README says so).

use std::collections::HashMap;
use std::sync::Arc;

use super::dek::RecordKeys;
use super::vault::{Marker, Vault};
use super::{SealError, Sealer, seal_payload};
use crate::owner::OwnerHash;
use crate::store::{Engine, OWNER_FIELD, Reseal};

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Users whose memories were looked at.
    pub owners: u64,
    /// Memories sealed by this run (those sealed by an earlier, interrupted
    /// run are left as they are).
    pub sealed: u64,
}

/// Seals every plain memory `engine` holds; `progress(done, total)` after
/// each collection (shard).
pub async fn migrate(
    sealer: &Sealer,
    vault: &dyn Vault,
    engine: &dyn Engine,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<Report, SealError> {
    let store = |e: crate::store::StoreError| SealError::Vault(e.to_string());
    vault.mark(Marker::Sealing).await?;
    let owners = engine.owners().await.map_err(store)?;
    let mut keys: HashMap<String, (OwnerHash, Arc<RecordKeys>)> = HashMap::new();
    for owner in &owners {
        keys.insert(
            owner.to_hex(),
            (owner.clone(), sealer.keys_for(owner).await?),
        );
    }
    let reseal: Reseal = Arc::new(move |id, payload| {
        let Some(owner_hex) = payload.get(OWNER_FIELD).and_then(|v| v.as_str()) else {
            return false;
        };
        match keys.get(owner_hex) {
            Some((owner, k)) => seal_payload(k, owner, id, payload),
            None => false,
        }
    });
    let sealed = engine.reseal_all(reseal, progress).await.map_err(store)?;
    vault.mark(Marker::Sealed).await?;
    Ok(Report {
        owners: owners.len() as u64,
        sealed: sealed as u64,
    })
}

/// Runs the migration the settings describe, from start to end: opens the
/// engine (the embedded one takes the data directory's lock), seals, closes.
pub async fn run(
    settings: &crate::settings::Settings,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<Report, SealError> {
    let seal = settings.seal.as_ref().ok_or_else(|| {
        SealError::Mismatch("set CORDON_KEK (or CORDON_KEK_FILE) to the KEK to seal under".into())
    })?;
    // With promotion on, promoted users' own collections are sealed too.
    let engine = crate::store::open_engine(settings)
        .and_then(|opened| opened.with_promotion(settings, Default::default()))
        .map_err(|e| SealError::Vault(e.to_string()))?
        .engine;
    let vault = super::setup::vault_for(settings)?;
    let sealer = Sealer::new(
        super::setup::keyring(seal)?,
        vault.clone(),
        &seal.cache,
        Arc::new(crate::metrics::Metrics::default()),
    );
    let report = migrate(&sealer, &*vault, &*engine, progress).await;
    engine.shutdown().await;
    report
}
