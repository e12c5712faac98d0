//! Where wrapped data keys live: apart from every user's memories, so a copy
//! of one user's shard or collection does not carry its key.
//!
//! The embedded engine keeps them in `<data>/keys/` ([`super::file_vault`]),
//! the Qdrant engine in the system collection `<prefix>keys`
//! ([`super::qdrant_vault`]). Either also holds the marker that says the
//! deployment's memories are sealed, so that a server started without a KEK
//! on sealed data (or with one on plain data) refuses to start.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::SealError;
use crate::owner::OwnerHash;

/// One user's data key, wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedDek {
    /// The owner hash (hex) the key belongs to.
    pub owner: String,
    /// Id of the KEK that wrapped it.
    pub kek: String,
    /// The wrapped key, base64.
    pub wrapped: String,
}

/// A store of wrapped data keys, one per owner.
#[async_trait]
pub trait Vault: Send + Sync {
    /// The owner's wrapped key, if it has one.
    async fn get(&self, owner: &OwnerHash) -> Result<Option<WrappedDek>, SealError>;
    /// Stores `dek` unless the owner already has a key; returns the key the
    /// vault holds afterwards, which is the other one when a racing writer
    /// (another request, another replica) got there first.
    async fn create(&self, owner: &OwnerHash, dek: WrappedDek) -> Result<WrappedDek, SealError>;
    /// Replaces the owner's key with `dek` if it is still wrapped by the KEK
    /// `under`; `false` (nothing written) when it is gone or was changed.
    async fn rewrap(
        &self,
        owner: &OwnerHash,
        under: &str,
        dek: WrappedDek,
    ) -> Result<bool, SealError>;
    /// Destroys the owner's key; durable when this returns.
    async fn destroy(&self, owner: &OwnerHash) -> Result<(), SealError>;
    /// Every wrapped key (for rotation).
    async fn all(&self) -> Result<Vec<WrappedDek>, SealError>;
    /// Whether the deployment's memories are marked as sealed.
    async fn sealed(&self) -> Result<bool, SealError>;
    /// Marks the deployment's memories as sealed; durable when this returns.
    async fn mark_sealed(&self) -> Result<(), SealError>;
}

/// The text of the sealed marker.
pub const MARKER: &str = "cordon sealed v1";
