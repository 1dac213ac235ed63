//! A new image that never comes up (the agent never runs on it): the bootloader's try
//! counter brings slot A back after `tries` boots, and the agent, running on A again,
//! reports the rollback as a `boot_failure`.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use agent_harness::{image, DeviceOptions, Lab};
use serde_json::Value;

#[tokio::test]
async fn an_image_that_never_comes_up_falls_back_after_its_tries() {
    let lab = Lab::start().await;
    let opts = DeviceOptions::default();
    let tries = opts.tries;
    let dev = lab.enrolled_device("bootfail-1", opts).await;
    let sha = lab
        .publish("fw-2.0.0.img", image("fw 2.0.0", 1024 * 1024), "2.0.0")
        .await;
    dev.once().expect("reboot_requested");

    // Power-on after power-on without the agent ever running on B.
    let booted: Vec<String> = (0..=tries).map(|_| dev.simulate_boot()).collect();
    let mut expected = vec!["B".to_string(); tries as usize];
    expected.push("A".into());
    assert_eq!(booted, expected, "B gets {tries} tries, then A");
    dev.assert_boots_verified(&sha);

    let run = dev.once();
    let out = run.expect("rolled_back");
    assert_eq!(out["reboot"], false, "already running A: {run}");
    assert!(
        out["reason"].as_str().unwrap().contains("did not come up"),
        "boot-failure reason: {run}"
    );
    let oplog = dev.oplog();
    assert!(
        oplog
            .iter()
            .any(|r| r["kind"] == "rollback" && r["detail"]["reason"] == "boot_failure"),
        "no boot_failure rollback record in the oplog"
    );

    let status = dev.status_json();
    assert_eq!(status["booted_slot"], "A", "{status}");
    assert_eq!(status["default_slot"], "A", "{status}");
    assert_eq!(status["trying"], Value::Null, "try cleared: {status}");
    assert_eq!(status["pending"], Value::Null, "{status}");
    assert_eq!(status["highest_committed"], Value::Null, "{status}");
    assert_eq!(dev.simulate_boot(), "A", "A stays");

    let anomalies = lab.anomaly_kinds(&dev.id).await;
    assert!(
        anomalies.iter().any(|k| k == "boot_failure"),
        "server anomalies: {anomalies:?}"
    );
    let states = lab.status_states(&dev.id).await;
    assert_eq!(
        states.first().map(String::as_str),
        Some("rolled_back"),
        "{states:?}"
    );
}
