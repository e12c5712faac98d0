//! Isolation in time: which verified tokens still count, and which tenants
//! may call at all.
//!
//! Admins change the rules (revoke a user's tokens issued until now, raise a
//! user's minimum `ver`, disable or enable a tenant); every change is stored
//! in a [`AccessLog`] before the admin call returns, and applied to the
//! in-memory [`Rules`] of the process that took it at once. The log lives
//! apart from every user's memories: a file in the data directory on the
//! embedded engine ([`file_log`]), a system collection on the Qdrant server
//! engine ([`qdrant_log`]), where the other replicas poll it (every
//! `CORDON_ACCESS_POLL_MS`, 200 by default) and so apply a change well
//! within a second. The per-request check reads memory only.

pub mod file_log;
pub mod lockout;
pub mod qdrant_log;
pub mod rules;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::RwLock;
use uuid::Uuid;

pub use rules::{Change, Denied, Rule, Rules, TokenFacts, UserRule};

use crate::owner::{OwnerHash, TenantHash};
use crate::secret::Secret;
use crate::store::StoreError;

/// How far back a poll reads, before the newest change seen: a change
/// stamped by a replica whose clock lags by less than this is still found
/// by the next poll (and a full read every [`FULL_READ_EVERY`] finds the rest).
const POLL_OVERLAP_MS: u64 = 10_000;

/// Interval of full reads of a shared log.
const FULL_READ_EVERY: Duration = Duration::from_secs(60);

/// Where changes are stored.
#[async_trait]
pub trait AccessLog: Send + Sync {
    /// Every change stored.
    async fn load(&self) -> Result<Vec<Change>, AccessError>;
    /// The changes stamped at or after `since_ms` (more is fine).
    async fn since(&self, since_ms: u64) -> Result<Vec<Change>, AccessError>;
    /// Stores `change` durably.
    async fn append(&self, change: &Change) -> Result<(), AccessError>;
    /// Whether other processes append too (then it is polled).
    fn shared(&self) -> bool;
}

/// Why the access log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A file could not be read or written.
    #[error("access log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A stored change cannot be parsed.
    #[error("access log is corrupt: {0}")]
    Corrupt(String),
    /// The Qdrant server failed.
    #[error("access log: {0}")]
    Store(StoreError),
    /// The tenants file is unusable.
    #[error("tenants file {path}: {reason}")]
    TenantsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl AccessError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Why a request with a verified token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The rules say no.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The rules are not loaded yet (the shared log was unreachable at
    /// start); nothing is served until they are.
    #[error("access rules not loaded yet")]
    NotReady,
}

/// The access rules of this process and the log behind them.
pub struct Access {
    rules: RwLock<Rules>,
    log: Arc<dyn AccessLog>,
    registry: bool,
    loaded: AtomicBool,
    newest_ms: AtomicU64,
    seed: Vec<Change>,
    secret: Secret,
}

impl Access {
    /// Rules over `log`. With `tenants_file`, the tenant registry is on and
    /// the file's tenants are its starting entries (admin changes win over
    /// them). Loads the log now; a shared log that cannot be read yet is
    /// retried by [`Access::spawn_poller`], and until then requests get 503.
    pub async fn open(
        log: Arc<dyn AccessLog>,
        tenants_file: Option<&Path>,
        secret: Secret,
    ) -> Result<Arc<Self>, AccessError> {
        let seed = match tenants_file {
            Some(path) => read_tenants_file(path, &secret)?,
            None => Vec::new(),
        };
        let access = Arc::new(Self {
            rules: RwLock::new(Rules::default()),
            log,
            registry: tenants_file.is_some(),
            loaded: AtomicBool::new(false),
            newest_ms: AtomicU64::new(0),
            seed,
            secret,
        });
        match access.reload().await {
            Ok(()) => {}
            Err(e) if access.log.shared() => {
                tracing::warn!(error = %e, "access rules not loaded yet; refusing requests until they are");
            }
            Err(e) => return Err(e),
        }
        Ok(access)
    }

    /// Reads the whole log and folds it into the rules held. Folded in, not
    /// swapped in: the fold is the same in any order and with repeats, and
    /// a change this process recorded while the read was under way must not
    /// be lost with the rules it was applied to.
    async fn reload(&self) -> Result<(), AccessError> {
        let changes = self.log.load().await?;
        let mut rules = self.rules.write();
        for change in self.seed.iter().chain(&changes) {
            self.fold(&mut rules, change);
        }
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    fn fold(&self, rules: &mut Rules, change: &Change) {
        if !rules.apply(change) {
            tracing::warn!(id = %change.id, "skipped an access change with a malformed hash");
        }
        self.newest_ms.fetch_max(change.at_ms, Ordering::AcqRel);
    }

    /// Whether the rules are loaded (requests are refused until they are).
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Whether the tenant registry is on.
    pub fn registry(&self) -> bool {
        self.registry
    }

    /// The per-request check: memory only, no I/O. The tenant is hashed
    /// only when the registry is on or some change named a tenant (a
    /// disabled tenant is refused with or without the registry).
    pub fn check(&self, tenant: &str, owner: &OwnerHash, token: TokenFacts) -> Result<(), Refusal> {
        if !self.loaded.load(Ordering::Acquire) {
            return Err(Refusal::NotReady);
        }
        let rules = self.rules.read();
        let tenant = (self.registry || rules.names_tenants()).then(|| self.tenant_hash(tenant));
        Ok(rules.check(tenant.as_ref(), self.registry, owner, token)?)
    }

    /// Stores `rule` and applies it here; from its return on, this process
    /// refuses what it refuses. It is stamped after every change this
    /// process has seen, even one stamped by a replica whose clock runs
    /// ahead, so that the latest call wins over the changes it could see.
    pub async fn record(&self, rule: Rule) -> Result<Change, AccessError> {
        let at_ms = now_ms().max(self.newest_ms.load(Ordering::Acquire) + 1);
        let change = Change {
            id: Uuid::now_v7(),
            at_ms,
            rule,
        };
        self.log.append(&change).await?;
        let mut rules = self.rules.write();
        self.fold(&mut rules, &change);
        Ok(change)
    }

    /// The rule held for `owner`.
    pub fn user(&self, owner: &OwnerHash) -> UserRule {
        self.rules.read().user(owner)
    }

    /// The registry's state of `tenant` (`None`: unknown).
    pub fn tenant_enabled(&self, tenant: &TenantHash) -> Option<bool> {
        self.rules.read().tenant_enabled(tenant)
    }

    /// Whether the collection tagged `place` is quarantined (memory only).
    pub fn quarantined(&self, place: &str) -> bool {
        let rules = self.rules.read();
        rules.any_quarantined() && rules.quarantined(place)
    }

    /// Whether any collection is quarantined.
    pub fn any_quarantined(&self) -> bool {
        self.rules.read().any_quarantined()
    }

    /// The quarantined collections' place tags, with their breach times.
    pub fn quarantines(&self) -> Vec<(String, u64)> {
        self.rules.read().quarantines()
    }

    /// The tenant hash of `tenant` under this deployment's secret.
    pub fn tenant_hash(&self, tenant: &str) -> TenantHash {
        TenantHash::derive(&self.secret, tenant)
    }

    /// On a shared log, polls for other replicas' changes every `interval`
    /// (and reads it whole now and then), until the process ends.
    pub fn spawn_poller(self: &Arc<Self>, interval: Duration) {
        if !self.log.shared() {
            return;
        }
        let access = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last_full = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(interval).await;
                let Some(access) = access.upgrade() else {
                    return;
                };
                let full = !access.loaded.load(Ordering::Acquire)
                    || last_full.elapsed() >= FULL_READ_EVERY;
                let result = if full {
                    let result = access.reload().await;
                    if result.is_ok() {
                        last_full = tokio::time::Instant::now();
                    }
                    result
                } else {
                    access.poll().await
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "cannot read the access log; keeping the rules held");
                }
            }
        });
    }

    async fn poll(&self) -> Result<(), AccessError> {
        // From this clock's now, not only from the newest stamp seen: one
        // change from a replica whose clock runs ahead must not hide the
        // later ones stamped by clocks that do not.
        let since = self
            .newest_ms
            .load(Ordering::Acquire)
            .min(now_ms())
            .saturating_sub(POLL_OVERLAP_MS);
        let changes = self.log.since(since).await?;
        let mut rules = self.rules.write();
        for change in &changes {
            self.fold(&mut rules, change);
        }
        Ok(())
    }
}

/// Now, Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The tenants file: a JSON object from tenant name to `"enabled"` or
/// `"disabled"`. Its entries are stamped at time 0, so that any admin change
/// to the same tenant wins over them.
fn read_tenants_file(path: &Path, secret: &Secret) -> Result<Vec<Change>, AccessError> {
    let bad = |reason: String| AccessError::TenantsFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let map: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "{e} (expected {{\"tenant\": \"enabled\" | \"disabled\"}})"
            ))
        })?;
    map.into_iter()
        .map(|(tenant, state)| {
            let enabled = match state.as_str() {
                "enabled" => true,
                "disabled" => false,
                other => {
                    return Err(bad(format!(
                        "tenant state `{other}` is neither \"enabled\" nor \"disabled\""
                    )));
                }
            };
            Ok(Change {
                id: Uuid::nil(),
                at_ms: 0,
                rule: Rule::Tenant {
                    tenant: TenantHash::derive(secret, &tenant).to_hex(),
                    enabled,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared log in memory whose reads can be made to miss the newest
    /// change (as a read racing an append does).
    #[derive(Default)]
    struct MemoryLog {
        changes: parking_lot::Mutex<Vec<Change>>,
        hide_last: AtomicBool,
    }

    #[async_trait]
    impl AccessLog for MemoryLog {
        async fn load(&self) -> Result<Vec<Change>, AccessError> {
            let mut changes = self.changes.lock().clone();
            if self.hide_last.load(Ordering::Acquire) {
                changes.pop();
            }
            Ok(changes)
        }
        async fn since(&self, since_ms: u64) -> Result<Vec<Change>, AccessError> {
            Ok(self
                .changes
                .lock()
                .iter()
                .filter(|c| c.at_ms >= since_ms)
                .cloned()
                .collect())
        }
        async fn append(&self, change: &Change) -> Result<(), AccessError> {
            self.changes.lock().push(change.clone());
            Ok(())
        }
        fn shared(&self) -> bool {
            true
        }
    }

    fn secret() -> Secret {
        Secret::new(b"access-test-secret-0123456789abcdef".to_vec())
    }

    fn tenant_rule(access: &Access, enabled: bool) -> Rule {
        Rule::Tenant {
            tenant: access.tenant_hash("acme").to_hex(),
            enabled,
        }
    }

    /// Another replica, its clock ten minutes ahead, enables the tenant;
    /// `access` polls it in.
    async fn enabled_by_a_clock_ahead(log: &MemoryLog, access: &Access) {
        log.append(&Change {
            id: Uuid::now_v7(),
            at_ms: now_ms() + 600_000,
            rule: tenant_rule(access, true),
        })
        .await
        .expect("appends");
        access.poll().await.expect("polls");
    }

    #[tokio::test]
    async fn a_change_after_one_stamped_by_a_clock_ahead_still_wins() {
        let log = Arc::new(MemoryLog::default());
        let access = Access::open(log.clone(), None, secret())
            .await
            .expect("opens");
        enabled_by_a_clock_ahead(&log, &access).await;
        let disable = access
            .record(tenant_rule(&access, false))
            .await
            .expect("records");
        let hash = access.tenant_hash("acme");
        assert_eq!(
            access.tenant_enabled(&hash),
            Some(false),
            "the later call won"
        );
        assert!(disable.at_ms > now_ms() + 500_000);
    }

    #[tokio::test]
    async fn a_poll_still_finds_changes_stamped_before_one_from_a_clock_ahead() {
        let log = Arc::new(MemoryLog::default());
        let access = Access::open(log.clone(), None, secret())
            .await
            .expect("opens");
        let owner = OwnerHash::derive(&secret(), "acme", "alice");
        enabled_by_a_clock_ahead(&log, &access).await;
        // A replica with a right clock revokes alice now.
        log.append(&Change {
            id: Uuid::now_v7(),
            at_ms: now_ms(),
            rule: Rule::User {
                owner: owner.to_hex(),
                revoked_before_ms: now_ms(),
                min_version: 0,
            },
        })
        .await
        .expect("appends");
        access.poll().await.expect("polls");
        assert!(
            access.user(&owner).revoked_before_ms > 0,
            "the poll missed it"
        );
    }

    #[tokio::test]
    async fn a_full_read_racing_a_recorded_change_does_not_undo_it() {
        let log = Arc::new(MemoryLog::default());
        let access = Access::open(log.clone(), None, secret())
            .await
            .expect("opens");
        let owner = OwnerHash::derive(&secret(), "acme", "alice");
        access
            .record(Rule::User {
                owner: owner.to_hex(),
                revoked_before_ms: now_ms(),
                min_version: 3,
            })
            .await
            .expect("records");
        // A full read that started before the append returns without it.
        log.hide_last.store(true, Ordering::Release);
        access.reload().await.expect("reloads");
        assert_eq!(access.user(&owner).min_version, 3);
    }
}
