//! Lockout: a principal whose requests keep being rejected (forged tokens,
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
//! of the latter. An IPv6 address counts by its /64, which one host usually
//! holds whole.
//!
//! The table is bounded in memory and in time per call, whatever an attacker
//! with many addresses sends: it is split into [`SHARDS`] shards, each an LRU
//! of counts and an LRU of cool-downs; a call locks one shard and does a
//! constant amount of work in it. When a shard is full, its least recently
//! counted principal is forgotten (its count starts again); cool-downs live
//! apart, so counting other principals never lifts a lockout early.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use crate::owner::OwnerHash;

/// Most principals counted at once (across shards), and, apart from them,
/// most principals in a cool-down at once.
pub const MAX_PRINCIPALS: usize = 100_000;

/// Independent parts of the table, so that concurrent calls rarely wait on
/// one another.
const SHARDS: usize = 16;

/// Who is being counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A caller with a valid token.
    Owner(OwnerHash),
    /// A caller without one, by address (see [`Principal::client`]).
    Client(IpAddr),
}

impl Principal {
    /// The principal of a client address: IPv4 as it is (an IPv4-mapped
    /// IPv6 address as its IPv4), IPv6 by its /64 prefix.
    pub fn client(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(prefix.into())
                }
            },
            v4 => v4,
        };
        Self::Client(ip)
    }
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
struct Count {
    window_start: Instant,
    rejections: u32,
}

/// A cool-down: until when, and when a refusal during it was last
/// reported.
#[derive(Debug, Clone, Copy)]
struct Locked {
    until: Instant,
    reported: Option<Instant>,
}

/// How often a locked-out principal's refusals are reported (audited):
/// the first, then at most one per this interval, so that a flood of
/// refused requests is not a flood of audit lines.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// A refusal of a locked-out principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockedOut {
    /// What is left of the cool-down.
    pub remaining: Duration,
    /// Whether this refusal is to be reported (see [`REPORT_EVERY`]).
    pub report: bool,
}

/// One shard: counts and cool-downs, each bounded.
struct Shard {
    counts: LruCache<Principal, Count>,
    locked: LruCache<Principal, Locked>,
}

/// The rejection counts and lockouts of this process.
pub struct Lockout {
    settings: LockoutSettings,
    shards: Vec<Mutex<Shard>>,
    hasher: ahash::RandomState,
}

impl Lockout {
    /// An empty table of at most [`MAX_PRINCIPALS`] counts and as many
    /// cool-downs.
    pub fn new(settings: LockoutSettings) -> Self {
        Self::with_capacity(settings, MAX_PRINCIPALS)
    }

    /// An empty table of at most `capacity` counts and as many cool-downs.
    pub fn with_capacity(settings: LockoutSettings, capacity: usize) -> Self {
        let per_shard = NonZeroUsize::new(capacity.div_ceil(SHARDS).max(1))
            .expect("at least one entry per shard");
        Self {
            settings,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        counts: LruCache::new(per_shard),
                        locked: LruCache::new(per_shard),
                    })
                })
                .collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    fn threshold(&self, who: &Principal) -> u32 {
        match who {
            Principal::Client(_) => self.settings.threshold,
            Principal::Owner(_) => self.settings.not_found_threshold,
        }
    }

    fn shard(&self, who: &Principal) -> &Mutex<Shard> {
        let index = self.hasher.hash_one(who) as usize % SHARDS;
        &self.shards[index]
    }

    /// Whether `who` is locked out: for how long, and whether to report
    /// this refusal.
    pub fn locked(&self, who: &Principal) -> Option<LockedOut> {
        if self.threshold(who) == 0 {
            return None;
        }
        let now = Instant::now();
        let mut shard = self.shard(who).lock();
        let entry = shard.locked.peek_mut(who)?;
        if entry.until <= now {
            shard.locked.pop(who);
            return None;
        }
        let report = entry
            .reported
            .is_none_or(|at| now.duration_since(at) >= REPORT_EVERY);
        if report {
            entry.reported = Some(now);
        }
        Some(LockedOut {
            remaining: entry.until - now,
            report,
        })
    }

    /// Counts one rejection of `who`; returns the cool-down when this one
    /// starts a lockout.
    pub fn rejected(&self, who: Principal) -> Option<Duration> {
        let threshold = self.threshold(&who);
        if threshold == 0 {
            return None;
        }
        let now = Instant::now();
        let mut guard = self.shard(&who).lock();
        let shard = &mut *guard;
        match shard.locked.peek(&who) {
            Some(entry) if entry.until > now => return None,
            Some(_) => {
                shard.locked.pop(&who);
            }
            None => {}
        }
        let window = self.settings.window;
        let count = shard.counts.get_or_insert_mut(who.clone(), || Count {
            window_start: now,
            rejections: 0,
        });
        if now.duration_since(count.window_start) >= window {
            count.window_start = now;
            count.rejections = 0;
        }
        count.rejections += 1;
        if count.rejections < threshold {
            return None;
        }
        shard.counts.pop(&who);
        // Full: the lockout ending soonest gives way (all last as long).
        shard.locked.push(
            who,
            Locked {
                until: now + self.settings.cooldown,
                reported: None,
            },
        );
        Some(self.settings.cooldown)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn settings(threshold: u32, window_ms: u64, cooldown_ms: u64) -> LockoutSettings {
        LockoutSettings {
            threshold,
            not_found_threshold: 0,
            window: Duration::from_millis(window_ms),
            cooldown: Duration::from_millis(cooldown_ms),
        }
    }

    fn lockout(threshold: u32, window_ms: u64, cooldown_ms: u64) -> Lockout {
        Lockout::new(settings(threshold, window_ms, cooldown_ms))
    }

    fn client(n: u8) -> Principal {
        Principal::client(IpAddr::from([10, 0, 0, n]))
    }

    fn numbered(n: u32) -> Principal {
        Principal::client(IpAddr::from(n.to_be_bytes()))
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
    fn a_locked_out_principals_refusals_are_reported_once_a_minute_at_most() {
        let table = lockout(1, 60_000, 60_000);
        table.rejected(client(1));
        let reports: Vec<bool> = (0..100)
            .map(|_| table.locked(&client(1)).expect("locked").report)
            .collect();
        assert!(reports[0]);
        assert!(reports[1..].iter().all(|r| !r), "a flood of reports");
    }

    #[test]
    fn a_threshold_of_zero_never_locks_out() {
        let table = lockout(0, 60_000, 60_000);
        for _ in 0..100 {
            assert_eq!(table.rejected(client(1)), None);
        }
        assert!(table.locked(&client(1)).is_none());
    }

    #[test]
    fn a_full_table_stays_within_its_bound_and_keeps_every_lockout_it_can_hold() {
        let capacity = 64 * SHARDS;
        let table = Lockout::with_capacity(settings(2, 60_000, 60_000), capacity);
        // A victim address locked out, then an attacker counting from many
        // more addresses than the table holds.
        table.rejected(client(1));
        table.rejected(client(1));
        assert!(table.locked(&client(1)).is_some());
        for n in 0..(capacity as u32 * 8) {
            table.rejected(numbered(n + 1_000_000));
        }
        for shard in &table.shards {
            let shard = shard.lock();
            assert!(shard.counts.len() <= capacity / SHARDS);
            assert!(shard.locked.len() <= capacity / SHARDS);
        }
        assert!(
            table.locked(&client(1)).is_some(),
            "counting other principals lifted a lockout"
        );
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_bit_prefix_and_mapped_ipv4_as_ipv4() {
        let table = lockout(2, 60_000, 60_000);
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().expect("literal");
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("literal");
        let other: Ipv6Addr = "2001:db8:1:3::1".parse().expect("literal");
        table.rejected(Principal::client(a.into()));
        assert!(table.rejected(Principal::client(b.into())).is_some());
        assert!(table.locked(&Principal::client(other.into())).is_none());
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().expect("literal");
        assert_eq!(Principal::client(mapped.into()), client(1));
    }
}
