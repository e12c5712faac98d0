//! Where a shared-tier user's memories live while and after they move to a
//! collection of their own: one record per promoted user.
//!
//! Users without a record live in their shared collection, which is nearly
//! everyone, so the registry stays small and the process holds all of it.
//! The embedded engine keeps it in `placements.json` in the data directory,
//! which one process owns.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::owner::OwnerHash;

/// Where a promoted user's reads and writes go, in the order a move passes
/// through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Writes go to both collections, reads to the shared one; the mover
    /// copies and checks.
    Copying,
    /// Writes go to both, reads to the user's own.
    Reading,
    /// Writes and reads go to the user's own; the mover deletes the shared copy.
    Clearing,
    /// Moved: only the user's own collection holds their memories.
    Own,
}

/// One user's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    owner: String,
    phase: Phase,
}

/// The registry's storage.
#[async_trait]
pub trait Placements: Send + Sync {
    /// Every record, by owner hash (hex).
    async fn load(&self) -> Result<HashMap<String, Phase>, StoreError>;
    /// Writes `owner`'s phase; with `create` false only over an existing
    /// record (an erase removed it otherwise). Returns whether the record
    /// holds `phase` now.
    async fn set(&self, owner: &OwnerHash, phase: Phase, create: bool) -> Result<bool, StoreError>;
    /// Removes `owner`'s record.
    async fn remove(&self, owner: &OwnerHash) -> Result<(), StoreError>;
    /// Removes every record (after `cordon tier migrate`).
    async fn clear(&self) -> Result<(), StoreError>;
}

/// The embedded engine's registry: a JSON file, replaced atomically.
pub struct FilePlacements {
    path: PathBuf,
    records: parking_lot::Mutex<HashMap<String, Phase>>,
}

impl FilePlacements {
    /// The registry in `data_dir`, read now.
    pub fn open(data_dir: &std::path::Path) -> Result<Self, StoreError> {
        let path = data_dir.join("placements.json");
        let records = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Record>>(&bytes)
                .map_err(|e| StoreError::Engine(format!("{} is corrupt: {e}", path.display())))?
                .into_iter()
                .map(|r| (r.owner, r.phase))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(Self {
            path,
            records: parking_lot::Mutex::new(records),
        })
    }

    /// Writes `records` durably: a new file, synced, renamed over the old,
    /// and the directory synced.
    fn save(&self, records: &HashMap<String, Phase>) -> Result<(), StoreError> {
        let list: Vec<Record> = records
            .iter()
            .map(|(owner, phase)| Record {
                owner: owner.clone(),
                phase: *phase,
            })
            .collect();
        let bytes = serde_json::to_vec(&list).expect("records always serialise");
        let tmp = self.path.with_extension("json.tmp");
        let io = |e: std::io::Error| {
            StoreError::Unavailable(format!("cannot write {}: {e}", self.path.display()))
        };
        {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&tmp).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            super::edge::files::sync_dir(dir)?;
        }
        Ok(())
    }

    /// Applies `change` and saves; the change is undone if the save fails.
    fn change(&self, change: impl FnOnce(&mut HashMap<String, Phase>)) -> Result<(), StoreError> {
        let mut records = self.records.lock();
        let mut next = records.clone();
        change(&mut next);
        self.save(&next)?;
        *records = next;
        Ok(())
    }
}

#[async_trait]
impl Placements for FilePlacements {
    async fn load(&self) -> Result<HashMap<String, Phase>, StoreError> {
        Ok(self.records.lock().clone())
    }

    async fn set(&self, owner: &OwnerHash, phase: Phase, create: bool) -> Result<bool, StoreError> {
        let key = owner.to_hex();
        let mut held = false;
        self.change(|records| {
            if create || records.contains_key(&key) {
                records.insert(key, phase);
                held = true;
            }
        })?;
        Ok(held)
    }

    async fn remove(&self, owner: &OwnerHash) -> Result<(), StoreError> {
        let key = owner.to_hex();
        if !self.records.lock().contains_key(&key) {
            return Ok(());
        }
        self.change(|records| {
            records.remove(&key);
        })
    }

    async fn clear(&self) -> Result<(), StoreError> {
        if self.records.lock().is_empty() {
            return Ok(());
        }
        self.change(HashMap::clear)
    }
}
