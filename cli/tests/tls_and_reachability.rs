//! `ota` tells apart a server it cannot reach, a certificate it does not trust, and a URL
//! it will not use.

#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

mod support;

use support::{expect_fail, expect_ok, workspace_bin, Server};

const EXIT_FAILURE: i32 = 1;
const EXIT_UNREACHABLE: i32 = 3;
const EXIT_TLS: i32 = 4;

#[test]
fn wrong_ca_is_reported_as_certificate_not_trusted() {
    let server = Server::start();
    // Another development PKI: a valid CA that did not issue this server's certificate.
    let other = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(workspace_bin("ota-server", "ota-server"))
        .args(["device", "issue", "--data-dir"])
        .arg(other.path())
        .args(["dev-x", "--out"])
        .arg(other.path().join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let wrong_ca = other.path().join("pki").join("ca.crt");
    assert!(wrong_ca.is_file());

    for args in [&["status"][..], &["releases", "list"]] {
        let out = server
            .ota_trusting(&wrong_ca)
            .arg("--token-file")
            .arg(server.admin_token_file())
            .args(args)
            .output()
            .unwrap();
        let stderr = expect_fail(args, &out, EXIT_TLS);
        assert!(stderr.contains("certificate not trusted"), "{stderr}");
        assert!(stderr.contains("--ca"), "hint missing: {stderr}");
    }

    // The right CA through the environment works, so the failure above is the CA's.
    let mut right = assert_cmd::Command::new(env!("CARGO_BIN_EXE_ota"));
    let out = right
        .env_remove("OTA_TOKEN")
        .env("OTA_SERVER", server.url())
        .env("OTA_CA", server.ca())
        .env("OTA_TOKEN_FILE", server.admin_token_file())
        .args(["status"])
        .output()
        .unwrap();
    expect_ok(&["status"], &out);
}

#[test]
fn closed_port_is_reported_as_cannot_reach_server() {
    // A port that was free a moment ago: nothing listens there now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    // Any CA parses; the connection fails before it matters.
    let out = std::process::Command::new(workspace_bin("ota-server", "ota-server"))
        .args(["device", "issue", "--data-dir"])
        .arg(dir.path())
        .args(["dev-x", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::copy(dir.path().join("pki").join("ca.crt"), &ca).unwrap();
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_ota"))
        .env_remove("OTA_TOKEN")
        .env_remove("OTA_TOKEN_FILE")
        .env("OTA_SERVER", format!("https://127.0.0.1:{port}"))
        .env("OTA_CA", &ca)
        .args(["status"])
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let stderr = expect_fail(&["status"], &out, EXIT_UNREACHABLE);
    assert!(stderr.contains("cannot reach server"), "{stderr}");

    // Plain HTTP is refused outright: tokens never travel unencrypted.
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_ota"))
        .env_remove("OTA_TOKEN")
        .env_remove("OTA_TOKEN_FILE")
        .args(["--server", &format!("http://127.0.0.1:{port}"), "--ca"])
        .arg(&ca)
        .args(["status"])
        .output()
        .unwrap();
    let stderr = expect_fail(&["status"], &out, EXIT_FAILURE);
    assert!(stderr.contains("https"), "{stderr}");

    // No CA: the system store is never a fallback.
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_ota"))
        .env_remove("OTA_CA")
        .args(["--server", &format!("https://127.0.0.1:{port}"), "status"])
        .output()
        .unwrap();
    let stderr = expect_fail(&["status"], &out, EXIT_FAILURE);
    assert!(stderr.contains("--ca"), "{stderr}");
}
