//! A development server started from an empty directory is usable at once (health, a TUF
//! repository that our client verifies end to end over HTTPS), and a restart on the same
//! directory keeps its identity: same root, same admin token, same CA.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod harness;

use harness::ServerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_start_serves_a_verifiable_repository_and_restarts_with_the_same_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    assert!(!data.exists());
    let mut server = ServerProcess::start_dev(&data, None);

    let health = server.wait_healthy().await;
    assert_eq!(health["root_version"], 1, "{health}");
    assert!(
        server
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with("admin token (also in")),
        "first start announces a new admin token: {:?}",
        server.stdout_lines()
    );

    // The root the server hands out is a trust anchor our client workflow accepts, and the
    // whole chain (timestamp, snapshot, targets) verifies under it.
    let root = server.metadata("1.root.json").await.expect("1.root.json");
    let trusted = server.tuf_refresh(&root).await.expect("TUF refresh");
    assert_eq!(trusted.root().version, 1);
    assert_eq!(
        trusted.targets().version,
        health["targets_version"].as_u64().unwrap()
    );
    assert!(
        trusted.targets().targets.is_empty(),
        "a new repository has no targets"
    );
    // The unversioned root.json is the newest root: the same bytes.
    assert_eq!(
        server.metadata("root.json").await.as_deref(),
        Some(&root[..])
    );

    // The end of the root chain is a plain 404, which TUF clients need to stop walking.
    let resp = server
        .client()
        .get(server.url("/metadata/2.root.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    let ca_before = std::fs::read(server.ca_path()).unwrap();
    let token_before = server.admin_token();
    let pki_files_before = list_dir(&data.join("pki"));

    // A clean stop (SIGTERM) exits 0.
    let status = server.stop();
    assert!(status.success(), "SIGTERM exit status: {status}");

    server.restart();
    let health2 = server.wait_healthy().await;
    assert_eq!(health2["root_version"], 1, "{health2}");
    assert!(
        server
            .stdout_lines()
            .iter()
            .all(|l| !l.starts_with("admin token (also in")),
        "a restart must not make a new admin token: {:?}",
        server.stdout_lines()
    );

    assert_eq!(
        std::fs::read(server.ca_path()).unwrap(),
        ca_before,
        "CA changed"
    );
    assert_eq!(
        list_dir(&data.join("pki")),
        pki_files_before,
        "PKI files changed"
    );
    assert_eq!(
        server.admin_token(),
        token_before,
        "admin token file changed"
    );
    // The old token still authenticates (it is the stored one, not just the same file).
    let resp = server
        .client()
        .get(server.url("/api/v1/tokens"))
        .bearer_auth(&token_before)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "admin token after restart");
    let tokens: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        tokens.as_array().map(Vec::len),
        Some(1),
        "exactly one (admin) token after a restart: {tokens}"
    );

    // Same root; a client trusting the old root and the old CA file still verifies.
    assert_eq!(
        server.metadata("1.root.json").await.as_deref(),
        Some(&root[..])
    );
    std::fs::write(tmp.path().join("ca-before.crt"), &ca_before).unwrap();
    let client = harness::https_client(&tmp.path().join("ca-before.crt"), None);
    let trusted2 = harness::tuf_refresh(&client, &server.base_url(), &root, harness::now())
        .await
        .expect("TUF refresh after restart");
    assert_eq!(trusted2.root().version, 1);
    assert!(server.metadata("2.root.json").await.is_none());
}

fn list_dir(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
