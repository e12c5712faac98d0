//! The audit trail: security events as `tracing` events under the target
//! `audit`, which [`crate::telemetry`] writes as JSON lines to a sink of their
//! own (stdout, or daily-rotated files).
//!
//! Every field is a hashed tag or a fixed word: owner and tenant tags are
//! the first 12 hex digits of their keyed hashes, a client address is keyed
//! the same way, and no event carries memory text, a token or a raw subject.

use std::net::IpAddr;

use crate::owner::{Domain, OwnerHash, TenantHash, keyed_in};
use crate::secret::Secret;

/// The target every audit event is emitted under.
pub const TARGET: &str = "audit";

/// A keyed, truncated tag of a client address.
pub fn client_tag(secret: &Secret, ip: IpAddr) -> String {
    let hash = keyed_in(secret, Domain::ClientAddress, &[ip.to_string().as_bytes()]);
    hex::encode(&hash[..6])
}

/// A token was refused before any rule was looked up.
pub fn auth_failed(reason: &'static str, client: &str) {
    tracing::info!(target: TARGET, event = "auth_failed", reason, client);
}

/// A verified token was refused by the access rules.
pub fn access_refused(reason: &'static str, owner: &OwnerHash, tenant: &TenantHash) {
    tracing::info!(
        target: TARGET,
        event = "access_refused",
        reason,
        owner = %owner.log_tag(),
        tenant = %tenant.log_tag(),
    );
}

/// An admin call, whatever its outcome.
pub fn admin_call(action: &'static str, target: &str, outcome: &'static str) {
    tracing::info!(target: TARGET, event = "admin_call", action, subject = target, outcome);
}

/// A user's tokens were revoked (cut-off time and minimum version now held).
pub fn revoked(owner: &OwnerHash, revoked_before_ms: u64, min_version: u64) {
    tracing::info!(
        target: TARGET,
        event = "revocation",
        owner = %owner.log_tag(),
        revoked_before_ms,
        min_version,
    );
}

/// A tenant was enabled or disabled.
pub fn tenant_changed(tenant: &TenantHash, enabled: bool) {
    tracing::info!(target: TARGET, event = "tenant_change", tenant = %tenant.log_tag(), enabled);
}

/// The guard dropped a point that was not the caller's; `stored` is the
/// tag of the owner the point carried, if any.
pub fn guard_dropped(owner: &OwnerHash, stored: &str, path: &str) {
    tracing::info!(target: TARGET, event = "guard_drop", owner = %owner.log_tag(), stored_owner = stored, path);
}

/// The guard met `foreign` points of other owners in a read of `owner`'s
/// on `path`, from the collection tagged `place`, under the fail-closed
/// policy: the request failed and the collection is quarantined.
pub fn isolation_breach(owner: &OwnerHash, place: &str, path: &str, foreign: usize) {
    tracing::error!(
        target: TARGET,
        event = "alert",
        kind = "isolation_breach",
        owner = %owner.log_tag(),
        place,
        path,
        foreign,
    );
}

/// A canary saw what it must not: `what` says which check failed.
pub fn canary_breach(what: &str, place: &str) {
    tracing::error!(target: TARGET, event = "alert", kind = "canary_breach", what, place);
}

/// A quarantine was cleared by an admin.
pub fn quarantine_cleared(place: &str) {
    tracing::warn!(target: TARGET, event = "quarantine_cleared", place);
}

/// A principal was locked out: `principal` is `owner` or `client`, `tag` its
/// hashed tag.
pub fn lockout_alert(principal: &'static str, tag: &str, cooldown_secs: u64) {
    tracing::warn!(
        target: TARGET,
        event = "alert",
        kind = "lockout",
        principal,
        tag,
        cooldown_secs,
    );
}

/// A request of a locked-out principal was refused.
pub fn locked_out(principal: &'static str, tag: &str) {
    tracing::info!(target: TARGET, event = "locked_out", principal, tag);
}

/// A store was refused because a new collection would pass the
/// collections-per-node bound (`total` collections on the cluster).
pub fn collection_limit(total: u64, per_node: u64) {
    tracing::error!(
        target: TARGET,
        event = "alert",
        kind = "collection_limit",
        total,
        per_node,
    );
}

/// A request was refused by a per-user limit.
pub fn limit_hit(limit: &'static str, owner: &OwnerHash) {
    tracing::info!(target: TARGET, event = "limit_hit", limit, owner = %owner.log_tag());
}

/// A caller asked for a memory id that is not theirs (or does not exist).
pub fn memory_not_found(owner: &OwnerHash) {
    tracing::info!(target: TARGET, event = "memory_not_found", owner = %owner.log_tag());
}
