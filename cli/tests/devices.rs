//! `ota devices …`, `ota enroll-token`, `ota anomalies` against a real development server
//! whose devices poll with certificates from `ota-server device issue`.

#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

mod support;

use std::path::Path;

use serde_json::Value;
use support::{expect_fail, expect_ok, https_client, workspace_bin, Server};

const EXIT_AUTH: i32 = 5;

/// Issues a device identity with the development device CA.
fn issue(server: &Server, id: &str) -> std::path::PathBuf {
    let out_dir = server.path(&format!("device-{id}"));
    let out = std::process::Command::new(workspace_bin("ota-server", "ota-server"))
        .args(["device", "issue", "--data-dir"])
        .arg(server.dir.path())
        .arg(id)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "device issue: {out:?}");
    out_dir
}

/// One `POST /api/v1/device/poll` with the device's certificate; returns the HTTP status.
fn poll(server: &Server, dir: &Path, id: &str, attributes: Value) -> u16 {
    let client = https_client(server, Some((dir, id)));
    let body = serde_json::json!({"hardware_id": "board-x", "attributes": attributes});
    let url = format!("{}/api/v1/device/poll", server.url());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move { client.post(url).json(&body).send().await.unwrap() })
        .status()
        .as_u16()
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn operators_decide_on_devices_that_polled() {
    let server = Server::start();
    let (d1, d2) = (issue(&server, "dev-1"), issue(&server, "dev-2"));
    // (The server refuses attributes with control characters; `ota` neutralises them
    // anyway, see the unit tests of cmd::devices.)
    let attrs = serde_json::json!({"site": "lab-1"});
    assert_eq!(poll(&server, &d1, "dev-1", attrs.clone()), 403);
    assert_eq!(poll(&server, &d2, "dev-2", serde_json::json!({})), 403);

    let pending = json(&server.ok(&["devices", "list", "--status", "pending", "--json"]));
    assert_eq!(ids(&pending), ["dev-1", "dev-2"]);
    let table = server.ok(&["devices", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("dev-1  pending  board-x"), "{table}");
    let filtered = json(&server.ok(&["devices", "list", "--hardware-id", "other-board", "--json"]));
    assert!(ids(&filtered).is_empty(), "{filtered}");

    let show = server.ok(&["devices", "show", "dev-1"]);
    assert!(show.contains("pending"), "{show}");
    assert!(show.contains("board-x"), "{show}");
    assert!(show.contains("lab-1"), "{show}");
    let detail = json(&server.ok(&["devices", "show", "dev-1", "--json"]));
    assert_eq!(detail["device"]["id"], "dev-1");
    let out = server
        .ota()
        .args(["devices", "show", "nobody"])
        .output()
        .unwrap();
    let stderr = expect_fail(&["devices", "show"], &out, 1);
    assert!(stderr.contains("no device"), "{stderr}");

    assert!(server
        .ok(&["devices", "accept", "dev-1"])
        .contains("dev-1 accepted"));
    assert!(server
        .ok(&["devices", "accept", "dev-1"])
        .contains("already accepted"));
    assert!(server
        .ok(&["devices", "reject", "dev-2"])
        .contains("dev-2 rejected"));
    assert_eq!(poll(&server, &d1, "dev-1", attrs), 200);
    let accepted = json(&server.ok(&["devices", "list", "--status", "accepted", "--json"]));
    assert_eq!(ids(&accepted), ["dev-1"]);

    // Decommissioning asks for --yes before anything is sent.
    let out = server
        .ota()
        .args(["devices", "decommission", "dev-2"])
        .output()
        .unwrap();
    let stderr = expect_fail(&["devices", "decommission"], &out, 1);
    assert!(stderr.contains("--yes"), "{stderr}");
    let rejected = json(&server.ok(&["devices", "list", "--status", "rejected", "--json"]));
    assert_eq!(ids(&rejected), ["dev-2"]);
    let out = server.ok(&["devices", "decommission", "dev-2", "--yes"]);
    assert!(out.contains("dev-2 decommissioned"), "{out}");
    let gone = json(&server.ok(&["devices", "list", "--status", "decommissioned", "--json"]));
    assert_eq!(ids(&gone), ["dev-2"]);
    let out = server
        .ota()
        .args(["devices", "accept", "dev-2"])
        .output()
        .unwrap();
    let stderr = expect_fail(&["devices", "accept"], &out, 6);
    assert!(stderr.contains("decommissioned"), "{stderr}");

    let pre = server.ok(&["devices", "preauthorize", "p-1", "dev-1"]);
    assert!(pre.contains("p-1    preauthorized"), "{pre}");
    assert!(pre.contains("dev-1  already accepted"), "{pre}");

    let out = server
        .ota()
        .args(["enroll-token", "--device-id", "p-2", "--ttl-secs", "600"])
        .output()
        .unwrap();
    let token = expect_ok(&["enroll-token"], &out);
    assert!(token.trim().starts_with("otae_"), "{token}");
    assert_eq!(token.trim().lines().count(), 1, "{token}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("device p-2"), "{stderr}");

    let anomalies = json(&server.ok(&["anomalies", "--limit", "5", "--json"]));
    assert!(anomalies["anomalies"].is_array(), "{anomalies}");
    let table = server.ok(&["anomalies"]);
    assert!(
        table.contains("no anomalies") || table.starts_with("AT"),
        "{table}"
    );

    let status = server.ok(&["status"]);
    assert!(status.contains("1 decommissioned"), "{status}");
    assert!(status.contains("accepted"), "{status}");

    // A viewer may look but not decide.
    let viewer = server.ok(&["tokens", "create", "--name", "v", "--role", "viewer"]);
    let out = server
        .ota_bare()
        .env("OTA_TOKEN", viewer.trim())
        .args(["devices", "list"])
        .output()
        .unwrap();
    expect_ok(&["devices", "list"], &out);
    let out = server
        .ota_bare()
        .env("OTA_TOKEN", viewer.trim())
        .args(["devices", "reject", "dev-1"])
        .output()
        .unwrap();
    let stderr = expect_fail(&["devices", "reject"], &out, EXIT_AUTH);
    assert!(stderr.to_lowercase().contains("viewer"), "{stderr}");

    let audit = server.ok(&["audit", "--json"]);
    assert!(audit.contains("dev-2"), "{audit}");
    assert!(server.ok(&["audit", "verify"]).contains("audit log intact"));
}
