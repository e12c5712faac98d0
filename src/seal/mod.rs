//! Encryption at rest: every user's memories sealed under a data key of
//! their own.
//!
//! Each owner gets a random data key (DEK) on their first write. Text,
//! metadata and the idempotency digest are sealed together into one
//! ciphertext per memory ([`dek`]), bound to the owner hash and memory id.
//! The DEK is stored only wrapped by the KEK ([`kek`]), in a [`vault::Vault`]
//! apart from the memories, and cached unwrapped for a while ([`cache`]).
//! What stays readable in storage: the owner hash, the creation time, the
//! vector, and keyed tags of filterable metadata values ([`dek::RecordKeys::tag`]).
//! Erase destroys the wrapped DEK before any memory, so every copy of the
//! memories, backups included, becomes noise.

pub mod cache;
pub mod dek;
pub mod file_vault;
pub mod kek;
pub mod migrate;
pub mod qdrant_vault;
pub mod rotate;
pub mod setup;
pub mod vault;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use self::cache::DekCache;
use self::dek::{Dek, RecordKeys, TagValue};
use self::kek::Keyring;
use self::vault::{Vault, WrappedDek};
use crate::locks::KeyedLocks;
use crate::metrics::Metrics;
use crate::owner::OwnerHash;
use crate::store::{
    Conditions, METADATA_FIELD, MetaValue, NewMemory, REQUEST_FIELD, RawPoint, SEALED_FIELD,
    Sealed, TAGS_FIELD, TERMS_FIELD, TEXT_FIELD,
};

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key store cannot be read or written.
    #[error("key store: {0}")]
    Vault(String),
    /// The configured KEK is unusable.
    #[error("KEK: {0}")]
    BadKek(String),
    /// A stored key or marker is damaged, or wrapped by a KEK not configured.
    #[error("key store: {0}")]
    Corrupt(String),
    /// The data and the configuration disagree about encryption.
    #[error("{0}")]
    Mismatch(String),
    /// Stored memories of the caller that do not open, where a read must
    /// not leave any out.
    #[error("{0} stored memories do not open under their owner's key")]
    Undecryptable(usize),
}

/// Cache settings of the unwrapped data keys.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Most owners whose keys are held unwrapped.
    pub capacity: usize,
    /// Longest an unwrapped key is held.
    pub ttl: Duration,
}

/// What is sealed into each memory's ciphertext.
#[derive(Serialize, Deserialize)]
struct Plain {
    text: String,
    metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<String>,
}

/// Seals memories on their way into storage and opens them on the way out.
pub struct Sealer {
    keyring: Keyring,
    vault: Arc<dyn Vault>,
    cache: DekCache,
    // Stores hold their owner's read lock from taking the key to the
    // durable write, erase its write lock from destroying the key to
    // removing the memories: no store can land, under a destroyed key,
    // after the erase. A lock per owner, so an erase holds up no one else.
    owners: KeyedLocks<OwnerHash>,
    // Bumped by every shred, per stripe: a key read from the vault before a
    // shred of its owner is not put back into the cache after it.
    shreds: Vec<std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
}

const STRIPES: usize = 64;

impl Sealer {
    /// A sealer that wraps with `keyring` into `vault`.
    pub fn new(
        keyring: Keyring,
        vault: Arc<dyn Vault>,
        cache: &CacheSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            keyring,
            vault,
            cache: DekCache::new(cache.capacity, cache.ttl),
            owners: KeyedLocks::default(),
            shreds: (0..STRIPES)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            metrics,
        }
    }

    fn stripe_of(owner: &OwnerHash) -> usize {
        owner.bucket(STRIPES)
    }

    /// The lock that orders `owner`'s stores against its erase.
    pub fn lock_of(&self, owner: &OwnerHash) -> Arc<tokio::sync::RwLock<()>> {
        self.owners.of(owner)
    }

    fn shreds_of(&self, owner: &OwnerHash) -> u64 {
        self.shreds[Self::stripe_of(owner)].load(std::sync::atomic::Ordering::Acquire)
    }

    /// The owner's record keys; created (and stored wrapped) when `create`
    /// is set and the owner has none yet. `create` is what writes ask for:
    /// when other replicas share the vault, a write also checks that the
    /// cached key is still the vault's (an erase on another replica
    /// destroys it), so that no write is sealed under a destroyed key.
    async fn keys(
        &self,
        owner: &OwnerHash,
        create: bool,
    ) -> Result<Option<Arc<RecordKeys>>, SealError> {
        let cached = self.cache.get(owner);
        let recheck = create && self.vault.shared();
        if let Some((keys, _)) = &cached
            && !recheck
        {
            return Ok(Some(keys.clone()));
        }
        self.vault_keys(owner, create, cached).await
    }

    /// The owner's record keys as the vault holds them now (`cached` when
    /// it still holds the same wrapped key), cached from here on.
    async fn vault_keys(
        &self,
        owner: &OwnerHash,
        create: bool,
        cached: Option<(Arc<RecordKeys>, String)>,
    ) -> Result<Option<Arc<RecordKeys>>, SealError> {
        let shreds = self.shreds_of(owner);
        let stored = self.vault.get(owner).await?;
        if let (Some((keys, wrapped)), Some(stored)) = (&cached, &stored)
            && wrapped == &stored.wrapped
        {
            return Ok(Some(keys.clone()));
        }
        let wrapped = match stored {
            Some(wrapped) => wrapped,
            None if create => {
                let dek = Dek::random();
                let kek = self.keyring.current();
                let wrapped = WrappedDek {
                    owner: owner.to_hex(),
                    kek: kek.id().to_owned(),
                    wrapped: BASE64.encode(kek.wrap(owner, &dek).await?),
                };
                // Another request or replica may have created one meanwhile;
                // the vault's copy is the one to use.
                self.vault.create(owner, wrapped).await?
            }
            None => {
                self.cache.remove(owner);
                return Ok(None);
            }
        };
        let keys = Arc::new(self.unwrap(owner, &wrapped).await?.keys());
        if self.shreds_of(owner) == shreds {
            self.cache.insert(owner, keys.clone(), wrapped.wrapped);
        }
        Ok(Some(keys))
    }

    async fn unwrap(&self, owner: &OwnerHash, wrapped: &WrappedDek) -> Result<Dek, SealError> {
        if wrapped.owner != owner.to_hex() {
            return Err(SealError::Corrupt(format!(
                "the key filed under owner {} names another owner",
                owner.log_tag()
            )));
        }
        Ok(self.keyring.open(wrapped).await?.1)
    }

    /// The owner's record keys, created (and stored wrapped) if it has none.
    pub async fn keys_for(&self, owner: &OwnerHash) -> Result<Arc<RecordKeys>, SealError> {
        self.keys(owner, true)
            .await?
            .ok_or_else(|| SealError::Vault("no key after creating one".into()))
    }

    /// Seals each memory's text, metadata and request digest, leaving only
    /// the ciphertext and the metadata tags to be stored.
    pub async fn seal(
        &self,
        owner: &OwnerHash,
        memories: &mut [NewMemory],
    ) -> Result<(), SealError> {
        let keys = self.keys_for(owner).await?;
        for memory in memories {
            let plain = Plain {
                text: std::mem::take(&mut memory.text),
                metadata: std::mem::take(&mut memory.metadata),
                request: memory.request.take(),
            };
            memory.sealed = Some(seal_plain(&keys, owner, memory.id, &plain));
            for term in &mut memory.terms {
                *term = keys.term(*term);
            }
            // In the keyed order, which says nothing of the words'.
            memory.terms.sort_unstable();
        }
        Ok(())
    }

    /// Whether the owner's cached key was replaced in the vault since it was
    /// cached (another replica erased the owner and made a new one); the
    /// vault's is cached from now on. Only a shared vault can do that, and
    /// only a cached key can be stale, so otherwise this reads nothing.
    pub async fn renewed(&self, owner: &OwnerHash) -> Result<bool, SealError> {
        if !self.vault.shared() {
            return Ok(false);
        }
        let Some(cached) = self.cache.get(owner) else {
            return Ok(false);
        };
        let before = cached.0.clone();
        let now = self.vault_keys(owner, false, Some(cached)).await?;
        Ok(!now.is_some_and(|now| Arc::ptr_eq(&now, &before)))
    }

    /// Turns the metadata conditions of `filter` into the owner's tags
    /// (equality and any-of; ranges stay, for the caller to apply to the
    /// opened memories). `false` when the owner has no key yet, so nothing
    /// of theirs can match.
    pub async fn seal_conditions(
        &self,
        owner: &OwnerHash,
        filter: &mut Conditions,
    ) -> Result<bool, SealError> {
        if filter.metadata.is_empty() && filter.any_of.is_empty() && filter.terms.is_empty() {
            return Ok(true);
        }
        let Some(keys) = self.keys(owner, false).await? else {
            return Ok(false);
        };
        filter.tags = filter
            .metadata
            .drain(..)
            .map(|(key, value)| keys.tag(&key, &meta_tag(&value)))
            .collect();
        for term in &mut filter.terms {
            *term = keys.term(*term);
        }
        filter.any_tags = filter
            .any_of
            .drain(..)
            .map(|(key, values)| {
                values
                    .iter()
                    .map(|value| keys.tag(&key, &meta_tag(value)))
                    .collect()
            })
            .collect();
        Ok(true)
    }

    /// Opens each point into the plain payload the guard reads.
    ///
    /// A point that does not open under the cached key is tried once more
    /// under the key the vault holds now, when other replicas share the
    /// vault: another replica may have erased the owner and sealed new
    /// memories under a new key. A point that still does not open (sealed
    /// for another owner or id, altered, stored in the clear, or under a
    /// destroyed key) is counted and logged like a guard drop, and then
    /// dropped, or, when `whole` is set (an export, which must not look
    /// complete without it), refused as [`SealError::Undecryptable`].
    pub async fn open(
        &self,
        owner: &OwnerHash,
        points: Vec<RawPoint>,
        path: &'static str,
        whole: bool,
    ) -> Result<Vec<RawPoint>, SealError> {
        if points.is_empty() {
            return Ok(points);
        }
        let cached = self.cache.get(owner);
        let keys = match &cached {
            Some((keys, _)) => Some(keys.clone()),
            None => self.keys(owner, false).await?,
        };
        // Each point opened (Ok) or not (Err), in the engine's order.
        let mut results: Vec<Result<RawPoint, RawPoint>> = points
            .into_iter()
            .map(|point| open_point(keys.as_deref(), owner, point))
            .collect();
        if results.iter().any(Result::is_err) && cached.is_some() && self.vault.shared() {
            let renewed = self.vault_keys(owner, false, cached).await?;
            let changed = match (&keys, &renewed) {
                (Some(old), Some(new)) => !Arc::ptr_eq(old, new),
                (None, Some(_)) => true,
                _ => false,
            };
            if changed {
                results = results
                    .into_iter()
                    .map(|result| result.or_else(|p| open_point(renewed.as_deref(), owner, p)))
                    .collect();
            }
        }
        let mut closed = 0;
        let opened: Vec<RawPoint> = results
            .into_iter()
            .filter_map(|result| match result {
                Ok(open) => Some(open),
                Err(point) => {
                    closed += 1;
                    self.metrics.guard_dropped(path);
                    self.metrics.unsealing_failed(path);
                    crate::audit::guard_dropped(owner, "<does-not-open>", path);
                    tracing::error!(
                        event = "undecryptable_memory",
                        caller = %owner.log_tag(),
                        point = %point.id,
                        path,
                        "a stored memory does not open under the caller's key"
                    );
                    None
                }
            })
            .collect();
        if whole && closed > 0 {
            return Err(SealError::Undecryptable(closed));
        }
        Ok(opened)
    }

    /// Destroys the owner's key, so that every copy of their memories is
    /// unreadable from now on; the id of the key destroyed, if there was
    /// one (see [`key_id`]).
    pub async fn shred(&self, owner: &OwnerHash) -> Result<Option<String>, SealError> {
        self.shreds[Self::stripe_of(owner)].fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.cache.remove(owner);
        let held = self.vault.get(owner).await?;
        self.vault.destroy(owner).await?;
        // A request that read the key before the destroy may have cached it
        // again meanwhile.
        self.cache.remove(owner);
        Ok(held.map(|wrapped| key_id(&wrapped)))
    }
}

/// The id of a user's data key as an erase receipt names it: 16 hex digits
/// of a hash of the key as wrapped (which says nothing of the key itself).
pub fn key_id(wrapped: &WrappedDek) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"cordon dek id v1\0")
        .chain_update(wrapped.wrapped.as_bytes())
        .finalize();
    hex::encode(&digest[..8])
}

fn seal_plain(keys: &RecordKeys, owner: &OwnerHash, id: uuid::Uuid, plain: &Plain) -> Sealed {
    let bytes =
        zeroize::Zeroizing::new(serde_json::to_vec(plain).expect("a memory always serialises"));
    Sealed {
        blob: BASE64.encode(keys.seal(owner, id, &bytes)),
        tags: tags(keys, &plain.metadata),
    }
}

/// Seals a stored plain payload in place (the migration's step); `false`,
/// with nothing changed, when it is sealed already or holds no text.
pub fn seal_payload(
    keys: &RecordKeys,
    owner: &OwnerHash,
    id: uuid::Uuid,
    payload: &mut Map<String, Value>,
) -> bool {
    if payload.contains_key(SEALED_FIELD) || !payload.get(TEXT_FIELD).is_some_and(Value::is_string)
    {
        return false;
    }
    let Some(Value::String(text)) = payload.remove(TEXT_FIELD) else {
        return false;
    };
    let metadata = match payload.remove(METADATA_FIELD) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let request = match payload.remove(REQUEST_FIELD) {
        Some(Value::String(r)) => Some(r),
        _ => None,
    };
    let plain = Plain {
        text,
        metadata,
        request,
    };
    let sealed = seal_plain(keys, owner, id, &plain);
    payload.insert(SEALED_FIELD.into(), Value::String(sealed.blob));
    if !sealed.tags.is_empty() {
        let tags = sealed.tags.into_iter().map(Value::String).collect();
        payload.insert(TAGS_FIELD.into(), Value::Array(tags));
    }
    // Plain term ids are hashes anyone can compute for a guessed word.
    if let Some(Value::Array(terms)) = payload.get_mut(TERMS_FIELD) {
        let mut keyed: Vec<i64> = terms
            .iter()
            .filter_map(Value::as_i64)
            .map(|raw| keys.term(raw))
            .collect();
        keyed.sort_unstable();
        *terms = keyed.into_iter().map(Value::from).collect();
    }
    true
}

/// The point with its sealed content opened into the plain fields, or the
/// point as it was when it does not open under `keys`.
fn open_point(
    keys: Option<&RecordKeys>,
    owner: &OwnerHash,
    mut point: RawPoint,
) -> Result<RawPoint, RawPoint> {
    let plain = keys.and_then(|keys| {
        let blob = match point.payload.get(SEALED_FIELD) {
            Some(Value::String(b)) => BASE64.decode(b).ok()?,
            _ => return None,
        };
        let bytes = keys.open(owner, point.id, &blob)?;
        serde_json::from_slice::<Plain>(&bytes).ok()
    });
    let Some(plain) = plain else {
        return Err(point);
    };
    point.payload.remove(SEALED_FIELD);
    point.payload.remove(TAGS_FIELD);
    point
        .payload
        .insert(TEXT_FIELD.into(), Value::String(plain.text));
    point
        .payload
        .insert(METADATA_FIELD.into(), Value::Object(plain.metadata));
    if let Some(request) = plain.request {
        point
            .payload
            .insert(REQUEST_FIELD.into(), Value::String(request));
    }
    Ok(point)
}

/// Tags of every metadata value a filter can match (strings, integers,
/// booleans at the top level).
fn tags(keys: &RecordKeys, metadata: &Map<String, Value>) -> Vec<String> {
    let tag = |key: &str, value: &Value| {
        let value = match value {
            Value::String(s) => TagValue::Str(s),
            Value::Bool(b) => TagValue::Bool(*b),
            Value::Number(n) => TagValue::Int(n.as_i64()?),
            _ => return None,
        };
        Some(keys.tag(key, &value))
    };
    let mut out = Vec::new();
    for (key, value) in metadata {
        match value {
            // An engine's filter matches any element of an array; so do
            // the tags.
            Value::Array(items) => out.extend(items.iter().filter_map(|v| tag(key, v))),
            v => out.extend(tag(key, v)),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn meta_tag(value: &MetaValue) -> TagValue<'_> {
    match value {
        MetaValue::Str(s) => TagValue::Str(s),
        MetaValue::Int(i) => TagValue::Int(*i),
        MetaValue::Bool(b) => TagValue::Bool(*b),
    }
}
