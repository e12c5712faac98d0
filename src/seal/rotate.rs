//! `cordon keys rotate`: re-wraps every data key under the current KEK.
//!
//! Memories are not touched: only the wrapped keys change. Each key is
//! re-wrapped on its own and only if it is still under the old KEK, so an
//! interrupted run is finished by running it again, and a key destroyed by
//! an erase meanwhile stays destroyed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::SealError;
use super::kek::Keyring;
use super::vault::{Vault, WrappedDek};

/// What a rotation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Keys re-wrapped by this run.
    pub rotated: u64,
    /// Keys that were under the current KEK already.
    pub current: u64,
    /// Keys destroyed (by an erase) while the run went on.
    pub gone: u64,
    /// Keys that could not be re-wrapped (their KEK is not configured, or
    /// they do not open); the run should be repeated once that is fixed.
    pub failed: u64,
}

/// Re-wraps every key of `vault` that is not under the keyring's current
/// KEK; `progress(done, total)` is called after each key.
pub async fn rotate(
    keyring: &Keyring,
    vault: &dyn Vault,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, SealError> {
    let keys = vault.all().await?;
    let total = keys.len() as u64;
    let current = keyring.current();
    let mut report = Report::default();
    for (done, wrapped) in keys.into_iter().enumerate() {
        match rewrap_one(keyring, vault, wrapped).await {
            Ok(Outcome::Current) => report.current += 1,
            Ok(Outcome::Rotated) => report.rotated += 1,
            Ok(Outcome::Gone) => report.gone += 1,
            Err(e) => {
                tracing::error!(error = %e, kek = current.id(), "a key was not re-wrapped");
                report.failed += 1;
            }
        }
        progress(done as u64 + 1, total);
    }
    Ok(report)
}

enum Outcome {
    Current,
    Rotated,
    Gone,
}

async fn rewrap_one(
    keyring: &Keyring,
    vault: &dyn Vault,
    wrapped: WrappedDek,
) -> Result<Outcome, SealError> {
    let current = keyring.current();
    if wrapped.kek == current.id() {
        return Ok(Outcome::Current);
    }
    let (owner, dek) = keyring.open(&wrapped).await?;
    let new = WrappedDek {
        owner: wrapped.owner.clone(),
        kek: current.id().to_owned(),
        wrapped: BASE64.encode(current.wrap(&owner, &dek).await?),
    };
    if vault.rewrap(&owner, &wrapped.kek, new).await? {
        Ok(Outcome::Rotated)
    } else {
        Ok(Outcome::Gone)
    }
}

/// Runs the rotation the settings describe: the current KEK is
/// `CORDON_KEK`, the old one `CORDON_KEK_PREVIOUS`. On the embedded engine
/// it holds the data directory's lock throughout. Returns the current KEK's
/// id with the report.
pub async fn run(
    settings: &crate::settings::Settings,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(String, Report), SealError> {
    let seal = settings.seal.as_ref().ok_or_else(|| {
        SealError::Mismatch(
            "set CORDON_KEK (the new KEK) and CORDON_KEK_PREVIOUS (the old one)".into(),
        )
    })?;
    let _lock = match settings.store.kind {
        crate::settings::StoreKind::Edge => Some(
            crate::store::edge::lock_data_dir(&settings.data_dir)
                .map_err(|e| SealError::Mismatch(format!("{e}; stop the server first")))?,
        ),
        crate::settings::StoreKind::Qdrant => None,
    };
    let keyring = super::setup::keyring(seal)?;
    let vault = super::setup::vault_for(settings)?;
    let report = rotate(&keyring, &*vault, progress).await?;
    Ok((keyring.current().id().to_owned(), report))
}
