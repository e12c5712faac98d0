//! Per-user limits that keep one user from crowding out the others: a cap
//! on a user's requests in flight and, when configured, a token bucket on a
//! user's request rate (both answered with 429 `rate_limited`, naming the
//! limit). The embedding queue's fair share is in [`crate::embed`].

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use crate::owner::OwnerHash;

/// Which per-user limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The user already has this many requests in flight.
    InFlight,
    /// The user's token bucket is empty; it refills after this long.
    Rate(Duration),
}

/// Per-user limit settings.
#[derive(Debug, Clone, Copy)]
pub struct UserLimitSettings {
    /// Most requests one user may have in flight.
    pub max_in_flight: usize,
    /// Requests per second one user may make on average (0: no limit).
    pub requests_per_second: u32,
    /// Requests one user may make at once above that rate.
    pub burst: u32,
}

/// A user's slot among the requests in flight, given back when dropped.
pub struct InFlight {
    owner: OwnerHash,
    table: Arc<Mutex<HashMap<OwnerHash, usize>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if let Some(n) = table.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.owner);
            }
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

/// The per-user limits of this process.
pub struct UserLimits {
    max_in_flight: usize,
    in_flight: Arc<Mutex<HashMap<OwnerHash, usize>>>,
    rate: Option<DefaultKeyedRateLimiter<OwnerHash>>,
}

impl UserLimits {
    /// Limits as configured.
    pub fn new(settings: UserLimitSettings) -> Self {
        let rate = NonZeroU32::new(settings.requests_per_second).map(|rps| {
            let burst = NonZeroU32::new(settings.burst).unwrap_or(rps);
            RateLimiter::keyed(Quota::per_second(rps).allow_burst(burst))
        });
        Self {
            max_in_flight: settings.max_in_flight.max(1),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            rate,
        }
    }

    /// Admits one request of `owner`, or says which limit it is over. The
    /// returned slot is held for as long as the request runs.
    pub fn admit(&self, owner: &OwnerHash) -> Result<InFlight, Limited> {
        if let Some(rate) = &self.rate
            && let Err(not_until) = rate.check_key(owner)
        {
            return Err(Limited::Rate(
                not_until.wait_time_from(DefaultClock::default().now()),
            ));
        }
        let mut table = self.in_flight.lock();
        let n = table.entry(owner.clone()).or_default();
        if *n >= self.max_in_flight {
            return Err(Limited::InFlight);
        }
        *n += 1;
        Ok(InFlight {
            owner: owner.clone(),
            table: self.in_flight.clone(),
        })
    }

    /// Forgets rate state of users idle long enough to have a full bucket
    /// (keeps the table bounded by the users active recently).
    pub fn forget_idle(&self) {
        if let Some(rate) = &self.rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn owner(name: &str) -> OwnerHash {
        OwnerHash::derive(&Secret::new(vec![5u8; 32]), "t", name)
    }

    fn limits(max_in_flight: usize, rps: u32, burst: u32) -> UserLimits {
        UserLimits::new(UserLimitSettings {
            max_in_flight,
            requests_per_second: rps,
            burst,
        })
    }

    #[test]
    fn a_user_gets_at_most_their_in_flight_share_and_slots_come_back() {
        let limits = limits(2, 0, 0);
        let first = limits.admit(&owner("a")).expect("first");
        let _second = limits.admit(&owner("a")).expect("second");
        assert_eq!(limits.admit(&owner("a")).err(), Some(Limited::InFlight));
        assert!(
            limits.admit(&owner("b")).is_ok(),
            "other users are not counted"
        );
        drop(first);
        assert!(limits.admit(&owner("a")).is_ok());
    }

    #[test]
    fn the_rate_limit_refuses_past_the_burst_and_names_the_wait() {
        let limits = limits(100, 1, 3);
        for _ in 0..3 {
            drop(limits.admit(&owner("a")).expect("within the burst"));
        }
        match limits.admit(&owner("a")) {
            Err(Limited::Rate(wait)) => assert!(wait <= Duration::from_secs(1), "{wait:?}"),
            other => panic!("expected a rate refusal, got {other:?}"),
        }
        assert!(limits.admit(&owner("b")).is_ok());
    }
}
