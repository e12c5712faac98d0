//! The change log of the embedded engine: one JSON line per change in
//! `<data_dir>/access/changes.ndjson`, apart from every shard.
//!
//! An append is written and fsynced before the admin call returns. An append
//! that fails (a full disk writing part of the line, a failed sync) is cut
//! back to the last complete record, synced, before the call is refused, so
//! the refused change does not take effect at the next start and a partial
//! line never joins the next one. Should even the cut fail, nothing more is
//! appended until it succeeds; a process that stops before then may find
//! the refused change at its next start (as after any 503, its outcome is
//! unknown). A crash mid-append leaves a torn last line,
//! which was never acknowledged: it is cut off at the next start. Any other
//! unreadable line stops the start, since skipping it could silently lift a
//! revocation.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::rules::Change;
use super::{AccessError, AccessLog};

/// Directory of the log inside the data directory.
pub const DIR: &str = "access";
/// The log's file name.
const FILE: &str = "changes.ndjson";

/// The append-only change log in the data directory.
pub struct FileLog {
    path: PathBuf,
    // Appends from concurrent admin calls must not interleave.
    tail: Mutex<Tail>,
}

/// The open log and where its last complete record ends.
struct Tail {
    file: File,
    /// Bytes of complete, synced records.
    len: u64,
    /// Whether bytes of a failed append may lie past `len`.
    torn: bool,
}

impl Tail {
    /// Cuts a failed append off, if one may be there; until that succeeds
    /// nothing more is appended.
    fn cut_back(&mut self) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.file.sync_all()?;
            self.torn = false;
        }
        Ok(())
    }
}

impl FileLog {
    /// Opens (creating) the log under `data_dir`, repairing a torn last line.
    pub fn open(data_dir: &Path) -> Result<Self, AccessError> {
        let dir = data_dir.join(DIR);
        let path = dir.join(FILE);
        // The directory and the file are synced into their parents at
        // every open (a failed start may have made them): an acknowledged
        // change must not vanish with the entry that holds it.
        std::fs::create_dir_all(&dir).map_err(|e| AccessError::io(&dir, e))?;
        sync_dir(data_dir)?;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| AccessError::io(&path, e))?;
        sync_dir(&dir)?;
        cut_torn_tail(&path, &file)?;
        let len = file
            .metadata()
            .map_err(|e| AccessError::io(&path, e))?
            .len();
        Ok(Self {
            path,
            tail: Mutex::new(Tail {
                file,
                len,
                torn: false,
            }),
        })
    }

    fn read_all(&self) -> Result<Vec<Change>, AccessError> {
        let file = File::open(&self.path).map_err(|e| AccessError::io(&self.path, e))?;
        let mut changes = Vec::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| AccessError::io(&self.path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let change = serde_json::from_str(&line).map_err(|e| {
                AccessError::Corrupt(format!("{} line {}: {e}", self.path.display(), n + 1))
            })?;
            changes.push(change);
        }
        Ok(changes)
    }
}

fn sync_dir(dir: &Path) -> Result<(), AccessError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AccessError::io(dir, e))
}

/// Truncates the file after its last newline: bytes past it are an append
/// that a crash cut short, which no caller was told had succeeded.
fn cut_torn_tail(path: &Path, file: &File) -> Result<(), AccessError> {
    let bytes = std::fs::read(path).map_err(|e| AccessError::io(path, e))?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            dropped_bytes = bytes.len() - keep,
            "cutting a torn last line off the access log"
        );
        file.set_len(keep as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| AccessError::io(path, e))?;
    }
    Ok(())
}

#[async_trait]
impl AccessLog for FileLog {
    async fn load(&self) -> Result<Vec<Change>, AccessError> {
        self.read_all()
    }

    async fn since(&self, _since_ms: u64) -> Result<Vec<Change>, AccessError> {
        self.read_all()
    }

    async fn append(&self, change: &Change) -> Result<(), AccessError> {
        // A blocking write and fsync on the caller's thread: only admin calls
        // append, rarely, and the call must not return before the sync.
        let mut line = serde_json::to_vec(change).expect("a change always serialises");
        line.push(b'\n');
        let mut tail = self.tail.lock();
        tail.cut_back()
            .map_err(|e| AccessError::io(&self.path, e))?;
        let written = tail
            .file
            .write_all(&line)
            .and_then(|()| tail.file.sync_data());
        match written {
            Ok(()) => {
                tail.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // The change is refused: take back whatever of it reached
                // the file, now or (failing that) before the next append.
                tail.torn = true;
                if let Err(cut) = tail.cut_back() {
                    tracing::error!(path = %self.path.display(), error = %cut, "could not cut a failed append off the access log; no change is appended until it is");
                }
                Err(AccessError::io(&self.path, e))
            }
        }
    }

    fn shared(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::rules::Rule;

    fn change(n: u64) -> Change {
        Change {
            id: uuid::Uuid::now_v7(),
            at_ms: n,
            rule: Rule::Tenant {
                tenant: "00".repeat(32),
                enabled: n.is_multiple_of(2),
            },
        }
    }

    #[tokio::test]
    async fn appended_changes_are_read_back_after_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = FileLog::open(dir.path()).expect("opens");
        let (a, b) = (change(1), change(2));
        log.append(&a).await.expect("appends");
        log.append(&b).await.expect("appends");
        drop(log);
        let log = FileLog::open(dir.path()).expect("reopens");
        assert_eq!(log.load().await.expect("loads"), [a, b]);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_and_later_appends_still_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = FileLog::open(dir.path()).expect("opens");
        let a = change(1);
        log.append(&a).await.expect("appends");
        drop(log);
        let path = dir.path().join(DIR).join(FILE);
        let mut file = OpenOptions::new().append(true).open(&path).expect("opens");
        file.write_all(b"{\"id\":\"0190")
            .expect("writes a torn line");
        drop(file);
        let log = FileLog::open(dir.path()).expect("repairs");
        let b = change(2);
        log.append(&b).await.expect("appends");
        assert_eq!(log.load().await.expect("loads"), [a, b]);
    }

    #[tokio::test]
    async fn a_corrupt_line_in_the_middle_stops_the_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(DIR);
        std::fs::create_dir_all(&path).expect("dir");
        std::fs::write(path.join(FILE), "not json\n{}\n").expect("writes");
        let log = FileLog::open(dir.path()).expect("opens");
        assert!(matches!(log.load().await, Err(AccessError::Corrupt(_))));
    }
}
