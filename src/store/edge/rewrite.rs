//! Shard rewrites: copy a shard's live points into a fresh shard and swap it in.
//!
//! qdrant-edge 0.7 never truncates its WAL and keeps a deleted point's payload
//! in its segment files, so a shard only grows, and a deleted memory's text
//! stays on disk. A rewrite is the way out: the fresh shard holds only the
//! live points, so its WAL and files track the live memories and no deleted
//! text survives. A shard is due when its WAL passes its bound (see
//! [`super::pool::WAL_GROWTH_BYTES`]) or when a delete has been pending
//! longer than the purge delay.
//!
//! The copy runs page by page under the shared lock, so the user's reads and
//! writes go on meanwhile; writes acknowledged during the copy are journaled
//! by the slot and replayed onto the copy under the exclusive lock, which is
//! held from then until the swap, so no acknowledged write is lost. The swap
//! itself is made of renames that [`super::files::repair`] can finish after a
//! crash. A rewrite carries its shard's name and copies every point with its
//! owner field as it is (a collided shard holds several owners); it returns
//! nothing to any caller.

use std::time::Instant;

use qdrant_edge::{
    EdgeShard, PointInsertOperations, PointOperations, PointStructPersisted, ScrollRequest,
    UpdateOperation, WithPayloadInterface, WithVector,
};

use super::pool::{Slot, create_owner_index};
use super::{EdgeEngine, engine_err, shard_config};
use super::{fault, files};
use crate::store::StoreError;

/// Points copied per page; the user's writes wait at most one page.
const COPY_PAGE: usize = 256;

/// One page of a whole shard's points after `offset`, payloads always.
fn copy_page(offset: Option<qdrant_edge::PointId>, vectors: bool) -> ScrollRequest {
    ScrollRequest {
        offset,
        limit: Some(COPY_PAGE),
        filter: None,
        with_payload: Some(WithPayloadInterface::Bool(true)),
        with_vector: WithVector::Bool(vectors),
        order_by: None,
    }
}

/// How a rewrite ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The shard was replaced by its copy.
    Rewritten {
        /// Live points copied.
        points: usize,
        /// WAL bytes of the old shard.
        wal_before: u64,
        /// WAL bytes of the fresh shard.
        wal_after: u64,
    },
    /// There was no shard (erased, or never written).
    Gone,
    /// The shard changed under the copy (erase) or the engine is stopping.
    Cancelled,
}

fn is_delete(op: &UpdateOperation) -> bool {
    matches!(
        op,
        UpdateOperation::PointOperation(
            PointOperations::DeletePoints { .. } | PointOperations::DeletePointsByFilter(_)
        )
    )
}

/// A change made to each payload as it is copied (offline migration).
pub type Transform<'a> =
    &'a (dyn Fn(uuid::Uuid, &mut serde_json::Map<String, serde_json::Value>) -> bool + Send + Sync);

impl EdgeEngine {
    /// Rewrites shard `name` now (blocking; run on the blocking pool).
    pub fn rewrite_blocking(&self, name: &str) -> Result<Outcome, StoreError> {
        self.rewrite_with(name, None)
    }

    /// Names of the user shard directories.
    pub(super) fn shard_names(&self) -> Result<Vec<String>, StoreError> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| files::storage_err(&format!("cannot read {}", self.root.display()), e))?;
        let prefix = &self.settings.collection_prefix;
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| {
                crate::store::name_hex_len(name, prefix) == Some(self.settings.name_hex_chars)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Name lengths of shard directories of another layout (see
    /// [`crate::store::Engine::other_layouts`]).
    pub(super) fn other_layouts_blocking(
        &self,
    ) -> Result<std::collections::BTreeSet<usize>, StoreError> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| files::storage_err(&format!("cannot read {}", self.root.display()), e))?;
        let prefix = &self.settings.collection_prefix;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| crate::store::name_hex_len(&name, prefix))
            .filter(|len| *len != self.settings.name_hex_chars)
            .collect())
    }

    /// Every owner hash in a shard of this engine's naming (offline migration).
    pub(super) fn owners_blocking(&self) -> Result<Vec<crate::owner::OwnerHash>, StoreError> {
        let mut owners = std::collections::BTreeSet::new();
        for name in self.shard_names()? {
            let slot = self.pool.slot(&name)?;
            let mut offset = None;
            loop {
                let page =
                    slot.read(|shard| shard.scroll(copy_page(offset, false)).map_err(engine_err))?;
                let Some((records, next)) = page else { break };
                for record in records {
                    let owner = record
                        .payload
                        .as_ref()
                        .and_then(|p| p.0.get(crate::store::OWNER_FIELD))
                        .and_then(serde_json::Value::as_str)
                        .and_then(crate::owner::OwnerHash::from_hex);
                    if let Some(owner) = owner {
                        owners.insert(owner.to_hex());
                    }
                }
                match next {
                    Some(next) => offset = Some(next),
                    None => break,
                }
            }
        }
        Ok(owners
            .iter()
            .filter_map(|hex| crate::owner::OwnerHash::from_hex(hex))
            .collect())
    }

    /// Rewrites shard `name` with `reseal` applied to every payload, so
    /// that no old payload stays in its files; returns how many changed.
    pub(super) fn reseal_blocking(
        &self,
        name: &str,
        reseal: &crate::store::Reseal,
    ) -> Result<usize, StoreError> {
        let changed = std::sync::atomic::AtomicUsize::new(0);
        let counting = |id, payload: &mut serde_json::Map<String, serde_json::Value>| {
            let did = reseal(id, payload);
            if did {
                changed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            did
        };
        match self.rewrite_with(name, Some(&counting))? {
            Outcome::Rewritten { .. } | Outcome::Gone => {
                Ok(changed.load(std::sync::atomic::Ordering::Relaxed))
            }
            Outcome::Cancelled => Err(StoreError::Unavailable(format!(
                "the rewrite of shard {} was cancelled",
                self.shard_tag(name)
            ))),
        }
    }

    /// Rewrites shard `name`, passing each payload through `transform`.
    fn rewrite_with(
        &self,
        name: &str,
        transform: Option<Transform<'_>>,
    ) -> Result<Outcome, StoreError> {
        let slot = self.pool.slot(name)?;
        if !slot.ensure_open(false)? {
            return Ok(Outcome::Gone);
        }
        // The copy needs about the live part of the shard; the shard's whole
        // size bounds it.
        self.check_space(files::disk_bytes(&slot.dir))?;
        let generation = {
            let guard = slot.shard.write();
            if guard.is_none() {
                return Ok(Outcome::Gone);
            }
            *slot.journal.lock() = Some(Vec::new());
            slot.generation()
        };
        let building = files::building_dir(&self.root, name);
        let started = Instant::now();
        // A panic (qdrant-edge panics on I/O errors) is an error like any
        // other here: the journal must stop and the copy must go.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.copy_and_swap(&slot, generation, &building, transform)
        }))
        .unwrap_or_else(|_| Err(StoreError::Internal("a shard rewrite panicked".into())));
        if !matches!(result, Ok(Outcome::Rewritten { .. })) {
            *slot.journal.lock() = None;
            if building.exists() {
                let _ = files::remove_trash(&building);
            }
        }
        if let Ok(Outcome::Rewritten {
            points,
            wal_before,
            wal_after,
        }) = &result
        {
            // What fell due during the copy was judged on the old shard; only
            // deletes replayed onto the copy still need a purge.
            self.unschedule(name);
            if files::purge_pending_since(&slot.dir).is_some() {
                self.schedule(name, Instant::now() + self.purge_after());
            }
            tracing::info!(
                shard = %self.shard_tag(name),
                points,
                wal_before,
                wal_after,
                ms = started.elapsed().as_millis() as u64,
                "rewrote shard"
            );
        }
        result
    }

    fn copy_and_swap(
        &self,
        slot: &Slot,
        generation: u64,
        building: &std::path::Path,
        transform: Option<Transform<'_>>,
    ) -> Result<Outcome, StoreError> {
        // Leftovers of an earlier failed attempt in this process. A `.swap-`
        // left behind would replace the live shard at the next start.
        let swap = files::swap_dir(&self.root, &slot.name);
        for leftover in [building, swap.as_path()] {
            if leftover.exists() {
                files::remove_trash(leftover)?;
            }
        }
        std::fs::create_dir_all(building)
            .map_err(|e| files::storage_err(&format!("cannot create {}", building.display()), e))?;
        let fresh = Building(Some(
            EdgeShard::new(building, shard_config()).map_err(engine_err)?,
        ));
        create_owner_index(fresh.shard(), slot.tenant_index)?;
        let wal_before = files::wal_bytes(&slot.dir);
        let mut points = 0;
        let mut offset = None;
        loop {
            if self.is_stopping() {
                return Ok(Outcome::Cancelled);
            }
            let page = {
                let guard = slot.shard.read();
                let Some(shard) = guard.as_ref() else {
                    return Ok(Outcome::Cancelled);
                };
                if slot.generation() != generation {
                    return Ok(Outcome::Cancelled);
                }
                shard.scroll(copy_page(offset, true)).map_err(engine_err)?
            };
            let (records, next) = page;
            let mut batch = records
                .into_iter()
                .map(PointStructPersisted::try_from)
                .collect::<Result<Vec<_>, _>>()
                .map_err(engine_err)?;
            if let Some(transform) = transform {
                for point in &mut batch {
                    if let qdrant_edge::PointId::Uuid(id) = point.id {
                        let payload = point
                            .payload
                            .get_or_insert_with(|| qdrant_edge::Payload(Default::default()));
                        transform(id, &mut payload.0);
                    }
                }
            }
            points += batch.len();
            if !batch.is_empty() {
                fresh
                    .shard()
                    .update(UpdateOperation::PointOperation(
                        PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch)),
                    ))
                    .map_err(engine_err)?;
            }
            match next {
                Some(next) => offset = Some(next),
                None => break,
            }
        }

        // From here until the swap the user's writes wait, so that the copy
        // plus the journal is everything that was acknowledged.
        let mut guard = slot.shard.write();
        if guard.is_none() || slot.generation() != generation {
            return Ok(Outcome::Cancelled);
        }
        let Some(journal) = slot.journal.lock().take() else {
            return Ok(Outcome::Cancelled);
        };
        let deletes = journal.iter().filter(|op| is_delete(op)).count() as u64;
        let had_deletes = deletes > 0;
        for op in journal {
            fresh.shard().update(op).map_err(engine_err)?;
        }
        files::step(&self.root, "copy-built");
        // A copy that cannot be flushed is given up; the old shard serves on.
        fresh.close()?;
        let wal_after = files::wal_bytes(building);
        files::write_baseline(building, wal_after)?;
        files::mark_set_up(building)?;
        if had_deletes {
            // Deleted during the copy: the copy holds that text too.
            files::mark_purge_pending(building)?;
        }
        files::sync_tree(building)?;
        if let Err(e) = files::rename_durably(&self.root, building, &swap) {
            // The rename may have happened before the sync failed: a `.swap-`
            // must not outlive a failed rewrite, or the next start would
            // prefer it to the writes acknowledged from now on.
            return Err(self.undo_swap(slot, &swap, e));
        }

        // The copy is now the shard of record: a crash from here on completes
        // the swap at start. Close the old shard first so that its final flush
        // lands in its own directory. That flush may fail (an I/O error):
        // nothing is lost as long as the swap completes, since the copy holds
        // every write applied to the old shard.
        files::step(&self.root, "swap-ready");
        let closed_cleanly = guard.take().is_none_or(|old| fault::close(old, &slot.name));
        slot.bump_generation();
        let trash = match files::move_to_trash(&self.root, &slot.dir) {
            Ok(trash) => trash,
            Err(e) if slot.dir.exists() => {
                // The old shard stays live, so the copy must go before any
                // write to it is acknowledged; if its last flush failed, the
                // writes it held fail too and it reopens from its files.
                if !closed_cleanly {
                    slot.retire(&mut guard);
                }
                return Err(self.undo_swap(slot, &swap, e));
            }
            Err(e) => {
                // Moved aside, but the sync that makes it durable failed: the
                // copy is now the only complete shard, so finish the swap.
                tracing::warn!(shard = %self.shard_tag(&slot.name), error = %e, "finishing a shard swap after a failed directory sync");
                None
            }
        };
        if let Err(e) = files::rename_durably(&self.root, &swap, &slot.dir) {
            if !files::renamed(&swap, &slot.dir) {
                // No live shard and a complete copy aside: only a restart's
                // repair can put it back, so refuse this shard until then.
                self.pool.mark_broken(slot);
                return Err(e);
            }
            // In place, only its sync failed: the copy serves from here, and
            // a crash before the next sync of the directory leaves `.swap-`
            // for start-up to finish.
            tracing::warn!(shard = %self.shard_tag(&slot.name), error = %e, "a shard swap's directory sync failed; the copy serves");
        }
        let reopened = EdgeShard::load(&slot.dir, Some(shard_config())).map_err(engine_err)?;
        slot.set_wal_baseline(wal_after);
        slot.reset_dead(deletes);
        slot.count_maps();
        *guard = Some(reopened);
        drop(guard);
        if let Some(trash) = trash
            && let Err(e) = files::remove_trash(&trash)
        {
            // Removed at the next start at the latest.
            tracing::warn!(error = %e, "could not remove a rewritten shard's old directory");
        }
        Ok(Outcome::Rewritten {
            points,
            wal_before,
            wal_after,
        })
    }
}

impl EdgeEngine {
    /// Removes a `.swap-` copy durably after a failed step while the old
    /// shard is still live (start-up would otherwise prefer it to the writes
    /// acknowledged from now on); if even that fails, refuses the shard until
    /// a restart.
    fn undo_swap(&self, slot: &Slot, swap: &std::path::Path, cause: StoreError) -> StoreError {
        // Moved aside in one rename first, so that a removal cut short never
        // leaves a partial `.swap-` for start-up to take for a complete one.
        if swap.exists() && files::discard_dir(&self.root, swap).is_err() {
            self.pool.mark_broken(slot);
        }
        cause
    }
}

/// The fresh shard while it is built. Dropping it flushes it, except while
/// unwinding from a panic: qdrant-edge's flush panics on I/O errors, and a
/// second panic during unwinding would abort the process. The directory is
/// removed by the caller either way.
struct Building(Option<EdgeShard>);

impl Building {
    fn shard(&self) -> &EdgeShard {
        self.0
            .as_ref()
            .expect("a building shard is only taken by close")
    }

    /// Flushes and closes the shard; a failed flush is an error, never a
    /// panic (a second one in the shard's `Drop` would abort the process).
    fn close(mut self) -> Result<(), StoreError> {
        let Some(shard) = self.0.take() else {
            return Ok(());
        };
        let flushed = fault::flush(&shard);
        let closed = fault::close(shard, "a rewrite's copy");
        flushed?;
        if closed {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "closing a rewrite's copy failed".into(),
            ))
        }
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        if let Some(shard) = self.0.take()
            && std::thread::panicking()
        {
            std::mem::forget(shard);
        }
    }
}
