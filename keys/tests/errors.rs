//! Failures exit non-zero and say what went wrong: wrong passphrase, unknown key id,
//! malformed file, expired metadata, threshold not met.

mod support;

use support::Workspace;

fn ready() -> Workspace {
    let ws = Workspace::new();
    ws.ok(&["init"]);
    ws.write("fw.bin", b"image");
    ws
}

#[test]
fn wrong_passphrase() {
    let ws = ready();
    ws.write("wrong.txt", b"not the passphrase\n");
    let err = ws.fail_with(
        "wrong.txt",
        support::NOW,
        &[
            "add-target",
            "fw.bin",
            "--version",
            "1.0.0",
            "--hardware-id",
            "a",
        ],
    );
    assert!(err.starts_with("error: cannot decrypt key"), "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(
        !err.contains("not the passphrase"),
        "the passphrase leaked: {err}"
    );
    // Nothing was written.
    assert!(!ws.path("repo/metadata/2.targets.json").exists());
    let err = ws.fail_with("missing.txt", support::NOW, &["refresh", "--force"]);
    assert!(err.contains("read passphrase file missing.txt"), "{err}");
}

#[test]
fn unknown_key_id() {
    let ws = ready();
    let err = ws.fail(&[
        "add-target",
        "fw.bin",
        "--version",
        "1.0.0",
        "--hardware-id",
        "a",
        "--key",
        "deadbeefdeadbeef",
    ]);
    assert!(err.contains("unknown key id deadbeefdeadbeef"), "{err}");
}

#[test]
fn malformed_file() {
    let ws = ready();
    ws.write("repo/metadata/1.targets.json", b"{ not json");
    let err = ws.fail(&[
        "add-target",
        "fw.bin",
        "--version",
        "1.0.0",
        "--hardware-id",
        "a",
    ]);
    assert!(
        err.contains("malformed") && err.contains("1.targets.json"),
        "{err}"
    );
    ws.write("repo/metadata/timestamp.json", b"[]");
    let err = ws.fail(&["verify"]);
    assert!(
        err.contains("malformed") && err.contains("timestamp.json"),
        "{err}"
    );
    ws.write("keys/root-broken.key.json", b"{}");
    let err = ws.fail(&["list-keys"]);
    assert!(
        err.contains("malformed key file") && err.contains("root-broken.key.json"),
        "{err}"
    );
}

#[test]
fn expired_metadata() {
    let ws = ready();
    let err = ws.fail_with(support::PASS, "2031-06-01T00:00:00Z", &["verify"]);
    assert!(
        err.contains("root metadata expired at 2031-01-01T00:00:00Z"),
        "{err}"
    );
    // Refreshing the online roles fixes a stale timestamp and snapshot.
    let later = "2030-01-20T00:00:00Z";
    ws.fail_with(support::PASS, later, &["verify"]);
    let out = ws.ok_at(later, &["refresh"]);
    assert!(
        out.contains("snapshot v2") && out.contains("timestamp v2"),
        "{out}"
    );
    ws.ok_at(later, &["verify"]);
}

#[test]
fn threshold_not_met() {
    let ws = Workspace::new();
    ws.ok(&["init", "--root-keys", "2", "--root-threshold", "2"]);
    let root = ws.key_ids("root");
    ws.ok(&["rotate-root", "--key", &root[0]]);
    let err = ws.fail(&["verify"]);
    assert!(
        err.contains(
            "root threshold not met for metadata/2.root.json: 1 valid signature(s), 2 required"
        ),
        "{err}"
    );
    // A second unfinished root cannot be stacked on it.
    let err = ws.fail(&["rotate-root"]);
    assert!(err.contains("threshold not met"), "{err}");
}
