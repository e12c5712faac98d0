//! Each user's access log: who read or changed their memories, and when.
//!
//! Every read (search, get, list, export, the MCP tools), every change
//! (store, update, delete, erase) and every admin action about a user is
//! noted with the time, the route or tool, the token's `jti` (or a keyed tag
//! of the token), the client address tag and the number of memories
//! touched; never a text or a query. A user reads their own log through
//! `GET /v1/access-log`; an admin through the admin API.
//!
//! Entries are kept per user, apart from the memories: a file per user on
//! the embedded engine ([`file`]), points carrying the owner hash in a
//! system collection on the Qdrant server engine ([`qdrant`]), read back
//! only under the owner condition and checked against the owner again. With
//! encryption at rest each entry is sealed under the user's data key, and an
//! erase removes the user's log with their memories, leaving only the
//! record of the erase. Entries older than the retention are left out of
//! reads at once and deleted by a sweep.
//!
//! Notes go through a queue to one writer task that stores them in batches,
//! so a request does not wait for its own entry; a read of a log first waits
//! for the entries queued before it.

pub mod file;
pub mod qdrant;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::owner::OwnerHash;
use crate::seal::setup::SealGate;
use crate::store::StoreError;

/// Entries the writer stores in one batch at most.
const BATCH: usize = 512;

/// Notes queued for the writer at most; a request waits for room beyond.
const QUEUE: usize = 16_384;

/// Longest a request waits for room in a full queue before its entry is
/// given up (counted in `cordon_access_log_dropped_total`): a log store
/// that stalls must not stall every request with it.
const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// One access to a user's memories, as the user reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// When, Unix milliseconds.
    pub at: u64,
    /// What: `search`, `get`, `list`, `export`, `store`, `update`,
    /// `delete`, `erase`, an MCP tool's name, or an admin action.
    pub action: String,
    /// Through what: `http`, `mcp` or `admin`.
    pub via: String,
    /// The token's `jti`, or `tag:` and a keyed tag of the token when it
    /// has none (`admin` for admin calls).
    pub token: String,
    /// Keyed tag of the client address (`unknown` without one).
    pub client: String,
    /// How many memories it returned, wrote or deleted.
    pub memories: usize,
}

/// An entry as stored: plain, or sealed under the owner's data key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Unique id; what a sealed entry is bound to.
    pub id: Uuid,
    /// The owner hash, hex.
    pub owner: String,
    /// Microseconds since the epoch, unique within a process: the order
    /// and the paging cursor.
    pub seq: u64,
    /// The entry, when stored plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<Entry>,
    /// The entry sealed under the owner's data key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// Which of a user's entries a page holds.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Only entries older than this cursor (a `seq`).
    pub before: Option<u64>,
    /// Only entries at or after this time, Unix milliseconds.
    pub since_ms: Option<u64>,
    /// Only entries before this time, Unix milliseconds.
    pub until_ms: Option<u64>,
    /// Most entries.
    pub limit: usize,
}

impl Window {
    /// The `seq` bounds of the window: `[from, to)`.
    fn seq_bounds(&self) -> (u64, u64) {
        let from = self.since_ms.map_or(0, |ms| ms.saturating_mul(1000));
        let to = self.until_ms.map_or(u64::MAX, |ms| ms.saturating_mul(1000));
        (from, self.before.map_or(to, |b| b.min(to)))
    }
}

/// Where entries are stored.
#[async_trait]
pub trait TrailStore: Send + Sync {
    /// Stores `records` durably.
    async fn append(&self, records: Vec<Record>) -> Result<(), StoreError>;
    /// Up to `limit` of `owner`'s records with `seq` in `[from, to)`,
    /// newest first.
    async fn page(
        &self,
        owner: &OwnerHash,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;
    /// Deletes every record of `owner`; how many.
    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError>;
    /// Deletes every record with `seq` below `before`; how many.
    async fn prune(&self, before: u64) -> Result<usize, StoreError>;
    /// Makes what the store needs before the first record (a system
    /// collection), so that it exists before any user's does.
    async fn prepare(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

enum Msg {
    Note {
        owner: OwnerHash,
        seq: u64,
        entry: Entry,
        seal: bool,
    },
    Flush(oneshot::Sender<()>),
}

/// The access logs of every user, and the writer that stores them.
pub struct Trail {
    store: Arc<dyn TrailStore>,
    sealing: Arc<SealGate>,
    queue: Option<mpsc::Sender<Msg>>,
    retention: Duration,
    last_seq: AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
}

/// A page of a user's log, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogPage {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Pass as `before` for the next, older page (absent on the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

impl Trail {
    /// Access logs in `store`, sealed as `sealing` decides, kept for
    /// `retention`; `enabled: false` notes nothing (reads, erases and the
    /// retention sweep still work). Starts the writer and the sweep.
    pub fn start(
        store: Arc<dyn TrailStore>,
        sealing: Arc<SealGate>,
        retention: Duration,
        enabled: bool,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let (queue, rx) = match enabled {
            true => {
                let (tx, rx) = mpsc::channel(QUEUE);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let trail = Arc::new(Self {
            store,
            sealing,
            queue,
            retention,
            last_seq: AtomicU64::new(0),
            metrics,
        });
        if let Some(rx) = rx {
            tokio::spawn(write_loop(Arc::downgrade(&trail), rx));
        }
        tokio::spawn(sweep_loop(Arc::downgrade(&trail)));
        trail
    }

    /// The same logs, read only: nothing is noted through it (the canary's).
    pub fn without_notes(&self) -> Arc<Self> {
        Arc::new(Self {
            store: self.store.clone(),
            sealing: self.sealing.clone(),
            queue: None,
            retention: self.retention,
            last_seq: AtomicU64::new(0),
            metrics: self.metrics.clone(),
        })
    }

    /// A `seq` after every one this process handed out.
    fn next_seq(&self) -> u64 {
        let now = crate::access::now_ms().saturating_mul(1000);
        let mut last = self.last_seq.load(Ordering::Acquire);
        loop {
            let next = now.max(last + 1);
            match self.last_seq.compare_exchange_weak(
                last,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Notes `entry` in `owner`'s log (stored shortly after, in a batch).
    pub async fn note(&self, owner: &OwnerHash, entry: Entry) {
        self.enqueue(owner, entry, true).await
    }

    async fn enqueue(&self, owner: &OwnerHash, mut entry: Entry, seal: bool) {
        let Some(queue) = &self.queue else { return };
        let seq = self.next_seq();
        entry.at = seq / 1000;
        let msg = Msg::Note {
            owner: owner.clone(),
            seq,
            entry,
            seal,
        };
        let msg = match queue.try_send(msg) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("the access-log writer has stopped; an entry was not stored");
                return;
            }
        };
        if !matches!(queue.send_timeout(msg, QUEUE_WAIT).await, Ok(())) {
            self.metrics.access_log_dropped();
            tracing::error!(
                owner = %owner.log_tag(),
                "the access log's queue stayed full; an entry was not stored"
            );
        }
    }

    /// Waits until every entry noted before the call is stored (or failed).
    pub async fn flush(&self) {
        let Some(queue) = &self.queue else { return };
        let (tx, rx) = oneshot::channel();
        if queue.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// A page of `owner`'s log, newest first, with what this process noted
    /// so far included.
    pub async fn page(&self, owner: &OwnerHash, window: Window) -> Result<LogPage, StoreError> {
        self.flush().await;
        let (mut from, to) = window.seq_bounds();
        let oldest = crate::access::now_ms()
            .saturating_sub(self.retention.as_millis() as u64)
            .saturating_mul(1000);
        from = from.max(oldest);
        let limit = window.limit;
        let records = self.store.page(owner, from, to, limit + 1).await?;
        let more = records.len() > limit;
        let mut entries = Vec::with_capacity(limit);
        let mut last_seq = None;
        for record in records.into_iter().take(limit) {
            last_seq = Some(record.seq);
            if let Some(entry) = self.open(owner, record).await? {
                entries.push(entry);
            }
        }
        Ok(LogPage {
            entries,
            next: if more { last_seq } else { None },
        })
    }

    /// The entry of `record`, if it is `owner`'s and opens.
    async fn open(&self, owner: &OwnerHash, record: Record) -> Result<Option<Entry>, StoreError> {
        if !owner.matches_hex(&record.owner) {
            tracing::error!(
                event = "cross_tenant_leak_detected",
                caller = %owner.log_tag(),
                "access log: dropped another owner's entry"
            );
            return Ok(None);
        }
        if let Some(entry) = record.entry {
            return Ok(Some(entry));
        }
        let (Some(sealed), Some(sealer)) = (record.sealed, self.sealing.sealer()?) else {
            return Ok(None);
        };
        let keys = sealer.keys_for(owner).await?;
        let opened = BASE64
            .decode(sealed)
            .ok()
            .and_then(|bytes| keys.open(owner, record.id, &bytes))
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        if opened.is_none() {
            // Sealed under a key erased since (and left by an erase that
            // stopped halfway), or altered.
            tracing::warn!(owner = %owner.log_tag(), "an access-log entry does not open; skipped");
        }
        Ok(opened)
    }

    /// Deletes `owner`'s log, then notes `erase` as its first entry again,
    /// stored plain (the key it would be sealed under is gone).
    pub async fn erase(&self, owner: &OwnerHash, erase: Entry) -> Result<(), StoreError> {
        self.flush().await;
        self.store.erase(owner).await?;
        self.enqueue(owner, erase, false).await;
        self.flush().await;
        Ok(())
    }

    /// Stores a batch, sealing each entry under its owner's key when
    /// memories are sealed.
    async fn store(&self, notes: Vec<(OwnerHash, u64, Entry, bool)>) -> Result<(), StoreError> {
        let sealer = self.sealing.sealer()?;
        let mut keys = HashMap::new();
        let mut records = Vec::with_capacity(notes.len());
        for (owner, seq, entry, seal) in notes {
            let id = Uuid::now_v7();
            let mut record = Record {
                id,
                owner: owner.to_hex(),
                seq,
                entry: None,
                sealed: None,
            };
            match (sealer, seal) {
                (Some(sealer), true) => {
                    if !keys.contains_key(&owner) {
                        keys.insert(owner.clone(), sealer.keys_for(&owner).await?);
                    }
                    let plain = serde_json::to_vec(&entry).expect("an entry always serialises");
                    record.sealed = Some(BASE64.encode(keys[&owner].seal(&owner, id, &plain)));
                }
                _ => record.entry = Some(entry),
            }
            records.push(record);
        }
        self.store.append(records).await
    }
}

/// Takes notes off the queue and stores them in batches; a failed batch is
/// tried twice more before it is given up (and logged).
async fn write_loop(trail: std::sync::Weak<Trail>, mut rx: mpsc::Receiver<Msg>) {
    while let Some(first) = rx.recv().await {
        let mut notes = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Note {
                    owner,
                    seq,
                    entry,
                    seal,
                } => notes.push((owner, seq, entry, seal)),
                Msg::Flush(done) => flushes.push(done),
            }
            if notes.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        let Some(trail) = trail.upgrade() else { return };
        if !notes.is_empty() {
            let count = notes.len();
            let mut tries = 0;
            loop {
                match trail.store(notes.clone()).await {
                    Ok(()) => break,
                    Err(e) if tries < 2 => {
                        tries += 1;
                        tracing::warn!(error = %e, "access-log batch not stored; retrying");
                        tokio::time::sleep(Duration::from_millis(250 << tries)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, entries = count, "access-log batch lost");
                        break;
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Deletes entries past the retention, every tenth of the retention (at
/// most hourly), the first time that long after the start.
async fn sweep_loop(trail: std::sync::Weak<Trail>) {
    let every = match trail.upgrade() {
        Some(t) => (t.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(trail) = trail.upgrade() else { return };
        let before = crate::access::now_ms()
            .saturating_sub(trail.retention.as_millis() as u64)
            .saturating_mul(1000);
        match trail.store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "access-log entries past the retention deleted"),
            Err(e) => tracing::warn!(error = %e, "access-log retention sweep failed"),
        }
    }
}
