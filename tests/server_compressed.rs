//! Compressed forms against the real `ota-server` process: a release naming a good zstd
//! form is signed with it in `custom.zstd` and the form is served below `targets/` (with
//! Range and ETag) only once published; forms that are missing, of the wrong length, not
//! zstd or decoding to other bytes are refused with a 4xx and nothing is published.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod harness;

use harness::{assert_api_error, body_bytes, json_body, sha256_hex, ServerProcess};
use ota_keys::compress::compress_frames;
use reqwest::header::{CONTENT_RANGE, ETAG, RANGE};
use serde_json::{json, Value};

const NAME: &str = "fw-1.0.0.img";

/// An image that compresses: pseudo-random 4 KiB blocks, each repeated a few times.
fn image(seed: &str, len: usize) -> Vec<u8> {
    let block = harness::pseudo_random_bytes(seed, 4096);
    let mut out = Vec::with_capacity(len);
    let mut i = 0usize;
    while out.len() < len {
        let take = (len - out.len()).min(block.len());
        let rot = (i / 4) % block.len();
        out.extend(block.iter().cycle().skip(rot).take(take));
        i += 1;
    }
    out
}

/// The compressed bytes and the form naming them.
fn zstd(bytes: &[u8]) -> (Vec<u8>, Value) {
    let mut out = Vec::new();
    let c = compress_frames(bytes, &mut out, 3).unwrap();
    (
        out,
        json!({"length": c.length, "sha256": hex::encode(c.sha256)}),
    )
}

async fn publish(server: &ServerProcess, sha256: &str, form: &Value) -> reqwest::Response {
    server
        .client()
        .post(server.url("/api/v1/releases"))
        .bearer_auth(server.admin_token())
        .json(&json!({
            "name": NAME,
            "sha256": sha256,
            "version": "1.0.0",
            "hardware_ids": ["board-z"],
            "zstd": form,
        }))
        .send()
        .await
        .unwrap()
}

async fn targets_version(server: &ServerProcess) -> u64 {
    server.healthz().await.1["targets_version"]
        .as_u64()
        .unwrap()
}

async fn get(server: &ServerProcess, path: &str, range: Option<&str>) -> reqwest::Response {
    let mut req = server.client().get(server.url(path));
    if let Some(r) = range {
        req = req.header(RANGE, r);
    }
    req.send().await.unwrap()
}

/// Publishing with `form` is refused with `status`; the message contains `needle`; nothing
/// was published.
async fn refused(server: &ServerProcess, sha256: &str, form: &Value, status: u16, needle: &str) {
    let before = targets_version(server).await;
    let resp = publish(server, sha256, form).await;
    assert_eq!(resp.status().as_u16(), status, "{form}");
    let body = json_body(resp).await;
    assert_eq!(assert_api_error(&body), "rejected", "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{form}: {msg}");
    assert_eq!(
        targets_version(server).await,
        before,
        "{form}: nothing published"
    );
    assert!(server.releases().await.iter().all(|r| r["name"] != NAME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_forms_are_published_and_served_bad_ones_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("data"), None);
    server.wait_healthy().await;
    // Two frames.
    let img = image("compressed-image", 8 * 1024 * 1024 + 777);
    let sha = server.upload(img.clone()).await;
    let (zst, form) = zstd(&img);
    let zsha = form["sha256"].as_str().unwrap().to_string();
    let zst_path = format!("/targets/{zsha}.{NAME}.zst");

    // Not uploaded: a clear 422, not a 500.
    refused(&server, &sha, &form, 422, "has not been uploaded").await;
    assert_eq!(server.upload(zst.clone()).await, zsha);
    // Uploaded but not published: not served.
    assert_eq!(get(&server, &zst_path, None).await.status().as_u16(), 404);

    // Wrong length.
    let longer = json!({"length": zst.len() + 1, "sha256": zsha});
    refused(&server, &sha, &longer, 422, "signed length").await;
    // Not zstd: the image itself named as its own compressed form.
    let not_zstd = json!({"length": img.len(), "sha256": sha});
    refused(&server, &sha, &not_zstd, 422, "not a valid zstd stream").await;
    // Valid zstd of other bytes.
    let other = image("other-image", img.len());
    let (other_zst, other_form) = zstd(&other);
    server.upload(other_zst).await;
    refused(&server, &sha, &other_form, 422, "decodes to sha256").await;
    // Decodes to fewer bytes than the image.
    let (short_zst, short_form) = zstd(&img[..1000]);
    server.upload(short_zst).await;
    refused(&server, &sha, &short_form, 422, "decodes to 1000 bytes").await;
    // A sha256 that is not lowercase hex is refused as malformed.
    let upper = json!({"length": zst.len(), "sha256": zsha.to_uppercase()});
    let resp = publish(&server, &sha, &upper).await;
    assert!(resp.status().is_client_error(), "{}", resp.status());

    // The good form.
    let resp = publish(&server, &sha, &form).await;
    let status = resp.status().as_u16();
    let body = json_body(resp).await;
    assert_eq!(status, 200, "{body}");
    let releases = server.releases().await;
    let r = releases.iter().find(|r| r["name"] == NAME).unwrap();
    assert_eq!(r["length"], img.len(), "the TUF length stays the image's");
    assert_eq!(r["sha256"], sha.as_str());
    assert_eq!(r["release"]["zstd"], form);
    assert_eq!(r["zstd_length"], zst.len());

    // Served like a target: whole, with its sha256 as ETag, and by range.
    let resp = get(&server, &zst_path, None).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers().get(ETAG).unwrap().to_str().unwrap(),
        format!("\"{zsha}\"")
    );
    let body = body_bytes(resp, zst.len() as u64).await;
    assert_eq!(sha256_hex(&body), zsha);
    let resp = get(&server, &zst_path, Some("bytes=10-99")).await;
    assert_eq!(resp.status().as_u16(), 206);
    assert_eq!(
        resp.headers().get(CONTENT_RANGE).unwrap().to_str().unwrap(),
        format!("bytes 10-99/{}", zst.len())
    );
    assert!(body_bytes(resp, 90).await == zst[10..100]);
    // The image is still served as before, and refused forms are not.
    assert_eq!(server.download_target(NAME, &sha).await, img);
    let other_path = format!(
        "/targets/{}.{NAME}.zst",
        other_form["sha256"].as_str().unwrap()
    );
    assert_eq!(get(&server, &other_path, None).await.status().as_u16(), 404);

    // The signed target carries the form; its TUF length and hashes are the image's.
    let v = targets_version(&server).await;
    let targets: Value =
        serde_json::from_slice(&server.metadata(&format!("{v}.targets.json")).await.unwrap())
            .unwrap();
    let t = &targets["signed"]["targets"][NAME];
    assert_eq!(t["length"], img.len());
    assert_eq!(t["hashes"]["sha256"], sha.as_str());
    assert_eq!(t["custom"]["zstd"], form);
}
