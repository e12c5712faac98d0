//! Unwrapped data keys, cached per owner with a bound and a time to live.
//!
//! A KMS-backed KEK costs a round trip per unwrap; the cache absorbs it. An
//! entry leaves when it expires, when the cache is full and it is the oldest,
//! or when its owner is erased; the keys it held are zeroised once the last
//! request using them is done (they live in an `Arc` of zeroising buffers).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::dek::RecordKeys;
use crate::owner::OwnerHash;

/// Bounded, expiring map from owner to record keys.
pub struct DekCache {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl: Duration,
}

/// A cached owner: its keys, the wrapped form they came from (so a write can
/// tell whether the vault still holds the same key), and when.
type Entry = (Arc<RecordKeys>, String, Instant);

struct Inner {
    entries: HashMap<OwnerHash, Entry>,
    // Insertion order, oldest first; an element whose time no longer matches
    // its entry is stale (the entry was removed or replaced) and is skipped.
    order: VecDeque<(OwnerHash, Instant)>,
}

impl DekCache {
    /// A cache of at most `capacity` owners, each kept at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The owner's keys and their wrapped form, unless absent or expired.
    /// Every call also drops the entries that have expired, so that an idle
    /// server does not hold keys past their time.
    pub fn get(&self, owner: &OwnerHash) -> Option<(Arc<RecordKeys>, String)> {
        let mut inner = self.inner.lock();
        self.evict(&mut inner, Instant::now(), usize::MAX);
        inner
            .entries
            .get(owner)
            .map(|(keys, wrapped, _)| (keys.clone(), wrapped.clone()))
    }

    /// Drops expired entries, and the oldest while more than `keep` remain.
    fn evict(&self, inner: &mut Inner, now: Instant, keep: usize) {
        while let Some((oldest, at)) = inner.order.front().cloned() {
            let live = inner.entries.get(&oldest).is_some_and(|(_, _, t)| *t == at);
            let expired = now.duration_since(at) >= self.ttl;
            if live && !expired && inner.entries.len() <= keep {
                break;
            }
            inner.order.pop_front();
            if live {
                inner.entries.remove(&oldest);
            }
        }
    }

    /// Caches the owner's keys, evicting expired entries and, when full,
    /// the oldest.
    pub fn insert(&self, owner: &OwnerHash, keys: Arc<RecordKeys>, wrapped: String) {
        let mut inner = self.inner.lock();
        let now = Instant::now();
        self.evict(&mut inner, now, self.capacity - 1);
        inner.entries.insert(owner.clone(), (keys, wrapped, now));
        inner.order.push_back((owner.clone(), now));
    }

    /// Forgets the owner's keys.
    pub fn remove(&self, owner: &OwnerHash) {
        self.inner.lock().entries.remove(owner);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::dek::Dek;
    use crate::secret::Secret;

    fn owner(i: usize) -> OwnerHash {
        OwnerHash::derive(&Secret::new(vec![4u8; 32]), "t", &i.to_string())
    }

    #[test]
    fn the_cache_holds_at_most_its_bound_and_forgets_the_oldest() {
        let cache = DekCache::new(3, Duration::from_secs(60));
        for i in 0..5 {
            cache.insert(&owner(i), Arc::new(Dek::random().keys()), String::new());
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&owner(0)).is_none());
        assert!(cache.get(&owner(4)).is_some());
        cache.remove(&owner(4));
        assert!(cache.get(&owner(4)).is_none());
    }

    #[test]
    fn an_entry_expires() {
        let cache = DekCache::new(3, Duration::from_millis(1));
        cache.insert(&owner(1), Arc::new(Dek::random().keys()), String::new());
        std::thread::sleep(Duration::from_millis(5));
        // Any read sweeps what has expired, not only the owner asked for.
        assert!(cache.get(&owner(2)).is_none());
        assert!(cache.is_empty());
    }
}
