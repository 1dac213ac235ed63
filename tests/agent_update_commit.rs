//! The happy path of the verified A/B cycle, with real processes: a published 2.0.0 is
//! installed into slot B, the simulated reboot runs it, the health gate passes and the
//! agent commits. The slot holds exactly the signed bytes, and the server sees the
//! device on 2.0.0 with a committed report and an unbroken operation-log chain.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use agent_harness::{image, DeviceOptions, Lab};

#[tokio::test]
async fn a_published_release_is_installed_booted_and_committed() {
    let lab = Lab::start().await;
    let dev = lab
        .enrolled_device("commit-1", DeviceOptions::default())
        .await;

    // Nothing published yet: nothing to do.
    dev.once().expect("up_to_date");

    let img = image("fw 2.0.0", 3 * 1024 * 1024 + 123);
    let sha = lab.publish("fw-2.0.0.img", img.clone(), "2.0.0").await;
    let slot_a_before = dev.slot_sha256("A");

    let run = dev.once();
    let out = run.expect("reboot_requested");
    assert_eq!(out["slot"], "B", "{run}");
    assert_eq!(out["target"], "fw-2.0.0.img", "{run}");
    assert_eq!(dev.slot_sha256("B"), sha, "slot B holds the signed image");
    let status = dev.status_json();
    assert_eq!(status["trying"], "B", "{status}");
    assert_eq!(
        status["highest_committed"],
        serde_json::Value::Null,
        "{status}"
    );

    assert_eq!(dev.simulate_boot(), "B");
    let run = dev.once();
    assert_eq!(run.expect("committed")["version"], "2.0.0", "{run}");

    // The device: B confirmed, floor raised, slot A untouched.
    assert_eq!(std::fs::read(&dev.slot_b).unwrap(), img, "slot B bytes");
    assert_eq!(dev.slot_sha256("A"), slot_a_before, "slot A untouched");
    dev.assert_boots_verified(&sha);
    let status = dev.status_json();
    assert_eq!(status["booted_slot"], "B", "{status}");
    assert_eq!(status["default_slot"], "B", "{status}");
    assert_eq!(status["trying"], serde_json::Value::Null, "{status}");
    assert_eq!(status["highest_committed"], "2.0.0", "{status}");
    assert_eq!(status["slots"]["b"]["version"], "2.0.0", "{status}");
    assert_eq!(status["pending"], serde_json::Value::Null, "{status}");

    // One more cycle: the poll reports the running version, nothing new to install.
    dev.once().expect("up_to_date");

    let detail = lab.device(&dev.id).await;
    assert_eq!(detail["device"]["current_version"], "2.0.0", "{detail}");
    assert_eq!(detail["device"]["active_slot"], "b", "{detail}");
    let states = lab.status_states(&dev.id).await;
    assert_eq!(
        states.first().map(String::as_str),
        Some("committed"),
        "newest status report: {states:?}"
    );
    for s in ["installed", "booted", "committed"] {
        assert!(states.iter().any(|x| x == s), "no {s} report: {states:?}");
    }

    // The server holds the whole operation log, chained.
    let oplog = dev.oplog();
    let last_seq = oplog.last().unwrap()["seq"].as_u64().unwrap();
    assert!(
        oplog.iter().any(|r| r["kind"] == "commit"),
        "no commit record"
    );
    assert_eq!(
        detail["oplog_head"]["seq"].as_u64(),
        Some(last_seq),
        "server oplog head vs agent's last record: {}",
        detail["oplog_head"]
    );
    assert_eq!(
        detail["oplog_head"]["hash"],
        oplog.last().unwrap()["hash"],
        "server oplog head hash"
    );
    let anomalies = lab.anomaly_kinds(&dev.id).await;
    assert!(
        !anomalies.iter().any(|k| k == "oplog_chain_break"),
        "chain break on the server: {anomalies:?}"
    );
    assert!(
        anomalies.is_empty(),
        "no anomaly expected on the happy path: {anomalies:?}"
    );
    assert!(
        dev.status_json()["undelivered_anomalies"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing left undelivered"
    );
}
