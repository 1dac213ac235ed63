//! `init` makes encrypted keys and a repository that the client workflow accepts.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use support::{Workspace, NOW};

#[test]
fn init_creates_encrypted_keys_and_a_verifiable_repository() {
    let ws = Workspace::new();
    let out = ws.ok(&["init", "--root-keys", "3", "--root-threshold", "2"]);
    assert!(
        out.contains("devices must trust metadata/1.root.json"),
        "{out}"
    );
    for f in [
        "1.root.json",
        "root.json",
        "1.targets.json",
        "1.snapshot.json",
        "timestamp.json",
    ] {
        assert!(
            ws.path(&format!("repo/metadata/{f}")).is_file(),
            "{f} missing"
        );
    }
    assert_eq!(
        ws.read("repo/metadata/1.root.json"),
        ws.read("repo/metadata/root.json")
    );
    let root = ws.metadata("1.root.json");
    assert_eq!(root["signed"]["roles"]["root"]["threshold"], 2);
    assert_eq!(
        root["signed"]["roles"]["root"]["keyids"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(root["signed"]["expires"], "2031-01-01T00:00:00Z");
    assert_eq!(
        ws.metadata("timestamp.json")["signed"]["expires"],
        "2030-01-02T00:00:00Z"
    );

    assert_eq!(ws.key_ids("root").len(), 3);
    for e in fs::read_dir(ws.path("keys")).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            p.display()
        );
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["kdf"]["algorithm"], "argon2id");
        assert_eq!(v["cipher"]["algorithm"], "xchacha20poly1305");
    }

    let report = ws.ok(&["verify"]);
    for line in [
        "root       v1",
        "timestamp  v1",
        "snapshot   v1",
        "targets    v1",
        "signatures 3/2",
        "0 target(s)",
        "OK",
    ] {
        assert!(report.contains(line), "{line:?} not in\n{report}");
    }

    // Listing keys needs no passphrase.
    let out = ws.bare().args(["list-keys"]).output().unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("6 key file(s)"), "{listing}");
    assert!(
        listing.contains("root       threshold 2 of 3 key(s), 3 in this key directory"),
        "{listing}"
    );
}

#[test]
fn init_refuses_bad_thresholds_and_an_existing_repository() {
    let ws = Workspace::new();
    let err = ws.fail(&["init", "--targets-keys", "2", "--targets-threshold", "3"]);
    assert!(err.contains("targets threshold 3 with 2 key(s)"), "{err}");
    assert!(
        ws.key_ids("targets").is_empty(),
        "a refused init left keys behind"
    );
    ws.ok(&["init"]);
    let err = ws.fail(&["init"]);
    assert!(err.contains("already holds metadata"), "{err}");
}

#[test]
fn verify_uses_the_given_trusted_root_and_time() {
    let ws = Workspace::new();
    ws.ok(&["init"]);
    ws.ok(&["--repo", "other", "--keys-dir", "other-keys", "init"]);
    let err = ws.fail(&["verify", "--trusted-root", "other/metadata/1.root.json"]);
    assert!(err.contains("threshold not met"), "{err}");
    ws.ok_at("2030-01-01T23:59:59Z", &["verify"]);
    let err = ws.fail_with(support::PASS, "2030-01-02T00:00:00Z", &["verify"]);
    assert!(
        err.contains("timestamp metadata expired at 2030-01-02T00:00:00Z"),
        "{err}"
    );
    assert_ne!(NOW, "2030-01-02T00:00:00Z");
}
