//! The access logs of the embedded engine: one file of JSON lines per user
//! under `access-log/` in the data directory, named by a keyed hash of the
//! owner, appended and fsynced per batch. Pruning and erasing rewrite or
//! remove a user's file whole.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Record, TrailStore};
use crate::owner::{Domain, OwnerHash, keyed_in};
use crate::secret::Secret;
use crate::store::StoreError;

/// The access logs in a directory of files.
pub struct FileTrail {
    dir: PathBuf,
    secret: Secret,
    // One writer of the files at a time: batches, prunes and erases are
    // rare next to requests, and each is short.
    lock: Arc<tokio::sync::Mutex<()>>,
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("access log {}: {e}", path.display()))
}

impl FileTrail {
    /// The logs under `data_dir/access-log`, created if missing.
    pub fn open(data_dir: &Path, secret: Secret) -> Result<Self, StoreError> {
        let dir = data_dir.join("access-log");
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        Ok(Self {
            dir,
            secret,
            lock: Arc::default(),
        })
    }

    fn file_of(&self, owner_hex: &str) -> PathBuf {
        let name = keyed_in(&self.secret, Domain::AccessLog, &[owner_hex.as_bytes()]);
        self.dir.join(format!("{}.jsonl", hex::encode(&name[..16])))
    }

    /// Runs `work` on the blocking pool under the lock.
    async fn locked<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _held = self.lock.clone().lock_owned().await;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| StoreError::Internal(format!("access-log task: {e}")))?
    }
}

/// The records of `path` (none when it does not exist); a line that does
/// not parse (a write cut short by a crash) is skipped.
fn read(path: &Path) -> Result<Vec<Record>, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, e)),
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// The `seq` of the first record of `path` (`None`: none parses).
fn oldest(path: &Path) -> Result<Option<u64>, StoreError> {
    use std::io::BufRead;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, e)),
    };
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| io(path, e))?;
        if let Ok(record) = serde_json::from_str::<Record>(&line) {
            return Ok(Some(record.seq));
        }
    }
    Ok(None)
}

/// Replaces `path` with `records` (removes it when there are none).
fn rewrite(path: &Path, records: &[Record]) -> Result<(), StoreError> {
    if records.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path, e)),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut out = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    for record in records {
        let line = serde_json::to_string(record).expect("a record always serialises");
        writeln!(out, "{line}").map_err(|e| io(&tmp, e))?;
    }
    out.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

#[async_trait]
impl TrailStore for FileTrail {
    async fn append(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let mut by_file: HashMap<PathBuf, Vec<Record>> = HashMap::new();
        for record in records {
            by_file
                .entry(self.file_of(&record.owner))
                .or_default()
                .push(record);
        }
        self.locked(move || {
            for (path, records) in by_file {
                let mut lines = String::new();
                for record in &records {
                    lines.push_str(
                        &serde_json::to_string(record).expect("a record always serialises"),
                    );
                    lines.push('\n');
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| io(&path, e))?;
                file.write_all(lines.as_bytes()).map_err(|e| io(&path, e))?;
                file.sync_data().map_err(|e| io(&path, e))?;
            }
            Ok(())
        })
        .await
    }

    async fn page(
        &self,
        owner: &OwnerHash,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let path = self.file_of(&owner.to_hex());
        let mut records = self.locked(move || read(&path)).await?;
        records.retain(|r| r.seq >= from && r.seq < to);
        records.sort_unstable_by_key(|r| std::cmp::Reverse(r.seq));
        records.truncate(limit);
        Ok(records)
    }

    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let path = self.file_of(&owner.to_hex());
        self.locked(move || {
            let n = read(&path)?.len();
            rewrite(&path, &[])?;
            Ok(n)
        })
        .await
    }

    async fn prune(&self, before: u64) -> Result<usize, StoreError> {
        let dir = self.dir.clone();
        self.locked(move || {
            let mut pruned = 0;
            let entries = std::fs::read_dir(&dir).map_err(|e| io(&dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| io(&dir, e))?.path();
                if path.extension().is_none_or(|e| e != "jsonl") {
                    continue;
                }
                // Appends come in time order: a file whose first entry is
                // young enough keeps all of them.
                if oldest(&path)?.is_none_or(|seq| seq >= before) {
                    continue;
                }
                let records = read(&path)?;
                let kept: Vec<Record> = records
                    .iter()
                    .filter(|r| r.seq >= before)
                    .cloned()
                    .collect();
                if kept.len() < records.len() {
                    pruned += records.len() - kept.len();
                    rewrite(&path, &kept)?;
                }
            }
            Ok(pruned)
        })
        .await
    }
}
