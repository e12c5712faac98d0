//! What happens when the guard meets another owner's point: the breach
//! policy.
//!
//! The engines filter every read on the owner hash, so a foreign point that
//! reaches the [`crate::guard`] means that filter failed: a bug, a
//! misconfigured engine, a name collision. The guard always drops it. Under
//! the default policy, `fail-closed`, the request then fails as a whole
//! (`isolation_breach`, no partial answer), an `alert` event is written, and
//! the collection that returned the point is quarantined: its reads are
//! refused (`quarantined`) on every replica until an admin clears it, so one
//! engine fault cannot keep serving quietly. Quarantines are access rules
//! ([`crate::access`]): stored durably and polled by the other replicas.
//! Under `drop`, the guard drops and counts, and the request succeeds with
//! the rest (what collision drills measure).

use std::sync::Arc;

use crate::access::{Access, Rule, now_ms};
use crate::metrics::Metrics;
use crate::owner::{Domain, OwnerHash, keyed_in};
use crate::secret::Secret;
use crate::store::StoreError;

/// What a request does when the guard drops a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BreachPolicy {
    /// Fail the request, alert, and quarantine the collection.
    #[default]
    FailClosed,
    /// Drop the point, count it, and answer with the rest.
    Drop,
}

impl BreachPolicy {
    /// The policy's name, as in the setting.
    pub fn name(self) -> &'static str {
        match self {
            Self::FailClosed => "fail-closed",
            Self::Drop => "drop",
        }
    }
}

/// The breach policy of a process and the quarantines it enforces.
pub struct Breaches {
    policy: BreachPolicy,
    access: Arc<Access>,
    secret: Secret,
    metrics: Arc<Metrics>,
}

/// The keyed tag of a collection (or shard) name: what quarantines, alerts
/// and admins name it by. A name is a prefix of its owners' hashes, so the
/// name itself is kept out of logs.
pub fn place_tag(secret: &Secret, place: &str) -> String {
    hex::encode(&keyed_in(secret, Domain::Place, &[place.as_bytes()])[..6])
}

impl Breaches {
    /// The policy `policy`, with quarantines stored in `access`.
    pub fn new(
        policy: BreachPolicy,
        access: Arc<Access>,
        secret: Secret,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            policy,
            access,
            secret,
            metrics,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> BreachPolicy {
        self.policy
    }

    /// The tag of `place`.
    pub fn tag(&self, place: &str) -> String {
        place_tag(&self.secret, place)
    }

    /// Whether reads may pass when any collection is quarantined (else no
    /// place needs looking up).
    pub fn any_quarantined(&self) -> bool {
        self.access.any_quarantined()
    }

    /// Refuses a read of the quarantined collection `place`.
    pub fn refuse_quarantined(&self, place: &str) -> Result<(), StoreError> {
        let tag = self.tag(place);
        if self.access.quarantined(&tag) {
            self.metrics.quarantined_read();
            return Err(StoreError::Quarantined(tag));
        }
        Ok(())
    }

    /// Handles `foreign` points of other owners that a read of `owner`'s in
    /// `place` returned on `path`: under `fail-closed`, alerts, quarantines
    /// the place and fails; under `drop`, lets the read go on.
    pub async fn breached(
        &self,
        owner: &OwnerHash,
        place: &str,
        path: &'static str,
        foreign: usize,
    ) -> Result<(), StoreError> {
        if self.policy == BreachPolicy::Drop {
            return Ok(());
        }
        let tag = self.tag(place);
        self.metrics.isolation_breach();
        crate::audit::isolation_breach(owner, &tag, path, foreign);
        let rule = Rule::Quarantine {
            place: tag.clone(),
            quarantined: true,
            since_ms: now_ms(),
        };
        // The request fails either way; a quarantine that could not be
        // stored is logged, and the next breached read tries again.
        if self.access.quarantined(&tag) {
            return Err(StoreError::IsolationBreach(tag));
        }
        if let Err(e) = self.access.record(rule).await {
            tracing::error!(error = %e, place = %tag, "could not store a quarantine");
        }
        Err(StoreError::IsolationBreach(tag))
    }
}
