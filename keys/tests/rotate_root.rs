//! Root rotation 1 → 2 with 2-of-3 thresholds, completed by k-of-n signing, and key rotation.

mod support;

use support::Workspace;

#[test]
fn root_rotation_needs_two_old_and_two_new_signatures() {
    let ws = Workspace::new();
    ws.ok(&["init", "--root-keys", "3", "--root-threshold", "2"]);
    let old = ws.key_ids("root");
    ws.ok(&[
        "rotate-root",
        "--role",
        "root",
        "--remove-all",
        "--generate",
        "3",
        "--threshold",
        "2",
        "--unsigned",
    ]);
    let new: Vec<String> = ws
        .key_ids("root")
        .into_iter()
        .filter(|k| !old.contains(k))
        .collect();
    assert_eq!(new.len(), 3);
    let v2 = ws.metadata("2.root.json");
    assert_eq!(v2["signatures"].as_array().unwrap().len(), 0);
    assert_eq!(v2["signed"]["roles"]["root"]["threshold"], 2);

    let err = ws.fail(&["verify"]);
    assert!(
        err.contains("root threshold not met for metadata/2.root.json: 0 valid"),
        "{err}"
    );
    // root.json still names the last complete root.
    assert_eq!(ws.metadata("root.json")["signed"]["version"], 1);

    let out = ws.ok(&[
        "sign",
        "repo/metadata/2.root.json",
        "--key",
        &old[0],
        "--key",
        &new[0],
    ]);
    assert!(
        out.contains("1/2 root keys of root v1, 1/2 root keys of root v2"),
        "{out}"
    );
    ws.fail(&["verify"]);
    // Two new keys are not enough while the old root has only one.
    ws.ok(&["sign", "repo/metadata/2.root.json", "--key", &new[1]]);
    let err = ws.fail(&["verify"]);
    assert!(err.contains("1 valid signature(s), 2 required"), "{err}");
    let out = ws.ok(&["sign", "repo/metadata/2.root.json", "--key", &old[1][..12]]);
    assert!(
        out.contains("2/2 root keys of root v1, 2/2 root keys of root v2"),
        "{out}"
    );

    let report = ws.ok(&["verify"]);
    assert!(
        report.contains("root       v2") && report.contains("trusted root v1"),
        "{report}"
    );
    assert_eq!(
        ws.read("repo/metadata/root.json"),
        ws.read("repo/metadata/2.root.json")
    );
    // A device shipped with root v2 verifies too.
    ws.ok(&["verify", "--trusted-root", "repo/metadata/2.root.json"]);
}

#[test]
fn rotating_an_online_key_re_signs_its_role() {
    let ws = Workspace::new();
    ws.ok(&["init"]);
    let before = ws.key_ids("timestamp");
    let out = ws.ok(&["rotate-key", "timestamp"]);
    assert!(out.contains("metadata/2.root.json (root v2)"), "{out}");
    let after = ws.key_ids("timestamp");
    let fresh: Vec<&String> = after.iter().filter(|k| !before.contains(k)).collect();
    assert_eq!(fresh.len(), 1);
    let root = ws.metadata("2.root.json");
    assert_eq!(
        root["signed"]["roles"]["timestamp"]["keyids"],
        serde_json::json!([fresh[0]])
    );
    assert_eq!(
        ws.metadata("timestamp.json")["signatures"][0]["keyid"],
        fresh[0].as_str()
    );
    let report = ws.ok(&["verify"]);
    assert!(
        report.contains("root       v2") && report.contains("timestamp  v2"),
        "{report}"
    );

    let out = ws.ok(&["rotate-key", "targets"]);
    assert!(out.contains("metadata/2.targets.json"), "{out}");
    ws.ok(&["verify"]);
    let err = ws.fail(&["rotate-key", "targets", "--old", "0123456789abcdef"]);
    assert!(err.contains("unknown key id"), "{err}");
}
