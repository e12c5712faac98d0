//! `cordon keys` as an operator runs it: generate two KEKs, turn encryption
//! on for a plain data directory with `migrate`, rotate, and the refusals
//! in between.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

use super::{cordon, exported_texts, mint, serve_with, start_failure, store_request};

fn keys(data_dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd: Command = cordon(data_dir);
    cmd.arg("keys").args(args);
    for (key, path) in env {
        cmd.env(key, path);
    }
    cmd.output().expect("cordon keys runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn holds(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("readable").flatten() {
                stack.push(entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && memchr::memmem::find(&bytes, needle).is_some()
        {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn migrate_then_rotate_from_the_command_line_keeps_memories_readable_and_sealed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secrets = tempfile::tempdir().expect("temp dir");
    let mut kek_files = Vec::new();
    for name in ["kek-1.hex", "kek-2.hex"] {
        let out = keys(dir.path(), &["generate"], &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let kek = text(&out.stdout).trim().to_owned();
        assert_eq!(kek.len(), 64);
        assert!(kek.bytes().all(|b| b.is_ascii_hexdigit()));
        let path = secrets.path().join(name);
        std::fs::write(&path, &kek).expect("written");
        kek_files.push(path);
    }
    let (one, two) = (kek_files[0].as_path(), kek_files[1].as_path());
    assert_ne!(std::fs::read(one).ok(), std::fs::read(two).ok());

    // A plain deployment with one memory.
    let alice = mint(dir.path(), "acme", "alice");
    let client = reqwest::Client::new();
    let canary = format!("canary-{}", uuid::Uuid::new_v4().simple());
    let mut server = serve_with(cordon(dir.path()));
    let r = store_request(&client, &server, &alice, &json!({ "text": canary }))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::CREATED);
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
    assert!(holds(dir.path(), canary.as_bytes()), "the control failed");

    // A KEK on plain memories is refused, with the way out named.
    let err = start_failure(cordon(dir.path()).env("CORDON_KEK_FILE", one));
    assert!(err.contains("cordon keys migrate"), "{err}");
    let out = keys(dir.path(), &["migrate"], &[("CORDON_KEK_FILE", one)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("sealed 1 memories"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        !holds(dir.path(), canary.as_bytes()),
        "plain text left after migrate"
    );

    let mut sealed = cordon(dir.path());
    sealed.env("CORDON_KEK_FILE", one);
    let mut server = serve_with(sealed);
    assert_eq!(
        exported_texts(&client, &server, &alice).await,
        [canary.as_str()]
    );

    // Rotation refuses to run beside the server, then runs.
    let rotate_env = [("CORDON_KEK_FILE", two), ("CORDON_KEK_PREVIOUS_FILE", one)];
    let out = keys(dir.path(), &["rotate"], &rotate_env);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("stop the server first"),
        "{}",
        text(&out.stderr)
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");
    let out = keys(dir.path(), &["rotate"], &rotate_env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 re-wrapped now"),
        "{}",
        text(&out.stdout)
    );

    let mut rotated = cordon(dir.path());
    rotated.env("CORDON_KEK_FILE", two);
    let mut server = serve_with(rotated);
    assert_eq!(
        exported_texts(&client, &server, &alice).await,
        [canary.as_str()]
    );
    server.child.kill().expect("killed");
    server.child.wait().expect("reaped");

    // The old KEK alone, and no KEK, are refused.
    let err = start_failure(cordon(dir.path()).env("CORDON_KEK_FILE", one));
    assert!(err.contains("neither CORDON_KEK"), "{err}");
    let err = start_failure(&mut cordon(dir.path()));
    assert!(err.contains("encrypted at rest"), "{err}");
}
