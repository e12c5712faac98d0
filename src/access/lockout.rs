//! Lockout: a principal whose requests keep being rejected (bad tokens,
//! other users' memory ids) is refused outright for a cool-down.
//!
//! A principal is an owner (a valid token) or, when there is no valid
//! token, the client address. Each counts its rejections in a fixed window;
//! the one that reaches the threshold starts the cool-down, and the caller
//! then writes an `alert` audit event. Other principals are unaffected.
//!
//! Addresses count refused tokens; owners count 404s on memory ids, under a
//! threshold of their own: a 404 cannot tell a probe of another user's id
//! from a look-up of the caller's own deleted one (the engine only ever sees
//! the caller's collection), and clients that verify their deletes make many
//! of the latter.
//! The table is bounded: past [`MAX_PRINCIPALS`] entries, idle ones go.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::owner::OwnerHash;

/// Most principals tracked at once.
const MAX_PRINCIPALS: usize = 100_000;

/// Who is being counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A caller with a valid token.
    Owner(OwnerHash),
    /// A caller without one, by address.
    Client(IpAddr),
}

/// Lockout settings; a threshold of 0 turns that kind of lockout off.
#[derive(Debug, Clone, Copy)]
pub struct LockoutSettings {
    /// Refused tokens from one address within `window` that lock it out.
    pub threshold: u32,
    /// 404s on memory ids of one owner within `window` that lock it out.
    pub not_found_threshold: u32,
    /// Counting window.
    pub window: Duration,
    /// How long a lockout lasts.
    pub cooldown: Duration,
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    rejections: u32,
    locked_until: Option<Instant>,
}

/// The rejection counts and lockouts of this process.
pub struct Lockout {
    settings: LockoutSettings,
    entries: Mutex<HashMap<Principal, Entry>>,
}

impl Lockout {
    /// An empty table.
    pub fn new(settings: LockoutSettings) -> Self {
        Self {
            settings,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn threshold(&self, who: &Principal) -> u32 {
        match who {
            Principal::Client(_) => self.settings.threshold,
            Principal::Owner(_) => self.settings.not_found_threshold,
        }
    }

    /// How long `who` stays locked out, if it is.
    pub fn locked(&self, who: &Principal) -> Option<Duration> {
        if self.threshold(who) == 0 {
            return None;
        }
        let now = Instant::now();
        let entries = self.entries.lock();
        let until = entries.get(who)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts one rejection of `who`; returns the cool-down when this one
    /// starts a lockout.
    pub fn rejected(&self, who: Principal) -> Option<Duration> {
        let threshold = self.threshold(&who);
        if threshold == 0 {
            return None;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_PRINCIPALS && !entries.contains_key(&who) {
            let window = self.settings.window;
            entries.retain(|_, e| {
                e.locked_until.is_some_and(|until| until > now)
                    || now.duration_since(e.window_start) < window
            });
        }
        let entry = entries.entry(who).or_insert(Entry {
            window_start: now,
            rejections: 0,
            locked_until: None,
        });
        if entry.locked_until.is_some_and(|until| until > now) {
            return None;
        }
        if now.duration_since(entry.window_start) >= self.settings.window {
            entry.window_start = now;
            entry.rejections = 0;
            entry.locked_until = None;
        }
        entry.rejections += 1;
        if entry.rejections >= threshold {
            entry.locked_until = Some(now + self.settings.cooldown);
            entry.rejections = 0;
            entry.window_start = now + self.settings.cooldown;
            return Some(self.settings.cooldown);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockout(threshold: u32, window_ms: u64, cooldown_ms: u64) -> Lockout {
        Lockout::new(LockoutSettings {
            threshold,
            not_found_threshold: 0,
            window: Duration::from_millis(window_ms),
            cooldown: Duration::from_millis(cooldown_ms),
        })
    }

    fn client(n: u8) -> Principal {
        Principal::Client(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn the_threshold_th_rejection_locks_out_that_principal_only() {
        let table = lockout(3, 60_000, 60_000);
        assert_eq!(table.rejected(client(1)), None);
        assert_eq!(table.rejected(client(1)), None);
        assert!(table.locked(&client(1)).is_none());
        assert_eq!(table.rejected(client(1)), Some(Duration::from_secs(60)));
        assert!(table.locked(&client(1)).is_some());
        assert!(table.locked(&client(2)).is_none());
        // Rejections while locked out start no second lockout.
        assert_eq!(table.rejected(client(1)), None);
    }

    #[test]
    fn the_cool_down_ends_and_old_rejections_expire_with_their_window() {
        let table = lockout(2, 30, 30);
        table.rejected(client(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(table.rejected(client(1)), None, "the first one expired");
        assert!(table.rejected(client(1)).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(table.locked(&client(1)).is_none(), "the cool-down is over");
    }

    #[test]
    fn a_threshold_of_zero_never_locks_out() {
        let table = lockout(0, 60_000, 60_000);
        for _ in 0..100 {
            assert_eq!(table.rejected(client(1)), None);
        }
        assert!(table.locked(&client(1)).is_none());
    }
}
