//! A new image that boots but fails the health gate is rolled back: the agent abandons
//! slot B, the next boot runs A again, the server gets a `health_failure` anomaly and a
//! rolled-back report, and the anti-rollback floor does not move.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use agent_harness::{image, DeviceOptions, Lab};
use serde_json::Value;

#[tokio::test]
async fn a_failed_health_gate_rolls_back_to_slot_a() {
    let lab = Lab::start().await;
    let opts = DeviceOptions {
        health_commands: vec![vec!["false".into()]],
        ..DeviceOptions::default()
    };
    let dev = lab.enrolled_device("health-1", opts).await;
    let sha = lab
        .publish("fw-2.0.0.img", image("fw 2.0.0", 1024 * 1024), "2.0.0")
        .await;

    dev.once().expect("reboot_requested");
    assert_eq!(dev.simulate_boot(), "B");
    let run = dev.once();
    let out = run.expect("rolled_back");
    assert_eq!(out["reboot"], true, "{run}");
    assert!(
        out["reason"].as_str().unwrap().contains("false"),
        "the reason names the failed check: {run}"
    );

    let status = dev.status_json();
    assert_eq!(status["default_slot"], "A", "{status}");
    assert_eq!(status["trying"], Value::Null, "{status}");
    assert_eq!(status["pending"], Value::Null, "{status}");
    assert_eq!(
        status["highest_committed"],
        Value::Null,
        "floor moved: {status}"
    );
    assert_eq!(
        status["booted_slot"], "B",
        "no reboot has happened yet: {status}"
    );

    // No reboot command is configured, so the agent runs again on the abandoned B: slot A
    // is the fallback the next boot needs, and must not be touched (it once was: the
    // "inactive" slot A got the failed image and became the default with no health gate).
    let run = dev.once();
    let out = run.expect("rolled_back");
    assert_eq!(out["reboot"], true, "the reboot is still needed: {run}");
    assert_eq!(
        dev.slot_sha256("A"),
        dev.factory_sha256,
        "slot A overwritten"
    );
    let status = dev.status_json();
    assert_eq!(status["pending"], Value::Null, "{status}");
    assert_eq!(status["trying"], Value::Null, "{status}");
    assert_eq!(status["default_slot"], "A", "{status}");

    assert_eq!(dev.simulate_boot(), "A", "the next boot runs the old slot");
    dev.assert_boots_verified(&sha);
    assert_eq!(dev.status_json()["booted_slot"], "A");

    let anomalies = lab.anomaly_kinds(&dev.id).await;
    assert!(
        anomalies.iter().any(|k| k == "health_failure"),
        "server anomalies: {anomalies:?}"
    );
    let states = lab.status_states(&dev.id).await;
    assert_eq!(
        states.first().map(String::as_str),
        Some("rolled_back"),
        "newest status report: {states:?}"
    );
    let oplog = dev.oplog();
    assert!(
        oplog
            .iter()
            .any(|r| r["kind"] == "rollback" && r["detail"]["reason"] == "health_failure"),
        "no rollback record in the oplog"
    );
    assert!(
        !oplog.iter().any(|r| r["kind"] == "commit"),
        "committed anyway"
    );

    // Back on A, the release that failed here is not installed again (no install →
    // reboot → rollback loop); a fixed release would have another hash.
    let run = dev.once();
    run.expect("up_to_date");
    let status = dev.status_json();
    assert_eq!(
        status["pending"],
        Value::Null,
        "re-installing the failed image: {status}"
    );
    assert_eq!(status["trying"], Value::Null, "{status}");
}
