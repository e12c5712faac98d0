//! Durability under injected faults: every sync slowed or failed with `strace`
//! (`-e inject=`), and the process killed with `kill -9` at the worst moment.
//!
//! Each test skips with a reason when `strace` cannot run here (it is a
//! Debian package; `.ci/run` installs it when missing).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::{
    Immutable, Server, SmallDisk, cordon, exported_texts, mint, serve, serve_with, store_request,
};

/// Whether `strace` can trace a child here, or why not.
fn strace_works() -> Result<(), String> {
    let out = Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "--", "true"])
        .output()
        .map_err(|e| format!("strace: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Starts `command` (a [`cordon`] command), stores `text` as `token`, and
/// kills the server.
async fn store_then_kill(command: Command, token: &str, text: &str) {
    let mut server = serve_with(command);
    let stored = store_request(
        &reqwest::Client::new(),
        &server,
        token,
        &json!({ "text": text }),
    )
    .send()
    .await
    .expect("answered");
    assert_eq!(stored.status(), StatusCode::CREATED);
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}

/// Whether a test must skip for want of `strace`; prints the reason if so.
fn skipped_without_strace() -> bool {
    match strace_works() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("skipped: strace cannot trace here ({why})");
            true
        }
    }
}

/// `command` (a [`cordon`] command) run under `strace` with `options`.
fn under_strace(command: &Command, options: &[&str]) -> Command {
    let mut traced = Command::new("strace");
    traced.args(["-f", "-qq"]);
    if !options.contains(&"-o") {
        traced.args(["-o", "/dev/null"]);
    }
    traced
        .args(options)
        .arg("--")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => traced.env(key, value),
            None => traced.env_remove(key),
        };
    }
    traced
}

/// Kills the traced server itself with SIGKILL (not `strace`, which would
/// detach and let it run on), then `strace`.
fn kill_9_traced(server: &mut Server) {
    let tracer = server.child.id();
    let children = std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"))
        .expect("the tracer's children are listed");
    for pid in children.split_whitespace() {
        let status = Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "killed {pid}");
    }
    server.child.kill().expect("killed strace");
    server.child.wait().expect("reaped strace");
}

/// Seconds since the Unix epoch, as `strace -ttt` prints them.
fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// The syncs in an `strace -f -ttt -T` trace that had begun before `at` and
/// not yet returned, as `(pid, began)`.
fn syncs_running_at(trace: &str, at: f64) -> Vec<(String, f64)> {
    let mut begun: std::collections::HashMap<String, f64> = Default::default();
    let mut running = Vec::new();
    for line in trace.lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(pid), Some(time), Some(call)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Ok(time) = time.parse::<f64>() else {
            continue;
        };
        // `-T` ends a finished call with its duration: `<0.200123>`.
        let took = call
            .rsplit_once('<')
            .and_then(|(_, d)| d.strip_suffix('>')?.parse::<f64>().ok());
        let (began, ended) = if call.ends_with("<unfinished ...>") {
            begun.insert(pid.to_owned(), time);
            continue;
        } else if call.starts_with("<...") {
            match begun.remove(pid) {
                Some(began) => (began, time),
                None => continue,
            }
        } else {
            (time, time + took.unwrap_or(0.0))
        };
        if began < at && at < ended {
            running.push((pid.to_owned(), began));
        }
    }
    running.extend(begun.into_iter().filter(|(_, began)| *began < at));
    running
}

#[test]
fn a_sync_is_running_between_its_start_and_its_return_in_a_trace() {
    let trace = "\
10 100.000000 fsync(7) = 0 <0.200000>
11 100.100000 fdatasync(8 <unfinished ...>
10 100.300000 msync(0x7f, 4096, MS_SYNC) = 0 <0.200000>
11 100.350000 <... fdatasync resumed>) = 0 <0.250000>
12 101.000000 fsync(9 <unfinished ...>
";
    assert_eq!(syncs_running_at(trace, 99.9), vec![]);
    assert_eq!(syncs_running_at(trace, 100.05), vec![("10".into(), 100.0)]);
    assert_eq!(
        syncs_running_at(trace, 100.32).len(),
        2,
        "the resumed fdatasync and the msync"
    );
    assert_eq!(syncs_running_at(trace, 100.6), vec![]);
    // Never returned before the trace ended (the process was killed).
    assert_eq!(syncs_running_at(trace, 101.5), vec![("12".into(), 101.0)]);
}

/// Every kind of sync the engine makes, each held back by `delay`.
fn slowed_syncs(delay: Duration) -> Vec<String> {
    let syncs = "fsync,fdatasync,msync,sync_file_range";
    vec![
        "-e".into(),
        format!("trace={syncs}"),
        "-e".into(),
        format!("inject={syncs}:delay_enter={}", delay.as_micros()),
    ]
}

#[tokio::test]
async fn with_every_sync_slowed_a_keyed_retry_is_acknowledged_only_once_the_first_attempt_is_durable()
 {
    if skipped_without_strace() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let alice = mint(data.path(), "acme", "alice");
    let client = reqwest::Client::new();
    // The shard exists before the first round, so that each round's write
    // is a plain group-committed flush.
    store_then_kill(cordon(data.path()), &alice, "the shard's first memory").await;

    let trace = data.path().join("syncs.trace");
    let mut slowed = slowed_syncs(Duration::from_millis(200));
    slowed.extend(["-ttt", "-T", "-o"].map(String::from));
    slowed.push(trace.to_string_lossy().into_owned());
    let slowed: Vec<&str> = slowed.iter().map(String::as_str).collect();
    for round in 0..4 {
        // The server gives up on a request after a second, long before the
        // flush ends (every sync takes 200 ms); the write goes on regardless.
        let mut command = cordon(data.path());
        command.env("CORDON_REQUEST_TIMEOUT_SECS", "1");
        let mut server = serve_with(under_strace(&command, &slowed));
        let body = json!({ "text": format!("round {round}: the keyed memory") });
        let key = format!("retry-round-{round}");
        let store = || {
            store_request(&client, &server, &alice, &body)
                .header("Idempotency-Key", &key)
                .send()
        };
        let first = store().await.expect("answered");
        assert!(
            first.status().is_server_error(),
            "round {round}: the first attempt ran out of time ({})",
            first.status()
        );
        // Retried at once and until acknowledged, as a client would.
        let (retry, acknowledged_at) = loop {
            let retry = store().await.expect("answered");
            if retry.status() == StatusCode::CREATED {
                break (retry, unix_seconds());
            }
            assert!(retry.status().is_server_error(), "{}", retry.status());
        };
        let ids: serde_json::Value = retry.json().await.expect("JSON");
        let id = ids["ids"][0].as_str().expect("an id").to_owned();
        // The acknowledgement must already be on disk: no sync was still
        // running when it arrived, and it survives kill -9.
        kill_9_traced(&mut server);
        let trace_text = std::fs::read_to_string(&trace).expect("trace");
        assert!(
            trace_text.contains("sync("),
            "round {round}: the trace holds the syncs"
        );
        let running = syncs_running_at(&trace_text, acknowledged_at);
        assert!(
            running.is_empty(),
            "round {round}: acknowledged while syncs were running: {running:?}"
        );

        let mut server = serve(data.path());
        let found = client
            .get(format!("{}/v1/memories/{id}", server.base))
            .bearer_auth(&alice)
            .send()
            .await
            .expect("answered");
        assert_eq!(
            found.status(),
            StatusCode::OK,
            "round {round}: an acknowledged keyed write was lost"
        );
        server.child.kill().expect("killed");
        server.child.wait().expect("reaped");
    }
}

#[tokio::test]
async fn while_every_flush_fails_a_keyed_retry_is_never_acknowledged_from_what_the_failed_flush_left()
 {
    let data = tempfile::tempdir().expect("temp dir");
    let alice = mint(data.path(), "acme", "alice");
    let client = reqwest::Client::new();
    let mut server = serve(data.path());
    let body = json!({ "text": "written while the disk fails" });
    let store = || {
        store_request(&client, &server, &alice, &body)
            .header("Idempotency-Key", "during-the-fault")
            .send()
    };
    let created = store_request(&client, &server, &alice, &json!({ "text": "before" }))
        .send()
        .await
        .expect("answered");
    assert_eq!(created.status(), StatusCode::CREATED);
    let fault = match Immutable::segments_of(&only_shard(data.path())) {
        Ok(fault) => fault,
        Err(why) => {
            eprintln!("skipped: cannot make a shard's segments immutable here ({why})");
            return;
        }
    };
    let first = store().await.expect("answered");
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The failed flush left the memory readable (it wrote the data and failed
    // on the segment's state file); a retry must not take that for an
    // acknowledgement while no flush can succeed.
    assert_eq!(
        exported_texts(&client, &server, &alice).await,
        ["before", "written while the disk fails"],
        "the premise: the refused write is readable"
    );
    for attempt in 0..3 {
        let retry = store().await.expect("answered");
        assert_eq!(
            retry.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "retry {attempt} was acknowledged while every flush fails"
        );
    }
    drop(fault);
    let retry = store().await.expect("answered");
    assert_eq!(retry.status(), StatusCode::CREATED);
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
    let mut server = serve(data.path());
    assert_eq!(
        exported_texts(&client, &server, &alice).await,
        ["before", "written while the disk fails"]
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}

/// A fresh KEK in a file under `dir`, from `cordon keys generate`.
fn kek_file(data: &Path, dir: &Path, name: &str) -> std::path::PathBuf {
    let out = cordon(data)
        .args(["keys", "generate"])
        .output()
        .expect("cordon keys runs");
    assert!(out.status.success());
    let path = dir.join(name);
    std::fs::write(&path, out.stdout.trim_ascii()).expect("written");
    path
}

/// The files in `data/keys` whose name starts with `prefix`.
fn key_files(data: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(data.join("keys"))
        .expect("keys dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect()
}

#[tokio::test]
async fn an_erase_cut_short_between_zeroing_and_removing_the_key_is_finished_at_the_next_start() {
    if skipped_without_strace() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let secrets = tempfile::tempdir().expect("temp dir");
    let kek = kek_file(data.path(), secrets.path(), "kek.hex");
    let sealed = || {
        let mut command = cordon(data.path());
        command.env("CORDON_KEK_FILE", &kek);
        command
    };
    let alice = mint(data.path(), "acme", "alice");
    let client = reqwest::Client::new();
    store_then_kill(sealed(), &alice, "sealed, then shredded").await;
    let keys: Vec<_> = key_files(data.path(), "")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(keys.len(), 1, "alice's key: {keys:?}");
    let key = keys[0].to_string_lossy().into_owned();

    // The key file is zeroed and synced; its unlink fails.
    let unlink = [
        "-e",
        "trace=unlink,unlinkat",
        "-e",
        "inject=unlink,unlinkat:error=EIO",
        "-P",
        &key,
    ];
    let mut server = serve_with(under_strace(&sealed(), &unlink));
    let erase = client
        .delete(format!("{}/v1/memories", server.base))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("answered");
    assert!(erase.status().is_server_error(), "{}", erase.status());
    kill_9_traced(&mut server);
    let left = std::fs::read(&key).expect("the zeroed key is still there");
    assert!(left.iter().all(|&b| b == 0), "the key was zeroed first");

    // The next start finishes the destroy, and the erase, retried, removes
    // what the key no longer opens.
    let mut server = serve_with(sealed());
    assert!(!Path::new(&key).exists(), "the zeroed key file was removed");
    let erase = client
        .delete(format!("{}/v1/memories", server.base))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("answered");
    assert_eq!(erase.status(), StatusCode::OK);
    assert_eq!(
        exported_texts(&client, &server, &alice).await,
        Vec::<String>::new()
    );
    let again = store_request(&client, &server, &alice, &json!({ "text": "a new start" }))
        .send()
        .await
        .expect("answered");
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(
        exported_texts(&client, &server, &alice).await,
        ["a new start"]
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}

#[tokio::test]
async fn a_key_rotation_whose_renames_fail_leaves_no_wrapped_key_behind() {
    if skipped_without_strace() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let secrets = tempfile::tempdir().expect("temp dir");
    let one = kek_file(data.path(), secrets.path(), "kek-1.hex");
    let two = kek_file(data.path(), secrets.path(), "kek-2.hex");
    let alice = mint(data.path(), "acme", "alice");
    let client = reqwest::Client::new();
    let mut first = cordon(data.path());
    first.env("CORDON_KEK_FILE", &one);
    store_then_kill(first, &alice, "kept sealed").await;

    // Every rename fails: each re-wrapped key stays in its temporary file.
    let mut rotate = cordon(data.path());
    rotate
        .env("CORDON_KEK_FILE", &two)
        .env("CORDON_KEK_PREVIOUS_FILE", &one)
        .args(["keys", "rotate"]);
    let renames = "rename,renameat,renameat2";
    let failing = [
        "-e".to_owned(),
        format!("trace={renames}"),
        "-e".to_owned(),
        format!("inject={renames}:error=EIO"),
    ];
    let failing: Vec<&str> = failing.iter().map(String::as_str).collect();
    let out = under_strace(&rotate, &failing).output().expect("runs");
    assert!(!out.status.success(), "the rotation failed");
    assert_eq!(
        key_files(data.path(), ".tmp-"),
        Vec::<std::path::PathBuf>::new(),
        "a wrapped key was left in a temporary file"
    );

    // One a crash left (a kill between write and rename) goes at the next start.
    let stray = data.path().join("keys").join(".tmp-left-by-a-crash");
    std::fs::write(&stray, b"{\"wrapped\":\"...\"}").expect("written");
    let mut sealed = cordon(data.path());
    sealed.env("CORDON_KEK_FILE", &one);
    let mut server = serve_with(sealed);
    assert!(
        !stray.exists(),
        "the stray temporary file was removed at start"
    );
    assert_eq!(
        exported_texts(&client, &server, &alice).await,
        ["kept sealed"]
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}

const ADMIN_KEY: &str = "faults-test-admin-key-0123456789abcdefghij";

/// A [`cordon`] command with the admin API on.
fn with_admin(data: &Path) -> Command {
    let mut command = cordon(data);
    command.env("CORDON_ADMIN_KEY", ADMIN_KEY);
    command
}

/// `POST /admin/v1/tenants/disable` for `tenant`; the status it got.
async fn disable_tenant(client: &reqwest::Client, server: &Server, tenant: &str) -> StatusCode {
    client
        .post(format!("{}/admin/v1/tenants/disable", server.base))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "tenant": tenant }))
        .send()
        .await
        .expect("answered")
        .status()
}

/// The status of `GET /v1/memories` as `token`.
async fn list_status(client: &reqwest::Client, server: &Server, token: &str) -> StatusCode {
    client
        .get(format!("{}/v1/memories", server.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("answered")
        .status()
}

#[tokio::test]
async fn an_admin_change_whose_sync_fails_is_refused_and_never_takes_effect_after_a_restart() {
    if skipped_without_strace() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let alice = mint(data.path(), "acme", "alice");
    let client = reqwest::Client::new();
    // The change log exists before the fault, so that its path can be named.
    let mut server = serve_with(with_admin(data.path()));
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
    let log = data.path().join("access").join("changes.ndjson");
    assert!(log.exists());

    let log_path = log.to_string_lossy().into_owned();
    let failing = [
        "-e",
        "trace=fsync,fdatasync",
        "-e",
        "inject=fsync,fdatasync:error=EIO",
        "-P",
        &log_path,
    ];
    let mut server = serve_with(under_strace(&with_admin(data.path()), &failing));
    let refused = disable_tenant(&client, &server, "acme").await;
    assert!(refused.is_server_error(), "{refused}");
    assert_eq!(list_status(&client, &server, &alice).await, StatusCode::OK);
    kill_9_traced(&mut server);

    let mut server = serve_with(with_admin(data.path()));
    assert_eq!(
        list_status(&client, &server, &alice).await,
        StatusCode::OK,
        "the refused change took effect after the restart"
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}

#[tokio::test]
async fn an_admin_change_cut_short_by_a_full_disk_never_stops_the_next_start() {
    let disk = match SmallDisk::mount("8k") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: a size-limited tmpfs cannot be mounted here ({why}); run as root");
            return;
        }
    };
    let data = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(disk.dir.path(), data.path().join("access")).expect("linked");
    // Two pages: the log's (nearly full of blank lines, which the log
    // skips) and a filler's. An append writes the rest of the log's page,
    // then finds no page for the remainder.
    let log = disk.dir.path().join("changes.ndjson");
    std::fs::write(&log, vec![b'\n'; 4096 - 40]).expect("written");
    let filler = disk.dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 4096]).expect("written");
    let alice = mint(data.path(), "acme", "alice");
    let bob = mint(data.path(), "umbrella", "bob");
    let client = reqwest::Client::new();

    let mut server = serve_with(with_admin(data.path()));
    let refused = disable_tenant(&client, &server, "acme").await;
    assert!(refused.is_server_error(), "{refused}");
    assert_eq!(list_status(&client, &server, &alice).await, StatusCode::OK);
    // Space comes back; the next change is written whole.
    std::fs::remove_file(&filler).expect("removed");
    assert_eq!(
        disable_tenant(&client, &server, "umbrella").await,
        StatusCode::OK
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");

    let mut server = serve_with(with_admin(data.path()));
    assert_eq!(list_status(&client, &server, &alice).await, StatusCode::OK);
    assert_eq!(
        list_status(&client, &server, &bob).await,
        StatusCode::FORBIDDEN
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}

#[tokio::test]
async fn every_directory_a_first_sealed_store_depends_on_is_synced_into_its_parent_before_the_201()
{
    if skipped_without_strace() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let secrets = tempfile::tempdir().expect("temp dir");
    let kek = kek_file(data.path(), secrets.path(), "kek.hex");
    let trace = secrets.path().join("syncs.trace");
    let alice = mint(data.path(), "acme", "alice");
    let mut command = with_admin(data.path());
    command.env("CORDON_KEK_FILE", &kek);
    let trace_path = trace.to_string_lossy().into_owned();
    let options = ["-y", "-e", "trace=fsync,fdatasync", "-o", &trace_path];
    let mut server = serve_with(under_strace(&command, &options));
    let client = reqwest::Client::new();
    let stored = store_request(&client, &server, &alice, &json!({ "text": "the first" }))
        .send()
        .await
        .expect("answered");
    assert_eq!(stored.status(), StatusCode::CREATED);
    kill_9_traced(&mut server);

    // `-y` names each synced descriptor: `fsync(7</path>) = 0`.
    let trace = std::fs::read_to_string(&trace).expect("the trace");
    let synced: std::collections::BTreeSet<String> = trace
        .lines()
        .filter_map(|line| Some(line.split_once('<')?.1.split_once('>')?.0.to_owned()))
        .collect();
    let shard = only_shard(data.path());
    let data = data.path().to_string_lossy().into_owned();
    for dir in [
        // Holds shards/, keys/ and access/, all new.
        data.clone(),
        // Holds the new shard's directory.
        format!("{data}/shards"),
        // Holds the new shard's segments and WAL.
        shard.to_string_lossy().into_owned(),
        // Holds the new key file.
        format!("{data}/keys"),
        // Holds the new change log.
        format!("{data}/access"),
    ] {
        assert!(
            synced.contains(&dir),
            "{dir} was never synced; synced: {synced:#?}"
        );
    }
}

/// The one shard directory under `data`.
fn only_shard(data: &Path) -> std::path::PathBuf {
    let shards: Vec<_> = std::fs::read_dir(data.join("shards"))
        .expect("shards dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.join("edge_config.json").is_file())
        .collect();
    assert_eq!(shards.len(), 1, "one shard");
    shards[0].clone()
}
