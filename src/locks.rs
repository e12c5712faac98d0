//! One lock per key (an owner, a collection), made when first asked for and
//! forgotten once nobody holds or waits for it.
//!
//! Striped locks (a key hashed into one of a fixed set) let one user's long
//! exclusive work (an erase) hold up every user whose key falls in the same
//! stripe, and a user who erases in a loop can aim at that. A lock of its
//! own per key holds up nobody else.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::RwLock;

/// Locks by key, each alive while someone holds a handle to it.
pub struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Weak<RwLock<()>>>>,
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// The lock of `key`: the one in use, or a new one.
    pub fn of(&self, key: &K) -> Arc<RwLock<()>> {
        let mut locks = self.locks.lock();
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        // Forget the locks nobody uses any more, now and then, so that the
        // table holds about as many entries as there are keys in use.
        if locks.len() >= 64 && locks.len().is_power_of_two() {
            locks.retain(|_, lock| lock.strong_count() > 0);
        }
        let lock = Arc::new(RwLock::new(()));
        locks.insert(key.clone(), Arc::downgrade(&lock));
        lock
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_keys_exclusive_holder_holds_up_no_other_key() {
        let locks = KeyedLocks::default();
        let a = locks.of(&"a");
        let _exclusive = a.write().await;
        let b = locks.of(&"b");
        let shared = tokio::time::timeout(Duration::from_millis(100), b.read()).await;
        assert!(shared.is_ok(), "another key waited");
        let same = locks.of(&"a");
        let blocked = tokio::time::timeout(Duration::from_millis(50), same.read()).await;
        assert!(blocked.is_err(), "the same key did not wait");
    }

    #[test]
    fn locks_nobody_holds_are_forgotten_and_held_ones_kept() {
        let locks = KeyedLocks::default();
        let held: Vec<_> = (0..100).map(|i| locks.of(&i)).collect();
        for i in 0..10_000 {
            drop(locks.of(&(i + 1_000)));
        }
        assert!(locks.len() <= 2 * 128 + 100, "{} entries kept", locks.len());
        for (i, lock) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(lock, &locks.of(&i)), "a held lock was replaced");
        }
    }
}
