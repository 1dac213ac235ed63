//! Compressed forms end to end against a real `ota-server`: `ota publish --zstd` (the server
//! signs), and `ota-keys add-target --zstd` + `ota publish --signed-targets` (the release
//! engineer signs). Either way the `.zst` is served below `targets/` and decodes to the image.

#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

mod support;

use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{expect_fail, expect_ok, https_client, workspace_bin, write_image, Server};

/// GET of a public path (no client certificate), trusting the server's CA.
fn get(server: &Server, path: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    let client = https_client(server, None);
    let url = format!("{}/{path}", server.url());
    let range = range.map(str::to_string);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mut req = client.get(url);
            if let Some(r) = range {
                req = req.header("range", r);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.bytes().await.unwrap().to_vec())
        })
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// The release `name` as `ota releases list --json` shows it.
fn listed(server: &Server, name: &str) -> Value {
    let list = json(&server.ok(&["releases", "list", "--json"]));
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {list:#}"))
        .clone()
}

/// Downloads the compressed form `release` names and checks it decodes to `image`.
fn fetch_and_decode(server: &Server, name: &str, release: &Value, image: &Path) -> Vec<u8> {
    let form = &release["release"]["zstd"];
    let zsha = form["sha256"].as_str().unwrap();
    let (status, zst) = get(server, &format!("targets/{zsha}.{name}.zst"), None);
    assert_eq!(status, 200);
    assert_eq!(zst.len() as u64, form["length"].as_u64().unwrap());
    assert_eq!(hex::encode(Sha256::digest(&zst)), zsha);
    let decoded = zstd::stream::decode_all(&zst[..]).unwrap();
    assert!(
        decoded == std::fs::read(image).unwrap(),
        "decodes to the image"
    );
    zst
}

#[test]
fn publish_with_zstd_serves_a_form_that_decodes_to_the_image() {
    let server = Server::start();
    // Two frames: a little over 8 MiB.
    let image = server.path("fw.bin");
    write_image(&image, 8 * 1024 * 1024 + 4321);
    let args = [
        "publish",
        image.to_str().unwrap(),
        "--name",
        "fw-2.0.0.bin",
        "--version",
        "2.0.0",
        "--hardware-id",
        "board",
        "--zstd",
        "--zstd-level",
        "3",
    ];
    let out = server.ota().args(args).output().unwrap();
    let stdout = expect_ok(&args, &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("published fw-2.0.0.bin version 2.0.0"),
        "{stdout}"
    );
    assert!(stdout.contains("zstd form: "), "{stdout}");
    assert!(stdout.contains("% of the image"), "{stdout}");
    assert!(stderr.contains("compressing"), "{stderr}");
    assert!(stderr.contains("uploading fw-2.0.0.bin.zst"), "{stderr}");

    let release = listed(&server, "fw-2.0.0.bin");
    assert_eq!(release["length"], 8 * 1024 * 1024 + 4321);
    assert_eq!(release["zstd_length"], release["release"]["zstd"]["length"]);
    let zst = fetch_and_decode(&server, "fw-2.0.0.bin", &release, &image);
    assert!(zst.len() < 1024 * 1024, "{} bytes", zst.len());
    let table = server.ok(&["releases", "list"]);
    assert!(table.contains("ZSTD"), "{table}");

    // Resumable like the image.
    let zsha = release["release"]["zstd"]["sha256"].as_str().unwrap();
    let path = format!("targets/{zsha}.fw-2.0.0.bin.zst");
    let (status, tail) = get(&server, &path, Some("bytes=100-"));
    assert_eq!(status, 206);
    assert!(tail == zst[100..]);

    // Levels are bounded; nothing is uploaded for a refused command line.
    let bad = [
        "publish",
        image.to_str().unwrap(),
        "--name",
        "x.bin",
        "--version",
        "2.0.1",
        "--hardware-id",
        "board",
        "--zstd",
        "--zstd-level",
        "20",
    ];
    let out = server.ota().args(bad).output().unwrap();
    let stderr = expect_fail(&bad, &out, 2);
    assert!(stderr.contains("20"), "{stderr}");
}

#[test]
fn ota_keys_add_target_zstd_then_publish_signed_targets() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    // A release engineer's copy of the server's repository, and its targets key (the dev
    // server's, so the server trusts what ota-keys signs).
    let repo = work.path().join("repo");
    let meta = repo.join("metadata");
    std::fs::create_dir_all(&meta).unwrap();
    let fetch = |file: &str| -> Value {
        let (status, bytes) = get(&server, &format!("metadata/{file}"), None);
        assert_eq!(status, 200, "{file}");
        std::fs::write(meta.join(file), &bytes).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    fetch("1.root.json");
    let ts = fetch("timestamp.json");
    let snap_v = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    let snap = fetch(&format!("{snap_v}.snapshot.json"));
    let targets_v = snap["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .unwrap();
    fetch(&format!("{targets_v}.targets.json"));
    let keys = work.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(
        server.path("keys/targets.key"),
        keys.join("targets-dev.key.json"),
    )
    .unwrap();

    let image = work.path().join("fw-3.bin");
    write_image(&image, 3_000_000);
    let out = std::process::Command::new(workspace_bin("ota-keys", "ota-keys"))
        .env_remove("OTA_KEY_PASSPHRASE")
        .arg("--repo")
        .arg(&repo)
        .arg("--keys-dir")
        .arg(&keys)
        .arg("--passphrase-file")
        .arg(server.path("keys/passphrase"))
        .args([
            "add-target",
            image.to_str().unwrap(),
            "--version",
            "3.0.0",
            "--hardware-id",
            "board",
            "--zstd",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ota-keys: {out:?}");
    assert!(stdout.contains("zstd form"), "{stdout}");

    // Not served before it is published.
    let signed: Value = serde_json::from_slice(
        &std::fs::read(meta.join(format!("{}.targets.json", targets_v + 1))).unwrap(),
    )
    .unwrap();
    let zsha = signed["signed"]["targets"]["fw-3.bin"]["custom"]["zstd"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&server, &format!("targets/{zsha}.fw-3.bin.zst"), None).0,
        404
    );

    let args = ["publish", "--signed-targets", repo.to_str().unwrap()];
    let out = server.ota().args(args).output().unwrap();
    let stdout = expect_ok(&args, &out);
    assert!(
        stdout.contains("1 image(s), 1 compressed form(s) uploaded"),
        "{stdout}"
    );
    let release = listed(&server, "fw-3.bin");
    assert_eq!(release["release"]["zstd"]["sha256"], zsha.as_str());
    fetch_and_decode(&server, "fw-3.bin", &release, &image);
}
