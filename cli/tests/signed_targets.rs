//! `ota publish --signed-targets REPO_DIR`: the production flow against a real server.
//!
//! A development server trusts only its own keys, so a repository made by `ota-keys init`
//! must be refused with a clear message and nothing uploaded. To exercise the accepted
//! path, the tests sign targets with the development server's own targets key (read from
//! its data directory, as a release engineer's `ota-keys` would hold it).

#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use ota_common::keys::SigningKey;
use ota_common::metadata::{TargetFile, Targets};
use ota_common::signed::sign_role;
use ota_common::target::TargetName;
use ota_keys::keyfile::EncryptedKey;
use ota_keys::passphrase::Passphrase;
use ota_keys::repo::RepoLayout;
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};
use support::{expect_fail, expect_ok, workspace_bin, write_image, Server};

const EXIT_CONFLICT: i32 = 6;

fn server_targets_version(server: &Server) -> u64 {
    let status: Value = serde_json::from_str(&server.ok(&["status", "--json"])).unwrap();
    status["health"]["targets_version"].as_u64().unwrap()
}

fn dev_targets_key(server: &Server) -> SigningKey {
    let keys = server.path("keys");
    let pass = Passphrase::from_file(&keys.join("passphrase")).unwrap();
    EncryptedKey::read(&keys.join("targets.key"))
        .unwrap()
        .decrypt(&pass)
        .unwrap()
}

fn target_file(image: &Path, version: &str) -> TargetFile {
    let data = std::fs::read(image).unwrap();
    TargetFile {
        length: data.len() as u64,
        hashes: BTreeMap::from([
            ("sha256".to_string(), hex::encode(Sha256::digest(&data))),
            ("sha512".to_string(), hex::encode(Sha512::digest(&data))),
        ]),
        custom: Some(serde_json::json!({"version": version, "hardware_ids": ["board"]})),
        extra: BTreeMap::new(),
    }
}

/// Writes `metadata/{version}.targets.json` signed by `key`, and copies each `(name, image)`
/// into `targets/` where ota-keys would have put it.
fn write_repo(
    dir: &Path,
    key: &SigningKey,
    version: u64,
    targets: &[(&str, &Path, &str)],
    copy_images: bool,
) {
    let layout = RepoLayout::new(dir);
    std::fs::create_dir_all(layout.metadata_dir()).unwrap();
    #[allow(clippy::disallowed_methods)] // a test's expiry, a month ahead of the real clock
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires =
        DateTime::<Utc>::from_timestamp(i64::try_from(now).unwrap() + 30 * 86_400, 0).unwrap();
    let mut meta = Targets::new(version, expires);
    for (name, image, release) in targets {
        let file = target_file(image, release);
        if copy_images {
            let dest = layout.target_path(&TargetName::new(name).unwrap(), file.sha256().unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(image, dest).unwrap();
        }
        meta.targets.insert(name.to_string(), file);
    }
    std::fs::write(
        layout
            .metadata_dir()
            .join(format!("{version}.targets.json")),
        sign_role(&meta, &[key]).unwrap(),
    )
    .unwrap();
}

#[test]
fn ota_keys_repository_is_refused_by_a_dev_server_with_another_root() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let pass = work.path().join("pass.txt");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let image = work.path().join("fw-2.bin");
    write_image(&image, 300_000);
    let repo = work.path().join("repo");
    let keys_dir = work.path().join("keys");
    let ota_keys = |args: &[&str]| {
        let out = std::process::Command::new(workspace_bin("ota-keys", "ota-keys"))
            .env("OTA_KEYS_INSECURE_FAST_KDF", "1")
            .env_remove("OTA_KEY_PASSPHRASE")
            .arg("--repo")
            .arg(&repo)
            .arg("--keys-dir")
            .arg(&keys_dir)
            .arg("--passphrase-file")
            .arg(&pass)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ota-keys {args:?}: {out:?}");
    };
    ota_keys(&["init"]);
    ota_keys(&[
        "add-target",
        image.to_str().unwrap(),
        "--name",
        "fw-2.bin",
        "--version",
        "2.0.0",
        "--hardware-id",
        "board",
    ]);

    let args = ["publish", "--signed-targets", repo.to_str().unwrap()];
    let out = server.ota().args(args).output().unwrap();
    let stderr = expect_fail(&args, &out, 1);
    assert!(
        stderr.contains("does not trust this repository's targets keys"),
        "{stderr}"
    );
    assert!(stderr.contains("Nothing was uploaded"), "{stderr}");
    assert!(!stderr.contains("uploading"), "{stderr}");

    // And indeed nothing was: the audit log holds no upload or publish.
    let audit: Value = serde_json::from_str(&server.ok(&["audit", "--json"])).unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        !actions.contains(&"upload") && !actions.contains(&"publish"),
        "{actions:?}"
    );

    // A directory that is not a repository is refused locally.
    let args = ["publish", "--signed-targets", work.path().to_str().unwrap()];
    let out = server.ota().args(args).output().unwrap();
    let stderr = expect_fail(&args, &out, 1);
    assert!(stderr.contains("N.targets.json"), "{stderr}");
}

#[test]
fn signed_targets_upload_publish_repeat_and_conflict() {
    let server = Server::start();
    let key = dev_targets_key(&server);
    let live = server_targets_version(&server);
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("fw-3.bin");
    write_image(&image, 700_001);

    // v+1: one image, present in the repository: uploaded, then the metadata published.
    let repo = work.path().join("repo");
    write_repo(
        &repo,
        &key,
        live + 1,
        &[("fw-3.bin", &image, "3.0.0")],
        true,
    );
    let args = ["publish", "--signed-targets", repo.to_str().unwrap()];
    let out = server.ota().args(args).output().unwrap();
    let stdout = expect_ok(&args, &out);
    assert!(
        stdout.contains(&format!("targets v{}", live + 1)),
        "{stdout}"
    );
    assert!(stdout.contains("1 image(s) uploaded"), "{stdout}");
    let releases = server.ok(&["releases", "list"]);
    assert!(releases.contains("fw-3.bin  3.0.0"), "{releases}");

    // The same publish again: recognised, nothing sent.
    let out = server.ota().args(args).output().unwrap();
    let stdout = expect_ok(&args, &out);
    assert!(stdout.contains("already published"), "{stdout}");

    // v+2 lists a second name for the same image, absent locally: the server has the
    // bytes, so the publish goes through with a note.
    write_repo(
        &repo,
        &key,
        live + 2,
        &[
            ("fw-3.bin", &image, "3.0.0"),
            ("fw-3-copy.bin", &image, "3.0.1"),
        ],
        false,
    );
    let out = server.ota().args(args).output().unwrap();
    let stdout = expect_ok(&args, &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(&format!("targets v{}", live + 2)),
        "{stdout}"
    );
    assert!(stderr.contains("fw-3-copy.bin is not under"), "{stderr}");

    // Someone else's v+2 with other contents: another publish landed first.
    let other = work.path().join("other");
    let other_image = work.path().join("fw-4.bin");
    write_image(&other_image, 1000);
    write_repo(
        &other,
        &key,
        live + 2,
        &[("fw-4.bin", &other_image, "4.0.0")],
        true,
    );
    let args = ["publish", "--signed-targets", other.to_str().unwrap()];
    let out = server.ota().args(args).output().unwrap();
    let stderr = expect_fail(&args, &out, EXIT_CONFLICT);
    assert!(stderr.contains("another publish landed first"), "{stderr}");
    assert!(!stderr.contains("uploading"), "{stderr}");

    // An image whose bytes differ from what the metadata lists is never sent.
    let tampered = work.path().join("tampered");
    write_repo(
        &tampered,
        &key,
        live + 3,
        &[("fw-5.bin", &other_image, "5.0.0")],
        true,
    );
    let file = target_file(&other_image, "5.0.0");
    let copy = RepoLayout::new(&tampered).target_path(
        &TargetName::new("fw-5.bin").unwrap(),
        file.sha256().unwrap(),
    );
    std::fs::write(&copy, b"short").unwrap();
    let args = ["publish", "--signed-targets", tampered.to_str().unwrap()];
    let out = server.ota().args(args).output().unwrap();
    let stderr = expect_fail(&args, &out, 1);
    assert!(stderr.contains("does not match"), "{stderr}");
}
