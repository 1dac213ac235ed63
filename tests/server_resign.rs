//! The server re-signs its online metadata before it expires: with a 4 s timestamp and an
//! 8 s snapshot, the versions climb by themselves and every poll over ~10 s sees metadata
//! that is still valid and verifies with the full TUF client workflow.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod harness;

use std::time::{Duration, Instant};

use harness::ServerProcess;
use ota_common::metadata::{Snapshot, Timestamp};
use ota_common::signed::RawSigned;

const CONFIG: &str = "[repo_policy]\ntimestamp_lifetime_secs = 4\nsnapshot_lifetime_secs = 8\n";

/// How long the test watches, and how often it looks.
const WATCH: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_and_snapshot_are_resigned_before_they_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("data"), Some(CONFIG));
    server.wait_healthy().await;
    let root = server.metadata("1.root.json").await.unwrap();

    let first_ts = timestamp(&server).await;
    let first_snap = snapshot(&server).await;
    assert!(
        first_ts.expires - harness::now() <= chrono::Duration::seconds(4),
        "the configured 4 s lifetime is in force: expires {}",
        first_ts.expires
    );

    let mut ts_versions = vec![first_ts.version];
    let mut snap_versions = vec![first_snap.version];
    let mut polls = 0u32;
    let started = Instant::now();
    while started.elapsed() < WATCH {
        tokio::time::sleep(POLL).await;
        polls += 1;
        let now = harness::now();
        let ts = timestamp(&server).await;
        assert!(
            ts.expires > now,
            "poll {polls}: served timestamp v{} expired at {} (now {now})",
            ts.version,
            ts.expires
        );
        let snap = snapshot(&server).await;
        assert!(
            snap.expires > now,
            "poll {polls}: served snapshot v{} expired at {} (now {now})",
            snap.version,
            snap.expires
        );
        // Versions never go back.
        assert!(ts.version >= *ts_versions.last().unwrap());
        assert!(snap.version >= *snap_versions.last().unwrap());
        if ts.version != *ts_versions.last().unwrap() {
            ts_versions.push(ts.version);
        }
        if snap.version != *snap_versions.last().unwrap() {
            snap_versions.push(snap.version);
        }
        // The whole chain verifies as a device would see it now.
        let trusted = server
            .tuf_refresh(&root)
            .await
            .unwrap_or_else(|e| panic!("poll {polls}: TUF refresh failed: {e}"));
        assert!(trusted.timestamp().version >= ts.version);
        let (status, health) = server.healthz().await;
        assert_eq!(status, 200, "poll {polls}: {health}");
    }

    // A 4 s timestamp re-signed at half its life is renewed about every 2 s: over 10 s it
    // must have been renewed several times, and the 8 s snapshot at least once.
    assert!(
        ts_versions.len() >= 3,
        "timestamp versions seen over {WATCH:?}: {ts_versions:?}"
    );
    assert!(
        snap_versions.len() >= 2,
        "snapshot versions seen over {WATCH:?}: {snap_versions:?}"
    );
    let log = server.log();
    assert!(
        log.contains("re-signed metadata before expiry"),
        "the server logs its re-signing:\n{log}"
    );
}

async fn timestamp(server: &ServerProcess) -> Timestamp {
    let bytes = server
        .metadata("timestamp.json")
        .await
        .expect("timestamp.json");
    RawSigned::parse(&bytes).unwrap().decode().unwrap()
}

async fn snapshot(server: &ServerProcess) -> Snapshot {
    let bytes = server
        .metadata("snapshot.json")
        .await
        .expect("snapshot.json");
    RawSigned::parse(&bytes).unwrap().decode().unwrap()
}
