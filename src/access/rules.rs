//! The access rules as data: what every admin change leaves behind, and the
//! check each request passes.
//!
//! Admin changes are [`Change`] records, appended and never rewritten. The
//! state is their fold, and the fold does not depend on order or repetition:
//! a user's revocation time and minimum version only ever rise (the larger
//! wins), and a tenant's state is the one with the latest `(at_ms, id)`.
//! So every replica that has read the same records holds the same rules,
//! whichever order it read them in, and reading a record twice is harmless.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::owner::{OwnerHash, TenantHash};

/// One admin change, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Unique id (UUID v7, so time-ordered).
    pub id: Uuid,
    /// When the change was made, Unix milliseconds (the admin's replica clock).
    pub at_ms: u64,
    /// What changed.
    #[serde(flatten)]
    pub rule: Rule,
}

/// What a change sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rule {
    /// Tokens of `owner` issued at or before `revoked_before_ms`, or with a
    /// `ver` below `min_version`, are refused.
    User {
        /// Full owner hash, hex.
        owner: String,
        /// Issue-time cut-off, Unix milliseconds (0: none).
        #[serde(default)]
        revoked_before_ms: u64,
        /// Lowest accepted `ver` claim (0: any).
        #[serde(default)]
        min_version: u64,
    },
    /// A tenant in the registry, enabled or not.
    Tenant {
        /// Full tenant hash, hex.
        tenant: String,
        /// Whether its users may call.
        enabled: bool,
    },
    /// A collection whose reads are refused (after the guard met another
    /// owner's point in it), or no longer.
    Quarantine {
        /// The collection's place tag (see [`crate::guarded::place_tag`]).
        place: String,
        /// Whether reads of it are refused.
        quarantined: bool,
        /// Unix milliseconds of the breach that set it (0 when cleared).
        #[serde(default)]
        since_ms: u64,
    },
}

/// Why a verified token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Issued before a revocation, or below the user's minimum version.
    #[error("token revoked")]
    TokenRevoked,
    /// The registry is on and does not know the tenant.
    #[error("tenant unknown")]
    TenantUnknown,
    /// The tenant is disabled.
    #[error("tenant disabled")]
    TenantDisabled,
}

/// The claims the check looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenFacts {
    /// `iat`, Unix milliseconds (fractional seconds kept), if present.
    pub issued_at_ms: Option<u64>,
    /// `ver`, 0 when absent.
    pub version: u64,
}

/// A user's revocation rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UserRule {
    /// Tokens issued at or before this (Unix ms) are refused; 0: none.
    pub revoked_before_ms: u64,
    /// Lowest accepted `ver`.
    pub min_version: u64,
}

/// A tenant's registry entry, or a collection's quarantine: the latest
/// `(at_ms, id)` wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TenantEntry {
    enabled: bool,
    at_ms: u64,
    id: Uuid,
    /// A quarantine's breach time (0 for a tenant).
    since_ms: u64,
}

impl TenantEntry {
    /// Puts `entry` under `key` unless the one held there is newer.
    fn keep_latest<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Self>, key: K, entry: Self) {
        let newer = |old: &Self| (entry.at_ms, entry.id) > (old.at_ms, old.id);
        match map.get(&key) {
            Some(old) if !newer(old) => {}
            _ => {
                map.insert(key, entry);
            }
        }
    }
}

/// The fold of every change read so far.
#[derive(Debug, Default)]
pub struct Rules {
    users: HashMap<OwnerHash, UserRule>,
    tenants: HashMap<TenantHash, TenantEntry>,
    /// By place tag; `enabled` is "quarantined".
    quarantines: HashMap<String, TenantEntry>,
}

impl Rules {
    /// Folds one change in; a malformed hash is skipped (and reported).
    pub fn apply(&mut self, change: &Change) -> bool {
        match &change.rule {
            Rule::User {
                owner,
                revoked_before_ms,
                min_version,
            } => {
                let Some(owner) = OwnerHash::from_hex(owner) else {
                    return false;
                };
                let rule = self.users.entry(owner).or_default();
                rule.revoked_before_ms = rule.revoked_before_ms.max(*revoked_before_ms);
                rule.min_version = rule.min_version.max(*min_version);
            }
            Rule::Tenant { tenant, enabled } => {
                let Some(tenant) = TenantHash::from_hex(tenant) else {
                    return false;
                };
                let entry = TenantEntry {
                    enabled: *enabled,
                    at_ms: change.at_ms,
                    id: change.id,
                    since_ms: 0,
                };
                TenantEntry::keep_latest(&mut self.tenants, tenant, entry);
            }
            Rule::Quarantine {
                place,
                quarantined,
                since_ms,
            } => {
                let entry = TenantEntry {
                    enabled: *quarantined,
                    at_ms: change.at_ms,
                    id: change.id,
                    since_ms: *since_ms,
                };
                TenantEntry::keep_latest(&mut self.quarantines, place.clone(), entry);
            }
        }
        true
    }

    /// Whether the collection tagged `place` is quarantined.
    pub fn quarantined(&self, place: &str) -> bool {
        self.quarantines.get(place).is_some_and(|e| e.enabled)
    }

    /// Whether any collection is quarantined (else no read need look up its place).
    pub fn any_quarantined(&self) -> bool {
        self.quarantines.values().any(|e| e.enabled)
    }

    /// The quarantined collections' place tags, with the time of their breach.
    pub fn quarantines(&self) -> Vec<(String, u64)> {
        let mut held: Vec<_> = self
            .quarantines
            .iter()
            .filter(|(_, e)| e.enabled)
            .map(|(place, e)| (place.clone(), e.since_ms))
            .collect();
        held.sort();
        held
    }

    /// Refuses a verified token whose rules say no. `tenant` is the
    /// caller's tenant (`None`: no tenant was ever named, so none can be
    /// disabled). A disabled tenant is refused whether or not `registry` is
    /// on; a tenant the rules never heard of is refused only when it is.
    pub fn check(
        &self,
        tenant: Option<&TenantHash>,
        registry: bool,
        owner: &OwnerHash,
        token: TokenFacts,
    ) -> Result<(), Denied> {
        match tenant.map(|tenant| self.tenants.get(tenant)) {
            Some(Some(entry)) if !entry.enabled => return Err(Denied::TenantDisabled),
            Some(None) | None if registry => return Err(Denied::TenantUnknown),
            _ => {}
        }
        if let Some(rule) = self.users.get(owner) {
            if token.version < rule.min_version {
                return Err(Denied::TokenRevoked);
            }
            // A token without `iat` cannot show it came after the cut-off.
            if rule.revoked_before_ms > 0
                && token
                    .issued_at_ms
                    .is_none_or(|iat| iat <= rule.revoked_before_ms)
            {
                return Err(Denied::TokenRevoked);
            }
        }
        Ok(())
    }

    /// Whether any change ever named a tenant (else no tenant check can
    /// refuse anything, and the caller's tenant need not be hashed).
    pub fn names_tenants(&self) -> bool {
        !self.tenants.is_empty()
    }

    /// The rule held for `owner`.
    pub fn user(&self, owner: &OwnerHash) -> UserRule {
        self.users.get(owner).copied().unwrap_or_default()
    }

    /// The state of `tenant`: `None` when the registry does not know it.
    pub fn tenant_enabled(&self, tenant: &TenantHash) -> Option<bool> {
        self.tenants.get(tenant).map(|entry| entry.enabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn secret() -> Secret {
        Secret::new(b"rules-test-secret-0123456789abcdef".to_vec())
    }

    fn change(at_ms: u64, rule: Rule) -> Change {
        Change {
            id: Uuid::now_v7(),
            at_ms,
            rule,
        }
    }

    fn revoke(owner: &OwnerHash, before: u64, min_version: u64) -> Change {
        change(
            before,
            Rule::User {
                owner: owner.to_hex(),
                revoked_before_ms: before,
                min_version,
            },
        )
    }

    fn facts(issued_at_ms: Option<u64>, version: u64) -> TokenFacts {
        TokenFacts {
            issued_at_ms,
            version,
        }
    }

    #[test]
    fn a_token_issued_at_or_before_the_cut_off_is_revoked_and_a_later_one_is_not() {
        let owner = OwnerHash::derive(&secret(), "acme", "alice");
        let mut rules = Rules::default();
        rules.apply(&revoke(&owner, 5_000, 0));
        for (iat, ok) in [
            (Some(4_000), false),
            (Some(5_000), false),
            (None, false),
            (Some(5_001), true),
        ] {
            assert_eq!(
                rules.check(None, false, &owner, facts(iat, 0)).is_ok(),
                ok,
                "iat {iat:?}"
            );
        }
        let bob = OwnerHash::derive(&secret(), "acme", "bob");
        assert!(rules.check(None, false, &bob, facts(None, 0)).is_ok());
    }

    #[test]
    fn the_minimum_version_refuses_older_tokens_and_tokens_without_ver() {
        let owner = OwnerHash::derive(&secret(), "acme", "alice");
        let mut rules = Rules::default();
        rules.apply(&revoke(&owner, 0, 3));
        assert_eq!(
            rules.check(None, false, &owner, facts(Some(1), 2)),
            Err(Denied::TokenRevoked)
        );
        assert_eq!(
            rules.check(None, false, &owner, facts(None, 0)),
            Err(Denied::TokenRevoked)
        );
        assert!(rules.check(None, false, &owner, facts(None, 3)).is_ok());
    }

    #[test]
    fn the_fold_is_the_same_in_any_order_and_with_repeats() {
        let owner = OwnerHash::derive(&secret(), "acme", "alice");
        let tenant = TenantHash::derive(&secret(), "acme");
        let changes = [
            revoke(&owner, 9_000, 1),
            revoke(&owner, 4_000, 7),
            change(
                10,
                Rule::Tenant {
                    tenant: tenant.to_hex(),
                    enabled: false,
                },
            ),
            change(
                20,
                Rule::Tenant {
                    tenant: tenant.to_hex(),
                    enabled: true,
                },
            ),
        ];
        let orders: [&[usize]; 3] = [&[0, 1, 2, 3], &[3, 2, 1, 0], &[1, 3, 0, 2, 3, 1]];
        for order in orders {
            let mut rules = Rules::default();
            for &i in order {
                rules.apply(&changes[i]);
            }
            assert_eq!(
                rules.user(&owner),
                UserRule {
                    revoked_before_ms: 9_000,
                    min_version: 7
                }
            );
            assert_eq!(
                rules.tenant_enabled(&tenant),
                Some(true),
                "the later change wins"
            );
        }
    }

    #[test]
    fn with_the_registry_on_unknown_and_disabled_tenants_are_refused() {
        let owner = OwnerHash::derive(&secret(), "acme", "alice");
        let (acme, globex) = (
            TenantHash::derive(&secret(), "acme"),
            TenantHash::derive(&secret(), "globex"),
        );
        let mut rules = Rules::default();
        rules.apply(&change(
            1,
            Rule::Tenant {
                tenant: acme.to_hex(),
                enabled: false,
            },
        ));
        assert_eq!(
            rules.check(Some(&acme), true, &owner, facts(None, 0)),
            Err(Denied::TenantDisabled)
        );
        assert_eq!(
            rules.check(Some(&globex), true, &owner, facts(None, 0)),
            Err(Denied::TenantUnknown)
        );
        rules.apply(&change(
            2,
            Rule::Tenant {
                tenant: acme.to_hex(),
                enabled: true,
            },
        ));
        assert!(
            rules
                .check(Some(&acme), true, &owner, facts(None, 0))
                .is_ok()
        );
    }

    #[test]
    fn with_the_registry_off_a_disabled_tenant_is_still_refused_and_others_pass() {
        let owner = OwnerHash::derive(&secret(), "acme", "alice");
        let (acme, globex) = (
            TenantHash::derive(&secret(), "acme"),
            TenantHash::derive(&secret(), "globex"),
        );
        let mut rules = Rules::default();
        assert!(!rules.names_tenants());
        rules.apply(&change(
            1,
            Rule::Tenant {
                tenant: acme.to_hex(),
                enabled: false,
            },
        ));
        assert!(rules.names_tenants());
        assert_eq!(
            rules.check(Some(&acme), false, &owner, facts(None, 0)),
            Err(Denied::TenantDisabled)
        );
        assert!(
            rules
                .check(Some(&globex), false, &owner, facts(None, 0))
                .is_ok()
        );
        assert!(rules.check(None, false, &owner, facts(None, 0)).is_ok());
    }

    #[test]
    fn a_change_round_trips_through_json() {
        let owner = OwnerHash::derive(&secret(), "acme", "alice");
        let c = revoke(&owner, 123, 4);
        let text = serde_json::to_string(&c).expect("serialises");
        assert!(text.contains("\"kind\":\"user\""), "{text}");
        assert_eq!(serde_json::from_str::<Change>(&text).expect("parses"), c);
    }

    fn quarantine(at_ms: u64, quarantined: bool) -> Change {
        change(
            at_ms,
            Rule::Quarantine {
                place: "abc".into(),
                quarantined,
                since_ms: at_ms,
            },
        )
    }

    #[test]
    fn the_latest_quarantine_change_wins_in_any_order() {
        let (set, cleared, set_again) = (
            quarantine(1, true),
            quarantine(2, false),
            quarantine(3, true),
        );
        for order in [
            [&set, &cleared, &set_again],
            [&set_again, &cleared, &set],
            [&cleared, &set_again, &set],
        ] {
            let mut rules = Rules::default();
            for c in order {
                rules.apply(c);
            }
            assert!(rules.quarantined("abc"));
            assert_eq!(rules.quarantines(), vec![("abc".to_owned(), 3)]);
        }
        let mut rules = Rules::default();
        for c in [&set, &cleared] {
            rules.apply(c);
        }
        assert!(!rules.quarantined("abc"));
        assert!(!rules.any_quarantined());
    }
}
