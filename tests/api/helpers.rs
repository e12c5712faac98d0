//! Spawning a real Cordon on port 0 and talking to it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cordon::app::Application;
use cordon::embed::{EmbedSettings, Embedder};
use cordon::secret::Secret;
use cordon::settings::{
    AccessSettings, AuditSink, AuthSettings, Limits, LockoutSettings, QdrantConnection, Settings,
    StoreKind, StoreSettings, TrustedProxies, UserLimitSettings,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The HS256 secret every test server accepts.
pub const HS_SECRET: &str = "test-hs256-secret-that-is-long-enough-0123456789";
/// Required issuer and audience of the test servers.
pub const ISSUER: &str = "cordon-tests";
pub const AUDIENCE: &str = "cordon";
/// The admin key of the test servers.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef-0123456789";

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn embed_settings() -> EmbedSettings {
    EmbedSettings {
        model_dir: repo_path("models"),
        model_file: cordon::embed::MODEL_FILE.to_owned(),
        workers: 1,
        intra_threads: 2,
        intra_spinning: true,
        max_batch: 32,
        queue_capacity: 1024,
        queue_per_user: 128,
    }
}

/// One model for the whole test process: it holds no user state, so sharing
/// it between test servers is what a real deployment does too.
fn embedder() -> Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER
        .get_or_init(|| {
            Embedder::start(&embed_settings())
                .expect("model assets present: run `python3 models/fetch.py`")
        })
        .clone()
}

/// Settings of a test server over `data_dir`.
pub fn settings(data_dir: &Path) -> Settings {
    Settings {
        bind: "127.0.0.1:0".parse().expect("literal address"),
        data_dir: data_dir.to_owned(),
        server_secret: Secret::new(b"test-server-secret-0123456789abcdef".to_vec()),
        auth: AuthSettings {
            hs256_secret: Some(Secret::new(HS_SECRET.as_bytes().to_vec())),
            public_key_pem: Some(repo_path("tests/fixtures/rsa-public.pem")),
            jwks_file: None,
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            tenant_claim: "tenant".into(),
            leeway_secs: 5,
            max_token_bytes: 8 * 1024,
        },
        embed: embed_settings(),
        store: StoreSettings {
            kind: StoreKind::Edge,
            collection_prefix: cordon::owner::COLLECTION_PREFIX.into(),
            tier: cordon::settings::Tier::PerUser,
            name_hex_chars: 32,
            promote_after: 0,
            max_open_shards: 64,
            purge_after: Duration::from_secs(60),
            wal_growth_bytes: cordon::store::edge::pool::WAL_GROWTH_BYTES,
            min_free_bytes: 0,
            collision_drill: false,
            qdrant: QdrantConnection {
                url: std::env::var("QDRANT_URL").unwrap_or_else(|_| "http://127.0.0.1:6334".into()),
                api_key: std::env::var("QDRANT_API_KEY").ok().map(Secret::new),
                timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(2),
                replication: Default::default(),
            },
            max_collection_points: 0,
            max_collections_per_node: 0,
        },
        limits: Limits {
            max_body_bytes: 256 * 1024,
            max_text_bytes: 2000,
            max_items: 16,
            max_metadata_bytes: 1024,
            max_page: 100,
            request_timeout: Duration::from_secs(60),
            stream_timeout: Duration::from_secs(120),
            max_in_flight: 512,
            max_memories_per_user: 0,
            max_bytes_per_user: 0,
        },
        shutdown_grace: Duration::from_secs(10),
        connections: cordon::settings::ConnectionLimits {
            stall: Duration::from_secs(30),
            idle: Duration::from_secs(75),
            max: 4096,
            per_address: 4096,
        },
        metrics_token: None,
        access: AccessSettings {
            admin_key: Some(Secret::new(ADMIN_KEY.as_bytes().to_vec())),
            tenants_file: None,
            poll_interval: Duration::from_millis(100),
            lockout: LockoutSettings {
                threshold: 20,
                not_found_threshold: 1000,
                window: Duration::from_secs(60),
                cooldown: Duration::from_secs(300),
            },
            user_limits: UserLimitSettings {
                max_in_flight: 64,
                requests_per_second: 0,
                burst: 0,
                wait: Duration::from_millis(200),
            },
            proxies: TrustedProxies::default(),
        },
        audit: AuditSink::Off,
        seal: None,
        memory: cordon::settings::MemoryPolicy {
            default_ttl: None,
            sweep_every: Duration::from_secs(60),
            duplicate_threshold: None,
            search_mode: Default::default(),
        },
        checks: cordon::settings::CheckSettings {
            breach_policy: Default::default(),
            access_log: true,
            access_log_retention: Duration::from_secs(90 * 86_400),
            signing_key_file: None,
            signing_previous_keys: Vec::new(),
            canary_interval: None,
        },
    }
}

pub struct TestApp {
    pub address: String,
    /// Every path template the server's router holds.
    pub route_paths: Vec<String>,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    _temp: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

/// A test server on a fresh data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A test server on a fresh data directory, with settings adjusted.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let temp = tempfile::tempdir().expect("temp dir");
    let mut app = spawn_app_on(temp.path(), configure).await;
    app._temp = Some(temp);
    app
}

/// A test server over an existing data directory (kept after it stops).
pub async fn spawn_app_on(data_dir: &Path, configure: impl FnOnce(&mut Settings)) -> TestApp {
    // Server logs show with `--nocapture` when RUST_LOG is set.
    if std::env::var_os("RUST_LOG").is_some() {
        cordon::telemetry::init(false, &cordon::settings::AuditSink::Off);
    }
    let mut s = settings(data_dir);
    configure(&mut s);
    let app = Application::build_with_embedder(s, embedder())
        .await
        .expect("test server builds");
    let address = format!("http://{}", app.local_addr());
    let route_paths = route_paths(&app.router());
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        route_paths,
        client: reqwest::Client::new(),
        data_dir: data_dir.to_owned(),
        _temp: None,
        stop: Some(stop),
        handle: Some(handle),
    }
}

/// The path templates of a router, read from its `Debug` output (axum has
/// no other way to list them): its nodes print as `RouteId(n): "/path"`,
/// the routes first, then the fallback's (left out).
fn route_paths(router: &axum::Router) -> Vec<String> {
    let debug = format!("{router:?}");
    let routes = debug
        .split_once("fallback_router")
        .map_or(debug.as_str(), |(routes, _)| routes);
    let mut paths: Vec<String> = routes
        .split("RouteId(")
        .skip(1)
        .filter_map(|rest| {
            let after = rest.split_once("): \"")?.1;
            Some(after.split_once('"')?.0.to_owned())
        })
        .collect();
    paths.sort();
    paths.dedup();
    assert!(
        paths.len() > 5,
        "the router's Debug output no longer lists its paths: {debug:.400}"
    );
    paths
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Claims of a valid token for `(tenant, sub)`.
pub fn claims(tenant: &str, sub: &str) -> Value {
    json!({
        "sub": sub,
        "tenant": tenant,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
    })
}

/// Signs `claims` with HS256 and the test secret.
pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        claims,
    )
}

pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("test token signs")
}

/// A valid token for `(tenant, sub)`.
pub fn token(tenant: &str, sub: &str) -> String {
    hs256(&claims(tenant, sub))
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    /// GETs `path` and returns the JSON body, asserting a 200.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let r = self.get(path, token).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.expect("json body")
    }

    /// Stores `texts` and returns their ids; fails the test on any error.
    pub async fn store_texts(&self, token: &str, texts: &[&str]) -> Vec<String> {
        let memories: Vec<Value> = texts.iter().map(|t| json!({ "text": t })).collect();
        let r = self
            .post("/v1/memories", token, &json!({ "memories": memories }))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.expect("json body");
        body["ids"]
            .as_array()
            .expect("ids array")
            .iter()
            .map(|v| v.as_str().expect("id string").to_owned())
            .collect()
    }

    /// Texts of the search results for `query`, best first.
    pub async fn search_texts(&self, token: &str, query: &str, limit: usize) -> Vec<String> {
        let r = self
            .post(
                "/v1/memories/search",
                token,
                &json!({ "query": query, "limit": limit }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.expect("json body");
        texts(&body["results"])
    }

    /// POSTs `body` to the admin API at `path` with the admin key.
    pub async fn admin(&self, path: &str, body: &Value) -> Response {
        self.post(path, ADMIN_KEY, body).await
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("text body")
    }

    /// Stops the server gracefully (in-flight requests finish, shards flush).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task joins")
                .expect("server stops cleanly");
        }
    }
}

/// The `text` fields of a JSON array of memories.
pub fn texts(array: &Value) -> Vec<String> {
    array
        .as_array()
        .expect("array of memories")
        .iter()
        .map(|m| m["text"].as_str().expect("text string").to_owned())
        .collect()
}

/// Asserts the uniform 401: JSON error shape and `WWW-Authenticate: Bearer`.
pub async fn assert_unauthorized(r: Response) {
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or("")),
        Some("Bearer")
    );
    let body: Value = r.json().await.expect("json error body");
    assert_eq!(body["error"]["code"], "unauthorized");
}

/// Asserts a JSON error with `status` and `code`, returning the message.
pub async fn assert_error(r: Response, status: StatusCode, code: &str) -> String {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.expect("json error body");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Two KEKs for the encryption tests (64 hex digits each).
pub const KEK_ONE: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const KEK_TWO: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// Turns encryption at rest on, with `kek` current and `previous` accepted.
pub fn seal_with(s: &mut Settings, kek: &str, previous: Option<&str>) {
    s.seal = Some(cordon::settings::SealSettings {
        kek: Secret::new(kek.as_bytes().to_vec()),
        previous: previous.map(|p| Secret::new(p.as_bytes().to_vec())),
        cache: cordon::settings::CacheSettings {
            capacity: 100,
            ttl: Duration::from_secs(60),
        },
    });
}

/// The owner hash the test servers derive for `(tenant, sub)`.
pub fn owner_of(tenant: &str, sub: &str) -> cordon::owner::OwnerHash {
    cordon::owner::OwnerHash::derive(
        &Secret::new(b"test-server-secret-0123456789abcdef".to_vec()),
        tenant,
        sub,
    )
}

/// Files under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_containing_any(dir, &[needle])
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

/// Each (needle index, file) under `dir` (recursively) whose bytes contain
/// that needle; every file is read once.
pub fn files_containing_any(dir: &Path, needles: &[&[u8]]) -> Vec<(usize, PathBuf)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("readable dir").flatten() {
                stack.push(entry.path());
            }
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).expect("readable file");
            for (i, needle) in needles.iter().enumerate() {
                if memchr::memmem::find(&bytes, needle).is_some() {
                    found.push((i, path.clone()));
                }
            }
        }
    }
    found
}
