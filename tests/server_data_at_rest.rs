//! Device data is encrypted at rest: a real development `ota-server` process, a device that
//! polls over mutual TLS with distinctive inventory and sends a status report, then the
//! server is stopped and every byte under its store directory is searched for that data.
//! Without `store.key` the server refuses to start, and with it the data reads back.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod harness;

use std::path::Path;

use serde_json::{json, Value};

use harness::{json_body, ServerProcess};

/// Strings that only this test's device sends: none may appear in the store files.
const SECRETS: [&str; 3] = [
    "site-7f3a9c-basement",
    "board-rev-c0ffee42",
    "owner@example.invalid",
];

fn poll_body() -> Value {
    json!({"hardware_id": SECRETS[1], "current_version": "1.0.0", "active_slot": "a",
           "agent_version": "0.1.0",
           "attributes": {"site": SECRETS[0], "contact": SECRETS[2]}})
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn device_inventory_and_reports_are_not_in_clear_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_dev(dir.path(), None);
    server.wait_healthy().await;
    let token = server.admin_token();
    let (cert, key) = server.issue_device("dev-at-rest");
    let device = server.client_with_identity(&cert, &key);
    let admin = server.client();

    let preauth = admin
        .post(server.url("/api/v1/devices/preauthorize"))
        .bearer_auth(&token)
        .json(&json!({"ids": ["dev-at-rest"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        preauth.status().as_u16(),
        200,
        "{}",
        json_body(preauth).await
    );
    let poll = device
        .post(server.url("/api/v1/device/poll"))
        .json(&poll_body())
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status().as_u16(), 200, "{}", json_body(poll).await);
    let report = json!({"id": "r-1", "state": "downloading",
        "target": "fw.bin", "version": "2.0.0", "at": "2026-01-01T00:00:00Z",
        "detail": format!("note for {}", SECRETS[2])});
    let status = device
        .post(server.url("/api/v1/device/status"))
        .json(&report)
        .send()
        .await
        .unwrap();
    let code = status.status().as_u16();
    assert_eq!(code, 200, "{}", json_body(status).await);

    // The operator API reads the data back in clear (decrypted by the server).
    let detail = admin
        .get(server.url("/api/v1/devices/dev-at-rest"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let detail = json_body(detail).await.to_string();
    assert!(detail.contains(SECRETS[0]), "{detail}");
    assert!(detail.contains(SECRETS[1]), "{detail}");

    server.stop();
    let mut all = Vec::new();
    files(&server.data_dir().join("store"), &mut all);
    assert!(!all.is_empty(), "no store files under the data directory");
    let mut bytes_searched = 0;
    for path in &all {
        let data = std::fs::read(path).unwrap();
        bytes_searched += data.len();
        for secret in SECRETS {
            assert!(
                !contains(&data, secret.as_bytes()),
                "{secret:?} found in clear in {}",
                path.display()
            );
        }
    }
    assert!(bytes_searched > 0);
    // The device id is a key (kept in clear for ordering), so it is there: the search
    // really reads the files the data went to.
    assert!(
        all.iter()
            .any(|p| contains(&std::fs::read(p).unwrap(), b"dev-at-rest")),
        "the device id should be present as a key"
    );

    // Without the key the server refuses to start; with it back, the data reads again.
    let key = server.data_dir().join("store.key");
    let saved = dir.path().join("store.key.saved");
    std::fs::rename(&key, &saved).unwrap();
    let out = std::process::Command::new(harness::server_bin())
        .args(["serve", "--dev", "--data-dir"])
        .arg(server.data_dir())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "started without its store key");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("store.key"),
        "error names the key file: {stderr}"
    );
    std::fs::rename(&saved, &key).unwrap();
    server.restart();
    server.wait_healthy().await;
    let detail = server
        .client()
        .get(server.url("/api/v1/devices/dev-at-rest"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let detail = json_body(detail).await.to_string();
    assert!(detail.contains(SECRETS[0]), "after restart: {detail}");
}
