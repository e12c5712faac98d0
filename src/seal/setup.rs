//! Start-up of encryption at rest: the vault that suits the engine, the KEK
//! ring, and the check that the data and the configuration agree.
//!
//! A deployment is either sealed or plain, never a mix served wrongly: the
//! vault holds a marker once the first sealed server starts on it. A KEK on
//! data stored in the clear, or no KEK on sealed data, refuses to start
//! with a message that says what to do. When the check cannot run at start
//! (Qdrant unreachable), the server starts anyway, like it does for the
//! access rules: storage answers 503 until the check has passed, and for
//! good if it then finds a mismatch.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::file_vault::FileVault;
use super::kek::{Kek, Keyring, LocalKek};
use super::qdrant_vault::QdrantVault;
use super::vault::{Marker, Vault};
use super::{SealError, Sealer};
use crate::metrics::Metrics;
use crate::settings::{SealSettings, Settings, StoreKind};
use crate::store::{Engine, StoreError};

/// Whether memories are sealed, once the start-up check has decided it.
pub struct SealGate {
    state: OnceLock<Result<Option<Arc<Sealer>>, String>>,
}

impl SealGate {
    /// A decided gate: sealed with `sealer`, or plain.
    pub fn decided(sealer: Option<Arc<Sealer>>) -> Self {
        let gate = Self::pending();
        gate.decide(Ok(sealer));
        gate
    }

    fn pending() -> Self {
        Self {
            state: OnceLock::new(),
        }
    }

    fn decide(&self, outcome: Result<Option<Arc<Sealer>>, String>) {
        // Decided once; a second decision cannot happen (one task decides).
        let _ = self.state.set(outcome);
    }

    /// The sealer to use (`None`: plain); 503 while undecided or refused.
    pub fn sealer(&self) -> Result<Option<&Arc<Sealer>>, StoreError> {
        match self.state.get() {
            Some(Ok(sealer)) => Ok(sealer.as_ref()),
            Some(Err(refused)) => Err(StoreError::Unavailable(refused.clone())),
            None => Err(StoreError::Unavailable(
                "the encryption check has not reached the key store yet".into(),
            )),
        }
    }
}

/// The vault of the configured engine.
pub fn vault_for(settings: &Settings) -> Result<Arc<dyn Vault>, SealError> {
    Ok(match settings.store.kind {
        StoreKind::Edge => Arc::new(FileVault::open(&settings.data_dir)?),
        StoreKind::Qdrant => Arc::new(QdrantVault::new(
            &settings.store.qdrant,
            &settings.store.collection_prefix,
        )?),
    })
}

/// The KEKs the settings name: the current one and, if set, the previous.
pub fn keyring(seal: &SealSettings) -> Result<Keyring, SealError> {
    let current: Arc<dyn Kek> = Arc::new(LocalKek::parse(&seal.kek)?);
    let previous = seal
        .previous
        .as_ref()
        .map(|key| LocalKek::parse(key).map(|k| Arc::new(k) as Arc<dyn Kek>))
        .transpose()?
        .into_iter()
        .collect();
    Ok(Keyring::new(current, previous))
}

/// The gate storage passes through: decided now when the check can run,
/// else decided by a task that retries every second. A mismatch found now
/// is an error, so the server does not start.
pub async fn prepare(
    settings: &Settings,
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
) -> Result<Arc<SealGate>, SealError> {
    // One vault for every attempt: it remembers which Qdrant node failed, so
    // a retry asks the next one rather than the first again.
    let vault = vault_for(settings)?;
    match check(settings, vault.clone(), &*engine, metrics.clone()).await {
        Ok(sealer) => Ok(Arc::new(SealGate::decided(sealer))),
        Err(e @ (SealError::Mismatch(_) | SealError::Corrupt(_) | SealError::BadKek(_))) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the encryption state yet; storage answers 503 until it can");
            let gate = Arc::new(SealGate::pending());
            let (waiting, settings) = (gate.clone(), settings.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match check(&settings, vault.clone(), &*engine, metrics.clone()).await {
                        Ok(sealer) => {
                            tracing::info!("encryption state checked; storage is open");
                            waiting.decide(Ok(sealer));
                            return;
                        }
                        Err(SealError::Vault(_)) => continue,
                        Err(e) => {
                            tracing::error!(error = %e, "storage stays closed");
                            waiting.decide(Err(e.to_string()));
                            return;
                        }
                    }
                }
            });
            Ok(gate)
        }
    }
}

/// The sealer to run with, after checking that the data suits the settings;
/// `None` when encryption is off (and the data is plain).
async fn check(
    settings: &Settings,
    vault: Arc<dyn Vault>,
    engine: &dyn Engine,
    metrics: Arc<Metrics>,
) -> Result<Option<Arc<Sealer>>, SealError> {
    let marker = vault.marker().await?;
    if marker == Marker::Sealing {
        return Err(SealError::Mismatch(
            "`cordon keys migrate` was interrupted: run it again (with CORDON_KEK) to finish sealing the memories".into(),
        ));
    }
    let Some(seal) = &settings.seal else {
        if marker == Marker::Sealed {
            return Err(SealError::Mismatch(
                "the memories here are encrypted at rest: start with the KEK (CORDON_KEK or CORDON_KEK_FILE) they were sealed under".into(),
            ));
        }
        return Ok(None);
    };
    if marker == Marker::Plain {
        let plain = engine
            .holds_memories()
            .await
            .map_err(|e| SealError::Vault(e.to_string()))?;
        if plain {
            return Err(SealError::Mismatch(
                "CORDON_KEK is set, but the memories here were stored without encryption; they would be served as undecryptable. Seal them first with `cordon keys migrate` (same settings, server stopped), or start without CORDON_KEK".into(),
            ));
        }
        vault.mark(Marker::Sealed).await?;
    }
    let keyring = keyring(seal)?;
    // A wrong KEK would start a server that answers 503 to every user who
    // has memories; one key tells.
    if let Some(sample) = vault.any().await? {
        keyring.open(&sample).await.map_err(|e| {
            SealError::Mismatch(format!(
                "the configured KEKs do not open the stored keys: {e}"
            ))
        })?;
    }
    tracing::info!(
        kek = keyring.current().id(),
        "memories are encrypted at rest"
    );
    Ok(Some(Arc::new(Sealer::new(
        keyring,
        vault,
        &seal.cache,
        metrics,
    ))))
}
