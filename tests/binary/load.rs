//! `cordon load`: the leak and collision load tool shipped in the binary,
//! against a server that verifies tokens with a public key.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{cordon, serve_with};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `cordon load` against `base`, minting with `private_key`, small run.
fn load(data_dir: &Path, base: &str, private_key: &str, report: &Path) -> std::process::Output {
    let mut cmd: Command = cordon(data_dir);
    cmd.env_remove("CORDON_JWT_HS256_SECRET")
        .args(["load", "--url", base, "--private-key-pem"])
        .arg(fixture(private_key))
        .args([
            "--users",
            "6",
            "--memories",
            "2",
            "--ops",
            "4",
            "--clients",
            "3",
        ])
        .arg("--json")
        .arg(report)
        .output()
        .expect("cordon load runs")
}

#[tokio::test]
async fn cordon_load_mints_with_a_private_key_and_finds_no_leak() {
    let data = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let mut command = cordon(data.path());
    command
        .env_remove("CORDON_JWT_HS256_SECRET")
        .env("CORDON_JWT_PUBLIC_KEY_PEM", fixture("ed25519-public.pem"));
    let server = serve_with(command);

    let report = work.path().join("load.json");
    let out = load(data.path(), &server.base, "ed25519-private.pem", &report);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cordon load failed: {stderr}");
    assert!(stderr.contains("EdDSA tokens"), "{stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(report["leaks"], 0, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert!(report["checked"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["config"]["users"], 6);

    // Tokens signed with a key the server does not trust are all refused,
    // and the tool says the run failed.
    let report = work.path().join("refused.json");
    let out = load(data.path(), &server.base, "rsa-private.pem", &report);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
