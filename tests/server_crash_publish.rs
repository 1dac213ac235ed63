//! A crash (SIGKILL) during an upload or a publish loses nothing acknowledged and exposes
//! nothing half-done: after a restart every release is either fully listed, its target
//! downloadable with the signed hash and verifiable by a TUF client, or absent; unfinished
//! uploads leave no temporary file behind (the startup sweep).

#![allow(clippy::unwrap_used)] // tests may unwrap

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::{raw_status, sha256_hex, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The slow upload's full size; it is killed long before the end.
const BIG_UPLOAD: usize = 64 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;
/// Kill once the server has this much of the upload in its temporary file.
const KILL_AFTER: u64 = 8 * 1024 * 1024;

/// Delays in microseconds between sending a publish request and the kill: 0 is "right
/// after it is sent"; the others move the kill across the server's read, sign, commit and
/// answer (a whole publish takes about a millisecond here). They vary where the race
/// lands; no assertion depends on them.
const KILL_DELAYS_US: [u64; 10] = [0, 0, 100, 200, 350, 500, 700, 1000, 2000, 10_000];

struct Release {
    name: String,
    sha256: String,
    image: Vec<u8>,
    acknowledged: bool,
}

fn temp_files(blobs: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(blobs)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), len)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Restarts after a kill and checks every invariant against what the test knows.
async fn restart_and_check(server: &mut ServerProcess, releases: &[Release], root: &[u8]) {
    server.restart();
    server.wait_healthy().await;
    // The sweep runs before the server answers, so healthz ok means it is done.
    let leftovers = temp_files(&server.blobs_dir());
    assert!(
        leftovers.is_empty(),
        "unfinished uploads left after restart (no startup sweep?): {leftovers:?}"
    );

    let listed = server.releases().await;
    for entry in &listed {
        let name = entry["name"].as_str().unwrap();
        assert!(
            releases.iter().any(|r| r.name == name),
            "unknown release listed after a crash: {entry}"
        );
    }
    let trusted = server
        .tuf_refresh(root)
        .await
        .unwrap_or_else(|e| panic!("TUF refresh after restart: {e}"));
    for r in releases {
        let entry = listed.iter().find(|e| e["name"] == r.name.as_str());
        if r.acknowledged {
            assert!(entry.is_some(), "acknowledged release {} lost", r.name);
        }
        let in_tuf = trusted.find_target(&r.name);
        let Some(entry) = entry else {
            assert!(in_tuf.is_none(), "{} is signed but not listed", r.name);
            continue;
        };
        assert_eq!(entry["sha256"], r.sha256.as_str(), "{entry}");
        assert_eq!(entry["length"], r.image.len(), "{entry}");
        let (file, _) = in_tuf.unwrap_or_else(|| panic!("{} listed but not signed", r.name));
        assert_eq!(file.sha256(), Some(r.sha256.as_str()));
        assert_eq!(file.length, r.image.len() as u64);
        let got = server.download_target(&r.name, &r.sha256).await;
        assert_eq!(sha256_hex(&got), r.sha256, "{} served other bytes", r.name);
    }

    // The audit log's hash chain survived the crashes.
    let resp = server
        .client()
        .get(server.url("/api/v1/audit/verify"))
        .bearer_auth(server.admin_token())
        .send()
        .await
        .unwrap();
    let report = harness::json_body(resp).await;
    assert_eq!(
        report["intact"], true,
        "audit chain after a crash: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_upload_or_mid_publish_is_all_or_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_dev(&tmp.path().join("data"), None);
    server.wait_healthy().await;
    let root = server.metadata("1.root.json").await.unwrap();

    let mut releases = Vec::new();
    let image = harness::pseudo_random_bytes("crash-base", 300_000);
    let sha256 = server.upload(image.clone()).await;
    server
        .publish_release("base-1.0.0.bin", &sha256, "1.0.0", &["board-c"])
        .await;
    releases.push(Release {
        name: "base-1.0.0.bin".into(),
        sha256,
        image,
        acknowledged: true,
    });

    // 1. SIGKILL in the middle of a large streamed upload.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (Ok::<_, std::io::Error>(c), rx))
    });
    let upload = tokio::spawn(
        server
            .client()
            .put(server.url("/api/v1/blobs"))
            .bearer_auth(server.admin_token())
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    let big = harness::pseudo_random_bytes("crash-big", CHUNK);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sent = 0;
    loop {
        if temp_files(&server.blobs_dir())
            .iter()
            .any(|(_, len)| *len >= KILL_AFTER)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upload never reached {KILL_AFTER} bytes on disk"
        );
        if sent < BIG_UPLOAD {
            // Blocks while the server is behind (channel of two chunks): the pace is the
            // server's, so the kill lands mid-body whatever the machine's speed.
            let _ = tokio::time::timeout(Duration::from_millis(100), tx.send(big.clone())).await;
            sent += CHUNK;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        sent < BIG_UPLOAD,
        "the kill must come before the end of the upload"
    );
    server.kill();
    drop(tx);
    let answer = upload.await.unwrap();
    assert!(
        answer.as_ref().map_or(true, |r| r.status().as_u16() != 201),
        "a killed upload cannot have been acknowledged: {answer:?}"
    );
    let left = temp_files(&server.blobs_dir());
    assert!(
        !left.is_empty(),
        "the kill must leave a temporary upload for the sweep to remove"
    );
    restart_and_check(&mut server, &releases, &root).await;

    // 2. SIGKILL right after a publish request is sent, at several points of the race.
    for (i, delay) in KILL_DELAYS_US.iter().enumerate() {
        let name = format!("race-{i}.0.0.bin");
        let image = harness::pseudo_random_bytes(&name, 100_000 + i * 7_919);
        let sha256 = server.upload(image.clone()).await;
        let body = serde_json::json!({
            "name": name, "sha256": sha256, "version": format!("{}.0.0", i + 2),
            "hardware_ids": ["board-c"],
        })
        .to_string();
        let request = format!(
            "POST /api/v1/releases HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            server.admin_token(),
            body.len()
        );
        // Handshake first, so that the request itself is the last thing before the kill.
        let mut tls = harness::tls_connect(server.addr(), server.tls_config())
            .await
            .unwrap();
        tls.write_all(request.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        if *delay > 0 {
            // A thread sleep: tokio's timer cannot wait less than a millisecond.
            std::thread::sleep(Duration::from_micros(*delay));
        }
        server.kill();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut reply)).await;
        let acknowledged = raw_status(&reply) == Some(200);
        releases.push(Release {
            name: name.clone(),
            sha256,
            image,
            acknowledged,
        });
        restart_and_check(&mut server, &releases, &root).await;
        let present = server
            .releases()
            .await
            .iter()
            .any(|e| e["name"] == name.as_str());
        eprintln!("race {i} (kill {delay} us after sending): acknowledged {acknowledged}, present {present}");
    }

    // The repository still takes new releases after all this.
    let image = harness::pseudo_random_bytes("after", 50_000);
    let sha256 = server.upload(image.clone()).await;
    server
        .publish_release("after-9.0.0.bin", &sha256, "9.0.0", &["board-c"])
        .await;
    releases.push(Release {
        name: "after-9.0.0.bin".into(),
        sha256,
        image,
        acknowledged: true,
    });
    server.kill();
    restart_and_check(&mut server, &releases, &root).await;
}
