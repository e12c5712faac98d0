//! The `cordon` binary as an operator runs it: `cordon token`, `cordon serve`,
//! start-up errors, and a `kill -9` right after acknowledged writes.

mod access;
mod cluster;
mod docs;
mod faults;
mod keys;
mod load;
mod logs;
mod tier;
mod transfer;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET: &str = "binary-test-hs256-secret-0123456789abcdef";
const SERVER_SECRET: &str = "binary-test-server-secret-0123456789abcdef";

fn cordon(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cordon"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CORDON_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CORDON_BIND", "127.0.0.1:0")
        .env("CORDON_DATA_DIR", data_dir)
        .env(
            "CORDON_MODEL_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        )
        .env("CORDON_JWT_HS256_SECRET", SECRET)
        // Never the real home directory's default secret.
        .env("CORDON_SERVER_SECRET", SERVER_SECRET)
        .env("CORDON_EMBED_THREADS", "1")
        // A machine with little disk left must not fail every test with 507;
        // the full-disk test sets its own reserve.
        .env("CORDON_MIN_FREE_BYTES", "0")
        .env("RUST_LOG", "info");
    cmd
}

/// Turns a [`cordon`] command to the Qdrant at `url`, under `prefix`,
/// without the embedded engine's settings (which it would refuse).
fn on_qdrant(command: &mut Command, url: &str, prefix: &str) {
    command
        .env_remove("CORDON_DATA_DIR")
        .env_remove("CORDON_MIN_FREE_BYTES")
        .env("CORDON_STORE", "qdrant")
        .env("CORDON_QDRANT_URL", url)
        .env("CORDON_COLLECTION_PREFIX", prefix);
}

struct Server {
    child: Child,
    base: String,
    /// Everything the server wrote to stderr so far.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Server {
    // A failed assertion must not leave the server running after the test.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `cordon serve` and waits for its "listening" line.
fn serve(data_dir: &Path) -> Server {
    serve_with(cordon(data_dir))
}

/// Starts `command serve` (a [`cordon`] command, adjusted) and waits for its
/// "listening" line.
fn serve_with(mut command: Command) -> Server {
    let mut child = command
        .arg("serve")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("cordon starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        assert!(
            Instant::now() < deadline,
            "server did not report its address"
        );
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("utf8 log line");
        keep(&log, &line);
        if let Some(rest) = line.split("cordon listening addr=").nth(1) {
            break rest.split_whitespace().next().expect("address").to_owned();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            keep(&kept, &line);
        }
    });
    Server {
        child,
        base: format!("http://{addr}"),
        log,
    }
}

/// Appends a server log line, bounded so a chatty server cannot fill memory.
fn keep(log: &std::sync::Mutex<String>, line: &str) {
    let mut log = log.lock().expect("log lock");
    if log.len() < 256 << 20 {
        log.push_str(line);
        log.push('\n');
    }
}

fn mint(data_dir: &Path, tenant: &str, sub: &str) -> String {
    let out = cordon(data_dir)
        .args(["token", "--tenant", tenant, "--sub", sub, "--ttl", "10m"])
        .output()
        .expect("cordon token runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_token_from_cordon_token_stores_and_recalls_and_acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = mint(dir.path(), "acme", "alice");
    let bob = mint(dir.path(), "acme", "bob");
    let client = reqwest::Client::new();

    let mut server = serve(dir.path());
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let text = format!("acknowledged memory number {i}");
        let r = store_request(&client, &server, &alice, &json!({ "text": text }))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::CREATED);
        acknowledged.push(text);
    }
    // SIGKILL: no graceful shutdown, no flush on drop.
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");

    let mut server = serve(dir.path());
    let recovered = exported_texts(&client, &server, &alice).await;
    acknowledged.sort();
    assert_eq!(recovered, acknowledged, "acknowledged writes were lost");

    let search = client
        .post(format!("{}/v1/memories/search", server.base))
        .bearer_auth(&bob)
        .json(&json!({ "query": "acknowledged memory" }));
    let body = json_of(search).await;
    assert_eq!(body["results"].as_array().expect("array").len(), 0);

    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}

/// `POST /v1/memories` with `body`, as `token`.
fn store_request(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{}/v1/memories", server.base))
        .bearer_auth(token)
        .json(body)
}

/// The caller's memories from `GET /v1/memories/export`, sorted by text.
async fn exported(client: &reqwest::Client, server: &Server, token: &str) -> Vec<Value> {
    let body = json_of(
        client
            .get(format!("{}/v1/memories/export", server.base))
            .bearer_auth(token),
    )
    .await;
    let mut memories = body["memories"].as_array().expect("array").clone();
    memories.sort_by(|a, b| a["text"].as_str().cmp(&b["text"].as_str()));
    memories
}

/// The texts of the caller's memories from `GET /v1/memories/export`, sorted.
async fn exported_texts(client: &reqwest::Client, server: &Server, token: &str) -> Vec<String> {
    exported(client, server, token)
        .await
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_owned())
        .collect()
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

fn start_failure(cmd: &mut Command) -> String {
    let out = cmd.arg("serve").output().expect("cordon runs");
    assert!(
        !out.status.success(),
        "cordon started when it should have refused"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_model_file_names_the_file_and_the_fetch_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = tempfile::tempdir().expect("temp dir");
    let err = start_failure(cordon(dir.path()).env("CORDON_MODEL_DIR", empty.path()));
    assert!(err.contains("model-packed.onnx"), "{err}");
    assert!(err.contains("python3 models/fetch.py"), "{err}");
}

#[test]
fn no_jwt_key_or_a_short_hs256_secret_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = start_failure(cordon(dir.path()).env_remove("CORDON_JWT_HS256_SECRET"));
    assert!(err.contains("no JWT key configured"), "{err}");
    let err = start_failure(cordon(dir.path()).env("CORDON_JWT_HS256_SECRET", "short"));
    assert!(err.contains("at least 32"), "{err}");
}

/// Sends SIGTERM to the server, as an orchestrator stopping it would.
#[tokio::test]
async fn the_default_server_secret_is_created_outside_the_data_directory_and_kept_there() {
    let root = tempfile::tempdir().expect("temp dir");
    let (data, config) = (root.path().join("data"), root.path().join("config"));
    let secretless = |data: &Path| {
        let mut command = cordon(data);
        command
            .env_remove("CORDON_SERVER_SECRET")
            .env("XDG_CONFIG_HOME", &config);
        command
    };
    let mut server = serve_with(secretless(&data));
    let client = reqwest::Client::new();
    let alice = mint(&data, "acme", "alice");
    let r = store_request(&client, &server, &alice, &json!({ "text": "kept" }))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::CREATED);
    terminate(&server);
    server.child.wait().expect("exits");
    let secret = config.join("cordon").join("server.secret");
    assert!(secret.exists(), "created in the configuration directory");
    assert!(
        !data.join("server.secret").exists(),
        "not in the data directory"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&secret).expect("exists").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Without it the memories cannot be reached: the start is refused
    // rather than a new secret made next to them.
    std::fs::rename(&secret, root.path().join("elsewhere")).expect("moved away");
    let message = start_failure(&mut secretless(&data));
    assert!(message.contains("would orphan"), "{message}");
}

fn terminate(server: &Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = mint(dir.path(), "acme", "alice");
    let client = reqwest::Client::new();
    let mut server = serve(dir.path());

    // Eight batches of 16 texts queue on one embedding thread: together they
    // take far longer than the moment it takes to send the signal.
    let mut in_flight = Vec::new();
    for batch in 0..8 {
        let texts: Vec<Value> = (0..16)
            .map(|i| json!({ "text": format!("in flight {batch}-{i}: a note about the garden shed") }))
            .collect();
        let request = store_request(&client, &server, &alice, &json!({ "memories": texts })).send();
        in_flight.push(tokio::spawn(request));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    terminate(&server);

    let mut answered = 0;
    for request in in_flight {
        let response = request
            .await
            .expect("task joins")
            .expect("an answer, not a reset");
        assert_eq!(response.status(), StatusCode::CREATED);
        answered += 1;
    }
    assert_eq!(answered, 8);
    let status = server.child.wait().expect("reaped");
    assert!(status.success(), "exit status after SIGTERM: {status}");

    // Every answered write is on disk, flushed at shutdown.
    let mut server = serve(dir.path());
    let body = json_of(
        client
            .get(format!("{}/v1/memories/export", server.base))
            .bearer_auth(&alice),
    )
    .await;
    assert_eq!(body["memories"].as_array().expect("array").len(), 128);
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}

#[tokio::test]
async fn concurrent_acknowledged_writes_to_one_shard_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = mint(dir.path(), "acme", "alice");
    let client = reqwest::Client::new();
    let mut server = serve(dir.path());
    // Many writers on one shard share flushes; each acknowledgement must
    // still mean that its own write is on disk.
    let mut writers = Vec::new();
    for i in 0..24 {
        let request = store_request(
            &client,
            &server,
            &alice,
            &json!({ "text": format!("concurrent write {i}") }),
        )
        .send();
        writers.push(tokio::spawn(request));
    }
    let mut acknowledged = Vec::new();
    for (i, writer) in writers.into_iter().enumerate() {
        let response = writer.await.expect("task joins").expect("answered");
        assert_eq!(response.status(), StatusCode::CREATED);
        acknowledged.push(format!("concurrent write {i}"));
    }
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");

    let mut server = serve(dir.path());
    let recovered = exported_texts(&client, &server, &alice).await;
    acknowledged.sort();
    assert_eq!(recovered, acknowledged, "acknowledged writes were lost");
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}

/// A size-limited tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts `size` (e.g. "24m"), or says why it cannot (needs root).
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self { dir })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "remount to {size}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_stores_with_507_and_keeps_reads_and_the_process_alive() {
    let disk = match SmallDisk::mount("24m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: a size-limited tmpfs cannot be mounted here ({why}); run as root");
            return;
        }
    };
    let data = disk.dir.path().join("data");
    let alice = mint(&data, "acme", "alice");
    let client = reqwest::Client::new();
    let mut command = cordon(&data);
    command.env("CORDON_MIN_FREE_BYTES", (8 * 1024 * 1024).to_string());
    let mut server = serve_with(command);

    // Without the reserve this fills the disk and qdrant-edge's memory-mapped
    // writes fault (SIGBUS); with it, stores stop at a clean 507.
    let mut stored = 0;
    let mut refused = None;
    for batch in 0..400 {
        let texts: Vec<Value> = (0..16)
            .map(|i| json!({ "text": format!("filler {batch}-{i} {}", "x".repeat(1500)) }))
            .collect();
        let response = store_request(&client, &server, &alice, &json!({ "memories": texts }))
            .send()
            .await
            .expect("the server answers, full disk or not");
        if response.status() == StatusCode::CREATED {
            stored += 16;
            continue;
        }
        refused = Some(response);
        break;
    }
    let refused = refused.expect("the disk filled up within 400 batches");
    assert_eq!(refused.status(), StatusCode::INSUFFICIENT_STORAGE);
    let body: Value = refused.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    assert!(stored > 0);

    // Reads keep working and hold exactly what was acknowledged.
    assert_eq!(exported_texts(&client, &server, &alice).await.len(), stored);

    // Space comes back: writes work again, with nothing restarted.
    disk.resize("64m");
    let response = store_request(
        &client,
        &server,
        &alice,
        &json!({ "text": "written once there was room again" }),
    )
    .send()
    .await
    .expect("answered");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(
        server.child.try_wait().expect("status").is_none(),
        "the server is still running"
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}

/// Directories made immutable (`chattr +i`) for one test, so that creating or
/// renaming a file in them fails with an I/O error; released when dropped.
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    /// Makes every directory under `segments` immutable, or says why it
    /// cannot (needs root and a file system with attributes, such as ext4).
    fn segments_of(shard: &Path) -> Result<Self, String> {
        let dirs: Vec<_> = std::fs::read_dir(shard.join("segments"))
            .map_err(|e| e.to_string())?
            .map(|entry| entry.expect("readable entry").path())
            .filter(|path| path.is_dir())
            .collect();
        assert!(!dirs.is_empty(), "the shard has segments");
        let held = Self(dirs);
        held.chattr("+i")?;
        Ok(held)
    }

    fn chattr(&self, flag: &str) -> Result<(), String> {
        let out = Command::new("chattr")
            .arg(flag)
            .args(&self.0)
            .output()
            .map_err(|e| format!("chattr: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = self.chattr("-i");
    }
}

#[tokio::test]
async fn a_write_failing_with_an_io_error_is_503_is_never_half_served_and_a_retry_settles_it() {
    let data = tempfile::tempdir().expect("temp dir");
    let (alice, bob) = (
        mint(data.path(), "acme", "alice"),
        mint(data.path(), "acme", "bob"),
    );
    let client = reqwest::Client::new();
    let mut server = serve(data.path());
    let store = |token: &str, text: &str| {
        store_request(&client, &server, token, &json!({ "text": text })).send()
    };
    let during = json!({ "text": "alice during the fault", "metadata": { "kind": "retried" } });
    let store_during = || {
        store_request(&client, &server, &alice, &during)
            .header("Idempotency-Key", "write-during-the-fault")
            .send()
    };
    let created = store(&alice, "alice before the fault")
        .await
        .expect("answered");
    assert_eq!(created.status(), StatusCode::CREATED);
    let shards: Vec<_> = std::fs::read_dir(data.path().join("shards"))
        .expect("shards dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.join("edge_config.json").is_file())
        .collect();
    assert_eq!(shards.len(), 1, "alice's shard only");
    let fault = match Immutable::segments_of(&shards[0]) {
        Ok(fault) => fault,
        Err(why) => {
            eprintln!(
                "skipped: cannot make a shard's segments immutable here ({why}); run as root on ext4"
            );
            server.child.kill().expect("killed");
            return;
        }
    };

    // The flush cannot create its files: the write is refused with 503.
    let refused = store_during().await.expect("answered");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "store_unavailable");

    // Reads keep working. The refused write's outcome is unknown (here the
    // flush wrote the data and failed on the segment's state file), but it
    // is never served in part: absent, or whole with its metadata.
    let memories = exported(&client, &server, &alice).await;
    let texts: Vec<&str> = memories
        .iter()
        .map(|m| m["text"].as_str().expect("text"))
        .collect();
    assert!(
        texts == ["alice before the fault"]
            || texts == ["alice before the fault", "alice during the fault"],
        "{texts:?}"
    );
    if let Some(landed) = memories
        .iter()
        .find(|m| m["text"] == "alice during the fault")
    {
        assert_eq!(landed["metadata"], during["metadata"]);
    }
    let search = json_of(
        client
            .post(format!("{}/v1/memories/search", server.base))
            .bearer_auth(&alice)
            .json(&json!({ "query": "alice" })),
    )
    .await;
    assert_eq!(
        search["results"].as_array().expect("results").len(),
        texts.len()
    );
    let other = store(&bob, "bob during alice's fault")
        .await
        .expect("answered");
    assert_eq!(other.status(), StatusCode::CREATED);

    // The fault ends: writes work again without a restart, the retry under
    // the same key leaves exactly one copy, and kill -9 then a restart show
    // exactly that.
    drop(fault);
    let retried = store_during().await.expect("answered");
    assert_eq!(retried.status(), StatusCode::CREATED);
    let created = store(&alice, "alice after the fault")
        .await
        .expect("answered");
    assert_eq!(created.status(), StatusCode::CREATED);
    let expected = [
        "alice after the fault",
        "alice before the fault",
        "alice during the fault",
    ];
    assert_eq!(exported_texts(&client, &server, &alice).await, expected);
    assert!(
        server.child.try_wait().expect("status").is_none(),
        "the server is still running"
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");

    let mut server = serve(data.path());
    assert_eq!(exported_texts(&client, &server, &alice).await, expected);
    assert_eq!(
        exported_texts(&client, &server, &bob).await,
        ["bob during alice's fault"]
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
}
