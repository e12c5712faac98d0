//! I/O errors in qdrant-edge as results instead of panics.
//!
//! qdrant-edge 0.7 panics when a flush hits an I/O error (`EdgeShard::flush`
//! ends in `expect("segments flushed")`), and its `Drop` runs that flush once
//! more. Left alone, one failed write would answer 500 and the same panic
//! would come back when the shard closes, under the pool lock. These wrappers
//! turn both into something a caller can answer with 503 and recover from:
//! a shard whose flush failed is closed (see [`close`]) and reopened from what
//! its files hold.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use qdrant_edge::EdgeShard;

use crate::store::StoreError;

/// Flushes `shard`; a failed flush is [`StoreError::Unavailable`].
pub fn flush(shard: &EdgeShard) -> Result<(), StoreError> {
    catch_unwind(AssertUnwindSafe(|| shard.flush())).map_err(|panic| {
        StoreError::Unavailable(format!("a shard flush failed: {}", message(&*panic)))
    })
}

/// Closes `shard` (its `Drop` flushes it once more); returns whether that
/// last flush succeeded. If it fails the shard is still closed, its locks
/// and maps released; the failure is logged, and whatever the flush did not
/// write is gone with it.
pub fn close(shard: EdgeShard, name: &str) -> bool {
    if std::thread::panicking() {
        // A panic in `Drop` while unwinding aborts the process; leaking the
        // handle until exit is the lesser harm (this is never a request path).
        std::mem::forget(shard);
        return false;
    }
    match catch_unwind(AssertUnwindSafe(move || drop(shard))) {
        Ok(()) => true,
        Err(panic) => {
            tracing::warn!(shard = name, reason = %message(&*panic), "a shard closed without its last flush");
            false
        }
    }
}

/// The text of a panic's payload.
fn message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}
