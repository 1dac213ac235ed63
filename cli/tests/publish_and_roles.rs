//! `ota` against a real development `ota-server`: publish, list, withdraw, status, audit,
//! and tokens with their roles.

#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

mod support;

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;
use support::{expect_fail, expect_ok, sha256_file, write_image, Server};

/// Exit codes documented in `ota --help`.
const EXIT_FAILURE: i32 = 1;
const EXIT_AUTH: i32 = 5;

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

#[test]
fn publish_in_dev_mode_then_list_status_audit_and_withdraw() {
    let server = Server::start();
    // Several upload chunks, and not a multiple of the chunk size.
    let image = server.path("fw.bin");
    write_image(&image, 1_000_003);
    let args = [
        "publish",
        image.to_str().unwrap(),
        "--name",
        "fw-1.0.0.bin",
        "--version",
        "1.0.0",
        "--hardware-id",
        "board-a",
        "--hardware-id",
        "board-b",
        "--support-until",
        "2031-01-01T00:00:00Z",
    ];
    let out = server.ota().args(args).output().unwrap();
    let stdout = expect_ok(&args, &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("published fw-1.0.0.bin version 1.0.0"),
        "{stdout}"
    );
    assert!(stdout.contains("targets v"), "{stdout}");
    // Not a terminal: plain progress lines, no bar.
    assert!(stderr.contains("uploading fw-1.0.0.bin"), "{stderr}");
    assert!(stderr.contains("uploaded fw-1.0.0.bin"), "{stderr}");

    let list = json(&server.ok(&["releases", "list", "--json"]));
    let entries = list.as_array().unwrap();
    let fw = entries
        .iter()
        .find(|r| r["name"] == "fw-1.0.0.bin")
        .unwrap_or_else(|| panic!("release missing from {list:#}"));
    assert_eq!(fw["sha256"], sha256_file(&image).as_str());
    assert_eq!(fw["length"], 1_000_003);
    assert_eq!(fw["release"]["version"], "1.0.0");
    assert_eq!(
        fw["release"]["hardware_ids"],
        serde_json::json!(["board-a", "board-b"])
    );
    assert_eq!(fw["release"]["support_until"], "2031-01-01T00:00:00Z");
    assert!(fw["withdrawn_at"].is_null());

    let table = server.ok(&["releases", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("fw-1.0.0.bin  1.0.0"), "{table}");
    assert!(table.contains("board-a,board-b"), "{table}");

    let status = server.ok(&["status"]);
    assert!(status.contains("server:    ok"), "{status}");
    assert!(status.contains("releases:  1 (1 active"), "{status}");

    // A different image under the same name is refused with the server's message.
    let other = server.path("other.bin");
    write_image(&other, 10);
    let clash = [
        "publish",
        other.to_str().unwrap(),
        "--name",
        "fw-1.0.0.bin",
        "--version",
        "1.0.1",
        "--hardware-id",
        "board-a",
    ];
    let out = server.ota().args(clash).output().unwrap();
    let stderr = expect_fail(&clash, &out, 6);
    assert!(stderr.contains("already exists"), "{stderr}");

    // A bad version is refused before anything is uploaded.
    let bad = [
        "publish",
        other.to_str().unwrap(),
        "--name",
        "x.bin",
        "--version",
        "1.0",
        "--hardware-id",
        "b",
    ];
    let out = server.ota().args(bad).output().unwrap();
    let stderr = expect_fail(&bad, &out, EXIT_FAILURE);
    assert!(stderr.contains("--version"), "{stderr}");
    assert!(!stderr.contains("uploading"), "{stderr}");

    let audit = json(&server.ok(&["audit", "--json"]));
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"upload"), "{actions:?}");
    assert!(actions.contains(&"publish"), "{actions:?}");
    let page = server.ok(&["audit", "--after", "1", "--limit", "1"]);
    assert_eq!(page.lines().count(), 2, "{page}");
    assert!(page.lines().nth(1).unwrap().starts_with('2'), "{page}");

    let verify = server.ok(&["audit", "verify"]);
    assert!(verify.contains("audit log intact"), "{verify}");
    let verify = json(&server.ok(&["audit", "verify", "--json"]));
    assert_eq!(verify["intact"], true);

    let out = server.ok(&["releases", "withdraw", "fw-1.0.0.bin"]);
    assert!(out.contains("withdrew fw-1.0.0.bin"), "{out}");
    let list = server.ok(&["releases", "list", "--json"]);
    let still_active = json(&list)
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "fw-1.0.0.bin" && r["withdrawn_at"].is_null());
    assert!(!still_active, "{list}");
    let out = server
        .ota()
        .args(["releases", "withdraw", "no-such.bin"])
        .output()
        .unwrap();
    let stderr = expect_fail(&["releases", "withdraw"], &out, EXIT_FAILURE);
    assert!(stderr.contains("no release named"), "{stderr}");
}

#[test]
fn tokens_and_roles() {
    let server = Server::start();
    let created = server.ok(&["tokens", "create", "--name", "viewer-1", "--role", "viewer"]);
    let secret = created.trim();
    assert!(
        secret.starts_with("ota_") && !secret.contains('\n'),
        "{created}"
    );
    let viewer_file = server.path("viewer.token");
    std::fs::write(&viewer_file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&viewer_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A viewer may read...
    let out = server
        .ota_bare()
        .env("OTA_TOKEN", secret)
        .args(["releases", "list"])
        .output()
        .unwrap();
    expect_ok(&["releases", "list"], &out);

    // ...but not publish: refused with a message naming the role, before a byte is stored.
    let image = server.path("fw.bin");
    write_image(&image, 4096);
    let args = [
        "publish",
        image.to_str().unwrap(),
        "--name",
        "fw.bin",
        "--version",
        "1.0.0",
        "--hardware-id",
        "b",
    ];
    let out = server
        .ota_bare()
        .arg("--token-file")
        .arg(&viewer_file)
        .args(args)
        .output()
        .unwrap();
    let stderr = expect_fail(&args, &out, EXIT_AUTH);
    assert!(stderr.contains("forbidden"), "{stderr}");
    assert!(stderr.to_lowercase().contains("viewer"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");

    // Nor manage tokens.
    let out = server
        .ota_bare()
        .arg("--token-file")
        .arg(&viewer_file)
        .args(["tokens", "list"])
        .output()
        .unwrap();
    expect_fail(&["tokens", "list"], &out, EXIT_AUTH);

    let list = json(&server.ok(&["tokens", "list", "--json"]));
    let rec = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "viewer-1")
        .unwrap_or_else(|| panic!("viewer-1 missing from {list:#}"))
        .clone();
    assert_eq!(rec["role"], "viewer");
    assert!(!list.to_string().contains(secret), "secret listed");
    let table = server.ok(&["tokens", "list"]);
    assert!(table.contains("viewer-1"), "{table}");

    let id = rec["id"].as_str().unwrap();
    let out = server.ok(&["tokens", "revoke", id]);
    assert!(out.contains("revoked"), "{out}");
    let out = server
        .ota_bare()
        .arg("--token-file")
        .arg(&viewer_file)
        .args(["releases", "list"])
        .output()
        .unwrap();
    let stderr = expect_fail(&["releases", "list"], &out, EXIT_AUTH);
    assert!(stderr.contains("unauthorized"), "{stderr}");

    // No token at all: refused locally, with the way to give one.
    let out = server
        .ota_bare()
        .args(["releases", "list"])
        .output()
        .unwrap();
    let stderr = expect_fail(&["releases", "list"], &out, EXIT_FAILURE);
    assert!(stderr.contains("--token-file"), "{stderr}");
    assert!(stderr.contains("OTA_TOKEN"), "{stderr}");

    // An unknown role never reaches the server.
    let out = server
        .ota()
        .args(["tokens", "create", "--name", "x", "--role", "root"])
        .output()
        .unwrap();
    expect_fail(&["tokens", "create"], &out, 2);
}
