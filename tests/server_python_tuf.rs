//! Interoperability: python-tuf's `ngclient` (the reference TUF client) refreshes from the
//! running ota-server over HTTPS and downloads a published target, unmodified; with a CA
//! that did not sign the server's certificate it refuses to talk to it.
//!
//! Needs python-tuf (`$OTA_PYTHON`, or `.venv` made by `bash .ci/run`); without it the
//! tests fail with that instruction rather than pass silently.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod harness;

use std::path::Path;
use std::process::{Command, Output};

use harness::{issue_device_in, python_with_tuf, workspace_root, ServerProcess};

const TARGET: &str = "interop-fw-2.3.4.bin";

fn ngclient_fetch(
    server: &ServerProcess,
    root: &Path,
    cache: &Path,
    out: &Path,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Output {
    let mut cmd = Command::new(python_with_tuf());
    cmd.arg(workspace_root().join("tests/interop/ngclient_fetch.py"))
        .arg(server.base_url())
        .arg(root)
        .arg(cache)
        .arg(TARGET)
        .arg(out)
        .arg(ca);
    if let Some((cert, key)) = identity {
        cmd.arg("--client-cert")
            .arg(cert)
            .arg("--client-key")
            .arg(key);
    }
    cmd.output().expect("running ngclient_fetch.py")
}

/// Publishes a target and writes the server's 1.root.json as the trusted root.
async fn published_server(tmp: &Path) -> (ServerProcess, Vec<u8>, serde_json::Value) {
    let server = ServerProcess::start_dev(&tmp.join("data"), None);
    server.wait_healthy().await;
    let image = harness::pseudo_random_bytes("ngclient", 777_777);
    let sha = server.upload(image.clone()).await;
    let outcome = server
        .publish_release(TARGET, &sha, "2.3.4", &["board-py", "board-py2"])
        .await;
    let root = server.metadata("1.root.json").await.unwrap();
    std::fs::write(tmp.join("root.json"), &root).unwrap();
    (server, image, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ngclient_refreshes_and_downloads_a_published_target() {
    python_with_tuf();
    let tmp = tempfile::tempdir().unwrap();
    let (server, image, outcome) = published_server(tmp.path()).await;

    let out = tmp.path().join("out.bin");
    let run = ngclient_fetch(
        &server,
        &tmp.path().join("root.json"),
        &tmp.path().join("cache"),
        &out,
        &server.ca_path(),
        None,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "ngclient failed ({}):\n{stderr}",
        run.status
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("ngclient report is not JSON ({e}): {:?}", run.stdout));

    assert_eq!(report["target"], TARGET);
    assert_eq!(report["length"], image.len());
    assert_eq!(report["sha256"], harness::sha256_hex(&image).as_str());
    assert_eq!(report["custom"]["version"], "2.3.4");
    assert_eq!(
        report["custom"]["hardware_ids"],
        serde_json::json!(["board-py", "board-py2"])
    );
    assert_eq!(report["root_version"], 1);
    assert_eq!(report["targets_version"], outcome["targets_version"]);
    assert_eq!(report["snapshot_version"], outcome["snapshot_version"]);
    assert!(
        report["timestamp_version"].as_u64().unwrap()
            >= outcome["timestamp_version"].as_u64().unwrap()
    );
    assert!(
        std::fs::read(&out).unwrap() == image,
        "downloaded bytes differ"
    );

    // Mutual TLS with a device certificate from the server's device CA works the same.
    let (cert, key) = server.issue_device("py-device-1");
    let out2 = tmp.path().join("out2.bin");
    let run = ngclient_fetch(
        &server,
        &tmp.path().join("root.json"),
        &tmp.path().join("cache2"),
        &out2,
        &server.ca_path(),
        Some((&cert, &key)),
    );
    assert!(
        run.status.success(),
        "ngclient with a device certificate failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(std::fs::read(&out2).unwrap() == image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ngclient_refuses_a_server_certificate_from_another_ca() {
    python_with_tuf();
    let tmp = tempfile::tempdir().unwrap();
    let (server, _, _) = published_server(tmp.path()).await;
    let foreign = tmp.path().join("foreign");
    issue_device_in(&foreign, "unused", &foreign.join("out"));

    let out = tmp.path().join("out.bin");
    let run = ngclient_fetch(
        &server,
        &tmp.path().join("root.json"),
        &tmp.path().join("cache"),
        &out,
        &foreign.join("pki").join("ca.crt"),
        None,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "ngclient must fail:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("SSL") && last.contains("CERTIFICATE_VERIFY_FAILED"),
        "expected a certificate verification failure, got: {last}"
    );
    assert!(!out.exists(), "nothing may be written");
}
