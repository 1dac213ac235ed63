//! `add-target` and `remove-target`: release images listed, hashed, signed and verified.

mod support;

use std::fs;

use sha2::{Digest, Sha256};
use support::Workspace;

#[test]
fn added_image_is_listed_with_release_fields_and_verifies() {
    let ws = Workspace::new();
    ws.ok(&["init"]);
    ws.write("fw.bin", b"firmware image v1.4");
    let out = ws.ok(&[
        "add-target",
        "fw.bin",
        "--name",
        "boards/a/fw.bin",
        "--version",
        "1.4.0",
        "--hardware-id",
        "board-a",
        "--hardware-id",
        "board-b",
        "--support-until",
        "2032-06-30",
        "--custom",
        "channel=beta",
        "--custom",
        "build=42",
    ]);
    assert!(out.contains("added boards/a/fw.bin"), "{out}");
    let targets = ws.metadata("2.targets.json");
    let t = &targets["signed"]["targets"]["boards/a/fw.bin"];
    let sha = hex::encode(Sha256::digest(b"firmware image v1.4"));
    assert_eq!(t["length"], 19);
    assert_eq!(t["hashes"]["sha256"], sha.as_str());
    assert!(t["hashes"]["sha512"].is_string());
    assert_eq!(t["custom"]["version"], "1.4.0");
    assert_eq!(
        t["custom"]["hardware_ids"],
        serde_json::json!(["board-a", "board-b"])
    );
    assert_eq!(t["custom"]["support_until"], "2032-06-30T00:00:00Z");
    assert_eq!(t["custom"]["channel"], "beta");
    assert_eq!(t["custom"]["build"], 42);
    assert_eq!(
        fs::read(ws.path(&format!("repo/targets/boards/a/{sha}.fw.bin"))).unwrap(),
        b"firmware image v1.4"
    );
    assert_eq!(
        ws.metadata("2.snapshot.json")["signed"]["meta"]["targets.json"]["version"],
        2
    );
    assert_eq!(
        ws.metadata("timestamp.json")["signed"]["meta"]["snapshot.json"]["version"],
        2
    );

    let report = ws.ok(&["verify"]);
    assert!(
        report.contains("1 target(s)") && report.contains("images: 1 checked"),
        "{report}"
    );

    // An altered image is caught by verify, naming the target.
    fs::write(
        ws.path(&format!("repo/targets/boards/a/{sha}.fw.bin")),
        b"firmware image v1.5",
    )
    .unwrap();
    let err = ws.fail(&["verify"]);
    assert!(
        err.contains("target boards/a/fw.bin") && err.contains("mismatch"),
        "{err}"
    );
    ws.ok(&["verify", "--skip-images"]);

    ws.ok(&["remove-target", "boards/a/fw.bin"]);
    let report = ws.ok(&["verify"]);
    assert!(
        report.contains("targets    v3") && report.contains("0 target(s)"),
        "{report}"
    );
}

#[test]
fn bad_targets_are_refused() {
    let ws = Workspace::new();
    ws.ok(&["init"]);
    ws.write("fw.bin", b"x");
    let err = ws.fail(&[
        "add-target",
        "fw.bin",
        "--version",
        "1.0",
        "--hardware-id",
        "a",
    ]);
    assert!(err.contains("invalid release version"), "{err}");
    let err = ws.fail(&["add-target", "fw.bin", "--version", "1.0.0"]);
    assert!(err.contains("--hardware-id"), "{err}");
    let err = ws.fail(&[
        "add-target",
        "fw.bin",
        "--name",
        "../up",
        "--version",
        "1.0.0",
        "--hardware-id",
        "a",
    ]);
    assert!(err.contains("unsafe target name"), "{err}");
    ws.ok(&[
        "add-target",
        "fw.bin",
        "--version",
        "1.0.0",
        "--hardware-id",
        "a",
    ]);
    let err = ws.fail(&[
        "add-target",
        "fw.bin",
        "--version",
        "1.0.1",
        "--hardware-id",
        "a",
    ]);
    assert!(err.contains("already listed"), "{err}");
    let err = ws.fail(&["remove-target", "nope.bin"]);
    assert!(err.contains("not listed"), "{err}");
}

#[test]
fn without_online_keys_targets_wait_for_the_server() {
    let ws = Workspace::new();
    ws.ok(&["init"]);
    for label in ["snapshot", "timestamp"] {
        for id in ws.key_ids(label) {
            fs::remove_file(ws.path(&format!("keys/{label}-{}.key.json", &id[..16]))).unwrap();
        }
    }
    ws.write("fw.bin", b"x");
    // The passphrase from the environment works as well as a file.
    let out = ws
        .bare()
        .env("OTA_KEY_PASSPHRASE", "correct horse battery staple")
        .args([
            "--now",
            support::NOW,
            "add-target",
            "fw.bin",
            "--version",
            "1.0.0",
            "--hardware-id",
            "a",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("no snapshot key"), "{stdout}");
    let report = ws.ok(&["verify"]);
    assert!(
        report.contains("metadata/2.targets.json is newer"),
        "{report}"
    );
    assert!(report.contains("targets    v1"), "{report}");
}

#[test]
fn zstd_form_is_listed_in_custom_and_written_beside_the_image() {
    let ws = Workspace::new();
    ws.ok(&["init"]);
    let image: Vec<u8> = (0..500_000u32).map(|i| (i % 13) as u8).collect();
    ws.write("fw.bin", &image);
    let out = ws.ok(&[
        "add-target",
        "fw.bin",
        "--name",
        "boards/a/fw.bin",
        "--version",
        "1.0.0",
        "--hardware-id",
        "a",
        "--zstd",
        "--zstd-level",
        "5",
    ]);
    assert!(out.contains("zstd form"), "{out}");
    let t = &ws.metadata("2.targets.json")["signed"]["targets"]["boards/a/fw.bin"];
    assert_eq!(t["length"], 500_000, "the TUF length stays the image's");
    let form = &t["custom"]["zstd"];
    let zsha = form["sha256"].as_str().unwrap();
    let zst = fs::read(ws.path(&format!("repo/targets/boards/a/{zsha}.fw.bin.zst"))).unwrap();
    assert_eq!(form["length"], zst.len() as u64);
    assert_eq!(hex::encode(Sha256::digest(&zst)), zsha);
    assert!(zst.len() < image.len() / 10, "{}", zst.len());
    let report = ws.ok(&["verify"]);
    assert!(report.contains("targets    v2"), "{report}");

    // The level is bounded, and needs --zstd.
    let err = ws.fail(&[
        "add-target",
        "fw.bin",
        "--name",
        "b",
        "--version",
        "1.0.0",
        "--hardware-id",
        "a",
        "--zstd",
        "--zstd-level",
        "20",
    ]);
    assert!(err.contains("20"), "{err}");
    let err = ws.fail(&[
        "add-target",
        "fw.bin",
        "--name",
        "b",
        "--version",
        "1.0.0",
        "--hardware-id",
        "a",
        "--zstd-level",
        "3",
    ]);
    assert!(err.contains("--zstd"), "{err}");
}
