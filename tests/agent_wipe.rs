//! `ota-agent wipe --yes` on a device leaving service: its identity, state, logs, queues and
//! cached metadata are erased, the slots keep their images (it still boots), and the agent
//! then refuses to run for want of an identity instead of doing anything half-way.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use agent_harness::{image, DeviceOptions, Lab};

#[tokio::test]
async fn wipe_erases_identity_and_data_but_not_the_slots() {
    let lab = Lab::start().await;
    let dev = lab
        .enrolled_device("wipe-1", DeviceOptions::default())
        .await;
    let sha = lab
        .publish("fw-2.0.0.img", image("fw 2.0.0", 512 * 1024), "2.0.0")
        .await;
    dev.run_until_committed(6);
    dev.once().expect("up_to_date");

    let data = &dev.data_dir;
    let erased = [
        dev.key.clone(),
        dev.cert.clone(),
        data.join("state.json"),
        data.join("oplog.jsonl"),
        data.join("oplog.uploaded"),
        data.join("anomalies"),
        data.join("outbox"),
        data.join("metadata"),
    ];
    for p in &erased {
        assert!(p.exists(), "{} should exist before the wipe", p.display());
    }
    let (a, b) = (dev.slot_sha256("A"), dev.slot_sha256("B"));
    assert_eq!(b, sha);

    // Without --yes nothing happens.
    let run = dev.command(&["wipe"], &[]);
    assert_ne!(run.code, Some(0), "wipe without --yes: {run}");
    assert!(dev.key.exists() && data.join("state.json").exists());

    let run = dev.wipe();
    assert_eq!(run.code, Some(0), "wipe --yes: {run}");
    for p in &erased {
        assert!(!p.exists(), "{} survived the wipe: {run}", p.display());
        assert!(
            run.stdout.contains(&format!("erased {}", p.display())),
            "{} not reported: {run}",
            p.display()
        );
    }
    assert!(
        !data.join("state.json.bak").exists(),
        "state backup survived"
    );
    assert_eq!(dev.slot_sha256("A"), a, "slot A touched");
    assert_eq!(dev.slot_sha256("B"), b, "slot B touched");
    assert_eq!(
        dev.simulate_boot(),
        "B",
        "the device still boots its committed slot"
    );

    // No identity: a clear error naming the missing file, no outcome, no panic.
    let run = dev.once();
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.outcome.is_null(), "{run}");
    assert!(!run.stderr.contains("panicked"), "{run}");
    assert!(
        run.stderr.contains("error:") && run.stderr.contains(&dev.cert.display().to_string()),
        "the error should name the missing certificate: {run}"
    );
    assert!(!dev.key.exists(), "the agent made itself a new key");
}
