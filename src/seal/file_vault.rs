//! Wrapped data keys of the embedded engine: one small JSON file per owner
//! under `<data>/keys/`, next to (not inside) the shard directories.
//!
//! A key is created with a hard link from a synced temporary file, which
//! fails if the name exists, so two racing first writes agree on one key. A
//! destroyed key's file is overwritten with zeros and synced before it is
//! unlinked; the README says what that does not reach (file-system journals,
//! SSD remapping, backups). A crash between the zeros and the unlink leaves
//! a zeroed file, which reads as no key and is removed at the next open, as
//! are the temporary files that a crash (or a failed rename) left behind: one
//! of those may hold a wrapped key that an erase would otherwise miss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::SealError;
use super::vault::{Marker, Vault, WrappedDek};
use crate::locks::KeyedLocks;
use crate::owner::OwnerHash;

/// Directory name under the data directory.
pub const KEYS_DIR: &str = "keys";
const MARKER_FILE: &str = "SEALED";

/// Wrapped keys as files.
pub struct FileVault {
    dir: PathBuf,
    // Serialises this process's writers; other processes are kept out by the
    // data directory's lock.
    // One writer per owner's key file (create, re-wrap, destroy), so that
    // one user's key work holds up no one else's; the marker has its own.
    owners: KeyedLocks<OwnerHash>,
    marker: tokio::sync::Mutex<()>,
}

impl FileVault {
    /// The vault under `data_dir`; the directory is created on first write.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(KEYS_DIR),
            owners: KeyedLocks::default(),
            marker: tokio::sync::Mutex::new(()),
        }
    }

    /// [`FileVault::new`], after finishing what a crash or a failed step left
    /// in `keys/`: interrupted destroys and stray temporary files.
    pub fn open(data_dir: &Path) -> Result<Self, SealError> {
        let vault = Self::new(data_dir);
        let removed = repair(&vault.dir)
            .map_err(|e| SealError::Vault(format!("{}: {e}", vault.dir.display())))?;
        if removed > 0 {
            tracing::warn!(
                removed,
                "removed key files left by an interrupted key change"
            );
        }
        Ok(vault)
    }

    fn path(&self, owner: &OwnerHash) -> PathBuf {
        self.dir.join(format!("{}.json", owner.to_hex()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> io::Result<T> + Send + 'static,
    ) -> Result<T, SealError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || f(&dir))
            .await
            .map_err(|e| SealError::Vault(format!("key store task failed: {e}")))?
            .map_err(|e| SealError::Vault(format!("{}: {e}", self.dir.display())))
    }
}

fn read(path: &Path) -> io::Result<Option<WrappedDek>> {
    match fs::read(path) {
        // Zeroed by a destroy that a crash stopped before the unlink.
        Ok(bytes) if is_zeroed(&bytes) => Ok(None),
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a key file holds only zeros (a destroy was cut short).
fn is_zeroed(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| b == 0)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes the temporary files in `dir` and finishes interrupted destroys
/// (zeroed key files); returns how many files went.
fn repair(dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let stray = name.is_some_and(|n| n.starts_with(".tmp-"));
        let destroyed = path.extension().is_some_and(|e| e == "json")
            && fs::read(&path).is_ok_and(|bytes| is_zeroed(&bytes));
        if stray || destroyed {
            fs::remove_file(&path)?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Creates `dir` (owner-only) if needed and syncs its parent, so that the
/// key files inside it cannot vanish with it on a power loss (every time:
/// an earlier attempt may have made it and failed to sync).
fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Writes `bytes` to a fresh temporary file in `dir`, synced.
fn temp_file(dir: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    // Wrapped keys are no secret without the KEK, but nobody else needs
    // to read them either.
    create_dir(dir)?;
    let path = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(path)
}

/// The key files in `dir` (none when it does not exist yet).
fn key_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    Ok(files)
}

fn encode(dek: &WrappedDek) -> Vec<u8> {
    serde_json::to_vec(dek).expect("a wrapped key always serialises")
}

#[async_trait]
impl Vault for FileVault {
    async fn get(&self, owner: &OwnerHash) -> Result<Option<WrappedDek>, SealError> {
        let path = self.path(owner);
        self.blocking(move |_| read(&path)).await
    }

    async fn create(&self, owner: &OwnerHash, dek: WrappedDek) -> Result<WrappedDek, SealError> {
        let _write = self.owners.of(owner).write_owned().await;
        let path = self.path(owner);
        self.blocking(move |dir| {
            if let Some(existing) = read(&path)? {
                return Ok(existing);
            }
            if path.exists() {
                // A destroy cut short; finish it before the new key.
                fs::remove_file(&path)?;
            }
            let temp = temp_file(dir, &encode(&dek))?;
            let linked = fs::hard_link(&temp, &path);
            fs::remove_file(&temp)?;
            match linked {
                Ok(()) => {
                    sync_dir(dir)?;
                    Ok(dek)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(&path)?
                    .ok_or_else(|| io::Error::other("a key vanished while being created")),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn rewrap(
        &self,
        owner: &OwnerHash,
        under: &str,
        dek: WrappedDek,
    ) -> Result<bool, SealError> {
        let _write = self.owners.of(owner).write_owned().await;
        let path = self.path(owner);
        let under = under.to_owned();
        self.blocking(move |dir| {
            match read(&path)? {
                Some(current) if current.kek == under => {}
                _ => return Ok(false),
            }
            let temp = temp_file(dir, &encode(&dek))?;
            if let Err(e) = fs::rename(&temp, &path) {
                // Not left behind: it holds the key, wrapped anew.
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
            sync_dir(dir)?;
            Ok(true)
        })
        .await
    }

    async fn destroy(&self, owner: &OwnerHash) -> Result<(), SealError> {
        let _write = self.owners.of(owner).write_owned().await;
        let path = self.path(owner);
        self.blocking(move |dir| {
            // A zeroed file is a destroy cut short: zeroed again, removed.
            let len = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            // Overwrite in place first, so the file system's free blocks do
            // not keep the wrapped key after the unlink.
            let mut file = OpenOptions::new().write(true).open(&path)?;
            file.write_all(&vec![0u8; len as usize])?;
            file.sync_all()?;
            drop(file);
            fs::remove_file(&path)?;
            sync_dir(dir)
        })
        .await
    }

    async fn all(&self) -> Result<Vec<WrappedDek>, SealError> {
        self.blocking(|dir| {
            let mut keys = Vec::new();
            for path in key_files(dir)? {
                keys.extend(read(&path)?);
            }
            Ok(keys)
        })
        .await
    }

    async fn any(&self) -> Result<Option<WrappedDek>, SealError> {
        self.blocking(|dir| match key_files(dir)?.first() {
            Some(path) => read(path),
            None => Ok(None),
        })
        .await
    }

    fn shared(&self) -> bool {
        false
    }

    async fn marker(&self) -> Result<Marker, SealError> {
        let text = self
            .blocking(|dir| match fs::read_to_string(dir.join(MARKER_FILE)) {
                Ok(text) => Ok(text),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(e),
            })
            .await?;
        Marker::parse(&text)
    }

    async fn mark(&self, marker: Marker) -> Result<(), SealError> {
        let _write = self.marker.lock().await;
        let text = format!("{}\n", marker.text());
        self.blocking(move |dir| {
            let temp = temp_file(dir, text.as_bytes())?;
            if let Err(e) = fs::rename(&temp, dir.join(MARKER_FILE)) {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
            sync_dir(dir)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn dek(owner: &OwnerHash, kek: &str, wrapped: &str) -> WrappedDek {
        WrappedDek {
            owner: owner.to_hex(),
            kek: kek.into(),
            wrapped: wrapped.into(),
        }
    }

    #[tokio::test]
    async fn the_first_key_created_wins_and_a_destroyed_one_is_gone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let vault = FileVault::new(dir.path());
        let alice = OwnerHash::derive(&Secret::new(vec![2u8; 32]), "t", "alice");
        let first = vault
            .create(&alice, dek(&alice, "k1", "AAAA"))
            .await
            .expect("created");
        let second = vault
            .create(&alice, dek(&alice, "k1", "BBBB"))
            .await
            .expect("kept");
        assert_eq!(first, second);
        assert!(
            !vault
                .rewrap(&alice, "k0", dek(&alice, "k2", "CCCC"))
                .await
                .expect("ran")
        );
        assert!(
            vault
                .rewrap(&alice, "k1", dek(&alice, "k2", "CCCC"))
                .await
                .expect("ran")
        );
        assert_eq!(vault.all().await.expect("listed").len(), 1);
        vault.destroy(&alice).await.expect("destroyed");
        assert_eq!(vault.get(&alice).await.expect("read"), None);
        assert!(
            !vault
                .rewrap(&alice, "k2", dek(&alice, "k3", "DDDD"))
                .await
                .expect("ran")
        );
        assert_eq!(
            vault.get(&alice).await.expect("read"),
            None,
            "rewrap resurrected it"
        );
        assert_eq!(vault.marker().await.expect("read"), Marker::Plain);
        vault.mark(Marker::Sealing).await.expect("marked");
        assert_eq!(vault.marker().await.expect("read"), Marker::Sealing);
        vault.mark(Marker::Sealed).await.expect("marked");
        assert_eq!(vault.marker().await.expect("read"), Marker::Sealed);
    }
}
