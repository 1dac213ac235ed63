//! Two freshness rules on a device that committed 2.0.0: an older release is never
//! installed (the committed floor blocks it even when it is the only release left), and
//! metadata that expired by the device's clock is refused with an anomaly.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use agent_harness::{image, DeviceOptions, Lab};

/// Two days: past the development server's one-day timestamp lifetime.
const TWO_DAYS: &str = "172800";

#[tokio::test]
async fn the_floor_blocks_a_downgrade_and_expired_metadata_is_refused() {
    let lab = Lab::start().await;
    let dev = lab
        .enrolled_device("floor-1", DeviceOptions::default())
        .await;
    let sha2 = lab
        .publish("fw-2.0.0.img", image("fw 2.0.0", 512 * 1024), "2.0.0")
        .await;
    let runs = dev.run_until_committed(6);
    assert_eq!(runs.last().unwrap().outcome["version"], "2.0.0");
    assert_eq!(dev.status_json()["highest_committed"], "2.0.0");

    // 1.0.0 becomes the only release: without the floor the device would take it.
    lab.withdraw("fw-2.0.0.img").await;
    let sha1 = lab
        .publish("fw-1.0.0.img", image("fw 1.0.0", 512 * 1024), "1.0.0")
        .await;
    let slot_a = dev.slot_sha256("A");
    let run = dev.once();
    run.expect("up_to_date");
    assert_eq!(dev.slot_sha256("A"), slot_a, "inactive slot A untouched");
    assert_eq!(dev.slot_sha256("B"), sha2, "running slot B untouched");
    assert_ne!(slot_a, sha1);
    let status = dev.status_json();
    assert_eq!(status["highest_committed"], "2.0.0", "{status}");
    assert_eq!(status["pending"], serde_json::Value::Null, "{status}");
    assert_eq!(status["trying"], serde_json::Value::Null, "{status}");
    assert!(
        !dev.oplog()
            .iter()
            .any(|r| r["kind"] == "download_start" && r["detail"]["target"] == "fw-1.0.0.img"),
        "the older release was downloaded"
    );

    // The device's clock two days ahead: the server's timestamp (one day) has expired.
    let run = dev.once_with_env(&[("OTA_AGENT_TEST_TIME_OFFSET_SECS", TWO_DAYS)]);
    let out = run.expect("failed");
    assert_eq!(out["kind"], "expired_metadata", "{run}");
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        dev.oplog()
            .iter()
            .any(|r| r["kind"] == "anomaly" && r["detail"]["kind"] == "expired_metadata"),
        "no expired_metadata anomaly in the oplog"
    );
    let anomalies = lab.anomaly_kinds(&dev.id).await;
    assert!(
        anomalies.iter().any(|k| k == "expired_metadata"),
        "server anomalies: {anomalies:?}"
    );

    // Control: with the real clock the same metadata is fine.
    dev.once().expect("up_to_date");
    assert_eq!(dev.status_json()["highest_committed"], "2.0.0");
}
