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
use crate::embed::EmbedSettings;
pub use crate::limits::UserLimitSettings;
use crate::owner::DEFAULT_NAME_HEX_CHARS;
pub use crate::seal::CacheSettings;
use crate::seal::kek::LocalKek;
use crate::secret::Secret;

/// File name of the auto-created server secret inside the data directory.
pub const SERVER_SECRET_FILE: &str = "server.secret";

/// Shortest server secret accepted.
pub const MIN_SERVER_SECRET_BYTES: usize = 32;

/// Flags and environment variables of `cordon serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CORDON_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Directory for shards and the auto-created server secret.
    #[arg(long, env = "CORDON_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// File holding the server secret (HMAC key for owner hashes); default: `<data-dir>/server.secret`, created on first start.
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
    /// Qdrant gRPC URL, for `CORDON_STORE=qdrant`.
    #[arg(
        long,
        env = "CORDON_QDRANT_URL",
        default_value = "http://127.0.0.1:6334"
    )]
    pub qdrant_url: String,
    /// Qdrant API key, when the server requires one.
    #[arg(long, env = "CORDON_QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<Secret>,
    /// Deadline for each storage operation on Qdrant (all its calls), milliseconds.
    #[arg(long, env = "CORDON_QDRANT_TIMEOUT_MS", default_value_t = 5_000)]
    pub qdrant_timeout_ms: u64,
    /// Deadline for connecting to Qdrant, milliseconds.
    #[arg(
        long,
        env = "CORDON_QDRANT_CONNECT_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub qdrant_connect_timeout_ms: u64,
    /// Prefix of collection names (lets several deployments share one Qdrant).
    #[arg(long, env = "CORDON_COLLECTION_PREFIX", default_value = crate::owner::COLLECTION_PREFIX)]
    pub collection_prefix: String,
    /// Hex characters of the owner hash used in collection names.
    #[arg(long, env = "CORDON_COLLECTION_HEX_CHARS", default_value_t = DEFAULT_NAME_HEX_CHARS)]
    pub collection_hex_chars: usize,
    /// Most user shards kept open at once.
    #[arg(long, env = "CORDON_MAX_OPEN_SHARDS", default_value_t = 1024)]
    pub max_open_shards: usize,
    /// Free bytes the data directory keeps: below this, stores get 507 instead
    /// of filling the disk (embedded engine).
    #[arg(long, env = "CORDON_MIN_FREE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub min_free_bytes: u64,
    /// Longest time, in seconds, a deleted memory's text stays in its shard's
    /// files before the shard is rewritten without it (embedded engine).
    #[arg(long, env = "CORDON_PURGE_AFTER_SECS", default_value_t = 60)]
    pub purge_after_secs: u64,
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
    /// Whether the ONNX Runtime threads spin while idle (see the README on threads).
    #[arg(long, env = "CORDON_EMBED_SPIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub embed_spin: bool,
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
    /// Per-request timeout in seconds.
    #[arg(long, env = "CORDON_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Most requests in flight; beyond this requests get 503 with Retry-After.
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
    /// Tenants file (JSON: tenant name to "enabled" or "disabled"); turns the tenant registry on.
    #[arg(long, env = "CORDON_TENANTS_FILE")]
    pub tenants_file: Option<PathBuf>,
    /// How often a replica reads the other replicas' admin changes (Qdrant engine), ms.
    #[arg(long, env = "CORDON_ACCESS_POLL_MS", default_value_t = 200)]
    pub access_poll_ms: u64,
    /// Where audit events go: `stdout`, `off`, or a directory for daily-rotated files.
    #[arg(long, env = "CORDON_AUDIT", default_value = "stdout")]
    pub audit: String,
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
    #[arg(long, env = "CORDON_MAX_MEMORIES_PER_USER", default_value_t = 0)]
    pub max_memories_per_user: u64,
    /// Most bytes of text and metadata one user may keep; 0: no quota.
    #[arg(long, env = "CORDON_MAX_BYTES_PER_USER", default_value_t = 0)]
    pub max_bytes_per_user: u64,
    /// Most requests one user may have in flight (default: an eighth of CORDON_MAX_IN_FLIGHT).
    #[arg(long, env = "CORDON_MAX_IN_FLIGHT_PER_USER")]
    pub max_in_flight_per_user: Option<usize>,
    /// Requests per second one user may make on average; 0: no rate limit.
    #[arg(long, env = "CORDON_USER_RPS", default_value_t = 0)]
    pub user_rps: u32,
    /// Requests one user may make at once above that rate (default: one second's worth).
    #[arg(long, env = "CORDON_USER_BURST", default_value_t = 0)]
    pub user_burst: u32,
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
    /// Most users whose data keys are held unwrapped in memory.
    #[arg(long, env = "CORDON_DEK_CACHE", default_value_t = 10_000)]
    pub dek_cache: usize,
    /// Longest a data key is held unwrapped, seconds.
    #[arg(long, env = "CORDON_DEK_CACHE_SECS", default_value_t = 300)]
    pub dek_cache_secs: u64,
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
    /// Hex characters of the owner hash in collection names.
    pub name_hex_chars: usize,
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
    /// Per-request timeout.
    pub request_timeout: Duration,
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
    /// Admin key, tenant registry, change polling.
    pub access: AccessSettings,
    /// Audit sink.
    pub audit: AuditSink,
    /// Encryption at rest, when a KEK is configured.
    pub seal: Option<SealSettings>,
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
    /// A secret file could not be read or created.
    #[error("server secret {path}: {source}")]
    SecretFile {
        /// The file.
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
    /// the server secret when they do not exist yet.
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
        // Replicas in front of one Qdrant must derive the same owner hashes;
        // a secret made up by each replica would hide every user's memories
        // from the others, so server mode never creates one.
        if kind == StoreKind::Qdrant
            && self.server_secret.is_none()
            && self.server_secret_file.is_none()
        {
            return Err(SettingsError::Invalid(
                "CORDON_STORE=qdrant needs the shared server secret: set CORDON_SERVER_SECRET or CORDON_SERVER_SECRET_FILE (the same on every replica)".into(),
            ));
        }
        if !(1..=64).contains(&self.collection_hex_chars) {
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
        if kind == StoreKind::Edge {
            std::fs::create_dir_all(&self.data_dir).map_err(|source| {
                SettingsError::SecretFile {
                    path: self.data_dir.clone(),
                    source,
                }
            })?;
        }
        let secret_path = self
            .server_secret_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(SERVER_SECRET_FILE));
        let server_secret = match self.server_secret {
            Some(value) => long_enough(value.expose()).ok_or_else(|| {
                SettingsError::Invalid(format!(
                    "CORDON_SERVER_SECRET is shorter than {MIN_SERVER_SECRET_BYTES} bytes"
                ))
            })?,
            None if kind == StoreKind::Qdrant => read_secret(&secret_path)?,
            None => load_or_create_secret(&secret_path)?,
        };
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
        for key in kek.iter().chain(&previous) {
            LocalKek::parse(key).map_err(|e| SettingsError::Invalid(e.to_string()))?;
            let reused = [
                Some(&server_secret),
                admin_key.as_ref(),
                self.jwt.jwt_hs256_secret.as_ref(),
            ]
            .into_iter()
            .flatten()
            .any(|other| other.expose() == key.expose());
            if reused {
                return Err(SettingsError::Invalid(
                    "the KEK must differ from the server secret, the admin key and the JWT secret"
                        .into(),
                ));
            }
        }
        let seal = kek.map(|kek| SealSettings {
            kek,
            previous,
            cache: CacheSettings {
                capacity: self.dek_cache.max(1),
                ttl: Duration::from_secs(self.dek_cache_secs.max(1)),
            },
        });
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(Settings {
            bind: self.bind,
            data_dir: self.data_dir,
            server_secret,
            auth: AuthSettings {
                hs256_secret: self.jwt.jwt_hs256_secret,
                public_key_pem: self.jwt.jwt_public_key_pem,
                jwks_file: self.jwt.jwt_jwks_file,
                issuer: self.jwt.jwt_issuer,
                audience: self.jwt.jwt_audience,
                tenant_claim: self.jwt.jwt_tenant_claim,
                leeway_secs: self.jwt.jwt_leeway_secs.min(30),
                max_token_bytes: 8 * 1024,
            },
            embed: EmbedSettings {
                model_dir: self.model_dir,
                model_file: self.model_file,
                workers: self.embed_workers.max(1),
                intra_threads: self.embed_threads.unwrap_or(cores),
                intra_spinning: self.embed_spin,
                max_batch: self.embed_max_batch.max(1),
                queue_capacity: self.embed_queue.max(1),
                queue_per_user: self
                    .embed_queue_per_user
                    .unwrap_or(self.embed_queue / 8)
                    .max(1),
            },
            store: StoreSettings {
                kind,
                collection_prefix: self.collection_prefix,
                name_hex_chars: self.collection_hex_chars,
                max_open_shards: self.max_open_shards.max(1),
                purge_after: Duration::from_secs(self.purge_after_secs),
                wal_growth_bytes: crate::store::edge::pool::WAL_GROWTH_BYTES,
                min_free_bytes: self.min_free_bytes,
                collision_drill: self.collision_drill,
                qdrant: QdrantConnection {
                    url: self.qdrant_url,
                    api_key: self.qdrant_api_key,
                    timeout: Duration::from_millis(self.qdrant_timeout_ms.max(1)),
                    connect_timeout: Duration::from_millis(self.qdrant_connect_timeout_ms.max(1)),
                },
            },
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                max_text_bytes: self.max_text_bytes,
                max_items: self.max_items.max(1),
                max_metadata_bytes: self.max_metadata_bytes,
                max_page: 100,
                request_timeout: Duration::from_secs(self.request_timeout_secs.max(1)),
                max_in_flight: self.max_in_flight.max(1),
                max_memories_per_user: self.max_memories_per_user,
                max_bytes_per_user: self.max_bytes_per_user,
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            access: AccessSettings {
                admin_key,
                tenants_file: self.tenants_file,
                poll_interval: Duration::from_millis(self.access_poll_ms.clamp(10, 60_000)),
                lockout: LockoutSettings {
                    threshold: self.lockout_threshold,
                    not_found_threshold: self.lockout_not_found_threshold,
                    window: Duration::from_secs(self.lockout_window_secs.max(1)),
                    cooldown: Duration::from_secs(self.lockout_secs.max(1)),
                },
                user_limits: UserLimitSettings {
                    max_in_flight: self
                        .max_in_flight_per_user
                        .unwrap_or(self.max_in_flight / 8)
                        .max(1),
                    requests_per_second: self.user_rps,
                    burst: self.user_burst,
                    wait: Duration::from_millis(self.in_flight_wait_ms),
                },
            },
            audit: AuditSink::parse(&self.audit),
            seal,
        })
    }
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
/// bytes as hex) when absent.
pub fn load_or_create_secret(path: &Path) -> Result<Secret, SettingsError> {
    let io = |source| SettingsError::SecretFile {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(_) => read_secret(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
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

    fn serve_args(data_dir: &Path, extra: &[&str]) -> ServeArgs {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ServeArgs,
        }
        let dir = data_dir.to_str().expect("utf-8 temp dir");
        let mut argv = vec!["cordon", "--data-dir", dir];
        argv.extend_from_slice(extra);
        <Wrapper as clap::Parser>::try_parse_from(argv)
            .expect("valid flags")
            .args
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
