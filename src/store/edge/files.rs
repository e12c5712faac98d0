//! The shard directory layout and the file steps that must survive a crash.
//!
//! Under `<data_dir>/shards/` a live shard is a directory named after its
//! collection. Names starting with a dot are never shards: `.rewrite-<name>`
//! is a rewrite being built (incomplete until renamed), `.swap-<name>` a
//! finished rewrite waiting to replace `<name>`, and `.trash-<uuid>` a
//! directory on its way out. Every change of which directory is live is one
//! `rename`, followed by an fsync of the parent, so a crash leaves either the
//! old or the new state, and [`repair`] finishes or undoes the rest at start.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use uuid::Uuid;

use crate::store::StoreError;

/// Prefix of shard directories on their way out.
const TRASH_PREFIX: &str = ".trash-";
/// Prefix of a rewrite still being built.
const BUILDING_PREFIX: &str = ".rewrite-";
/// Prefix of a finished rewrite that has not yet replaced its shard.
const SWAP_PREFIX: &str = ".swap-";

/// Marker inside a shard: a memory was deleted and its text may still be in
/// the shard's files until the next rewrite. Its mtime is the first such delete.
pub const PURGE_MARKER: &str = "cordon-purge-pending";
/// Inside a shard: its WAL size right after the last rewrite (JSON).
pub const BASELINE_FILE: &str = "cordon-rewrite.json";
/// Inside a shard: its owner index exists and its directories are synced.
pub const SET_UP_MARKER: &str = "cordon-set-up";

pub(super) fn storage_err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(format!("{context}: {e}"))
}

/// Where a rewrite of shard `name` is built.
pub fn building_dir(root: &Path, name: &str) -> PathBuf {
    root.join(format!("{BUILDING_PREFIX}{name}"))
}

/// Where a finished rewrite of shard `name` waits for its swap.
pub fn swap_dir(root: &Path, name: &str) -> PathBuf {
    root.join(format!("{SWAP_PREFIX}{name}"))
}

/// Makes a rename or creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| storage_err(&format!("cannot sync {}", dir.display()), e))?;
    #[cfg(test)]
    if inject::sync_fails(dir) {
        return Err(storage_err(
            &format!("cannot sync {}", dir.display()),
            "injected I/O error",
        ));
    }
    Ok(())
}

/// Drops the page cache's clean pages of every file under `dir`, so that
/// the next read comes from the disk. After a failed sync the kernel may
/// keep pages it could not write, marked clean: read back, they would show
/// data that is not on disk. Best effort: a file that cannot be opened is
/// skipped.
pub fn drop_cached_pages(dir: &Path) {
    use std::os::fd::AsRawFd as _;
    for_each_file(dir, |path, _| {
        if let Ok(file) = std::fs::File::open(path) {
            // SAFETY: the descriptor is open for the whole call; the advice
            // changes no memory of this process.
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    });
}

/// Syncs every directory under `dir` (and `dir`), so that a tree whose files
/// are synced is also complete after a power loss.
pub fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        sync_dir(&d)?;
        let entries = std::fs::read_dir(&d)
            .map_err(|e| storage_err(&format!("cannot read {}", d.display()), e))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Renames `from` to `to` and makes it durable. An error may come after the
/// rename itself (the sync of `root` failed): callers look at the disk
/// ([`renamed`]) before undoing anything.
pub fn rename_durably(root: &Path, from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|e| {
        storage_err(
            &format!("cannot rename {} to {}", from.display(), to.display()),
            e,
        )
    })?;
    sync_dir(root)
}

/// Whether a rename of `from` to `to` took place (whatever its sync said).
pub fn renamed(from: &Path, to: &Path) -> bool {
    !from.exists() && to.exists()
}

/// Moves `dir` out of the way in one atomic step and returns where it went;
/// `None` when it did not exist. Delete the result with [`remove_trash`].
/// As with [`rename_durably`], an error may come after the move.
pub fn move_to_trash(root: &Path, dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    let trash = root.join(format!("{TRASH_PREFIX}{}", Uuid::new_v4()));
    match std::fs::rename(dir, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(storage_err(
                &format!("cannot move {} aside", dir.display()),
                e,
            ));
        }
    }
    sync_dir(root)?;
    Ok(Some(trash))
}

/// Deletes a directory that is no shard (any more): one that
/// [`move_to_trash`] moved aside, or an unfinished rewrite.
pub fn remove_trash(trash: &Path) -> Result<(), StoreError> {
    std::fs::remove_dir_all(trash)
        .map_err(|e| storage_err(&format!("cannot remove {}", trash.display()), e))
}

/// Removes a shard directory so that a crash midway cannot leave a
/// half-deleted shard under a live name: rename first, then delete.
pub fn discard_dir(root: &Path, dir: &Path) -> Result<(), StoreError> {
    match move_to_trash(root, dir)? {
        Some(trash) => remove_trash(&trash),
        None => Ok(()),
    }
}

/// Records durably that `dir` holds deleted text, keeping the time of the
/// first such delete. Must run before the delete is acknowledged.
pub fn mark_purge_pending(dir: &Path) -> Result<(), StoreError> {
    let marker = dir.join(PURGE_MARKER);
    if marker.exists() {
        return Ok(());
    }
    std::fs::File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| storage_err(&format!("cannot create {}", marker.display()), e))?;
    sync_dir(dir)
}

/// Whether the shard in `dir` finished its set-up (see [`SET_UP_MARKER`]).
pub fn is_set_up(dir: &Path) -> bool {
    dir.join(SET_UP_MARKER).is_file()
}

/// Records, durably, that the shard in `dir` is set up.
pub fn mark_set_up(dir: &Path) -> Result<(), StoreError> {
    let marker = dir.join(SET_UP_MARKER);
    std::fs::File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| storage_err(&format!("cannot create {}", marker.display()), e))?;
    sync_dir(dir)
}

/// When the oldest unpurged delete in `dir` happened, if any is pending.
pub fn purge_pending_since(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(PURGE_MARKER))
        .and_then(|m| m.modified())
        .ok()
}

/// Bytes of the shard's WAL files.
pub fn wal_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir.join("wal")) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Calls `f` with the path and metadata of every file under `dir`, at any
/// depth.
fn for_each_file(dir: &Path, mut f: impl FnMut(&Path, &std::fs::Metadata)) {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) if m.is_file() => f(&entry.path(), &m),
                _ => {}
            }
        }
    }
}

/// Allocated bytes of the files under `dir` (as `du` counts them).
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    for_each_file(dir, |_, m| total += m.blocks() * 512);
    total
}

/// Regular files under `dir`, at any depth.
pub fn file_count(dir: &Path) -> usize {
    let mut count = 0;
    for_each_file(dir, |_, _| count += 1);
    count
}

/// The WAL size recorded right after the shard's last rewrite (0 if never).
pub fn read_baseline(dir: &Path) -> u64 {
    std::fs::read(dir.join(BASELINE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("wal_bytes")?.as_u64())
        .unwrap_or(0)
}

/// Records the WAL size of a freshly rewritten shard (before its swap).
pub fn write_baseline(dir: &Path, wal_bytes: u64) -> Result<(), StoreError> {
    let path = dir.join(BASELINE_FILE);
    let body = serde_json::json!({ "wal_bytes": wal_bytes }).to_string();
    std::fs::write(&path, body)
        .and_then(|()| std::fs::File::open(&path)?.sync_all())
        .map_err(|e| storage_err(&format!("cannot write {}", path.display()), e))
}

/// What [`repair`] found and did at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Unfinished rewrites removed (their shard was untouched).
    pub abandoned_rewrites: usize,
    /// Finished rewrites whose swap a crash interrupted, now completed.
    pub completed_swaps: usize,
    /// Interrupted removals finished.
    pub trash_removed: usize,
}

/// Finishes or undoes whatever a crash interrupted, before any shard opens.
///
/// A `.rewrite-` directory is incomplete by definition and is removed: the
/// shard it copied is still intact. A `.swap-` directory is complete and holds
/// every acknowledged write (no write to its shard is acknowledged between its
/// completion and its swap), so it replaces the shard, whether or not the old
/// directory was already moved aside.
pub fn repair(root: &Path) -> Result<Repaired, StoreError> {
    let mut done = Repaired::default();
    let entries = std::fs::read_dir(root)
        .map_err(|e| StoreError::Unavailable(format!("cannot read {}: {e}", root.display())))?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Swaps before trash, so that a swap's own leftover is collected too.
    names.sort_by_key(|n| !n.starts_with(SWAP_PREFIX));
    for name in names {
        let path = root.join(&name);
        if name.starts_with(BUILDING_PREFIX) {
            remove_trash(&path)?;
            done.abandoned_rewrites += 1;
        } else if let Some(shard) = name.strip_prefix(SWAP_PREFIX) {
            let live = root.join(shard);
            if let Some(old) = move_to_trash(root, &live)? {
                remove_trash(&old)?;
            }
            rename_durably(root, &path, &live)?;
            done.completed_swaps += 1;
        }
    }
    let entries = std::fs::read_dir(root)
        .map_err(|e| StoreError::Unavailable(format!("cannot read {}: {e}", root.display())))?;
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(TRASH_PREFIX)
        {
            remove_trash(&entry.path())?;
            done.trash_removed += 1;
        }
    }
    Ok(done)
}

/// Live shard directories with a pending purge, and since when.
pub fn pending_purges(root: &Path) -> Vec<(String, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                return None;
            }
            purge_pending_since(&e.path()).map(|since| (name, since))
        })
        .collect()
}

/// Test-only faults at the file steps: a failed directory sync at a chosen
/// call, and hooks that run at named steps of a rewrite (for example to make
/// a directory immutable, so that a real flush fails).
#[cfg(test)]
pub mod inject {
    use std::path::{Path, PathBuf};

    use parking_lot::Mutex;

    type Hook = Box<dyn Fn(&str) + Send>;

    /// Per directory: syncs made so far, and which of them (1-based) fail.
    static SYNCS: Mutex<Vec<(PathBuf, usize, Vec<usize>)>> = Mutex::new(Vec::new());
    /// Per shards root: the hook called at each named step.
    static STEPS: Mutex<Vec<(PathBuf, Hook)>> = Mutex::new(Vec::new());

    /// Makes the `calls`-th syncs of `dir` from now on report an I/O error
    /// (after syncing for real, as a sync that fails late would).
    pub fn fail_syncs(dir: &Path, calls: &[usize]) {
        SYNCS.lock().push((dir.to_owned(), 0, calls.to_vec()));
    }

    /// Syncs of `dir` made since [`fail_syncs`] named it.
    pub fn syncs_made(dir: &Path) -> usize {
        SYNCS
            .lock()
            .iter()
            .find(|(path, _, _)| path == dir)
            .map_or(0, |(_, made, _)| *made)
    }

    pub(super) fn sync_fails(dir: &Path) -> bool {
        let mut syncs = SYNCS.lock();
        for (path, made, fails) in syncs.iter_mut() {
            if path == dir {
                *made += 1;
                return fails.contains(made);
            }
        }
        false
    }

    /// Calls `hook` with the name of each step reached under shards `root`.
    pub fn on_step(root: &Path, hook: impl Fn(&str) + Send + 'static) {
        STEPS.lock().push((root.to_owned(), Box::new(hook)));
    }

    pub(crate) fn step(root: &Path, name: &str) {
        for (path, hook) in STEPS.lock().iter() {
            if path == root {
                hook(name);
            }
        }
    }
}

/// A named step of a multi-step file operation under shards `root` (a point
/// where the tests inject faults; nothing happens otherwise).
pub fn step(root: &Path, name: &str) {
    #[cfg(test)]
    inject::step(root, name);
    #[cfg(not(test))]
    let _ = (root, name);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(root: &Path, name: &str, content: &str) {
        std::fs::create_dir_all(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("data"), content).unwrap();
    }

    fn content(root: &Path, name: &str) -> String {
        std::fs::read_to_string(root.join(name).join("data")).unwrap()
    }

    #[test]
    fn an_unfinished_rewrite_is_dropped_and_the_shard_kept() {
        let root = tempfile::tempdir().unwrap();
        shard(root.path(), "s", "old");
        shard(root.path(), ".rewrite-s", "half");
        let done = repair(root.path()).unwrap();
        assert_eq!(done.abandoned_rewrites, 1);
        assert_eq!(content(root.path(), "s"), "old");
        assert!(!root.path().join(".rewrite-s").exists());
    }

    #[test]
    fn a_finished_rewrite_replaces_its_shard_at_any_step_of_the_swap() {
        // Crash before the old directory moved aside.
        let root = tempfile::tempdir().unwrap();
        shard(root.path(), "s", "old");
        shard(root.path(), ".swap-s", "new");
        assert_eq!(repair(root.path()).unwrap().completed_swaps, 1);
        assert_eq!(content(root.path(), "s"), "new");
        // Crash after it moved aside, before the new one moved in.
        let root = tempfile::tempdir().unwrap();
        shard(root.path(), ".trash-1", "old");
        shard(root.path(), ".swap-s", "new");
        let done = repair(root.path()).unwrap();
        assert_eq!((done.completed_swaps, done.trash_removed), (1, 1));
        assert_eq!(content(root.path(), "s"), "new");
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the live shard remains");
    }

    /// Pages of `path` in the page cache (by `mincore` on a fresh mapping).
    fn resident_pages(path: &Path) -> usize {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let pages = len.div_ceil(4096);
        let mut residency = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of an open file, unmapped
        // before return; mincore writes one byte per page into `residency`.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED);
            assert_eq!(libc::mincore(addr, len, residency.as_mut_ptr()), 0);
            libc::munmap(addr, len);
        }
        residency.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn dropped_pages_are_read_from_the_disk_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("s").join("segments");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data");
        std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
        std::fs::File::open(&path).unwrap().sync_all().unwrap();
        assert!(resident_pages(&path) > 0, "the written pages are cached");
        drop_cached_pages(&root.path().join("s"));
        assert_eq!(
            resident_pages(&path),
            0,
            "no page of the shard stays cached"
        );
    }

    #[test]
    fn the_purge_marker_keeps_the_first_delete_time() {
        let root = tempfile::tempdir().unwrap();
        shard(root.path(), "s", "x");
        let dir = root.path().join("s");
        assert!(purge_pending_since(&dir).is_none());
        mark_purge_pending(&dir).unwrap();
        let first = purge_pending_since(&dir).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        mark_purge_pending(&dir).unwrap();
        assert_eq!(purge_pending_since(&dir).unwrap(), first);
        assert_eq!(pending_purges(root.path()).len(), 1);
    }
}
