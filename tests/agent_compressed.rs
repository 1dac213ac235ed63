//! A release with a zstd form, against the real server and agent processes: the agent
//! downloads the compressed file, decodes it into the slot and commits the image the TUF
//! metadata signs; a power cut mid-download resumes at a frame boundary (an HTTP Range into
//! the compressed file, the image prefix re-hashed from the slot); an agent configured
//! without compression takes the plain image; a corrupted compressed file is refused with
//! nothing switched.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use std::io::{Seek, SeekFrom, Write};

use agent_harness::{DeviceOptions, Lab};
use serde_json::Value;

/// Image bytes per zstd frame (`ota_keys::compress::FRAME_INPUT_BYTES`).
const FRAME: u64 = 8 * 1024 * 1024;

/// An image that compresses about 2:1: each 4 KiB block is 2 KiB of noise said twice, so
/// that the compressed file is several checkpoints long.
fn half_compressible(seed: &str, len: usize) -> Vec<u8> {
    let noise = harness::pseudo_random_bytes(seed, len / 2 + 2048);
    let mut out = Vec::with_capacity(len + 4096);
    for half in noise.chunks(2048) {
        out.extend_from_slice(half);
        out.extend_from_slice(half);
        if out.len() >= len {
            break;
        }
    }
    out.truncate(len);
    out
}

fn first<'a>(oplog: &'a [Value], kind: &str) -> &'a Value {
    oplog
        .iter()
        .find(|r| r["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} record: {oplog:?}"))
}

#[tokio::test]
async fn a_compressed_release_installs_and_a_cut_download_resumes_at_a_frame() {
    let lab = Lab::start().await;
    let dev = lab
        .enrolled_device("zstd-1", DeviceOptions::default())
        .await;
    let img = half_compressible("fw 2.0.0 zstd", 40 * 1024 * 1024 + 123);
    let (sha, zst) = lab
        .publish_compressed("fw-2.0.0.img", img.clone(), "2.0.0", 3)
        .await;
    assert!(
        zst.len() < img.len() * 3 / 4 && zst.len() as u64 > 2 * FRAME,
        "compressed {} of {}",
        zst.len(),
        img.len()
    );

    // Cut after the first durable checkpoint (8 MiB of compressed bytes received).
    dev.crash_at("mid_download");
    let status = dev.status_json();
    let pending = &status["pending"];
    assert_eq!(pending["phase"], "downloading", "{status}");
    let image_offset = pending["resume_offset"].as_u64().unwrap();
    let source_offset = pending["compressed"]["resume_offset"].as_u64().unwrap();
    assert!(
        image_offset > 0 && image_offset % FRAME == 0 && image_offset < img.len() as u64,
        "resume point is a frame boundary inside the image: {status}"
    );
    assert!(
        source_offset > 0 && source_offset < zst.len() as u64,
        "{status}"
    );
    // The compressed offset is where the frame after the boundary starts: decoding the
    // compressed prefix gives exactly the image prefix.
    let prefix = zstd::stream::decode_all(&zst[..source_offset as usize]).unwrap();
    assert_eq!(prefix.len() as u64, image_offset, "frame boundary mismatch");
    let slot = std::fs::read(&dev.slot_b).unwrap();
    assert_eq!(
        &slot[..image_offset as usize],
        &img[..image_offset as usize],
        "durable image prefix in the slot"
    );

    dev.once().expect("reboot_requested");
    let oplog = dev.oplog();
    let start = first(&oplog, "download_start");
    assert_eq!(start["detail"]["compressed"], true, "{start}");
    assert_eq!(
        start["detail"]["source_length"],
        zst.len() as u64,
        "{start}"
    );
    let resume = first(&oplog, "download_resume");
    assert_eq!(resume["detail"]["compressed"], true, "{resume}");
    assert_eq!(resume["detail"]["offset"], image_offset, "{resume}");
    assert_eq!(resume["detail"]["source_offset"], source_offset, "{resume}");
    assert_eq!(
        oplog
            .iter()
            .filter(|r| r["kind"] == "download_start")
            .count(),
        1,
        "the download started over instead of resuming"
    );

    let runs = dev.run_until_committed(4);
    assert_eq!(runs.last().unwrap().outcome["version"], "2.0.0");
    assert_eq!(std::fs::read(&dev.slot_b).unwrap(), img, "slot B bytes");
    assert_eq!(dev.slot_sha256("B"), sha);
    dev.assert_boots_verified(&sha);
}

#[tokio::test]
async fn an_agent_without_compression_takes_the_plain_image() {
    let lab = Lab::start().await;
    let opts = DeviceOptions {
        compressed: false,
        ..DeviceOptions::default()
    };
    let dev = lab.enrolled_device("zstd-off", opts).await;
    let img = half_compressible("fw 2.0.0 plain", 3 * 1024 * 1024 + 5);
    let (sha, _) = lab
        .publish_compressed("fw-2.0.0.img", img.clone(), "2.0.0", 9)
        .await;

    dev.once().expect("reboot_requested");
    let oplog = dev.oplog();
    let start = first(&oplog, "download_start");
    assert_eq!(start["detail"]["compressed"], false, "{start}");
    assert_eq!(start["detail"]["length"], img.len() as u64, "{start}");
    assert_eq!(start["detail"]["source_length"], Value::Null, "{start}");
    dev.run_until_committed(4);
    assert_eq!(std::fs::read(&dev.slot_b).unwrap(), img);
    dev.assert_boots_verified(&sha);
}

#[tokio::test]
async fn a_corrupted_compressed_file_is_refused_and_nothing_is_switched() {
    let lab = Lab::start().await;
    let dev = lab
        .enrolled_device("zstd-bad", DeviceOptions::default())
        .await;
    let img = half_compressible("fw 2.0.0 corrupt", 2 * 1024 * 1024);
    let (_, zst) = lab
        .publish_compressed("fw-2.0.0.img", img.clone(), "2.0.0", 3)
        .await;

    // Flip one byte in the middle of the stored compressed blob, after its signing.
    let zsha = harness::sha256_hex(&zst);
    let blob = lab.server.blobs_dir().join(&zsha);
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    let at = zst.len() / 2;
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(&[zst[at] ^ 0x40]).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let run = dev.once();
    let out = run.expect("failed");
    let kind = out["kind"].as_str().unwrap();
    assert!(
        kind == "corrupt_compressed_image" || kind == "hash_mismatch",
        "{run}"
    );
    assert!(!run.stderr.contains("panicked"), "{run}");
    let status = dev.status_json();
    assert_eq!(status["trying"], Value::Null, "{status}");
    assert_eq!(status["default_slot"], "A", "{status}");
    assert_eq!(status["pending"], Value::Null, "{status}");
    assert_eq!(dev.simulate_boot(), "A", "the next boot still runs A");
    let anomalies = lab.anomaly_kinds(&dev.id).await;
    assert!(
        anomalies.iter().any(|k| k == kind),
        "server anomalies: {anomalies:?}"
    );
}
