//! The embedded engine's registry: `placements.json` in the data
//! directory, which one process owns, so a compare and set is a check
//! under a lock followed by a durable rewrite of the file.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Placements, Record};
use crate::owner::OwnerHash;
use crate::store::StoreError;

/// One user's record as the file holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    owner: String,
    #[serde(flatten)]
    record: Record,
}

/// The embedded engine's registry: a JSON file, replaced atomically.
pub struct FilePlacements {
    path: PathBuf,
    records: parking_lot::Mutex<HashMap<String, Record>>,
}

impl FilePlacements {
    /// The registry in `data_dir`, read now.
    pub fn open(data_dir: &std::path::Path) -> Result<Self, StoreError> {
        let path = data_dir.join("placements.json");
        let records = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Stored>>(&bytes)
                .map_err(|e| StoreError::Engine(format!("{} is corrupt: {e}", path.display())))?
                .into_iter()
                .map(|r| (r.owner, r.record))
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
    fn save(&self, records: &HashMap<String, Record>) -> Result<(), StoreError> {
        let list: Vec<Stored> = records
            .iter()
            .map(|(owner, record)| Stored {
                owner: owner.clone(),
                record: *record,
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
            crate::store::edge::files::sync_dir(dir)?;
        }
        Ok(())
    }

    /// Applies `change` and saves; the change is undone if the save fails.
    fn change(&self, change: impl FnOnce(&mut HashMap<String, Record>)) -> Result<(), StoreError> {
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
    async fn load(&self) -> Result<HashMap<String, Record>, StoreError> {
        Ok(self.records.lock().clone())
    }

    async fn get(&self, owner: &OwnerHash) -> Result<Option<Record>, StoreError> {
        Ok(self.records.lock().get(&owner.to_hex()).copied())
    }

    async fn create(
        &self,
        owner: &OwnerHash,
        record: Record,
    ) -> Result<Option<Record>, StoreError> {
        let key = owner.to_hex();
        if let Some(held) = self.records.lock().get(&key) {
            return Ok(Some(*held));
        }
        self.change(|records| {
            records.entry(key).or_insert(record);
        })?;
        self.get(owner).await
    }

    async fn replace(
        &self,
        owner: &OwnerHash,
        expected: &Record,
        record: &Record,
    ) -> Result<bool, StoreError> {
        let key = owner.to_hex();
        let mut held = false;
        self.change(|records| {
            if let Some(current) = records.get_mut(&key)
                && current == expected
            {
                *current = *record;
                held = true;
            }
        })?;
        Ok(held)
    }

    async fn put(&self, owner: &OwnerHash, record: &Record) -> Result<(), StoreError> {
        let key = owner.to_hex();
        self.change(|records| {
            records.insert(key, *record);
        })
    }

    async fn remove(&self, owner: &OwnerHash, expected: &Record) -> Result<(), StoreError> {
        let key = owner.to_hex();
        if self.records.lock().get(&key) != Some(expected) {
            return Ok(());
        }
        self.change(|records| {
            if records.get(&key) == Some(expected) {
                records.remove(&key);
            }
        })
    }

    async fn clear(&self) -> Result<(), StoreError> {
        if self.records.lock().is_empty() {
            return Ok(());
        }
        self.change(HashMap::clear)
    }
}
