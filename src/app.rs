//! Start-up and shutdown: from [`Settings`] to a listening server.
//!
//! [`Application::build`] loads keys, the model and the engine, and binds the
//! listener (port 0 picks a free port, which the tests use). Failures are
//! typed and name what is missing; nothing here panics on bad configuration.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::access::file_log::FileLog;
use crate::access::lockout::Lockout;
use crate::access::qdrant_log::QdrantLog;
use crate::access::{Access, AccessError, AccessLog};
use crate::api::{self, AdminKey, AppState, Quotas, Readiness};
use crate::auth::{AuthState, KeyError, Verifier, VerifierConfig, load_keys};
use crate::breach::Breaches;
use crate::embed::{EmbedError, Embedder};
use crate::guard::Guard;
use crate::guarded::GuardedStore;
use crate::limits::{UserLimitSettings, UserLimits};
use crate::listener::{ConnectionLimits, Peer, StallListener};
use crate::metrics::Metrics;
use crate::receipt::Signer;
use crate::settings::{Settings, StoreKind, TrustedProxies};
use crate::store::StoreError;
use crate::trail::file::FileTrail;
use crate::trail::qdrant::QdrantTrail;
use crate::trail::{Trail, TrailStore};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// JWT keys are missing or unusable.
    #[error("JWT keys: {0}")]
    Keys(#[from] KeyError),
    /// The embedding model could not be loaded.
    #[error("embedding model: {0}")]
    Embed(#[from] EmbedError),
    /// The storage engine could not be opened.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The access rules could not be loaded.
    #[error("{0}")]
    Access(#[from] AccessError),
    /// The receipt-signing key could not be loaded.
    #[error("{0}")]
    Signing(#[from] crate::receipt::ReceiptError),
    /// Encryption at rest could not be set up, or the data does not suit it.
    #[error("encryption at rest: {0}")]
    Seal(#[from] crate::seal::SealError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A built server, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown_grace: Duration,
    connections: ConnectionLimits,
    proxies: TrustedProxies,
}

impl Application {
    /// Loads everything `settings` names and binds the listener.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let embedder = Embedder::start(&settings.embed)?;
        Self::build_with_embedder(settings, embedder).await
    }

    /// Like [`Application::build`] with an already running embedder, so that
    /// several servers in one process (the tests) share one model.
    pub async fn build_with_embedder(
        settings: Settings,
        embedder: Embedder,
    ) -> Result<Self, StartupError> {
        let keys = load_keys(
            settings.auth.hs256_secret.as_ref(),
            settings.auth.public_key_pem.as_deref(),
            settings.auth.jwks_file.as_deref(),
        )?;
        let asymmetric =
            settings.auth.public_key_pem.is_some() || settings.auth.jwks_file.is_some();
        if asymmetric && settings.auth.audience.is_none() {
            tracing::warn!(
                "public keys are configured without CORDON_JWT_AUDIENCE: any token the issuer signs for any service, with a tenant claim, is accepted"
            );
        }
        if asymmetric && settings.auth.hs256_secret.is_some() {
            tracing::warn!(
                "CORDON_JWT_HS256_SECRET is set next to public keys: whoever holds the HS256 secret can mint tokens for any user"
            );
        }
        let verifier = Verifier::new(
            keys,
            VerifierConfig {
                issuer: settings.auth.issuer.clone(),
                audience: settings.auth.audience.clone(),
                tenant_claim: settings.auth.tenant_claim.clone(),
                leeway_secs: settings.auth.leeway_secs,
                max_token_bytes: settings.auth.max_token_bytes,
            },
        );
        let metrics = Arc::new(Metrics::default());
        let opened =
            crate::store::open_engine(&settings)?.with_promotion(&settings, metrics.clone())?;
        let engine = opened.engine.clone();
        crate::store::tier::check_layout(engine.as_ref()).await?;
        if settings.store.collision_drill {
            tracing::warn!(
                "COLLISION DRILL: engine reads skip the owner filter, so only the guard separates users, and every store call costs one extra count. Never run this in production."
            );
        }
        let log: Arc<dyn AccessLog> = match settings.store.kind {
            StoreKind::Edge => Arc::new(FileLog::open(&settings.data_dir)?),
            StoreKind::Qdrant => Arc::new(QdrantLog::new(
                &settings.store.qdrant,
                &settings.store.collection_prefix,
            )?),
        };
        let access = Access::open(
            log,
            settings.access.tenants_file.as_deref(),
            settings.server_secret.clone(),
        )
        .await?;
        access.spawn_poller(settings.access.poll_interval);
        let sealing =
            crate::seal::setup::prepare(&settings, engine.clone(), metrics.clone()).await?;
        // Only once the server will run: a refused start leaves nothing
        // behind that holds the data directory.
        opened.start_maintenance().await;
        let mut store = GuardedStore::new(engine, Guard::new(metrics.clone()));
        if settings.store.collision_drill {
            store = store.with_shared_census(metrics.clone());
        }
        let breaches = Arc::new(Breaches::new(
            settings.checks.breach_policy,
            access.clone(),
            settings.server_secret.clone(),
            metrics.clone(),
        ));
        store = store
            .with_sealing(sealing.clone())
            .with_breaches(breaches.clone());
        let trail_store: Arc<dyn TrailStore> = match settings.store.kind {
            StoreKind::Edge => Arc::new(FileTrail::open(
                &settings.data_dir,
                settings.server_secret.clone(),
            )?),
            StoreKind::Qdrant => Arc::new(QdrantTrail::new(
                &settings.store.qdrant,
                &settings.store.collection_prefix,
            )?),
        };
        // Made before any user's collection, which the collections-per-node
        // bound counts it among; unreachable now, it is made at the first
        // write instead.
        if let Err(e) = trail_store.prepare().await {
            tracing::warn!(error = %e, "access log storage not ready yet");
        }
        let trail = Trail::start(
            trail_store,
            sealing,
            settings.checks.access_log_retention,
            settings.checks.access_log,
            metrics.clone(),
        );
        let signer = Signer::load(
            settings.checks.signing_key_file.as_deref(),
            &settings.checks.signing_previous_keys,
            &settings.server_secret,
        )?;
        let quotas = Arc::new(Quotas::new(
            settings.limits.max_memories_per_user,
            settings.limits.max_bytes_per_user,
        ));
        let expiry = crate::expiry::Sweeper::new(
            store.clone(),
            quotas.clone(),
            metrics.clone(),
            settings.memory.sweep_every,
        );
        expiry.start();
        let state = AppState {
            auth: AuthState {
                verifier: Arc::new(verifier),
                server_secret: Arc::new(settings.server_secret.clone()),
                access,
                lockout: Arc::new(Lockout::new(settings.access.lockout)),
                limits: user_limits(settings.access.user_limits),
                proxies: Arc::new(settings.access.proxies.clone()),
                metrics: metrics.clone(),
            },
            store,
            embedder,
            limits: Arc::new(settings.limits.clone()),
            metrics,
            in_flight: Arc::new(Semaphore::new(settings.limits.max_in_flight)),
            admin_key: AdminKey(settings.access.admin_key.clone().map(Arc::new)),
            metrics_token: settings.metrics_token.clone().map(Arc::new),
            readiness: Arc::new(Readiness::default()),
            quotas,
            keyed: Arc::default(),
            memory: Arc::new(settings.memory.clone()),
            expiry,
            updates: Arc::default(),
            keywords: Arc::default(),
            trail,
            signer: Arc::new(signer),
            breaches,
            canary: Arc::default(),
        };
        if let Some(interval) = settings.checks.canary_interval {
            crate::canary::Canary::new(&state).start(interval);
        }
        let listener =
            TcpListener::bind(settings.bind)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.bind,
                    source,
                })?;
        Ok(Self {
            listener,
            state,
            shutdown_grace: settings.shutdown_grace,
            connections: settings.connections.clone(),
            proxies: settings.access.proxies.clone(),
        })
    }

    /// The router this application serves (a copy, for inspection).
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` resolves, then stops accepting, gives the
    /// requests in flight the grace period to finish, and flushes and closes
    /// the store, which refuses work from then on and waits briefly for the
    /// requests that still hold a shard.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let store = self.state.store.clone();
        let trail = self.state.trail.clone();
        let router = api::router(self.state);
        let (begun, begun_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = begun.send(());
        };
        let serve = axum::serve(
            StallListener::new(self.listener, self.connections, self.proxies),
            router.into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(signal)
        .into_future();
        let grace = self.shutdown_grace;
        let deadline = async move {
            if begun_rx.await.is_err() {
                // The server ended without a shutdown request.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            result = serve => result,
            () = deadline => {
                tracing::warn!(grace_secs = grace.as_secs(), "requests still in flight after the shutdown grace period; closing their connections");
                Ok(())
            }
        };
        // What was noted before the last responses went out is stored.
        trail.flush().await;
        store.shutdown().await;
        tracing::info!("shutdown complete");
        result
    }
}

/// The per-user limits, with a task that forgets idle users' rate state
/// every minute (it ends with the runtime).
fn user_limits(settings: UserLimitSettings) -> Arc<UserLimits> {
    let limits = Arc::new(UserLimits::new(settings));
    let weak = Arc::downgrade(&limits);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            match weak.upgrade() {
                Some(limits) => limits.forget_idle(),
                None => return,
            }
        }
    });
    limits
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
