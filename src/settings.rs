//! Settings, loaded once at start-up into typed structs.
//!
//! Every setting is a `cordon serve` flag with an environment variable of the
//! same meaning (`--bind` / `CORDON_BIND`, ...). Secrets are taken from the
//! environment or from files and are wrapped in [`Secret`] immediately.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

pub use crate::access::lockout::LockoutSettings;
pub use crate::auth::client::{ClientHeader, TrustedProxies};
use crate::embed::EmbedSettings;
pub use crate::limits::UserLimitSettings;
pub use crate::listener::ConnectionLimits;
use crate::owner::DEFAULT_NAME_HEX_CHARS;
pub use crate::seal::CacheSettings;
use crate::seal::kek::LocalKek;
use crate::secret::Secret;

/// File name of the server secret in its default directory (and where
/// earlier releases kept it, inside the data directory).
pub const SERVER_SECRET_FILE: &str = "server.secret";

/// Default quota of memories per user: 10,000, where a search still takes
/// about a millisecond (benches/RESULTS.md, "Default quotas").
pub const DEFAULT_MAX_MEMORIES_PER_USER: u64 = 10_000;

/// Default quota of text and metadata bytes per user, 32 MiB (see
/// benches/RESULTS.md, "Default quotas", for the disk it takes).
pub const DEFAULT_MAX_BYTES_PER_USER: u64 = 32 * 1024 * 1024;

/// Default cap on the points in one Qdrant collection (see the README's
/// "Storage on a Qdrant server").
pub const DEFAULT_QDRANT_MAX_COLLECTION_POINTS: u64 = 1_000_000;

/// Default bound on the collections of one Qdrant node. Measured on Qdrant
/// 1.18.3: a collection holds about 25 memory maps, so at the kernel's
/// default `vm.max_map_count` (65,530) a node dies at about 2,600; 2,000
/// leaves room for the node's own maps and for growth.
pub const DEFAULT_QDRANT_MAX_COLLECTIONS_PER_NODE: u64 = 2_000;

/// Shortest server secret accepted.
pub const MIN_SERVER_SECRET_BYTES: usize = 32;

/// Flags and environment variables of `cordon serve`.
///
/// A setting that only one engine reads, or that only means something next
/// to another, is an `Option` here with its default applied in
/// [`ServeArgs::into_settings`]: set where it would be ignored, it refuses
/// the start rather than be accepted and do nothing.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CORDON_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Directory for shards, keys and the change log of the embedded engine (default: `data`).
    #[arg(long, env = "CORDON_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the server secret (HMAC key for owner hashes); default: `$XDG_CONFIG_HOME/cordon/server.secret` (or `~/.config/cordon/server.secret`), created on the embedded engine's first start. Never inside the data directory.
    #[arg(long, env = "CORDON_SERVER_SECRET_FILE")]
    pub server_secret_file: Option<PathBuf>,
    /// The server secret itself (at least 32 bytes), instead of a file.
    #[arg(
        long,
        env = "CORDON_SERVER_SECRET",
        hide_env_values = true,
        conflicts_with = "server_secret_file"
    )]
    pub server_secret: Option<Secret>,
    /// Directory with the model, tokenizer.json and libonnxruntime.so.
    #[arg(long, env = "CORDON_MODEL_DIR", default_value = "models")]
    pub model_dir: PathBuf,
    /// Model file inside the model directory: the packed graph
    /// (models/pack.py) or the plain export, `model.onnx`.
    #[arg(long, env = "CORDON_MODEL_FILE", default_value = crate::embed::MODEL_FILE)]
    pub model_file: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub jwt: JwtArgs,
    /// Storage engine: `edge` (embedded qdrant-edge) or `qdrant` (a Qdrant server).
    #[arg(long, env = "CORDON_STORE", default_value = "edge")]
    pub store: String,
    /// Qdrant gRPC URL (Qdrant engine; default `http://127.0.0.1:6334`).
    #[arg(long, env = "CORDON_QDRANT_URL")]
    pub qdrant_url: Option<String>,
    /// Qdrant API key, when the server requires one (Qdrant engine).
    #[arg(long, env = "CORDON_QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<Secret>,
    /// Deadline for each storage operation on Qdrant (all its calls), milliseconds (Qdrant engine; default 5000).
    #[arg(long, env = "CORDON_QDRANT_TIMEOUT_MS")]
    pub qdrant_timeout_ms: Option<u64>,
    /// Deadline for connecting to Qdrant, milliseconds (Qdrant engine; default 2000).
    #[arg(long, env = "CORDON_QDRANT_CONNECT_TIMEOUT_MS")]
    pub qdrant_connect_timeout_ms: Option<u64>,
    /// Copies a Qdrant cluster keeps of each collection Cordon creates (Qdrant engine; default 1; more needs a cluster of at least that many nodes).
    #[arg(long, env = "CORDON_QDRANT_REPLICATION_FACTOR")]
    pub qdrant_replication_factor: Option<u32>,
    /// Copies that must apply a write before Qdrant confirms it, 1 to the replication factor (Qdrant engine; default 1: with more, writes to a collection with a copy on a node that just died wait until Qdrant marks that copy dead).
    #[arg(long, env = "CORDON_QDRANT_WRITE_CONSISTENCY")]
    pub qdrant_write_consistency: Option<u32>,
    /// Most collections each Qdrant node may hold (all of them, every deployment's, times the replication factor, spread over the nodes in CORDON_QDRANT_URL); a store that would create one more gets 507 (Qdrant engine; default 2000; 0: no limit).
    #[arg(long, env = "CORDON_QDRANT_MAX_COLLECTIONS_PER_NODE")]
    pub qdrant_max_collections_per_node: Option<u64>,
    /// Most points a store may leave in one collection; past it stores get 507 (Qdrant engine; default 1000000; 0: no limit).
    #[arg(long, env = "CORDON_QDRANT_MAX_COLLECTION_POINTS")]
    pub qdrant_max_collection_points: Option<u64>,
    /// Prefix of collection names (lets several deployments share one Qdrant).
    #[arg(long, env = "CORDON_COLLECTION_PREFIX", default_value = crate::owner::COLLECTION_PREFIX)]
    pub collection_prefix: String,
    /// Namespace tier: `per-user` (a collection, or shard directory, of each user's own) or `shared` (users share a bounded number of collections named by a short hash prefix, every read filtered by owner in the engine and checked by the guard).
    #[arg(long, env = "CORDON_TIER", default_value = "per-user")]
    pub tier: String,
    /// Shared tier: memories past which a user moves, online, to a collection (or shard directory) of their own (default 1000; 0: never).
    #[arg(long, env = "CORDON_PROMOTE_AFTER")]
    pub promote_after: Option<u64>,
    /// Hex characters of the owner hash used in collection names (default 32 in the per-user tier, 2 in the shared tier: 256 collections).
    #[arg(long, env = "CORDON_COLLECTION_HEX_CHARS")]
    pub collection_hex_chars: Option<usize>,
    /// Most user shards kept open at once (embedded engine; default 1024).
    #[arg(long, env = "CORDON_MAX_OPEN_SHARDS")]
    pub max_open_shards: Option<usize>,
    /// Free bytes the data directory keeps: below this, stores get 507 instead
    /// of filling the disk (embedded engine; default 268435456).
    #[arg(long, env = "CORDON_MIN_FREE_BYTES")]
    pub min_free_bytes: Option<u64>,
    /// Longest time, in seconds, a deleted memory's text stays in its shard's
    /// files before the shard is rewritten without it (embedded engine; default 60).
    #[arg(long, env = "CORDON_PURGE_AFTER_SECS")]
    pub purge_after_secs: Option<u64>,
    /// Collision drill: drop the owner condition from engine read filters so
    /// the guard alone separates users sharing a collection. Never in production.
    #[arg(long, env = "CORDON_COLLISION_DRILL", default_value_t = false, action = clap::ArgAction::Set)]
    pub collision_drill: bool,
    /// ONNX Runtime intra-op threads (default: available cores).
    #[arg(long, env = "CORDON_EMBED_THREADS")]
    pub embed_threads: Option<usize>,
    /// Model workers, each with its own ONNX Runtime session.
    #[arg(long, env = "CORDON_EMBED_WORKERS", default_value_t = 1)]
    pub embed_workers: usize,
    /// Whether the ONNX Runtime threads spin while idle (default true; a session of one thread never spins).
    #[arg(long, env = "CORDON_EMBED_SPIN", action = clap::ArgAction::Set)]
    pub embed_spin: Option<bool>,
    /// Threads serving requests (default: one less than the available cores,
    /// at least one: the model's threads keep the cores busy, and request
    /// work is short).
    #[arg(long, env = "CORDON_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Most texts per model call.
    #[arg(long, env = "CORDON_EMBED_MAX_BATCH", default_value_t = 32)]
    pub embed_max_batch: usize,
    /// Most embedding requests waiting; beyond this requests get 503.
    #[arg(long, env = "CORDON_EMBED_QUEUE", default_value_t = 1024)]
    pub embed_queue: usize,
    /// Most embedding requests one user may have queued (default: an eighth of the queue); beyond it that user gets 429.
    #[arg(long, env = "CORDON_EMBED_QUEUE_PER_USER")]
    pub embed_queue_per_user: Option<usize>,
    /// Largest request body in bytes.
    #[arg(long, env = "CORDON_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest memory or query text in bytes.
    #[arg(long, env = "CORDON_MAX_TEXT_BYTES", default_value_t = 8192)]
    pub max_text_bytes: usize,
    /// Most memories (or embedding inputs) in one request.
    #[arg(long, env = "CORDON_MAX_ITEMS", default_value_t = 64)]
    pub max_items: usize,
    /// Largest metadata object per memory, in bytes of JSON.
    #[arg(long, env = "CORDON_MAX_METADATA_BYTES", default_value_t = 4096)]
    pub max_metadata_bytes: usize,
    /// Seconds a request may take until its answer starts.
    #[arg(long, env = "CORDON_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Seconds a response may take from the request to its last byte (an export streams for that long at most).
    #[arg(long, env = "CORDON_STREAM_TIMEOUT_SECS", default_value_t = 600)]
    pub stream_timeout_secs: u64,
    /// Seconds a write to a client may wait for the client to read; then the connection is closed.
    #[arg(long, env = "CORDON_STALL_TIMEOUT_SECS", default_value_t = 30)]
    pub stall_timeout_secs: u64,
    /// Seconds a connection may wait for the client's next bytes while nothing is written; then it is closed (more than the request timeout).
    #[arg(long, env = "CORDON_IDLE_TIMEOUT_SECS", default_value_t = 75)]
    pub idle_timeout_secs: u64,
    /// Most connections open at once (lowered at start to half the open-files limit); beyond, new ones wait.
    #[arg(long, env = "CORDON_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Most connections open at once from one client address (trusted proxies exempt).
    #[arg(
        long,
        env = "CORDON_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    pub max_connections_per_address: usize,
    /// Most requests in flight (streamed responses until their last byte); beyond this requests get 503 with Retry-After.
    #[arg(long, env = "CORDON_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,
    /// Seconds that requests in flight get to finish after SIGTERM or SIGINT.
    #[arg(long, env = "CORDON_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// The admin API's bearer key (at least 32 bytes); unset: no admin API.
    #[arg(
        long,
        env = "CORDON_ADMIN_KEY",
        hide_env_values = true,
        conflicts_with = "admin_key_file"
    )]
    pub admin_key: Option<Secret>,
    /// File holding the admin key, instead of `CORDON_ADMIN_KEY`.
    #[arg(long, env = "CORDON_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Bearer token `/metrics` asks for (at least 32 bytes); unset: `/metrics` is open.
    #[arg(
        long,
        env = "CORDON_METRICS_TOKEN",
        hide_env_values = true,
        conflicts_with = "metrics_token_file"
    )]
    pub metrics_token: Option<Secret>,
    /// File holding the metrics token, instead of `CORDON_METRICS_TOKEN`.
    #[arg(long, env = "CORDON_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Tenants file (JSON: tenant name to "enabled" or "disabled"); turns the tenant registry on.
    #[arg(long, env = "CORDON_TENANTS_FILE")]
    pub tenants_file: Option<PathBuf>,
    /// How often a replica reads the other replicas' admin changes, ms (Qdrant engine; 10 to 60000, default 200).
    #[arg(long, env = "CORDON_ACCESS_POLL_MS")]
    pub access_poll_ms: Option<u64>,
    /// Where audit events go: `stdout`, `off`, or a directory for daily-rotated files.
    #[arg(long, env = "CORDON_AUDIT", default_value = "stdout")]
    pub audit: String,
    /// Peers (addresses or address/bits, comma-separated) whose client-address header is believed; unset: none.
    #[arg(long, env = "CORDON_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// The header the trusted proxies write the client address into: `x-forwarded-for` (default) or `forwarded`.
    #[arg(long, env = "CORDON_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    /// Refused tokens from one address within the window that lock it out; 0: never.
    #[arg(long, env = "CORDON_LOCKOUT_THRESHOLD", default_value_t = 20)]
    pub lockout_threshold: u32,
    /// 404s on memory ids of one user within the window that lock that user out; 0: never.
    #[arg(
        long,
        env = "CORDON_LOCKOUT_NOT_FOUND_THRESHOLD",
        default_value_t = 1000
    )]
    pub lockout_not_found_threshold: u32,
    /// The lockout counting window, seconds.
    #[arg(long, env = "CORDON_LOCKOUT_WINDOW_SECS", default_value_t = 60)]
    pub lockout_window_secs: u64,
    /// How long a lockout lasts, seconds.
    #[arg(long, env = "CORDON_LOCKOUT_SECS", default_value_t = 300)]
    pub lockout_secs: u64,
    /// Most memories one user may keep; 0: no quota.
    #[arg(long, env = "CORDON_MAX_MEMORIES_PER_USER", default_value_t = DEFAULT_MAX_MEMORIES_PER_USER)]
    pub max_memories_per_user: u64,
    /// Most bytes of text and metadata one user may keep; 0: no quota.
    #[arg(long, env = "CORDON_MAX_BYTES_PER_USER", default_value_t = DEFAULT_MAX_BYTES_PER_USER)]
    pub max_bytes_per_user: u64,
    /// Seconds until a memory stored without `expires_at` or `ttl_seconds` expires; 0: never.
    #[arg(long, env = "CORDON_DEFAULT_TTL_SECS", default_value_t = 0)]
    pub default_ttl_secs: u64,
    /// Seconds between sweeps that delete expired memories for good (reads leave them out at once).
    #[arg(long, env = "CORDON_EXPIRY_SWEEP_SECS", default_value_t = 60)]
    pub expiry_sweep_secs: u64,
    /// How a search ranks when it does not say: semantic, keyword or hybrid.
    #[arg(long, env = "CORDON_SEARCH_MODE", default_value = "hybrid")]
    pub search_mode: crate::api::recall::Mode,
    /// Cosine similarity at or above which a store is a near-duplicate of one of the user's memories and adds nothing; unset: no check (a request can set its own).
    #[arg(long, env = "CORDON_DUPLICATE_THRESHOLD")]
    pub duplicate_threshold: Option<f32>,
    /// What a read does when the guard meets another user's memory: fail-closed (fail it, alert, quarantine the collection) or drop (drop it and answer with the rest).
    #[arg(long, env = "CORDON_BREACH_POLICY", value_enum, default_value_t = crate::breach::BreachPolicy::FailClosed)]
    pub breach_policy: crate::breach::BreachPolicy,
    /// Keep a per-user access log of every read and change (`GET /v1/access-log`).
    #[arg(long, env = "CORDON_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// How long access-log entries are kept, seconds (default 90 days).
    #[arg(long, env = "CORDON_ACCESS_LOG_RETENTION_SECS", default_value_t = 90 * 86_400)]
    pub access_log_retention_secs: u64,
    /// File holding the Ed25519 key that signs receipts and scope statements (64 hex digits or base64 of 32 bytes); unset: a key derived from the server secret.
    #[arg(long, env = "CORDON_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Public keys of earlier signing keys, still served for verification (comma-separated, base64url or hex).
    #[arg(long, env = "CORDON_SIGNING_PREVIOUS_KEYS", value_delimiter = ',')]
    pub signing_previous_keys: Vec<String>,
    /// Seconds between canary rounds, which check live that no user sees another's memories; 0: no canary.
    #[arg(long, env = "CORDON_CANARY_INTERVAL_SECS", default_value_t = 0)]
    pub canary_interval_secs: u64,
    /// Most requests one user may have in flight (default: an eighth of CORDON_MAX_IN_FLIGHT).
    #[arg(long, env = "CORDON_MAX_IN_FLIGHT_PER_USER")]
    pub max_in_flight_per_user: Option<usize>,
    /// Requests per second one user may make on average; 0: no rate limit.
    #[arg(long, env = "CORDON_USER_RPS", default_value_t = 0)]
    pub user_rps: u32,
    /// Requests one user may make at once above that rate (default: one second's worth).
    #[arg(long, env = "CORDON_USER_BURST")]
    pub user_burst: Option<u32>,
    /// How long a request over the user's in-flight cap waits for a slot before 429, ms.
    #[arg(long, env = "CORDON_IN_FLIGHT_WAIT_MS", default_value_t = 1000)]
    pub in_flight_wait_ms: u64,
    /// Key-encryption key (64 hex digits or the base64 of 32 bytes); set, memories are encrypted at rest.
    #[arg(long, env = "CORDON_KEK", hide_env_values = true)]
    pub kek: Option<Secret>,
    /// File holding the KEK, instead of `CORDON_KEK`.
    #[arg(long, env = "CORDON_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// The previous KEK, accepted for unwrapping until `cordon keys rotate` has re-wrapped every key.
    #[arg(long, env = "CORDON_KEK_PREVIOUS", hide_env_values = true)]
    pub kek_previous: Option<Secret>,
    /// File holding the previous KEK, instead of `CORDON_KEK_PREVIOUS`.
    #[arg(long, env = "CORDON_KEK_PREVIOUS_FILE")]
    pub kek_previous_file: Option<PathBuf>,
    /// Most users whose data keys are held unwrapped in memory (with a KEK; default 10000).
    #[arg(long, env = "CORDON_DEK_CACHE")]
    pub dek_cache: Option<usize>,
    /// Longest a data key is held unwrapped, seconds (with a KEK; default 300).
    #[arg(long, env = "CORDON_DEK_CACHE_SECS")]
    pub dek_cache_secs: Option<u64>,
    /// JSON log lines (`true`, `1`, `yes`, `on`); `RUST_LOG` filters.
    #[arg(long, env = "CORDON_LOG_JSON", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub log_json: bool,
}

/// JWT verification flags.
#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// HS256 secret (at least 32 bytes), for development or shared-secret setups.
    #[arg(long, env = "CORDON_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<Secret>,
    /// PEM public key (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA).
    #[arg(long, env = "CORDON_JWT_PUBLIC_KEY_PEM")]
    pub jwt_public_key_pem: Option<PathBuf>,
    /// JWKS file with one or more public keys, selected by `kid`.
    #[arg(long, env = "CORDON_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "CORDON_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "CORDON_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Name of the claim that carries the tenant.
    #[arg(long, env = "CORDON_JWT_TENANT_CLAIM", default_value = "tenant")]
    pub jwt_tenant_claim: String,
    /// Clock skew tolerated on exp/nbf, seconds (capped at 30).
    #[arg(long, env = "CORDON_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,
}

/// Which storage engine to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// Embedded qdrant-edge shards under the data directory.
    Edge,
    /// One collection per user on a Qdrant server.
    Qdrant,
}

/// How to reach a Qdrant server.
#[derive(Debug, Clone)]
pub struct QdrantConnection {
    /// gRPC URL.
    pub url: String,
    /// API key.
    pub api_key: Option<Secret>,
    /// Deadline for each storage operation (every Qdrant call it makes,
    /// the client's own reconnect-and-retry included).
    pub timeout: Duration,
    /// Connect deadline.
    pub connect_timeout: Duration,
    /// How the collections Cordon creates are replicated.
    pub replication: Replication,
}

/// Hex characters naming a shared-tier collection by default: 256
/// collections, well inside what one Qdrant node holds (about 25 memory maps
/// each), and few enough that a restart loads them in seconds.
pub const DEFAULT_SHARED_HEX_CHARS: usize = 2;

/// Memories past which a shared-tier user moves to a collection of their
/// own by default: a user that large is worth a collection's fixed cost,
/// and the move (a copy of their memories) stays short.
pub const DEFAULT_PROMOTE_AFTER: u64 = 1_000;

/// Most hex characters a shared-tier name may have: 4,096 collections, past
/// which a node runs out of memory maps.
pub const MAX_SHARED_HEX_CHARS: usize = 3;

/// How users are laid out in collections (or shard directories).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// A collection of each user's own, named by 128 bits of their hash.
    PerUser,
    /// Users share collections named by a short prefix of their hash.
    Shared,
}

/// How a Qdrant cluster keeps the collections Cordon creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Copies of each collection, each on its own node.
    pub factor: u32,
    /// Copies that must apply a write before Qdrant confirms it.
    pub write_consistency: u32,
}

impl Default for Replication {
    /// One copy: a single node, or a cluster without redundancy.
    fn default() -> Self {
        Self {
            factor: 1,
            write_consistency: 1,
        }
    }
}

/// JWT verification settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// HS256 secret, when configured.
    pub hs256_secret: Option<Secret>,
    /// PEM public key file.
    pub public_key_pem: Option<PathBuf>,
    /// JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// Required issuer.
    pub issuer: Option<String>,
    /// Required audience.
    pub audience: Option<String>,
    /// Tenant claim name.
    pub tenant_claim: String,
    /// Clock skew tolerance, seconds.
    pub leeway_secs: u64,
    /// Tokens longer than this are refused unparsed.
    pub max_token_bytes: usize,
}

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Engine to run.
    pub kind: StoreKind,
    /// Prefix of collection names.
    pub collection_prefix: String,
    /// Namespace tier.
    pub tier: Tier,
    /// Hex characters of the owner hash in collection names.
    pub name_hex_chars: usize,
    /// Memories past which a shared-tier user moves to their own collection
    /// (0: never).
    pub promote_after: u64,
    /// Most open shards (embedded engine).
    pub max_open_shards: usize,
    /// Purge delay for deleted text (embedded engine).
    pub purge_after: Duration,
    /// WAL growth that makes a shard due for a rewrite (embedded engine).
    pub wal_growth_bytes: u64,
    /// Free-space reserve of the data directory (embedded engine).
    pub min_free_bytes: u64,
    /// Collision drill mode (see [`ServeArgs::collision_drill`]).
    pub collision_drill: bool,
    /// Qdrant server (server engine).
    pub qdrant: QdrantConnection,
    /// Most points a store may leave in one Qdrant collection (0: no cap).
    pub max_collection_points: u64,
    /// Most collections per Qdrant node (0: no limit).
    pub max_collections_per_node: u64,
}

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body.
    pub max_body_bytes: usize,
    /// Longest text.
    pub max_text_bytes: usize,
    /// Most items per request.
    pub max_items: usize,
    /// Largest metadata object.
    pub max_metadata_bytes: usize,
    /// Largest `limit` for search and list.
    pub max_page: usize,
    /// Time until a response starts.
    pub request_timeout: Duration,
    /// Time from a request to its response's last byte.
    pub stream_timeout: Duration,
    /// Most requests in flight.
    pub max_in_flight: usize,
    /// Most memories one user may keep (0: no quota).
    pub max_memories_per_user: u64,
    /// Most bytes of text and metadata one user may keep (0: no quota).
    pub max_bytes_per_user: u64,
}

/// Admin changes and the tenant registry.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// The admin API's bearer key; `None` turns the admin API off.
    pub admin_key: Option<Secret>,
    /// The tenants file; `Some` turns the registry on.
    pub tenants_file: Option<PathBuf>,
    /// Poll interval of a shared change log.
    pub poll_interval: Duration,
    /// Lockout of principals with many rejected attempts.
    pub lockout: LockoutSettings,
    /// Per-user in-flight cap and request rate.
    pub user_limits: UserLimitSettings,
    /// Peers whose client-address header is believed.
    pub proxies: TrustedProxies,
}

/// Where audit events are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines in `audit.log.<date>` files in this directory, rotated daily.
    Dir(PathBuf),
    /// Nowhere.
    Off,
}

impl AuditSink {
    /// Parses `CORDON_AUDIT`.
    pub fn parse(value: &str) -> Self {
        match value {
            "stdout" | "" => Self::Stdout,
            "off" | "none" => Self::Off,
            dir => Self::Dir(PathBuf::from(dir)),
        }
    }
}

/// Everything `cordon serve` needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub bind: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// HMAC key for owner hashes.
    pub server_secret: Secret,
    /// Token verification.
    pub auth: AuthSettings,
    /// Embedding model.
    pub embed: EmbedSettings,
    /// Storage.
    pub store: StoreSettings,
    /// Request limits.
    pub limits: Limits,
    /// Time that requests in flight get to finish once shutdown begins.
    pub shutdown_grace: Duration,
    /// How many connections, and how long each may stall or idle.
    pub connections: ConnectionLimits,
    /// The bearer token `/metrics` asks for (`None`: open).
    pub metrics_token: Option<Secret>,
    /// Admin key, tenant registry, change polling.
    pub access: AccessSettings,
    /// Audit sink.
    pub audit: AuditSink,
    /// Encryption at rest, when a KEK is configured.
    pub seal: Option<SealSettings>,
    /// Expiry and duplicate rules for stored memories.
    pub memory: MemoryPolicy,
    /// Breach policy, access logs, signing and the canary.
    pub checks: CheckSettings,
}

/// What lets users and operators check isolation: the breach policy, the
/// access logs, the signing key and the canary.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    /// What a read does when the guard meets another user's memory.
    pub breach_policy: crate::breach::BreachPolicy,
    /// Whether accesses are noted in users' logs.
    pub access_log: bool,
    /// How long access-log entries are kept.
    pub access_log_retention: Duration,
    /// The signing key's file (`None`: derived from the server secret).
    pub signing_key_file: Option<PathBuf>,
    /// Earlier signing keys' public halves.
    pub signing_previous_keys: Vec<String>,
    /// Time between canary rounds (`None`: no canary).
    pub canary_interval: Option<Duration>,
}

/// Expiry and duplicate rules for stored memories.
#[derive(Debug, Clone)]
pub struct MemoryPolicy {
    /// Time to live of a memory stored without its own expiry (`None`: none).
    pub default_ttl: Option<Duration>,
    /// Time between sweeps that delete expired memories.
    pub sweep_every: Duration,
    /// Cosine similarity from which a store is a duplicate (`None`: off).
    pub duplicate_threshold: Option<f32>,
    /// How a search ranks when it does not say.
    pub search_mode: crate::api::recall::Mode,
}

impl Settings {
    /// Every secret the settings hold (for the log's redaction).
    pub fn secrets(&self) -> Vec<&Secret> {
        let mut secrets = vec![&self.server_secret];
        secrets.extend(self.auth.hs256_secret.as_ref());
        secrets.extend(self.access.admin_key.as_ref());
        secrets.extend(self.metrics_token.as_ref());
        secrets.extend(self.store.qdrant.api_key.as_ref());
        if let Some(seal) = &self.seal {
            secrets.push(&seal.kek);
            secrets.extend(seal.previous.as_ref());
        }
        secrets
    }
}

/// Encryption-at-rest settings.
#[derive(Debug, Clone)]
pub struct SealSettings {
    /// The KEK every new data key is wrapped with.
    pub kek: Secret,
    /// A previous KEK still accepted for unwrapping.
    pub previous: Option<Secret>,
    /// Cache of unwrapped data keys.
    pub cache: CacheSettings,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A secret or key file could not be read or created.
    #[error("secret file {path}: {source}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A directory could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server secret is too short.
    #[error("the server secret in {0} is shorter than {MIN_SERVER_SECRET_BYTES} bytes")]
    ShortSecret(PathBuf),
    /// A setting has an unusable value.
    #[error("{0}")]
    Invalid(String),
}

impl ServeArgs {
    /// Resolves the flags into [`Settings`], creating the data directory and
    /// the server secret when they do not exist yet. Refuses a value that
    /// would be ignored (a setting of the other engine, a cache without a
    /// KEK, a burst without a rate) or that makes no sense (a zero limit).
    pub fn into_settings(self) -> Result<Settings, SettingsError> {
        let kind = match self.store.as_str() {
            "edge" | "embedded" => StoreKind::Edge,
            "qdrant" | "server" => StoreKind::Qdrant,
            other => {
                return Err(SettingsError::Invalid(format!(
                    "CORDON_STORE={other} is not a known engine (expected `edge` or `qdrant`)"
                )));
            }
        };
        self.refuse_ignored(&kind)?;
        positive("CORDON_EMBED_WORKERS", self.embed_workers as u64)?;
        positive("CORDON_EMBED_MAX_BATCH", self.embed_max_batch as u64)?;
        positive("CORDON_EMBED_QUEUE", self.embed_queue as u64)?;
        positive("CORDON_MAX_BODY_BYTES", self.max_body_bytes as u64)?;
        positive("CORDON_MAX_TEXT_BYTES", self.max_text_bytes as u64)?;
        positive("CORDON_MAX_ITEMS", self.max_items as u64)?;
        positive("CORDON_REQUEST_TIMEOUT_SECS", self.request_timeout_secs)?;
        positive("CORDON_STREAM_TIMEOUT_SECS", self.stream_timeout_secs)?;
        positive("CORDON_STALL_TIMEOUT_SECS", self.stall_timeout_secs)?;
        positive("CORDON_MAX_CONNECTIONS", self.max_connections as u64)?;
        positive(
            "CORDON_MAX_CONNECTIONS_PER_ADDRESS",
            self.max_connections_per_address as u64,
        )?;
        if self.idle_timeout_secs <= self.request_timeout_secs {
            return Err(SettingsError::Invalid(
                "CORDON_IDLE_TIMEOUT_SECS must be longer than CORDON_REQUEST_TIMEOUT_SECS: a connection waits for its answer that long".into(),
            ));
        }
        positive("CORDON_MAX_IN_FLIGHT", self.max_in_flight as u64)?;
        positive("CORDON_LOCKOUT_WINDOW_SECS", self.lockout_window_secs)?;
        positive("CORDON_LOCKOUT_SECS", self.lockout_secs)?;
        if self.stream_timeout_secs < self.request_timeout_secs {
            return Err(SettingsError::Invalid(
                "CORDON_STREAM_TIMEOUT_SECS is shorter than CORDON_REQUEST_TIMEOUT_SECS, which it includes".into(),
            ));
        }
        if self.jwt.jwt_leeway_secs > 30 {
            return Err(SettingsError::Invalid(
                "CORDON_JWT_LEEWAY_SECS is at most 30: a longer one keeps dead tokens alive".into(),
            ));
        }
        let tier = match self.tier.as_str() {
            "per-user" => Tier::PerUser,
            "shared" => Tier::Shared,
            other => {
                return Err(SettingsError::Invalid(format!(
                    "CORDON_TIER={other} is not a known tier (expected `per-user` or `shared`)"
                )));
            }
        };
        let collection_hex_chars = self.collection_hex_chars.unwrap_or(match tier {
            Tier::PerUser => DEFAULT_NAME_HEX_CHARS,
            Tier::Shared => DEFAULT_SHARED_HEX_CHARS,
        });
        if tier == Tier::Shared && !(1..=MAX_SHARED_HEX_CHARS).contains(&collection_hex_chars) {
            return Err(SettingsError::Invalid(format!(
                "the shared tier names collections by 1 to {MAX_SHARED_HEX_CHARS} hex characters (CORDON_COLLECTION_HEX_CHARS); more would make a collection per user"
            )));
        }
        if tier == Tier::PerUser && self.promote_after.is_some() {
            return Err(SettingsError::Invalid(
                "CORDON_PROMOTE_AFTER moves users out of the shared tier; the per-user tier (CORDON_TIER) has nothing to promote".into(),
            ));
        }
        let promote_after = match tier {
            Tier::Shared => self.promote_after.unwrap_or(DEFAULT_PROMOTE_AFTER),
            Tier::PerUser => 0,
        };
        if !(1..=64).contains(&collection_hex_chars) {
            return Err(SettingsError::Invalid(
                "CORDON_COLLECTION_HEX_CHARS must be between 1 and 64".into(),
            ));
        }
        let prefix_ok = (1..=64).contains(&self.collection_prefix.len())
            && self
                .collection_prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !prefix_ok {
            return Err(SettingsError::Invalid(
                "CORDON_COLLECTION_PREFIX must be 1 to 64 characters of a-z, 0-9, `_` or `-`"
                    .into(),
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let intra_threads = self.embed_threads.unwrap_or(cores);
        positive("CORDON_EMBED_THREADS", intra_threads as u64)?;
        if self.embed_spin == Some(true) && intra_threads == 1 {
            return Err(SettingsError::Invalid(
                "CORDON_EMBED_SPIN=true has no effect with one embedding thread (a session of one thread never spins); leave it unset".into(),
            ));
        }
        let queue_per_user = self
            .embed_queue_per_user
            .unwrap_or(self.embed_queue / 8)
            .max(1);
        positive("CORDON_EMBED_QUEUE_PER_USER", queue_per_user as u64)?;
        if queue_per_user > self.embed_queue {
            return Err(SettingsError::Invalid(
                "CORDON_EMBED_QUEUE_PER_USER is larger than CORDON_EMBED_QUEUE".into(),
            ));
        }
        let in_flight_per_user = self
            .max_in_flight_per_user
            .unwrap_or(self.max_in_flight / 8)
            .max(1);
        positive("CORDON_MAX_IN_FLIGHT_PER_USER", in_flight_per_user as u64)?;
        if in_flight_per_user > self.max_in_flight {
            return Err(SettingsError::Invalid(
                "CORDON_MAX_IN_FLIGHT_PER_USER is larger than CORDON_MAX_IN_FLIGHT".into(),
            ));
        }
        if self.user_burst == Some(0) {
            return Err(SettingsError::Invalid(
                "CORDON_USER_BURST must be at least 1 (leave it unset for one second's worth)"
                    .into(),
            ));
        }
        if self.user_burst.is_some() && self.user_rps == 0 {
            return Err(SettingsError::Invalid(
                "CORDON_USER_BURST is set without CORDON_USER_RPS: there is no rate to burst above"
                    .into(),
            ));
        }
        let poll_ms = self.access_poll_ms.unwrap_or(200);
        if !(10..=60_000).contains(&poll_ms) {
            return Err(SettingsError::Invalid(
                "CORDON_ACCESS_POLL_MS must be between 10 and 60000".into(),
            ));
        }
        let proxies = match &self.trusted_proxies {
            Some(list) => TrustedProxies::parse_ranges(list)
                .map_err(|e| SettingsError::Invalid(format!("CORDON_TRUSTED_PROXIES: {e}")))?,
            None => Vec::new(),
        };
        let client_header = match &self.client_ip_header {
            Some(_) if proxies.is_empty() => {
                return Err(SettingsError::Invalid(
                    "CORDON_CLIENT_IP_HEADER is set without CORDON_TRUSTED_PROXIES: no peer's header is believed".into(),
                ));
            }
            Some(name) => name
                .parse::<ClientHeader>()
                .map_err(|e| SettingsError::Invalid(format!("CORDON_CLIENT_IP_HEADER: {e}")))?,
            None => ClientHeader::default(),
        };
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data"));
        if kind == StoreKind::Edge {
            std::fs::create_dir_all(&data_dir).map_err(|source| SettingsError::Io {
                path: data_dir.clone(),
                source,
            })?;
        }
        let server_secret = self.resolve_server_secret(&kind, &data_dir)?;
        let admin_key = match (self.admin_key, &self.admin_key_file) {
            (Some(key), _) => Some(key),
            (None, Some(path)) => Some(read_key_file(path)?),
            (None, None) => None,
        };
        if let Some(key) = &admin_key {
            if key.expose().len() < MIN_SERVER_SECRET_BYTES {
                return Err(SettingsError::Invalid(format!(
                    "CORDON_ADMIN_KEY is shorter than {MIN_SERVER_SECRET_BYTES} bytes"
                )));
            }
            if self
                .jwt
                .jwt_hs256_secret
                .as_ref()
                .is_some_and(|hs| hs.expose() == key.expose())
                || server_secret.expose() == key.expose()
            {
                return Err(SettingsError::Invalid(
                    "CORDON_ADMIN_KEY must differ from the JWT secret and the server secret".into(),
                ));
            }
        }
        let metrics_token = match (self.metrics_token, &self.metrics_token_file) {
            (Some(token), _) => Some(token),
            (None, Some(path)) => Some(read_key_file(path)?),
            (None, None) => None,
        };
        if let Some(token) = &metrics_token {
            if token.len() < MIN_SERVER_SECRET_BYTES {
                return Err(SettingsError::Invalid(format!(
                    "CORDON_METRICS_TOKEN is shorter than {MIN_SERVER_SECRET_BYTES} bytes"
                )));
            }
            let reused = [
                Some(&server_secret),
                admin_key.as_ref(),
                self.jwt.jwt_hs256_secret.as_ref(),
            ]
            .into_iter()
            .flatten()
            .any(|other| other.expose() == token.expose());
            if reused {
                return Err(SettingsError::Invalid(
                    "CORDON_METRICS_TOKEN must differ from the server secret, the admin key and the JWT secret: whoever scrapes metrics must not hold them".into(),
                ));
            }
        }
        // An empty value is unset: compose files pass `CORDON_KEK: ""` when
        // the operator leaves encryption off. An empty file is an error: it
        // is a KEK that failed to arrive, and must not mean "off".
        let optional_key = |name: &str, value: Option<Secret>, file: &Option<PathBuf>| {
            let value = value.filter(|k| !trimmed(k.expose()).is_empty());
            match (value, file) {
                (Some(_), Some(_)) => Err(SettingsError::Invalid(format!(
                    "set {name} or {name}_FILE, not both"
                ))),
                (Some(key), None) => Ok(Some(key)),
                (None, Some(path)) => {
                    let key = read_key_file(path)?;
                    if key.is_empty() {
                        return Err(SettingsError::Invalid(format!(
                            "{name}_FILE {} is empty",
                            path.display()
                        )));
                    }
                    Ok(Some(key))
                }
                (None, None) => Ok(None),
            }
        };
        let kek = optional_key("CORDON_KEK", self.kek, &self.kek_file)?;
        let previous = optional_key(
            "CORDON_KEK_PREVIOUS",
            self.kek_previous,
            &self.kek_previous_file,
        )?;
        if previous.is_some() && kek.is_none() {
            return Err(SettingsError::Invalid(
                "CORDON_KEK_PREVIOUS is set without CORDON_KEK".into(),
            ));
        }
        if let (Some(kek), Some(previous)) = (&kek, &previous)
            && trimmed(kek.expose()).expose() == trimmed(previous.expose()).expose()
        {
            return Err(SettingsError::Invalid(
                "CORDON_KEK_PREVIOUS is the same key as CORDON_KEK: there is nothing to rotate from".into(),
            ));
        }
        if kek.is_none() && (self.dek_cache.is_some() || self.dek_cache_secs.is_some()) {
            return Err(SettingsError::Invalid(
                "CORDON_DEK_CACHE and CORDON_DEK_CACHE_SECS apply to encryption at rest: set CORDON_KEK, or leave them unset".into(),
            ));
        }
        for key in kek.iter().chain(&previous) {
            LocalKek::parse(key).map_err(|e| SettingsError::Invalid(e.to_string()))?;
            let reused = [
                Some(&server_secret),
                admin_key.as_ref(),
                self.jwt.jwt_hs256_secret.as_ref(),
                metrics_token.as_ref(),
            ]
            .into_iter()
            .flatten()
            .any(|other| other.expose() == key.expose());
            if reused {
                return Err(SettingsError::Invalid(
                    "the KEK must differ from the server secret, the admin key, the metrics token and the JWT secret"
                        .into(),
                ));
            }
        }
        let dek_cache = self.dek_cache.unwrap_or(10_000);
        let dek_cache_secs = self.dek_cache_secs.unwrap_or(300);
        positive("CORDON_DEK_CACHE", dek_cache as u64)?;
        positive("CORDON_DEK_CACHE_SECS", dek_cache_secs)?;
        let seal = kek.map(|kek| SealSettings {
            kek,
            previous,
            cache: CacheSettings {
                capacity: dek_cache,
                ttl: Duration::from_secs(dek_cache_secs),
            },
        });
        let max_open_shards = self.max_open_shards.unwrap_or(1024);
        positive("CORDON_MAX_OPEN_SHARDS", max_open_shards as u64)?;
        let qdrant_timeout_ms = self.qdrant_timeout_ms.unwrap_or(5_000);
        let qdrant_connect_timeout_ms = self.qdrant_connect_timeout_ms.unwrap_or(2_000);
        positive("CORDON_QDRANT_TIMEOUT_MS", qdrant_timeout_ms)?;
        positive(
            "CORDON_QDRANT_CONNECT_TIMEOUT_MS",
            qdrant_connect_timeout_ms,
        )?;
        positive("CORDON_EXPIRY_SWEEP_SECS", self.expiry_sweep_secs)?;
        positive(
            "CORDON_ACCESS_LOG_RETENTION_SECS",
            self.access_log_retention_secs,
        )?;
        if self.access_log_retention_secs > 100 * 365 * 24 * 3600 {
            return Err(SettingsError::Invalid(
                "CORDON_ACCESS_LOG_RETENTION_SECS must be at most 100 years".into(),
            ));
        }
        // A signing setup that does not load refuses the start, not the
        // first erase.
        crate::receipt::Signer::load(
            self.signing_key_file.as_deref(),
            &self.signing_previous_keys,
            &Secret::new(vec![0; 32]),
        )
        .map_err(|e| SettingsError::Invalid(e.to_string()))?;
        // As far ahead as a store's own expiry may be.
        const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 3600;
        if self.default_ttl_secs > MAX_TTL_SECS {
            return Err(SettingsError::Invalid(format!(
                "CORDON_DEFAULT_TTL_SECS is {}; it must be at most {MAX_TTL_SECS} (100 years), or 0 for none",
                self.default_ttl_secs
            )));
        }
        if let Some(t) = self.duplicate_threshold
            && !(t > -1.0 && t <= 1.0)
        {
            return Err(SettingsError::Invalid(format!(
                "CORDON_DUPLICATE_THRESHOLD is {t}; it must be a cosine similarity above -1 and at most 1"
            )));
        }
        let replication = replication(
            self.qdrant_replication_factor,
            self.qdrant_write_consistency,
        )?;
        Ok(Settings {
            bind: self.bind,
            data_dir,
            server_secret,
            auth: AuthSettings {
                hs256_secret: self.jwt.jwt_hs256_secret,
                public_key_pem: self.jwt.jwt_public_key_pem,
                jwks_file: self.jwt.jwt_jwks_file,
                issuer: self.jwt.jwt_issuer,
                audience: self.jwt.jwt_audience,
                tenant_claim: self.jwt.jwt_tenant_claim,
                leeway_secs: self.jwt.jwt_leeway_secs,
                max_token_bytes: 8 * 1024,
            },
            embed: EmbedSettings {
                model_dir: self.model_dir,
                model_file: self.model_file,
                workers: self.embed_workers,
                intra_threads,
                intra_spinning: self.embed_spin.unwrap_or(true),
                max_batch: self.embed_max_batch,
                queue_capacity: self.embed_queue,
                queue_per_user,
            },
            store: StoreSettings {
                kind,
                collection_prefix: self.collection_prefix,
                tier,
                name_hex_chars: collection_hex_chars,
                promote_after,
                max_open_shards,
                purge_after: Duration::from_secs(self.purge_after_secs.unwrap_or(60)),
                wal_growth_bytes: crate::store::edge::pool::WAL_GROWTH_BYTES,
                min_free_bytes: self.min_free_bytes.unwrap_or(256 * 1024 * 1024),
                collision_drill: self.collision_drill,
                qdrant: QdrantConnection {
                    url: self
                        .qdrant_url
                        .unwrap_or_else(|| "http://127.0.0.1:6334".into()),
                    api_key: self.qdrant_api_key,
                    timeout: Duration::from_millis(qdrant_timeout_ms),
                    connect_timeout: Duration::from_millis(qdrant_connect_timeout_ms),
                    replication,
                },
                max_collection_points: self
                    .qdrant_max_collection_points
                    .unwrap_or(DEFAULT_QDRANT_MAX_COLLECTION_POINTS),
                max_collections_per_node: self
                    .qdrant_max_collections_per_node
                    .unwrap_or(DEFAULT_QDRANT_MAX_COLLECTIONS_PER_NODE),
            },
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                max_text_bytes: self.max_text_bytes,
                max_items: self.max_items,
                max_metadata_bytes: self.max_metadata_bytes,
                max_page: 100,
                request_timeout: Duration::from_secs(self.request_timeout_secs),
                stream_timeout: Duration::from_secs(self.stream_timeout_secs),
                max_in_flight: self.max_in_flight,
                max_memories_per_user: self.max_memories_per_user,
                max_bytes_per_user: self.max_bytes_per_user,
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            connections: ConnectionLimits {
                stall: Duration::from_secs(self.stall_timeout_secs),
                idle: Duration::from_secs(self.idle_timeout_secs),
                max: fit_open_files(self.max_connections),
                per_address: self.max_connections_per_address,
            },
            metrics_token,
            access: AccessSettings {
                admin_key,
                tenants_file: self.tenants_file,
                poll_interval: Duration::from_millis(poll_ms),
                lockout: LockoutSettings {
                    threshold: self.lockout_threshold,
                    not_found_threshold: self.lockout_not_found_threshold,
                    window: Duration::from_secs(self.lockout_window_secs),
                    cooldown: Duration::from_secs(self.lockout_secs),
                },
                user_limits: UserLimitSettings {
                    max_in_flight: in_flight_per_user,
                    requests_per_second: self.user_rps,
                    burst: self.user_burst.unwrap_or(0),
                    wait: Duration::from_millis(self.in_flight_wait_ms),
                },
                proxies: TrustedProxies::new(proxies, client_header),
            },
            audit: AuditSink::parse(&self.audit),
            seal,
            memory: MemoryPolicy {
                default_ttl: (self.default_ttl_secs > 0)
                    .then(|| Duration::from_secs(self.default_ttl_secs)),
                sweep_every: Duration::from_secs(self.expiry_sweep_secs),
                duplicate_threshold: self.duplicate_threshold,
                search_mode: self.search_mode,
            },
            checks: CheckSettings {
                breach_policy: self.breach_policy,
                access_log: self.access_log,
                access_log_retention: Duration::from_secs(self.access_log_retention_secs),
                signing_key_file: self.signing_key_file,
                signing_previous_keys: self
                    .signing_previous_keys
                    .into_iter()
                    .map(|k| k.trim().to_owned())
                    .filter(|k| !k.is_empty())
                    .collect(),
                canary_interval: (self.canary_interval_secs > 0)
                    .then(|| Duration::from_secs(self.canary_interval_secs)),
            },
        })
    }

    /// Refuses the settings of one engine set for the other.
    fn refuse_ignored(&self, kind: &StoreKind) -> Result<(), SettingsError> {
        let (ignored, engine): (&[(&str, bool)], &str) = match kind {
            StoreKind::Edge => (
                &[
                    ("CORDON_QDRANT_URL", self.qdrant_url.is_some()),
                    ("CORDON_QDRANT_API_KEY", self.qdrant_api_key.is_some()),
                    ("CORDON_QDRANT_TIMEOUT_MS", self.qdrant_timeout_ms.is_some()),
                    (
                        "CORDON_QDRANT_CONNECT_TIMEOUT_MS",
                        self.qdrant_connect_timeout_ms.is_some(),
                    ),
                    (
                        "CORDON_QDRANT_MAX_COLLECTION_POINTS",
                        self.qdrant_max_collection_points.is_some(),
                    ),
                    (
                        "CORDON_QDRANT_REPLICATION_FACTOR",
                        self.qdrant_replication_factor.is_some(),
                    ),
                    (
                        "CORDON_QDRANT_MAX_COLLECTIONS_PER_NODE",
                        self.qdrant_max_collections_per_node.is_some(),
                    ),
                    (
                        "CORDON_QDRANT_WRITE_CONSISTENCY",
                        self.qdrant_write_consistency.is_some(),
                    ),
                    ("CORDON_ACCESS_POLL_MS", self.access_poll_ms.is_some()),
                ],
                "the embedded engine (CORDON_STORE=edge)",
            ),
            StoreKind::Qdrant => (
                &[
                    ("CORDON_DATA_DIR", self.data_dir.is_some()),
                    ("CORDON_MAX_OPEN_SHARDS", self.max_open_shards.is_some()),
                    ("CORDON_MIN_FREE_BYTES", self.min_free_bytes.is_some()),
                    ("CORDON_PURGE_AFTER_SECS", self.purge_after_secs.is_some()),
                ],
                "the Qdrant engine (CORDON_STORE=qdrant)",
            ),
        };
        match ignored.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(SettingsError::Invalid(format!(
                "{name} has no effect on {engine}; leave it unset"
            ))),
            None => Ok(()),
        }
    }

    /// The server secret: given, or read from its file, or (embedded engine,
    /// no memories stored yet) created there. Never from inside the data
    /// directory, where a copy of the memories would carry it.
    fn resolve_server_secret(
        &self,
        kind: &StoreKind,
        data_dir: &Path,
    ) -> Result<Secret, SettingsError> {
        if let Some(value) = &self.server_secret {
            return long_enough(value.expose()).ok_or_else(|| {
                SettingsError::Invalid(format!(
                    "CORDON_SERVER_SECRET is shorter than {MIN_SERVER_SECRET_BYTES} bytes"
                ))
            });
        }
        let legacy = data_dir.join(SERVER_SECRET_FILE);
        if *kind == StoreKind::Edge && legacy.exists() {
            let default = default_secret_path();
            return Err(SettingsError::Invalid(format!(
                "{} holds the server secret inside the data directory, where a copy of the memories would carry it. Move it out{}, or point CORDON_SERVER_SECRET_FILE at where you keep it",
                legacy.display(),
                default.map_or(String::new(), |d| format!(
                    ": mkdir -p -m 700 {} && mv {} {}",
                    d.parent()
                        .map_or_else(|| ".".into(), |p| p.display().to_string()),
                    legacy.display(),
                    d.display()
                )),
            )));
        }
        let path = match (&self.server_secret_file, default_secret_path()) {
            (Some(path), _) => path.clone(),
            (None, Some(default)) => default,
            (None, None) => {
                return Err(SettingsError::Invalid(
                    "no place for the server secret: set CORDON_SERVER_SECRET or CORDON_SERVER_SECRET_FILE (neither XDG_CONFIG_HOME nor HOME is set)".into(),
                ));
            }
        };
        if *kind == StoreKind::Edge && is_inside(&path, data_dir) {
            return Err(SettingsError::Invalid(format!(
                "the server secret file {} lies inside the data directory {}; keep it elsewhere, so that a copy of the memories does not carry the key that links them to people",
                path.display(),
                data_dir.display()
            )));
        }
        if path.exists() {
            return read_secret(&path);
        }
        match kind {
            // Replicas in front of one Qdrant must derive the same owner
            // hashes; a secret made up by each replica would hide every
            // user's memories from the others, so server mode never creates
            // one.
            StoreKind::Qdrant => Err(SettingsError::Invalid(format!(
                "CORDON_STORE=qdrant needs the shared server secret, the same on every replica: set CORDON_SERVER_SECRET or CORDON_SERVER_SECRET_FILE ({} does not exist)",
                path.display()
            ))),
            // A new secret next to stored memories would orphan them all.
            StoreKind::Edge if holds_shards(data_dir) => Err(SettingsError::Invalid(format!(
                "the server secret {} is missing, and {} holds memories stored under it: restore the file (or set CORDON_SERVER_SECRET_FILE); a new secret would orphan every one of them",
                path.display(),
                data_dir.display()
            ))),
            StoreKind::Edge => load_or_create_secret(&path),
        }
    }
}

/// `wanted` connections, or half this process's open-files limit if that
/// is less: the rest is the engine's (shards, segments, the WAL).
fn fit_open_files(wanted: usize) -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse::<usize>()
                .ok()
        });
    match limit {
        Some(limit) if wanted > limit / 2 => {
            tracing::warn!(
                wanted,
                open_files = limit,
                "CORDON_MAX_CONNECTIONS lowered to half the open-files limit"
            );
            (limit / 2).max(1)
        }
        _ => wanted,
    }
}

/// Refuses 0 for a setting that must be positive.
fn positive(name: &str, value: u64) -> Result<(), SettingsError> {
    if value == 0 {
        return Err(SettingsError::Invalid(format!("{name} must be at least 1")));
    }
    Ok(())
}

/// The replication of new collections from its two settings. The write
/// consistency defaults to 1, Qdrant's own default: measured on a
/// three-node cluster with two copies, a node killed under load left 100% of
/// requests served with 1 and 55% with 2 (writes waited for the dead copy to
/// be marked dead). It may not exceed the replication factor.
fn replication(
    factor: Option<u32>,
    consistency: Option<u32>,
) -> Result<Replication, SettingsError> {
    let factor = factor.unwrap_or(1);
    positive("CORDON_QDRANT_REPLICATION_FACTOR", u64::from(factor))?;
    let write_consistency = consistency.unwrap_or(1);
    positive(
        "CORDON_QDRANT_WRITE_CONSISTENCY",
        u64::from(write_consistency),
    )?;
    if write_consistency > factor {
        return Err(SettingsError::Invalid(format!(
            "CORDON_QDRANT_WRITE_CONSISTENCY ({write_consistency}) cannot exceed CORDON_QDRANT_REPLICATION_FACTOR ({factor})"
        )));
    }
    Ok(Replication {
        factor,
        write_consistency,
    })
}

/// Where the server secret lives when no setting names it:
/// `$XDG_CONFIG_HOME/cordon/server.secret`, else
/// `$HOME/.config/cordon/server.secret`.
pub fn default_secret_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })?;
    Some(config.join("cordon").join(SERVER_SECRET_FILE))
}

/// Whether `path` lies inside `dir` (both resolved as far as they exist).
fn is_inside(path: &Path, dir: &Path) -> bool {
    let resolve = |p: &Path| {
        let absolute = if p.is_absolute() {
            p.to_owned()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        // The deepest existing ancestor, canonical, with the rest appended.
        let mut existing = absolute.as_path();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => break,
            }
        }
        let mut resolved = existing
            .canonicalize()
            .unwrap_or_else(|_| existing.to_owned());
        for name in rest.iter().rev() {
            resolved.push(name);
        }
        resolved
    };
    resolve(path).starts_with(resolve(dir))
}

/// Whether the data directory holds any user shard.
fn holds_shards(data_dir: &Path) -> bool {
    std::fs::read_dir(data_dir.join("shards")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
    })
}

/// A server secret without surrounding whitespace, if it is long enough.
/// Read as (lossy) UTF-8, as it always has been, so existing secrets keep
/// deriving the same owner hashes.
fn long_enough(bytes: &[u8]) -> Option<Secret> {
    let key = trimmed(bytes);
    (key.len() >= MIN_SERVER_SECRET_BYTES).then_some(key)
}

/// `bytes` as (lossy) UTF-8 without surrounding whitespace.
fn trimmed(bytes: &[u8]) -> Secret {
    Secret::new(String::from_utf8_lossy(bytes).trim().as_bytes().to_vec())
}

/// Reads a key file, trimmed (the caller checks its length).
fn read_key_file(path: &Path) -> Result<Secret, SettingsError> {
    let bytes = std::fs::read(path).map_err(|source| SettingsError::SecretFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(trimmed(&bytes))
}

/// Reads an existing server secret at `path`.
pub fn read_secret(path: &Path) -> Result<Secret, SettingsError> {
    let key = read_key_file(path)?;
    if key.len() < MIN_SERVER_SECRET_BYTES {
        return Err(SettingsError::ShortSecret(path.to_owned()));
    }
    Ok(key)
}

/// Reads the server secret at `path`, creating it (mode 0600, 32 random
/// bytes as hex, in a directory of mode 0700 if there is none) when absent;
/// a created secret is on disk, its directory entry included, on return.
pub fn load_or_create_secret(path: &Path) -> Result<Secret, SettingsError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let io = |source| SettingsError::SecretFile {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(_) => read_secret(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io)?;
            let value = hex::encode(rand::random::<[u8; 32]>());
            // create_new: if another process created it meanwhile, use theirs.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(mut f) => {
                    f.write_all(value.as_bytes()).map_err(io)?;
                    f.sync_all().map_err(io)?;
                    std::fs::File::open(parent)
                        .and_then(|dir| dir.sync_all())
                        .map_err(io)?;
                    tracing::info!(path = %path.display(), "created a new server secret");
                    Ok(Secret::new(value.into_bytes()))
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_secret(path)
                }
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn replication_defaults_to_one_copy_and_refuses_more_writers_than_copies() {
        assert_eq!(replication(None, None).unwrap(), Replication::default());
        let two = replication(Some(2), None).unwrap();
        assert_eq!((two.factor, two.write_consistency), (2, 1));
        assert_eq!(replication(Some(3), Some(2)).unwrap().write_consistency, 2);
        assert!(replication(Some(2), Some(3)).is_err());
        assert!(replication(Some(0), None).is_err());
        assert!(replication(Some(2), Some(0)).is_err());
    }

    #[test]
    fn the_shared_tier_names_collections_by_two_hex_characters_and_never_by_a_private_length() {
        let dir = tempfile::tempdir().expect("temp dir");
        let per_user = serve_args(dir.path(), &[])
            .into_settings()
            .expect("defaults");
        assert_eq!(
            (per_user.store.tier, per_user.store.name_hex_chars),
            (Tier::PerUser, 32)
        );
        let shared = serve_args(dir.path(), &["--tier", "shared"])
            .into_settings()
            .expect("the shared tier");
        assert_eq!(
            (shared.store.tier, shared.store.name_hex_chars),
            (Tier::Shared, 2)
        );
        let three = serve_args(
            dir.path(),
            &["--tier", "shared", "--collection-hex-chars", "3"],
        )
        .into_settings()
        .expect("4,096 shared collections");
        assert_eq!(three.store.name_hex_chars, 3);
        let message = refused(
            dir.path(),
            &["--tier", "shared", "--collection-hex-chars", "32"],
        );
        assert!(message.contains("collection per user"), "{message}");
        let message = refused(dir.path(), &["--tier", "pooled"]);
        assert!(message.contains("CORDON_TIER=pooled"), "{message}");
    }

    #[test]
    fn the_server_secret_is_created_private_and_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("server.secret");
        let first = load_or_create_secret(&path).expect("created");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_or_create_secret(&path).expect("reused");
        assert_eq!(first.expose(), second.expose());
    }

    /// `cordon serve` flags over `root/data`, with the server secret in
    /// `root/config/server.secret` unless `extra` names one (so that no
    /// test touches the real home directory).
    fn serve_args(root: &Path, extra: &[&str]) -> ServeArgs {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ServeArgs,
        }
        let data = root.join("data");
        let secret = root.join("config").join(SERVER_SECRET_FILE);
        let (data, secret) = (
            data.to_str().expect("utf-8 temp dir").to_owned(),
            secret.to_str().expect("utf-8 temp dir").to_owned(),
        );
        let mut argv = vec!["cordon".to_owned()];
        if !extra.iter().any(|a| *a == "--data-dir" || *a == "--store") {
            argv.extend(["--data-dir".to_owned(), data]);
        }
        if !extra.iter().any(|a| a.starts_with("--server-secret")) {
            argv.extend(["--server-secret-file".to_owned(), secret]);
        }
        argv.extend(extra.iter().map(|a| (*a).to_owned()));
        <Wrapper as clap::Parser>::try_parse_from(argv)
            .expect("valid flags")
            .args
    }

    fn refused(root: &Path, extra: &[&str]) -> String {
        match serve_args(root, extra).into_settings() {
            Err(SettingsError::Invalid(message)) => message,
            other => panic!("{extra:?} was not refused: {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_setting_of_the_other_engine_is_refused_not_ignored() {
        let dir = tempfile::tempdir().expect("temp dir");
        for flag in [
            ["--qdrant-url", "http://127.0.0.1:6334"],
            ["--qdrant-timeout-ms", "100"],
            ["--access-poll-ms", "100"],
            ["--qdrant-max-collection-points", "5"],
        ] {
            let message = refused(dir.path(), &flag);
            assert!(message.contains("embedded engine"), "{message}");
        }
        let secret = "ef".repeat(32);
        for flag in [
            ["--data-dir", "/tmp/cordon-unused"],
            ["--max-open-shards", "8"],
            ["--min-free-bytes", "0"],
            ["--purge-after-secs", "5"],
        ] {
            let mut argv = vec!["--store", "qdrant", "--server-secret", &secret];
            argv.extend_from_slice(&flag);
            let message = refused(dir.path(), &argv);
            assert!(message.contains("Qdrant engine"), "{message}");
        }
        let qdrant = serve_args(
            dir.path(),
            &["--store", "qdrant", "--server-secret", &secret],
        )
        .into_settings();
        assert!(qdrant.is_ok(), "the engine's own defaults pass");
    }

    #[test]
    fn zero_limits_and_settings_that_depend_on_an_unset_one_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (flags, says) in [
            (&["--max-in-flight", "0"][..], "CORDON_MAX_IN_FLIGHT"),
            (
                &["--request-timeout-secs", "0"],
                "CORDON_REQUEST_TIMEOUT_SECS",
            ),
            (&["--stall-timeout-secs", "0"], "CORDON_STALL_TIMEOUT_SECS"),
            (&["--embed-max-batch", "0"], "CORDON_EMBED_MAX_BATCH"),
            (
                &["--lockout-window-secs", "0"],
                "CORDON_LOCKOUT_WINDOW_SECS",
            ),
            (&["--user-burst", "5"], "CORDON_USER_RPS"),
            (&["--dek-cache", "10"], "CORDON_KEK"),
            (
                &["--client-ip-header", "forwarded"],
                "CORDON_TRUSTED_PROXIES",
            ),
            (
                &["--trusted-proxies", "10.0.0.0/33"],
                "CORDON_TRUSTED_PROXIES",
            ),
            (&["--jwt-leeway-secs", "60"], "CORDON_JWT_LEEWAY_SECS"),
            (
                &[
                    "--kek",
                    &"ab".repeat(32),
                    "--kek-previous",
                    &"ab".repeat(32),
                ],
                "CORDON_KEK_PREVIOUS",
            ),
            (&["--access-poll-ms", "5"], "embedded engine"),
            (
                &["--max-in-flight", "8", "--max-in-flight-per-user", "9"],
                "CORDON_MAX_IN_FLIGHT_PER_USER",
            ),
            (
                &[
                    "--stream-timeout-secs",
                    "10",
                    "--request-timeout-secs",
                    "20",
                ],
                "CORDON_STREAM_TIMEOUT_SECS",
            ),
            (
                &["--embed-threads", "1", "--embed-spin", "true"],
                "CORDON_EMBED_SPIN",
            ),
        ] {
            let message = refused(dir.path(), flags);
            assert!(message.contains(says), "{flags:?}: {message}");
        }
        let settings = serve_args(
            dir.path(),
            &[
                "--trusted-proxies",
                "10.0.0.0/8",
                "--client-ip-header",
                "Forwarded",
            ],
        )
        .into_settings()
        .expect("valid");
        assert_eq!(
            settings.limits.max_memories_per_user,
            DEFAULT_MAX_MEMORIES_PER_USER
        );
        assert_eq!(
            settings.limits.max_bytes_per_user,
            DEFAULT_MAX_BYTES_PER_USER
        );
    }

    #[test]
    fn the_server_secret_is_never_kept_inside_the_data_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inside = dir.path().join("data").join("keys").join("server.secret");
        let message = refused(
            dir.path(),
            &["--server-secret-file", inside.to_str().expect("utf-8")],
        );
        assert!(message.contains("inside the data directory"), "{message}");

        // A secret where earlier releases created it: moved out, not used.
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let legacy = dir.path().join("data").join(SERVER_SECRET_FILE);
        std::fs::write(&legacy, "ab".repeat(32)).expect("legacy secret");
        let message = refused(dir.path(), &[]);
        assert!(message.contains("Move it out"), "{message}");
        std::fs::remove_file(&legacy).expect("removed");

        let settings = serve_args(dir.path(), &[])
            .into_settings()
            .expect("created");
        let created = dir.path().join("config").join(SERVER_SECRET_FILE);
        let kept = std::fs::read(&created).expect("created outside the data directory");
        assert_eq!(kept, settings.server_secret.expose());
    }

    #[test]
    fn a_missing_secret_next_to_stored_memories_is_refused_not_made_anew() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("data/shards/cordon_0a1b")).expect("a shard");
        let message = refused(dir.path(), &[]);
        assert!(message.contains("would orphan"), "{message}");
        assert!(!dir.path().join("config").join(SERVER_SECRET_FILE).exists());
    }

    #[test]
    fn a_kek_is_checked_at_start_and_an_empty_one_means_off() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = "ab".repeat(32);
        let on = serve_args(dir.path(), &["--kek", &good]).into_settings();
        assert!(on.expect("valid").seal.is_some());
        let off = serve_args(dir.path(), &["--kek", " "]).into_settings();
        assert!(off.expect("valid").seal.is_none());
        let bad = serve_args(dir.path(), &["--kek", "not a key"]).into_settings();
        assert!(matches!(bad, Err(SettingsError::Invalid(_))));
        let secret = "cd".repeat(32);
        let reused =
            serve_args(dir.path(), &["--server-secret", &secret, "--kek", &secret]).into_settings();
        assert!(matches!(reused, Err(SettingsError::Invalid(m)) if m.contains("differ")));
        let orphan = serve_args(dir.path(), &["--kek-previous", &good]).into_settings();
        assert!(matches!(orphan, Err(SettingsError::Invalid(_))));
        let empty_file = dir.path().join("kek.hex");
        std::fs::write(&empty_file, "\n").expect("write");
        let file = empty_file.to_str().expect("utf-8");
        let missing = serve_args(dir.path(), &["--kek-file", file]).into_settings();
        assert!(matches!(missing, Err(SettingsError::Invalid(m)) if m.contains("empty")));
        let blank_value =
            serve_args(dir.path(), &["--kek", "", "--kek-file", file]).into_settings();
        assert!(matches!(blank_value, Err(SettingsError::Invalid(m)) if m.contains("empty")));
        std::fs::write(&empty_file, &good).expect("write");
        let from_file = serve_args(dir.path(), &["--kek", "", "--kek-file", file]).into_settings();
        assert!(from_file.expect("valid").seal.is_some());
    }

    #[test]
    fn a_short_server_secret_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s");
        std::fs::write(&path, "too short").expect("write");
        assert!(matches!(
            load_or_create_secret(&path),
            Err(SettingsError::ShortSecret(_))
        ));
    }
}
