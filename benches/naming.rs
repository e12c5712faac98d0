//! Naming analysis: how often do truncated owner hashes collide?
//!
//! Derives the owner hash of many synthetic users exactly as the server does
//! (HMAC-SHA256 under a random server secret) and, for each name length,
//! counts the pairs of users whose collection names coincide, next to the
//! birthday-bound expectation for that many users and that many names.
//!
//! ```text
//! cargo bench --bench naming -- --users 10000000 --json naming.json
//! ```

use std::fmt::Write as _;
use std::time::Instant;

use clap::Parser;
use cordon::owner::{DEFAULT_NAME_HEX_CHARS, OwnerHash};
use cordon::secret::Secret;
use serde_json::{Value, json};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(name = "naming", about = "Collisions of truncated collection names")]
struct Args {
    /// Synthetic users.
    #[arg(long, default_value_t = 10_000_000)]
    users: usize,
    /// Name lengths to analyse, in hex characters of the owner hash.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,6,8,10,12,16,32")]
    lengths: Vec<usize>,
    /// Also write the table as JSON to this file.
    #[arg(long)]
    json: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The first 128 bits of every user's owner hash (the shipped name length),
/// derived on all cores.
fn derive_all(users: usize) -> Vec<u128> {
    let secret = Secret::new(rand::random::<[u8; 32]>().to_vec());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = users.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let secret = &secret;
                scope.spawn(move || {
                    let range = (t * chunk)..((t + 1) * chunk).min(users);
                    range
                        .map(|i| {
                            let hex =
                                OwnerHash::derive(secret, "naming", &format!("user{i}")).to_hex();
                            u128::from_str_radix(&hex[..32], 16)
                                .expect("an owner hash is 64 hex characters")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a derivation thread panicked"))
            .collect()
    })
}

/// What one name length gives, observed and expected.
struct Row {
    hex_chars: usize,
    pairs: u64,
    pairs_expected: f64,
    shared_users: u64,
    shared_users_expected: f64,
    names: u64,
    names_expected: f64,
}

/// Scans sorted hashes for runs sharing their first `hex_chars` characters.
fn analyse(sorted: &[u128], hex_chars: usize) -> Row {
    let bits = 4 * hex_chars as u32;
    let key = |v: u128| if bits >= 128 { v } else { v >> (128 - bits) };
    let (mut pairs, mut shared, mut names) = (0u64, 0u64, 0u64);
    let mut i = 0;
    while i < sorted.len() {
        let k = key(sorted[i]);
        let mut j = i + 1;
        while j < sorted.len() && key(sorted[j]) == k {
            j += 1;
        }
        let run = (j - i) as u64;
        names += 1;
        pairs += run * (run - 1) / 2;
        if run > 1 {
            shared += run;
        }
        i = j;
    }
    // Birthday bound with n users over d equally likely names.
    let n = sorted.len() as f64;
    let d = 2f64.powi(bits as i32);
    // 1 - (1 - 1/d)^m, accurate even when 1/d is far below f64's epsilon.
    let some_of = |m: f64| -(m * (-1.0 / d).ln_1p()).exp_m1();
    Row {
        hex_chars,
        pairs,
        pairs_expected: n * (n - 1.0) / 2.0 / d,
        shared_users: shared,
        shared_users_expected: n * some_of(n - 1.0),
        names,
        names_expected: d * some_of(n),
    }
}

fn main() {
    let args = Args::parse();
    if let Some(bad) = args.lengths.iter().find(|l| !(1..=32).contains(*l)) {
        eprintln!(
            "naming: a length of {bad} hex characters is outside 1..=32 (the analysed 128 bits)"
        );
        std::process::exit(2);
    }
    let started = Instant::now();
    let mut hashes = derive_all(args.users);
    let derived = started.elapsed();
    hashes.sort_unstable();
    eprintln!(
        "naming: derived {} owner hashes in {:.1}s, sorted in {:.1}s",
        hashes.len(),
        derived.as_secs_f64(),
        (started.elapsed() - derived).as_secs_f64()
    );
    let rows: Vec<Row> = args.lengths.iter().map(|&l| analyse(&hashes, l)).collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} users; a name is the first N hex characters of the owner hash (shipped: {DEFAULT_NAME_HEX_CHARS})\n",
        args.users
    );
    let _ = writeln!(
        out,
        "| hex chars | bits | colliding pairs found | expected | users sharing a name found | expected | names in use found | expected |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3e} | {} | {:.3e} | {} | {:.6e} |",
            r.hex_chars,
            4 * r.hex_chars,
            r.pairs,
            r.pairs_expected,
            r.shared_users,
            r.shared_users_expected,
            r.names,
            r.names_expected
        );
    }
    print!("{out}");
    if let Some(path) = &args.json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "hex_chars": r.hex_chars,
                    "bits": 4 * r.hex_chars,
                    "colliding_pairs": r.pairs,
                    "colliding_pairs_expected": r.pairs_expected,
                    "users_sharing_a_name": r.shared_users,
                    "users_sharing_a_name_expected": r.shared_users_expected,
                    "names_in_use": r.names,
                    "names_in_use_expected": r.names_expected,
                })
            })
            .collect();
        let doc = json!({ "users": args.users, "rows": rows });
        let text = serde_json::to_string_pretty(&doc).expect("a JSON value always serialises");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("naming: writing {path}: {e}");
            std::process::exit(2);
        }
    }
}
