//! The load tool: many users at once against a running Cordon, every answer
//! checked for other users' memories.
//!
//! Each simulated user gets a token for its own subject, minted here with the
//! server's `CORDON_JWT_HS256_SECRET` or, for a server that verifies with a
//! public key, with the matching private key (`--private-key-pem`). It
//! stores memories whose texts carry the user's canary tag, runs a mix of
//! store, search, get, list and delete (some gets and deletes aimed at other
//! users' ids), reads everything back and erases. `leaks` counts every foreign memory seen in any response
//! and every foreign id that answered anything but 404. The tool exits 1 on
//! any leak, on a lost or stale memory, on more failed requests than
//! `--max-error-share`, when it judged no memory at all (a run that checked
//! nothing proves nothing), and in `--collision` mode when the server saw no
//! shared collection or its guard dropped nothing. It exits 2 when it cannot
//! run.
//!
//! ```text
//! CORDON_JWT_HS256_SECRET=... cordon load --url http://127.0.0.1:8080 \
//!     --users 1000 --memories 5 --ops 10 --clients 32 --json load.json
//! ```

mod canary;
mod flood;
mod report;
mod scrape;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use serde_json::json;

use crate::auth::{Claims, MintError, Signer};
use crate::secret::Secret;

use report::{ServerDelta, Tally};
use workload::{LiveIds, Mix, Shared};

/// Why the tool could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag has an unusable value.
    #[error("{0}")]
    Flag(String),
    /// The canary classifier failed its own check.
    #[error("{0}")]
    SelfCheck(String),
    /// The server could not be reached or read.
    #[error("{0}")]
    Server(String),
    /// A user's token could not be minted.
    #[error("minting a token: {0}")]
    Token(#[from] MintError),
    /// A worker task died.
    #[error("a worker task failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The JSON report could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Flags of `cordon load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Base URL of the Cordon under test.
    #[arg(long, env = "CORDON_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The server's HS256 secret, used to mint one token per user.
    #[arg(long, env = "CORDON_JWT_HS256_SECRET", hide_env_values = true)]
    hs256_secret: Option<Secret>,
    /// A private key (PEM: RSA, P-256 or Ed25519) whose public key the
    /// server verifies with; tokens are then signed with it (RS256, ES256 or
    /// EdDSA) instead of the HS256 secret.
    #[arg(long, env = "CORDON_LOAD_PRIVATE_KEY_PEM")]
    private_key_pem: Option<PathBuf>,
    /// `kid` header of the minted tokens (for a server reading a JWKS).
    #[arg(long)]
    kid: Option<String>,
    /// Name of the tenant claim the server reads.
    #[arg(long, env = "CORDON_JWT_TENANT_CLAIM", default_value = "tenant")]
    tenant_claim: String,
    /// `iss` claim of the minted tokens, when the server requires one.
    #[arg(long, env = "CORDON_JWT_ISSUER")]
    issuer: Option<String>,
    /// `aud` claim of the minted tokens, when the server requires one.
    #[arg(long, env = "CORDON_JWT_AUDIENCE")]
    audience: Option<String>,
    /// Simulated users (N).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Memories each user stores before the mixed operations (M).
    #[arg(long, default_value_t = 5)]
    memories: usize,
    /// Mixed operations per user after its memories are stored.
    #[arg(long, default_value_t = 10)]
    ops: usize,
    /// Concurrent clients (C); each runs one user at a time.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Weights of the mixed operations.
    #[arg(long, default_value = "store=1,search=4,get=2,list=2,delete=1")]
    mix: String,
    /// Share of gets and deletes aimed at another user's id (expected: 404).
    #[arg(long, default_value_t = 0.25)]
    foreign_share: f64,
    /// Leave each user's memories in place instead of erasing them at the end.
    #[arg(long)]
    keep: bool,
    /// Collision mode: fail unless the server counted requests on shared
    /// collections (start it with a short CORDON_COLLECTION_HEX_CHARS and
    /// CORDON_COLLISION_DRILL=true).
    #[arg(long)]
    collision: bool,
    /// Most failed or unexpected answers, as a share of answered requests,
    /// before the run counts as failed.
    #[arg(long, default_value_t = 0.01)]
    max_error_share: f64,
    /// Connections of one extra user that store 16 texts and search, back
    /// to back, while the normal users run (0: no flooder). Its answers are
    /// reported apart and kept out of the latency figures.
    #[arg(long, default_value_t = 0)]
    flood_clients: usize,
    /// Seed for texts and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Seconds between progress lines when stderr is not a terminal (on a
    /// terminal, a progress bar).
    #[arg(long, default_value_t = 5)]
    progress_secs: u64,
    /// Also write the report as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<String>,
}

/// Runs the load tool: exit 0 when clean, 1 on a failed check, 2 when it
/// could not run.
pub fn main(args: LoadArgs) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(LoadError::Runtime)
        .and_then(|runtime| runtime.block_on(run(args)));
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("cordon load: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: LoadArgs) -> Result<ExitCode, LoadError> {
    let mix = Mix::parse(&args.mix).map_err(|e| LoadError::Flag(format!("--mix: {e}")))?;
    if !(0.0..=1.0).contains(&args.foreign_share) {
        return Err(LoadError::Flag(
            "--foreign-share must be between 0 and 1".into(),
        ));
    }
    let run_id = format!("{:08x}", rand::random::<u32>());
    canary::self_check(&run_id).map_err(LoadError::SelfCheck)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .pool_max_idle_per_host(args.clients)
        .build()
        .map_err(|e| LoadError::Server(format!("HTTP client: {e}")))?;
    let base = args.url.trim_end_matches('/').to_owned();
    let before = scrape::counters(&http, &base).await?;

    let tenant = format!("load-{run_id}");
    let signer = Signer::from_options(
        args.hs256_secret.as_ref(),
        args.private_key_pem.as_deref(),
        args.kid.clone(),
    )?;
    let claims = Claims {
        tenant_claim: &args.tenant_claim,
        ttl: Duration::from_secs(24 * 3600),
        issuer: args.issuer.as_deref(),
        audience: args.audience.as_deref(),
    };
    let tokens = (0..args.users)
        .map(|i| signer.mint(&claims, &tenant, &format!("u{i}")))
        .collect::<Result<Vec<_>, _>>()?;

    let shared = Arc::new(Shared {
        http: http.clone(),
        base: base.clone(),
        run: run_id.clone(),
        tally: Tally::default(),
        mix,
        memories: args.memories,
        ops: args.ops,
        foreign_share: args.foreign_share,
        erase: !args.keep,
        seed: args.seed,
        live: Mutex::new(LiveIds::default()),
    });
    eprintln!(
        "load: run {run_id} · {} users × ({} memories + {} ops) · {} clients · {} · {:?} tokens",
        args.users,
        args.memories,
        args.ops,
        args.clients,
        base,
        signer.algorithm()
    );
    let stop_flood = Arc::new(AtomicBool::new(false));
    let flood_tally = Arc::new(flood::FloodTally::default());
    let flood_token = if args.flood_clients > 0 {
        Some(signer.mint(&claims, &tenant, "flooder")?)
    } else {
        None
    };
    let flooders = flood_token.as_ref().map_or_else(Vec::new, |token| {
        flood::start(
            http.clone(),
            base.clone(),
            token.clone(),
            args.flood_clients,
            stop_flood.clone(),
            flood_tally.clone(),
        )
    });
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(tokens);
    let workers: Vec<_> = (0..args.clients.max(1))
        .map(|_| {
            let (shared, next, tokens) = (shared.clone(), next.clone(), tokens.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(token) = tokens.get(i) else { break };
                    workload::run_user(shared.clone(), i, token.clone()).await;
                }
            })
        })
        .collect();
    let progress = progress(shared.clone(), args.users, args.progress_secs, started);
    for worker in workers {
        worker.await?;
    }
    stop_flood.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await?;
    }
    if let (Some(token), false) = (&flood_token, args.keep) {
        flood::erase(&http, &base, token).await;
    }
    progress.finish();
    let elapsed = started.elapsed();
    let after = scrape::counters(&http, &base).await?;
    let server = ServerDelta {
        guard_dropped: after
            .guard_dropped
            .zip(before.guard_dropped)
            .map(|(a, b)| a - b),
        shared_collection_requests: after
            .shared_collection_requests
            .zip(before.shared_collection_requests)
            .map(|(a, b)| a - b),
    };
    let summary = shared.tally.summary(elapsed, server);
    print!("{}", summary.text());
    if args.flood_clients > 0 {
        println!("{}", flood_tally.line(args.flood_clients));
    }
    if let Some(path) = &args.json {
        let config = json!({
            "url": base,
            "run": run_id,
            "users": args.users,
            "memories": args.memories,
            "ops": args.ops,
            "clients": args.clients,
            "mix": args.mix,
            "foreign_share": args.foreign_share,
            "max_error_share": args.max_error_share,
            "erase": !args.keep,
            "collision": args.collision,
            "seed": args.seed,
        });
        let mut report = summary.json(config);
        report["flood"] = flood_tally.json(args.flood_clients);
        let text = serde_json::to_string_pretty(&report).expect("a JSON value always serialises");
        if path == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n").map_err(|source| LoadError::Write {
                path: path.clone(),
                source,
            })?;
        }
    }
    let mut failed = false;
    if summary.leaks > 0 {
        eprintln!("load: FAIL: {} leaks", summary.leaks);
        failed = true;
    }
    if summary.lost > 0 || summary.stale > 0 {
        eprintln!(
            "load: FAIL: {} acknowledged memories lost, {} deleted memories returned",
            summary.lost, summary.stale
        );
        failed = true;
    }
    if summary.checked == 0 {
        eprintln!("load: FAIL: no memory in any response was checked, so the run proves nothing");
        failed = true;
    }
    let allowed = args.max_error_share * summary.answered() as f64;
    if summary.errors_total as f64 > allowed {
        eprintln!(
            "load: FAIL: {} failed or unexpected answers, more than {:.0} (--max-error-share {})",
            summary.errors_total, allowed, args.max_error_share
        );
        failed = true;
    }
    if args.collision {
        let shared = summary.server.shared_collection_requests.unwrap_or(0);
        let dropped = summary.server.guard_dropped.unwrap_or(0);
        if shared == 0 || dropped == 0 {
            eprintln!(
                "load: FAIL: collision mode, but the server counted {shared} requests on shared collections and {dropped} guard drops (start it with CORDON_COLLECTION_HEX_CHARS=1 and CORDON_COLLISION_DRILL=true)"
            );
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The progress display: a bar on a terminal, a line every `every_secs`
/// otherwise (a log keeps the lines; a bar would be lost in it).
enum Progress {
    Bar(ProgressBar, tokio::task::JoinHandle<()>),
    Lines(tokio::task::JoinHandle<()>),
}

impl Progress {
    fn finish(self) {
        match self {
            Self::Bar(bar, ticker) => {
                ticker.abort();
                bar.finish_and_clear();
            }
            Self::Lines(ticker) => ticker.abort(),
        }
    }
}

fn progress(shared: Arc<Shared>, users: usize, every_secs: u64, started: Instant) -> Progress {
    let target = ProgressDrawTarget::stderr();
    if target.is_hidden() {
        let every = Duration::from_secs(every_secs.max(1));
        return Progress::Lines(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", shared.tally.progress(started.elapsed(), users));
            }
        }));
    }
    let bar = ProgressBar::with_draw_target(Some(users as u64), target);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} users · {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let (done, line) = shared.tally.bar_status(started.elapsed());
                bar.set_position(done as u64);
                bar.set_message(line);
            }
        })
    };
    Progress::Bar(bar, ticker)
}
