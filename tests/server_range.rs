//! Target downloads honour HTTP Range (RFC 9110 §14) and validators: partial content for
//! open, closed and suffix ranges, 416 past the end, 304 for a matching ETag, and a
//! download cut midway and resumed with Range gives the exact published image.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod harness;

use harness::{body_bytes, sha256_hex, ServerProcess};
use reqwest::header::{CONTENT_RANGE, ETAG, IF_NONE_MATCH, IF_RANGE, RANGE};

/// A little over 8 MiB and not a multiple of any buffer size.
const IMAGE_LEN: usize = 8 * 1024 * 1024 + 12_345;

struct Published {
    server: ServerProcess,
    _tmp: tempfile::TempDir,
    image: Vec<u8>,
    url: String,
    sha256: String,
}

async fn publish_image() -> Published {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("data"), None);
    server.wait_healthy().await;
    let image = harness::pseudo_random_bytes("range-image", IMAGE_LEN);
    let sha256 = server.upload(image.clone()).await;
    server
        .publish_release("range-1.0.0.img", &sha256, "1.0.0", &["board-r"])
        .await;
    let url = server.url(&format!("/targets/{sha256}.range-1.0.0.img"));
    Published {
        server,
        _tmp: tmp,
        image,
        url,
        sha256,
    }
}

async fn get_range(p: &Published, range: &str) -> reqwest::Response {
    p.server
        .client()
        .get(&p.url)
        .header(RANGE, range)
        .send()
        .await
        .unwrap()
}

async fn expect_part(p: &Published, range: &str, start: usize, end: usize) {
    let resp = get_range(p, range).await;
    assert_eq!(resp.status().as_u16(), 206, "{range}");
    let len = p.image.len();
    assert_eq!(
        resp.headers().get(CONTENT_RANGE).unwrap().to_str().unwrap(),
        format!("bytes {start}-{end}/{len}"),
        "{range}"
    );
    let body = body_bytes(resp, len as u64).await;
    assert_eq!(body.len(), end - start + 1, "{range}: length");
    assert!(body == p.image[start..=end], "{range}: content differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_validators_and_errors() {
    let p = publish_image().await;
    let len = p.image.len();

    // Without Range: the whole image, advertised as resumable.
    let resp = p.server.client().get(&p.url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("accept-ranges")
            .map(|v| v.to_str().unwrap()),
        Some("bytes")
    );
    let etag = resp
        .headers()
        .get(ETAG)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(etag, format!("\"{}\"", p.sha256));
    assert_eq!(sha256_hex(&body_bytes(resp, len as u64).await), p.sha256);

    // bytes=N- (resume from N), bytes=a-b, an end past the file (clamped), suffix.
    expect_part(&p, "bytes=1000000-", 1_000_000, len - 1).await;
    expect_part(&p, "bytes=0-0", 0, 0).await;
    expect_part(&p, "bytes=4096-1052671", 4096, 1_052_671).await;
    expect_part(
        &p,
        &format!("bytes={}-{}", len - 10, len + 1000),
        len - 10,
        len - 1,
    )
    .await;
    expect_part(&p, "bytes=-4321", len - 4321, len - 1).await;
    expect_part(&p, &format!("bytes={}-", len - 1), len - 1, len - 1).await;

    // Starting at or past the end cannot be satisfied.
    for range in [
        format!("bytes={len}-"),
        format!("bytes={}-", len + 1),
        "bytes=-0".to_string(),
    ] {
        let resp = get_range(&p, &range).await;
        assert_eq!(resp.status().as_u16(), 416, "{range}");
        assert_eq!(
            resp.headers().get(CONTENT_RANGE).unwrap().to_str().unwrap(),
            format!("bytes */{len}"),
            "{range}"
        );
    }

    // A matching ETag: 304 and no body. A different one: the full image.
    let resp = p
        .server
        .client()
        .get(&p.url)
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 304);
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = p
        .server
        .client()
        .get(&p.url)
        .header(IF_NONE_MATCH, "\"0000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    drop(resp);

    // Metadata has validators too: timestamp.json with its own ETag is 304.
    let resp = p
        .server
        .client()
        .get(p.server.url("/metadata/timestamp.json"))
        .send()
        .await
        .unwrap();
    let ts_etag = resp
        .headers()
        .get(ETAG)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    drop(resp);
    let resp = p
        .server
        .client()
        .get(p.server.url("/metadata/timestamp.json"))
        .header(IF_NONE_MATCH, &ts_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 304);

    // An unpublished hash is not served, whatever the range.
    let resp = p
        .server
        .client()
        .get(
            p.server
                .url(&format!("/targets/{}.range-1.0.0.img", "0".repeat(64))),
        )
        .header(RANGE, "bytes=0-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_midway_resumes_with_range_to_the_exact_image() {
    let p = publish_image().await;
    let len = p.image.len();

    // Read part of the body, then drop the response: the connection is cut mid-transfer.
    let mut resp = p.server.client().get(&p.url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let etag = resp
        .headers()
        .get(ETAG)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut got = Vec::new();
    while got.len() < 3 * 1024 * 1024 {
        let chunk = resp.chunk().await.unwrap().expect("body ended early");
        got.extend_from_slice(&chunk);
    }
    drop(resp);
    assert!(got.len() < len, "the cut must be before the end");
    let cut = got.len();

    // Resume from what we have, guarded by If-Range as a resuming client does.
    let resp = p
        .server
        .client()
        .get(&p.url)
        .header(RANGE, format!("bytes={cut}-"))
        .header(IF_RANGE, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 206);
    assert_eq!(
        resp.headers().get(CONTENT_RANGE).unwrap().to_str().unwrap(),
        format!("bytes {cut}-{}/{len}", len - 1)
    );
    got.extend_from_slice(&body_bytes(resp, len as u64).await);
    assert_eq!(got.len(), len);
    assert_eq!(sha256_hex(&got), p.sha256, "resumed image differs");

    // If-Range with a stale validator means "start again": the full image, 200.
    let resp = p
        .server
        .client()
        .get(&p.url)
        .header(RANGE, format!("bytes={cut}-"))
        .header(IF_RANGE, "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(sha256_hex(&body_bytes(resp, len as u64).await), p.sha256);
}
