//! The load tool: many users at once against a running Cordon, every answer
//! checked for other users' memories.
//!
//! Each simulated user gets an HS256 token for its own subject (minted here
//! with the server's `CORDON_JWT_HS256_SECRET`), stores memories whose texts
//! carry the user's canary tag, runs a mix of store, search, get, list and
//! delete (some gets and deletes aimed at other users' ids), reads everything
//! back and erases. `leaks` counts every foreign memory seen in any response
//! and every foreign id that answered anything but 404; the tool exits
//! non-zero if it is not 0, or if an acknowledged memory was lost.
//!
//! ```text
//! CORDON_JWT_HS256_SECRET=... cargo bench --bench load -- --url http://127.0.0.1:8080 \
//!     --users 1000 --memories 5 --ops 10 --clients 32 --json load.json
//! ```

mod canary;
mod report;
mod scrape;
mod workload;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use cordon::auth::mint_dev_token;
use cordon::secret::Secret;
use parking_lot::Mutex;
use serde_json::json;

use report::{ServerDelta, Tally};
use workload::{Mix, RecentIds, Shared};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "load",
    about = "Drive a running Cordon with many users and count leaks"
)]
struct Args {
    /// Base URL of the Cordon under test.
    #[arg(long, env = "CORDON_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The server's HS256 secret, used to mint one token per user.
    #[arg(long, env = "CORDON_JWT_HS256_SECRET", hide_env_values = true)]
    hs256_secret: Secret,
    /// Name of the tenant claim the server reads.
    #[arg(long, env = "CORDON_JWT_TENANT_CLAIM", default_value = "tenant")]
    tenant_claim: String,
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
    /// Seed for texts and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    progress_secs: u64,
    /// Also write the report as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("load: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    let mix = Mix::parse(&args.mix)?;
    if !(0.0..=1.0).contains(&args.foreign_share) {
        return Err("--foreign-share must be between 0 and 1".into());
    }
    let run_id = format!("{:08x}", rand::random::<u32>());
    canary::self_check(&run_id)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .pool_max_idle_per_host(args.clients)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let base = args.url.trim_end_matches('/').to_owned();
    let before = scrape::counters(&http, &base).await?;

    let tenant = format!("load-{run_id}");
    let tokens = (0..args.users)
        .map(|i| {
            mint_dev_token(
                &args.hs256_secret,
                &args.tenant_claim,
                &tenant,
                &format!("u{i}"),
                Duration::from_secs(24 * 3600),
                None,
                None,
            )
            .map_err(|e| format!("minting a token: {e}"))
        })
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
        recent: Mutex::new(RecentIds::new()),
    });
    eprintln!(
        "load: run {run_id} · {} users × ({} memories + {} ops) · {} clients · {}",
        args.users, args.memories, args.ops, args.clients, base
    );
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
    let progress = {
        let (shared, users, every) = (shared.clone(), args.users, args.progress_secs.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", shared.tally.progress(started.elapsed(), users));
            }
        })
    };
    for worker in workers {
        worker
            .await
            .map_err(|e| format!("a worker task failed: {e}"))?;
    }
    progress.abort();
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
            "erase": !args.keep,
            "collision": args.collision,
            "seed": args.seed,
        });
        let text = serde_json::to_string_pretty(&summary.json(config))
            .expect("a JSON value always serialises");
        if path == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n").map_err(|e| format!("writing {path}: {e}"))?;
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
    if args.collision && summary.server.shared_collection_requests.unwrap_or(0) == 0 {
        eprintln!(
            "load: FAIL: collision mode, but the server counted no request on a shared collection (start it with CORDON_COLLECTION_HEX_CHARS=1 and CORDON_COLLISION_DRILL=true)"
        );
        failed = true;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
