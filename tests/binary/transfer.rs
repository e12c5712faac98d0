//! `cordon export` and `cordon import`: one user's memories as NDJSON,
//! through the API with that user's token.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use super::{Server, cordon, exported, mint, serve, store_request};

/// `cordon <args>` against `server` with `token`, no other CORDON_ setting.
fn transfer(data_dir: &Path, server: &Server, token: &str, args: &[&str]) -> Output {
    let mut cmd: Command = cordon(data_dir);
    cmd.env_remove("CORDON_JWT_HS256_SECRET")
        .env("CORDON_URL", &server.base)
        .env("CORDON_TOKEN", token)
        .args(args)
        .output()
        .expect("cordon runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// (text, metadata) of each memory, sorted, as the API exports them.
async fn contents(client: &reqwest::Client, server: &Server, token: &str) -> Vec<(String, Value)> {
    exported(client, server, token)
        .await
        .iter()
        .map(|m| {
            (
                m["text"].as_str().expect("text").to_owned(),
                m["metadata"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_export_imported_for_another_user_gives_them_the_same_memories_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let server = serve(data.path());
    let (alice, bob) = (
        mint(data.path(), "acme", "alice"),
        mint(data.path(), "acme", "bob"),
    );
    let client = reqwest::Client::new();
    // More than one export page (100) and more than one import batch (32).
    for batch in 0..3 {
        let memories: Vec<Value> = (0..50)
            .map(|i| json!({ "text": format!("alice fact {batch}-{i}"), "metadata": { "n": i, "kind": "fact" } }))
            .collect();
        let r = store_request(&client, &server, &alice, &json!({ "memories": memories }))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 201);
    }

    let file = work.path().join("alice.ndjson");
    let out = transfer(
        data.path(),
        &server,
        &alice,
        &["export", "--output", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("exported 150 memories"),
        "{}",
        stderr(&out)
    );
    assert!(!work.path().join("alice.ndjson.partial").exists());
    let text = std::fs::read_to_string(&file).expect("the export file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 150);
    assert!(
        lines
            .iter()
            .all(|l| l["text"].is_string() && l["metadata"]["kind"] == "fact")
    );

    let out = transfer(
        data.path(),
        &server,
        &bob,
        &["import", "--input", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "import failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("imported 150 memories"),
        "{}",
        stderr(&out)
    );
    let want = contents(&client, &server, &alice).await;
    assert_eq!(want.len(), 150);
    assert_eq!(contents(&client, &server, &bob).await, want);

    // Run again (as after an interruption): nothing is stored twice.
    let out = transfer(
        data.path(),
        &server,
        &bob,
        &["import", "--input", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "second import failed: {}",
        stderr(&out)
    );
    assert_eq!(contents(&client, &server, &bob).await, want);
    // And alice's own memories are untouched by bob's import.
    assert_eq!(contents(&client, &server, &alice).await, want);
}

#[tokio::test]
async fn a_bad_line_stops_an_import_before_anything_is_written() {
    let data = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let server = serve(data.path());
    let carol = mint(data.path(), "acme", "carol");
    let file = work.path().join("bad.ndjson");
    std::fs::write(
        &file,
        "{\"text\": \"first\"}\n{\"text\": \"second\"}\n{\"metadata\": {}}\n{\"text\": \"fourth\"}\n",
    )
    .expect("write");
    let out = transfer(
        data.path(),
        &server,
        &carol,
        &["import", "-i", file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));
    let client = reqwest::Client::new();
    assert!(contents(&client, &server, &carol).await.is_empty());
}

#[tokio::test]
async fn an_export_with_a_bad_token_fails_and_leaves_no_file() {
    let data = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let server = serve(data.path());
    let file = work.path().join("out.ndjson");
    let out = transfer(
        data.path(),
        &server,
        "not-a-token",
        &["export", "-o", file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    assert!(!file.exists());
    assert!(!work.path().join("out.ndjson.partial").exists());
}

#[tokio::test]
async fn a_blank_or_overlong_text_is_refused_by_line_before_any_write_and_exports_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let data = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let server = serve(data.path());
    let dave = mint(data.path(), "acme", "dave");
    let client = reqwest::Client::new();
    for (content, line) in [
        (
            "{\"text\": \"fine\"}\n{\"text\": \"   \"}\n".to_owned(),
            "line 2",
        ),
        (
            format!(
                "{{\"text\": \"ok\"}}\n{{\"text\": \"ok too\"}}\n{{\"text\": \"{}\"}}\n",
                "x".repeat(9000)
            ),
            "line 3",
        ),
        (
            "{\"text\": \"a\", \"metadata\": {\"bad key\": 1}}\n".to_owned(),
            "line 1",
        ),
    ] {
        let file = work.path().join("in.ndjson");
        std::fs::write(&file, content).expect("write");
        let out = transfer(
            data.path(),
            &server,
            &dave,
            &["import", "-i", file.to_str().unwrap()],
        );
        assert!(!out.status.success());
        assert!(stderr(&out).contains(line), "{}", stderr(&out));
        assert!(contents(&client, &server, &dave).await.is_empty());
    }
    let file = work.path().join("dave.ndjson");
    let out = transfer(
        data.path(),
        &server,
        &dave,
        &["export", "-o", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::fs::metadata(&file)
        .expect("the export")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the export is readable by others: {mode:o}"
    );
}
