//! The access logs of the embedded engine: one file of JSON lines per user
//! under `access-log/` in the data directory, named by a keyed hash of the
//! owner, appended and fsynced per batch, each file under a lock of its
//! own. A page is read from the end of the file back, as far as it needs
//! (lines are appended in about time order); pruning and erasing rewrite or
//! remove a user's file whole.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{Record, TrailStore};
use crate::locks::KeyedLocks;
use crate::owner::{Domain, OwnerHash, keyed_in};
use crate::secret::Secret;
use crate::store::StoreError;

/// The access logs in a directory of files.
pub struct FileTrail {
    dir: PathBuf,
    secret: Secret,
    // One user's file at a time: a user paging their own log holds up no
    // other user's entries.
    files: KeyedLocks<PathBuf>,
}

/// Bytes read per step of a page, from the end of the file back.
const CHUNK: u64 = 64 * 1024;

/// How far out of order lines may be appended (microseconds of `seq`):
/// entries are stamped before they queue, and a batch holds them in queue
/// order, so a later stamp can be written a little before an earlier one.
const DISORDER_US: u64 = 10_000_000;

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
            files: KeyedLocks::default(),
        })
    }

    fn file_of(&self, owner_hex: &str) -> PathBuf {
        let name = keyed_in(&self.secret, Domain::AccessLog, &[owner_hex.as_bytes()]);
        self.dir.join(format!("{}.jsonl", hex::encode(&name[..16])))
    }

    /// Runs `work` on `path` on the blocking pool, under the file's lock.
    async fn locked<T: Send + 'static>(
        &self,
        path: &Path,
        work: impl FnOnce(&Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _held = self.files.of(&path.to_path_buf()).write_owned().await;
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || work(&path))
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

/// Up to `limit` records of `path` with `seq` in `[from, to)`, newest first,
/// read from the end back: a step at a time until `limit` are found and the
/// step read lies wholly before them (by more than lines can be out of
/// order), or the file's start.
fn tail(path: &Path, from: u64, to: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, e)),
    };
    let mut end = file.seek(SeekFrom::End(0)).map_err(|e| io(path, e))?;
    let mut found: Vec<Record> = Vec::new();
    // A line cut by the step's start, carried to the next step back.
    let mut carry: Vec<u8> = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let mut chunk = vec![0; (end - start) as usize];
        file.seek(SeekFrom::Start(start)).map_err(|e| io(path, e))?;
        file.read_exact(&mut chunk).map_err(|e| io(path, e))?;
        chunk.extend_from_slice(&carry);
        let lines_from = match start {
            0 => 0,
            _ => chunk
                .iter()
                .position(|&b| b == b'\n')
                .map_or(chunk.len(), |i| i + 1),
        };
        carry = chunk[..lines_from].to_vec();
        let mut oldest = u64::MAX;
        for line in chunk[lines_from..].split(|&b| b == b'\n') {
            if let Ok(record) = serde_json::from_slice::<Record>(line) {
                oldest = oldest.min(record.seq);
                if record.seq >= from && record.seq < to {
                    found.push(record);
                }
            }
        }
        end = start;
        if found.len() >= limit {
            found.sort_unstable_by_key(|r| std::cmp::Reverse(r.seq));
            let last = found[limit - 1].seq;
            if oldest.saturating_add(DISORDER_US) < last {
                break;
            }
        }
        if oldest.saturating_add(DISORDER_US) < from {
            break;
        }
    }
    found.sort_unstable_by_key(|r| std::cmp::Reverse(r.seq));
    found.truncate(limit);
    Ok(found)
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
        for (path, records) in by_file {
            self.locked(&path, move |path| {
                let mut lines = String::new();
                for record in &records {
                    lines.push_str(
                        &serde_json::to_string(record).expect("a record always serialises"),
                    );
                    lines.push('\n');
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| io(path, e))?;
                // A line a crash cut short is ended first, so that it spoils
                // no more than itself.
                let len = file.seek(SeekFrom::End(0)).map_err(|e| io(path, e))?;
                if len > 0 {
                    let mut last = [0u8; 1];
                    file.seek(SeekFrom::Start(len - 1))
                        .map_err(|e| io(path, e))?;
                    file.read_exact(&mut last).map_err(|e| io(path, e))?;
                    if last[0] != b'\n' {
                        lines.insert(0, '\n');
                    }
                }
                file.write_all(lines.as_bytes()).map_err(|e| io(path, e))?;
                file.sync_data().map_err(|e| io(path, e))
            })
            .await?;
        }
        Ok(())
    }

    async fn page(
        &self,
        owner: &OwnerHash,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let path = self.file_of(&owner.to_hex());
        self.locked(&path, move |path| tail(path, from, to, limit))
            .await
    }

    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let path = self.file_of(&owner.to_hex());
        self.locked(&path, |path| {
            let n = read(path)?.len();
            rewrite(path, &[])?;
            Ok(n)
        })
        .await
    }

    async fn prune(&self, before: u64) -> Result<usize, StoreError> {
        let dir = self.dir.clone();
        let files = tokio::task::spawn_blocking(move || -> Result<Vec<PathBuf>, StoreError> {
            let entries = std::fs::read_dir(&dir).map_err(|e| io(&dir, e))?;
            let mut files = Vec::new();
            for entry in entries {
                let path = entry.map_err(|e| io(&dir, e))?.path();
                if path.extension().is_some_and(|e| e == "jsonl") {
                    files.push(path);
                }
            }
            Ok(files)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("access-log task: {e}")))??;
        let mut pruned = 0;
        for path in files {
            pruned += self
                .locked(&path, move |path| {
                    // Appends come in about time order: a file whose first
                    // entry is young enough keeps all of them.
                    if oldest(path)?.is_none_or(|seq| seq >= before) {
                        return Ok(0);
                    }
                    let records = read(path)?;
                    let kept: Vec<Record> = records
                        .iter()
                        .filter(|r| r.seq >= before)
                        .cloned()
                        .collect();
                    let n = records.len() - kept.len();
                    if n > 0 {
                        rewrite(path, &kept)?;
                    }
                    Ok(n)
                })
                .await?;
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(owner: &OwnerHash, seq: u64) -> Record {
        Record {
            id: uuid::Uuid::now_v7(),
            owner: owner.to_hex(),
            seq,
            entry: None,
            sealed: Some("x".into()),
        }
    }

    #[tokio::test]
    async fn pages_run_newest_first_per_owner_and_prune_and_erase_take_only_theirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = Secret::new(vec![3u8; 32]);
        let trail = FileTrail::open(dir.path(), secret.clone()).expect("open");
        let alice = OwnerHash::derive(&secret, "t", "alice");
        let bob = OwnerHash::derive(&secret, "t", "bob");
        let records = (1..=5)
            .map(|seq| record(&alice, seq))
            .chain([record(&bob, 3)])
            .collect();
        trail.append(records).await.expect("append");
        let seqs = |rs: Vec<Record>| rs.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(trail.page(&alice, 0, u64::MAX, 3).await.expect("page")),
            [5, 4, 3]
        );
        assert_eq!(
            seqs(trail.page(&alice, 2, 4, 10).await.expect("page")),
            [3, 2]
        );
        assert_eq!(
            seqs(trail.page(&bob, 0, u64::MAX, 10).await.expect("page")),
            [3]
        );
        assert_eq!(trail.prune(3).await.expect("prune"), 2);
        assert_eq!(
            seqs(trail.page(&alice, 0, u64::MAX, 10).await.expect("page")),
            [5, 4, 3]
        );
        assert_eq!(trail.erase(&alice).await.expect("erase"), 3);
        assert!(
            trail
                .page(&alice, 0, u64::MAX, 10)
                .await
                .expect("page")
                .is_empty()
        );
        assert_eq!(
            seqs(trail.page(&bob, 0, u64::MAX, 10).await.expect("page")),
            [3]
        );
    }

    #[tokio::test]
    async fn paging_back_through_a_file_many_steps_long_sees_every_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = Secret::new(vec![4u8; 32]);
        let trail = FileTrail::open(dir.path(), secret.clone()).expect("open");
        let alice = OwnerHash::derive(&secret, "t", "alice");
        // About 1 MiB: sixteen steps back. A few lines out of order, as a
        // batch can write them.
        let mut seqs: Vec<u64> = (1..=6_000).map(|i| i * 1_000).collect();
        seqs.swap(100, 101);
        seqs.swap(4_000, 4_002);
        for batch in seqs.chunks(500) {
            let records = batch.iter().map(|&s| record(&alice, s)).collect();
            trail.append(records).await.expect("append");
        }
        let mut seen = Vec::new();
        let mut to = u64::MAX;
        loop {
            let page = trail.page(&alice, 0, to, 97).await.expect("page");
            let Some(last) = page.last() else { break };
            to = last.seq;
            seen.extend(page.iter().map(|r| r.seq));
        }
        let expected: Vec<u64> = (1..=6_000).rev().map(|i| i * 1_000).collect();
        assert_eq!(seen, expected);
        let window = trail
            .page(&alice, 2_000_000, 2_005_000, 100)
            .await
            .expect("page");
        let window: Vec<u64> = window.iter().map(|r| r.seq).collect();
        assert_eq!(
            window,
            [2_004_000, 2_003_000, 2_002_000, 2_001_000, 2_000_000]
        );
    }
}
