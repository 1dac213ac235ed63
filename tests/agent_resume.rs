//! A download cut by a power loss resumes from its last durable checkpoint (an HTTP Range
//! request) instead of starting over, and the resumed image is verified end to end.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use agent_harness::{image, DeviceOptions, Lab};

/// The agent's checkpoint interval (`CHECKPOINT_BYTES` in agent/src/cycle.rs).
const CHECKPOINT: u64 = 8 * 1024 * 1024;

#[tokio::test]
async fn a_cut_download_resumes_from_its_checkpoint_and_commits() {
    let lab = Lab::start().await;
    let dev = lab
        .enrolled_device("resume-1", DeviceOptions::default())
        .await;
    let img = image("fw 2.0.0 large", 24 * 1024 * 1024);
    let sha = lab.publish("fw-2.0.0.img", img.clone(), "2.0.0").await;

    dev.crash_at("mid_download");
    let status = dev.status_json();
    let pending = &status["pending"];
    assert_eq!(pending["phase"], "downloading", "{status}");
    let offset = pending["resume_offset"].as_u64().unwrap();
    assert!(
        (CHECKPOINT..img.len() as u64).contains(&offset),
        "durable offset after the first checkpoint: {offset}"
    );
    assert_eq!(status["trying"], serde_json::Value::Null, "{status}");
    // What the state calls durable is in the slot.
    let slot = std::fs::read(&dev.slot_b).unwrap();
    assert_eq!(
        &slot[..offset as usize],
        &img[..offset as usize],
        "checkpointed prefix"
    );

    let run = dev.once();
    run.expect("reboot_requested");
    let oplog = dev.oplog();
    let starts = oplog
        .iter()
        .filter(|r| r["kind"] == "download_start")
        .count();
    assert_eq!(starts, 1, "the download started over instead of resuming");
    let resume = oplog
        .iter()
        .find(|r| r["kind"] == "download_resume")
        .unwrap_or_else(|| panic!("no download_resume record: {oplog:?}"));
    let resumed_at = resume["detail"]["offset"].as_u64().unwrap();
    assert!(resumed_at >= CHECKPOINT, "resumed at {resumed_at}");
    assert_eq!(resumed_at, offset, "resumed where the state said");

    let runs = dev.run_until_committed(4);
    assert_eq!(runs.last().unwrap().outcome["version"], "2.0.0");
    assert_eq!(std::fs::read(&dev.slot_b).unwrap(), img, "slot B bytes");
    assert_eq!(dev.slot_sha256("B"), sha);
    dev.assert_boots_verified(&sha);
    assert_eq!(dev.status_json()["highest_committed"], "2.0.0");
}
