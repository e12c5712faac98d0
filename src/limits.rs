//! Per-user limits that keep one user from crowding out the others: a cap
//! on a user's requests in flight and, when configured, a token bucket on a
//! user's request rate (both answered with 429 `rate_limited`, naming the
//! limit). The embedding queue's fair share is in [`crate::embed`].
//!
//! A request over the in-flight cap first waits a little for one of the
//! user's own slots ([`UserLimitSettings::wait`]) and only then gets 429: a
//! client that retries at once on 429 would otherwise spin, and answering
//! thousands of refusals a second takes the cores the other users need
//! (measured: a 96-connection flooder drew 734,672 immediate 429s in 91 s).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// The user's slot came free, but meanwhile all requests' places were
    /// taken (503 `overloaded`).
    Overloaded,
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
    /// How long a request over the in-flight cap waits for a slot.
    pub wait: Duration,
}

/// Each active user's in-flight slots.
type Slots = Arc<Mutex<HashMap<OwnerHash, Arc<Semaphore>>>>;

/// A user's slot among the requests in flight, given back when dropped.
pub struct InFlight {
    permit: Option<OwnedSemaphorePermit>,
    owner: OwnerHash,
    slots: Slots,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        drop(self.permit.take());
        forget_if_idle(&self.slots, &self.owner);
    }
}

/// The places a request holds: its place among all requests in flight and
/// the per-user slots it took. The request's middleware creates it with
/// the global place; the [`crate::auth::Caller`] extractor adds the user's
/// slot (and gives the global place back while it waits for one); the
/// middleware then keeps them all with the response body, so that a
/// streamed response counts until its last byte, not only until its
/// handler returned.
#[derive(Clone)]
pub struct HeldSlots(Arc<Mutex<Held>>);

struct Held {
    global: Option<OwnedSemaphorePermit>,
    all: Arc<Semaphore>,
    users: Vec<Arc<InFlight>>,
}

impl HeldSlots {
    /// A request holding `global`, a place of `all`.
    pub fn new(global: OwnedSemaphorePermit, all: Arc<Semaphore>) -> Self {
        Self(Arc::new(Mutex::new(Held {
            global: Some(global),
            all,
            users: Vec::new(),
        })))
    }

    /// Keeps `slot` for as long as the response lives.
    pub fn keep(&self, slot: Arc<InFlight>) {
        self.0.lock().users.push(slot);
    }

    /// Gives the place among all requests back while the request waits:
    /// a request that waits for its user's slot must not keep other
    /// users' requests out.
    fn release_global(&self) {
        self.0.lock().global = None;
    }

    /// Takes a place among all requests again; `false` when none is free.
    fn retake_global(&self) -> bool {
        let mut held = self.0.lock();
        match held.all.clone().try_acquire_owned() {
            Ok(permit) => {
                held.global = Some(permit);
                true
            }
            Err(_) => false,
        }
    }

    /// Everything held, for the response body to keep.
    pub fn take(&self) -> (Option<OwnedSemaphorePermit>, Vec<Arc<InFlight>>) {
        let mut held = self.0.lock();
        (held.global.take(), std::mem::take(&mut held.users))
    }
}

/// Drops a user's semaphore once nothing holds or awaits it (the table's
/// own reference is the last), so the table only holds active users.
fn forget_if_idle(slots: &Slots, owner: &OwnerHash) {
    let mut table = slots.lock();
    if table
        .get(owner)
        .is_some_and(|semaphore| Arc::strong_count(semaphore) == 1)
    {
        table.remove(owner);
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
    wait: Duration,
    slots: Slots,
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
            wait: settings.wait,
            slots: Arc::new(Mutex::new(HashMap::new())),
            rate,
        }
    }

    /// Admits one request of `owner`, or says which limit it is over. The
    /// returned slot is held for as long as the request runs. While it
    /// waits for a slot, the request's place among all requests (`held`)
    /// is given back, and taken again once the slot is free.
    pub async fn admit(
        &self,
        owner: &OwnerHash,
        held: Option<&HeldSlots>,
    ) -> Result<InFlight, Limited> {
        if let Some(rate) = &self.rate
            && let Err(not_until) = rate.check_key(owner)
        {
            return Err(Limited::Rate(
                not_until.wait_time_from(DefaultClock::default().now()),
            ));
        }
        let semaphore = self
            .slots
            .lock()
            .entry(owner.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_in_flight)))
            .clone();
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => {
                if let Some(held) = held {
                    held.release_global();
                }
                tokio::time::timeout(self.wait, semaphore.acquire_owned())
                    .await
                    .map_err(|_| Limited::InFlight)
                    .and_then(|acquired| acquired.map_err(|_| Limited::InFlight))
                    .and_then(|permit| match held {
                        Some(held) if !held.retake_global() => Err(Limited::Overloaded),
                        _ => Ok(permit),
                    })
            }
        };
        match permit {
            Ok(permit) => Ok(InFlight {
                permit: Some(permit),
                owner: owner.clone(),
                slots: self.slots.clone(),
            }),
            Err(limited) => {
                forget_if_idle(&self.slots, owner);
                Err(limited)
            }
        }
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
            wait: Duration::from_millis(50),
        })
    }

    #[tokio::test]
    async fn a_user_gets_at_most_their_in_flight_share_and_slots_come_back() {
        let limits = limits(2, 0, 0);
        let first = limits.admit(&owner("a"), None).await.expect("first");
        let _second = limits.admit(&owner("a"), None).await.expect("second");
        assert_eq!(
            limits.admit(&owner("a"), None).await.err(),
            Some(Limited::InFlight)
        );
        assert!(
            limits.admit(&owner("b"), None).await.is_ok(),
            "other users are not counted"
        );
        drop(first);
        assert!(limits.admit(&owner("a"), None).await.is_ok());
    }

    #[tokio::test]
    async fn a_request_over_the_cap_waits_for_a_slot_that_frees_up() {
        let limits = Arc::new(limits(1, 0, 0));
        let held = limits.admit(&owner("a"), None).await.expect("first");
        let waiting = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.admit(&owner("a"), None).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        assert!(
            waiting.await.expect("joins"),
            "the waiter got the freed slot"
        );
    }

    #[tokio::test]
    async fn a_request_waiting_for_its_users_slot_holds_no_place_among_all_requests() {
        let limits = Arc::new(limits(1, 0, 0));
        let all = Arc::new(Semaphore::new(2));
        let held_first = HeldSlots::new(
            all.clone().try_acquire_owned().expect("a place"),
            all.clone(),
        );
        let first = limits
            .admit(&owner("a"), Some(&held_first))
            .await
            .expect("first");
        let waiting = {
            let (limits, all) = (limits.clone(), all.clone());
            tokio::spawn(async move {
                let held = HeldSlots::new(all.clone().try_acquire_owned().expect("a place"), all);
                let admitted = limits.admit(&owner("a"), Some(&held)).await;
                (admitted.is_ok(), held.take().0.is_some())
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The waiter gave its place back: another user's request gets one.
        assert_eq!(all.available_permits(), 1);
        drop(first);
        assert_eq!(
            waiting.await.expect("joins"),
            (true, true),
            "admitted, with a place again"
        );
    }

    #[tokio::test]
    async fn idle_users_leave_the_table() {
        let limits = limits(2, 0, 0);
        drop(limits.admit(&owner("a"), None).await.expect("admitted"));
        assert!(limits.slots.lock().is_empty());
    }

    #[tokio::test]
    async fn the_rate_limit_refuses_past_the_burst_and_names_the_wait() {
        let limits = limits(100, 1, 3);
        for _ in 0..3 {
            drop(
                limits
                    .admit(&owner("a"), None)
                    .await
                    .expect("within the burst"),
            );
        }
        match limits.admit(&owner("a"), None).await {
            Err(Limited::Rate(wait)) => assert!(wait <= Duration::from_secs(1), "{wait:?}"),
            other => panic!("expected a rate refusal, got {other:?}"),
        }
        assert!(limits.admit(&owner("b"), None).await.is_ok());
    }
}
