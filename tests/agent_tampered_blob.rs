//! An image altered on the server after signing (one flipped byte in the blob store) is
//! refused by the agent's streaming hash check: nothing is switched, the bootloader is
//! not asked to try anything, and the server gets the anomaly.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use std::io::{Read, Seek, SeekFrom, Write};

use agent_harness::{image, DeviceOptions, Lab};
use serde_json::Value;

#[tokio::test]
async fn a_tampered_blob_is_refused_and_nothing_is_switched() {
    let lab = Lab::start().await;
    let dev = lab
        .enrolled_device("tamper-1", DeviceOptions::default())
        .await;
    let img = image("fw 2.0.0", 1024 * 1024 + 7);
    let sha = lab.publish("fw-2.0.0.img", img.clone(), "2.0.0").await;

    // Flip one byte in the middle of the stored blob (the signed metadata is untouched).
    let blob = lab.server.blobs_dir().join(&sha);
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&blob)
        .unwrap();
    let at = img.len() as u64 / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let served = lab.server.download_target("fw-2.0.0.img", &sha).await;
    assert_eq!(served.len(), img.len());
    assert_ne!(served, img, "the server must serve the tampered bytes");

    let run = dev.once();
    let out = run.expect("failed");
    assert_eq!(out["kind"], "hash_mismatch", "{run}");
    assert_eq!(run.code, Some(2), "failed exits 2: {run}");
    assert!(!run.stderr.contains("panicked"), "{run}");

    let status = dev.status_json();
    assert_eq!(
        status["trying"],
        Value::Null,
        "bootloader asked to try: {status}"
    );
    assert_eq!(status["default_slot"], "A", "{status}");
    assert_eq!(status["pending"], Value::Null, "{status}");
    assert_eq!(status["highest_committed"], Value::Null, "{status}");
    assert_eq!(dev.simulate_boot(), "A", "the next boot still runs A");
    assert!(
        !dev.oplog().iter().any(|r| r["kind"] == "install"),
        "an install was recorded"
    );

    let anomalies = lab.anomaly_kinds(&dev.id).await;
    assert!(
        anomalies.iter().any(|k| k == "hash_mismatch"),
        "server anomalies: {anomalies:?}"
    );
    let states = lab.status_states(&dev.id).await;
    assert_eq!(
        states.first().map(String::as_str),
        Some("failed"),
        "{states:?}"
    );
}
