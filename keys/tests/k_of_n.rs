//! k-of-n targets: one signature is not enough; a second holder's `sign` completes it.

mod support;

use support::Workspace;

#[test]
fn targets_with_threshold_two_verify_after_the_second_signature() {
    let ws = Workspace::new();
    ws.ok(&["init", "--targets-keys", "2", "--targets-threshold", "2"]);
    let targets = ws.key_ids("targets");
    ws.write("fw.bin", b"image");
    let out = ws.ok(&[
        "add-target",
        "fw.bin",
        "--version",
        "2.0.0",
        "--hardware-id",
        "a",
        "--key",
        &targets[0],
    ]);
    assert!(
        out.contains("signatures 1/2 targets keys of root v1"),
        "{out}"
    );
    assert!(
        out.contains("ota-keys sign metadata/2.targets.json"),
        "{out}"
    );

    let err = ws.fail(&["verify"]);
    assert!(
        err.contains("targets threshold not met for metadata/2.targets.json: 1 valid signature(s), 2 required"),
        "{err}"
    );

    // A key of another role may not sign targets.
    let snapshot = ws.key_ids("snapshot");
    let err = ws.fail(&[
        "sign",
        "repo/metadata/2.targets.json",
        "--key",
        &snapshot[0],
    ]);
    assert!(err.contains("not authorised"), "{err}");
    // Signing again with the same key does not count twice.
    ws.ok(&["sign", "repo/metadata/2.targets.json", "--key", &targets[0]]);
    ws.fail(&["verify"]);

    let out = ws.ok(&["sign", "repo/metadata/2.targets.json", "--key", &targets[1]]);
    assert!(out.contains("signatures 2/2"), "{out}");
    let report = ws.ok(&["verify"]);
    assert!(
        report.contains("targets    v2") && report.contains("signatures 2/2  1 target(s)"),
        "{report}"
    );
}
