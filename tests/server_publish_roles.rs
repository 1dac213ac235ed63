//! Who may publish what: a viewer can read but not upload or publish, a publisher can; a
//! name once published cannot be re-pointed at other bytes; targets metadata not signed by
//! the trusted targets key is refused and changes nothing.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod harness;

use harness::{expect_api_error, json_body, ServerProcess};
use ota_common::keys::SigningKey;
use ota_common::metadata::{TargetFile, Targets};
use ota_common::signed::{sign_role, RawSigned};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_is_refused_publisher_publishes_and_names_are_immutable() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("data"), None);
    server.wait_healthy().await;
    let viewer = server.create_token("viewer").await;
    let publisher = server.create_token("publisher").await;

    let image_a = harness::pseudo_random_bytes("roles-a", 200_000);
    let image_b = harness::pseudo_random_bytes("roles-b", 150_000);

    // Viewer: may read, may not upload or publish.
    let resp = server
        .client()
        .get(server.url("/api/v1/releases"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "viewer may list releases");
    // Refused uploads are small: the server refuses before reading the body and closes
    // the connection, so a client still writing a large body may see a broken pipe
    // instead of the answer (no lingering close); a body that fits in one write does not.
    let small = harness::pseudo_random_bytes("roles-small", 1024);
    let code = expect_api_error(server.upload_with(&viewer, small.clone()).await, 403).await;
    assert_eq!(code, "forbidden");

    // No token at all is 401, not 403.
    let resp = server
        .client()
        .put(server.url("/api/v1/blobs"))
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(expect_api_error(resp, 401).await, "unauthorized");

    // Publisher uploads.
    let resp = server.upload_with(&publisher, image_a.clone()).await;
    assert_eq!(resp.status().as_u16(), 201);
    let sha_a = json_body(resp).await["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sha_a, harness::sha256_hex(&image_a));

    // Viewer may not publish an uploaded image either.
    let resp = server
        .publish_release_with(&viewer, "app-1.0.0.bin", &sha_a, "1.0.0", &["board-x"])
        .await;
    assert_eq!(expect_api_error(resp, 403).await, "forbidden");
    assert!(
        server.releases().await.is_empty(),
        "nothing published by the viewer"
    );

    // Publisher publishes.
    let resp = server
        .publish_release_with(&publisher, "app-1.0.0.bin", &sha_a, "1.0.0", &["board-x"])
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let outcome = json_body(resp).await;
    let releases = server.releases().await;
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(releases[0]["name"], "app-1.0.0.bin");
    assert_eq!(releases[0]["sha256"], sha_a.as_str());
    assert_eq!(
        server.download_target("app-1.0.0.bin", &sha_a).await,
        image_a,
        "served bytes"
    );

    // The same name with other bytes: 409, and the first release stands.
    let sha_b = server.upload(image_b).await;
    let resp = server
        .publish_release_with(&publisher, "app-1.0.0.bin", &sha_b, "1.0.1", &["board-x"])
        .await;
    assert_eq!(expect_api_error(resp, 409).await, "conflict");
    let (_, health) = server.healthz().await;
    assert_eq!(health["targets_version"], outcome["targets_version"]);
    let releases = server.releases().await;
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0]["sha256"], sha_a.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_signed_by_an_untrusted_key_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("data"), None);
    server.wait_healthy().await;
    let publisher = server.create_token("publisher").await;

    let image = harness::pseudo_random_bytes("rogue", 64_000);
    let sha = server.upload(image.clone()).await;
    let before = server.metadata("targets.json").await.unwrap();
    let (_, health_before) = server.healthz().await;

    // A well-formed next version of targets listing the uploaded image, signed by a key
    // the root does not know.
    let current: Targets = RawSigned::parse(&before).unwrap().decode().unwrap();
    let mut next = current.clone();
    next.version += 1;
    next.targets.insert(
        "rogue-9.9.9.bin".into(),
        serde_json::from_value::<TargetFile>(serde_json::json!({
            "length": image.len(),
            "hashes": {"sha256": sha, "sha512": sha512_hex(&image)},
            "custom": {"version": "9.9.9", "hardware_ids": ["board-x"]},
        }))
        .unwrap(),
    );
    let rogue = SigningKey::generate();
    let body = sign_role(&next, &[&rogue]).unwrap();

    let resp = server
        .client()
        .post(server.url("/api/v1/targets"))
        .bearer_auth(&publisher)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(expect_api_error(resp, 403).await, "bad_signature");

    // Nothing changed: same targets bytes and versions, no release, target not served.
    assert_eq!(server.metadata("targets.json").await.unwrap(), before);
    let (_, health_after) = server.healthz().await;
    assert_eq!(
        health_after["targets_version"],
        health_before["targets_version"]
    );
    assert_eq!(
        health_after["timestamp_version"],
        health_before["timestamp_version"]
    );
    assert!(server.releases().await.is_empty());
    let resp = server
        .client()
        .get(server.url(&format!("/targets/{sha}.rogue-9.9.9.bin")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let root = server.metadata("1.root.json").await.unwrap();
    let trusted = server.tuf_refresh(&root).await.unwrap();
    assert!(trusted.find_target("rogue-9.9.9.bin").is_none());
}

fn sha512_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha512::digest(bytes))
}
