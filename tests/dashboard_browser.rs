//! The operator dashboard in a real browser: a development `ota-server` process, a fleet
//! made through the JSON API (releases, devices over mutual TLS, a group, a deployment),
//! and Debian's headless Chromium driven over WebDriver (see `tests/browser/`).
//!
//! An operator signs in with an API token, reads the fleet overview's numbers, pauses the
//! deployment from its page (and the JSON API agrees), and signs out; a viewer then sees no
//! action button, and forged POSTs (no CSRF token, a wrong one, the viewer's own) are
//! refused with 403 whether sent from the page or straight with the session cookie.
//! Screenshots of each page go to `target/dashboard-screenshots/`.

mod browser;
mod harness;

use std::path::PathBuf;

use chrono::Duration;
use serde_json::{json, Value};

use browser::{spki_sha256_base64, Browser, Driver};
use harness::{json_body, now, pseudo_random_bytes, ServerProcess};

/// Where screenshots go: `<target dir>/dashboard-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| harness::workspace_root().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        harness::workspace_root().join(target)
    };
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// `METHOD path` with a bearer token and an optional JSON body; returns (status, JSON).
async fn api(
    server: &ServerProcess,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = server.client();
    let url = server.url(path);
    let req = match method {
        "GET" => client.get(url),
        _ => client.post(url).json(&body.unwrap_or_else(|| json!({}))),
    };
    let resp = req
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    (status, json_body(resp).await)
}

async fn publish(server: &ServerProcess, name: &str, version: &str, support_days: i64) {
    let sha = server.upload(pseudo_random_bytes(name, 64 * 1024)).await;
    let until = now() + Duration::days(support_days);
    let (status, body) = api(
        server,
        &server.admin_token(),
        "POST",
        "/api/v1/releases",
        Some(json!({
            "name": name, "sha256": sha, "version": version,
            "hardware_ids": ["board-a"],
            "support_until": until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })),
    )
    .await;
    assert_eq!(status, 200, "publish {name}: {body}");
}

/// A device's client (mutual TLS with a certificate from the development device CA).
fn device_client(server: &ServerProcess, id: &str) -> reqwest::Client {
    let (cert, key) = server.issue_device(id);
    server.client_with_identity(&cert, &key)
}

async fn device_post(
    client: &reqwest::Client,
    server: &ServerProcess,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let resp = client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("device POST {path}: {e}"));
    let status = resp.status().as_u16();
    (status, json_body(resp).await)
}

fn poll_body() -> Value {
    json!({"hardware_id": "board-a", "current_version": "1.0.0", "active_slot": "a",
           "agent_version": "0.1.0", "attributes": {"site": "lab"}})
}

/// Builds the fleet: 2 releases, 4 devices (3 accepted, 1 pending), an anomaly, a group
/// and a running deployment. Returns the deployment id.
async fn make_fleet(server: &ServerProcess, operator: &str) -> String {
    publish(server, "fw-1.0.0.bin", "1.0.0", -10).await;
    publish(server, "fw-2.0.0.bin", "2.0.0", 60).await;
    let mut clients = Vec::new();
    for id in ["dev-01", "dev-02", "dev-03", "dev-04"] {
        let c = device_client(server, id);
        let (status, body) = device_post(&c, server, "/api/v1/device/poll", poll_body()).await;
        assert_eq!(
            status, 403,
            "first poll of {id} waits for an operator: {body}"
        );
        assert_eq!(body["error"], "device_pending");
        clients.push((id, c));
    }
    for id in ["dev-01", "dev-02", "dev-03"] {
        let (status, body) = api(
            server,
            operator,
            "POST",
            &format!("/api/v1/devices/{id}/accept"),
            None,
        )
        .await;
        assert_eq!(status, 200, "accept {id}: {body}");
    }
    let (status, body) = device_post(
        &clients[1].1,
        server,
        "/api/v1/device/anomalies",
        json!({"anomalies": [{"id": "a-1", "kind": "hash_mismatch",
            "message": "downloaded image does not match the signed hash",
            "detail": {"target": "fw-2.0.0.bin"}, "at": now().to_rfc3339()}]}),
    )
    .await;
    assert_eq!(status, 200, "anomaly: {body}");
    let (status, body) = api(
        server,
        operator,
        "POST",
        "/api/v1/groups",
        Some(json!({"name": "lab-boards", "filter": {"hardware_id": "board-a"}})),
    )
    .await;
    assert_eq!(status, 201, "group: {body}");
    let (status, body) = api(
        server,
        operator,
        "POST",
        "/api/v1/deployments",
        Some(json!({
            "release": "fw-2.0.0.bin", "group": "lab-boards",
            "phases": [{"percent": 50, "min_wait_secs": 3600}, {"percent": 100}],
            "failure_threshold_percent": 20, "min_devices": 1,
        })),
    )
    .await;
    assert_eq!(status, 201, "deployment: {body}");
    let dep = body["id"].as_str().expect("deployment id").to_string();
    // Accepted devices poll; those the first phase reaches start downloading.
    for (id, c) in &clients[..3] {
        let (status, body) = device_post(c, server, "/api/v1/device/poll", poll_body()).await;
        assert_eq!(status, 200, "poll of {id}: {body}");
        if let Some(update) = body["update"].as_object() {
            let (status, body) = device_post(c, server, "/api/v1/device/status", json!({
                "id": format!("s-{id}"), "target": update["target"], "version": update["version"],
                "state": "downloading", "deployment": update["deployment"], "at": now().to_rfc3339(),
            }))
            .await;
            assert_eq!(status, 200, "status of {id}: {body}");
        }
    }
    dep
}

async fn sign_in(b: &Browser, server: &ServerProcess, token: &str) {
    b.goto(&server.url("/ui/login")).await;
    assert_eq!(b.title().await, "Sign in · ota");
    let field = b.find("#token").await;
    b.type_into(&field, token).await;
    let button = b.find("#sign-in").await;
    b.click_and_wait(&button).await;
    let url = b.url().await;
    assert_eq!(
        url,
        server.url("/ui/"),
        "signed in, on the overview; the page says:\n{}",
        b.text_of("main").await
    );
}

async fn sign_out(b: &Browser, server: &ServerProcess) {
    let button = b.find("#logout").await;
    b.click_and_wait(&button).await;
    assert_eq!(b.url().await, server.url("/ui/login"));
    assert_eq!(
        b.cookie("ota_session").await,
        None,
        "the session cookie is cleared"
    );
    // The old session does not come back: the overview sends us to the login page.
    b.goto(&server.url("/ui/")).await;
    assert_eq!(b.url().await, server.url("/ui/login"));
}

/// A POST from inside the page (same origin, the session cookie attached by the browser);
/// returns the status.
async fn fetch_post(b: &Browser, path: &str, form: &str) -> u64 {
    let v = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], {method: 'POST', body: arguments[1], credentials: 'same-origin',
                 redirect: 'manual',
                 headers: {'content-type': 'application/x-www-form-urlencoded'}})
               .then(r => done(r.status), e => done('error: ' + e));",
            vec![json!(path), json!(form)],
        )
        .await;
    v.as_u64()
        .unwrap_or_else(|| panic!("fetch from the page failed: {v}"))
}

async fn deployment_state(server: &ServerProcess, dep: &str) -> String {
    let (status, body) = api(
        server,
        &server.admin_token(),
        "GET",
        &format!("/api/v1/deployments/{dep}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["state"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_pauses_a_deployment_and_a_viewer_cannot() {
    harness::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start_dev(&dir.path().join("server"), None);
    server.wait_healthy().await;
    let shots = screenshot_dir();
    let operator = server.create_token("operator").await;
    let viewer = server.create_token("viewer").await;
    let dep = make_fleet(&server, &operator).await;
    assert_eq!(deployment_state(&server, &dep).await, "active");

    let driver = Driver::start(&dir.path().join("chromedriver.log")).await;
    let spki = spki_sha256_base64(&server.data_dir().join("pki").join("server.crt"));
    let b = driver
        .browser(
            &dir.path().join("chromium-profile"),
            &[format!("--ignore-certificate-errors-spki-list={spki}")],
            (1366, 900),
        )
        .await;

    // Signed out, every page leads to the login form.
    b.goto(&server.url("/ui/devices")).await;
    assert_eq!(b.url().await, server.url("/ui/login"));
    b.screenshot(&shots.join("login.png")).await;

    // The operator signs in; the session cookie is Secure, HttpOnly, SameSite=Strict.
    sign_in(&b, &server, &operator).await;
    let session = b
        .cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == "ota_session")
        .expect("session cookie");
    assert_eq!(
        (
            &session["secure"],
            &session["httpOnly"],
            &session["sameSite"],
            &session["path"]
        ),
        (&json!(true), &json!(true), &json!("Strict"), &json!("/ui")),
        "{session}"
    );

    // The overview's numbers.
    assert_eq!(b.title().await, "Fleet overview · ota");
    let number = |css: &'static str| {
        let b = &b;
        async move { b.text_of(&format!("#{css} .value")).await }
    };
    assert_eq!(number("stat-devices").await, "4");
    assert_eq!(number("stat-accepted").await, "3");
    assert_eq!(number("stat-pending").await, "1");
    assert_eq!(number("stat-rejected").await, "0");
    assert_eq!(number("stat-releases").await, "2");
    assert_eq!(number("stat-deployments").await, "1");
    let versions = b.text_of("#by-version").await;
    assert!(
        versions.contains("1.0.0") && versions.contains('3'),
        "by version: {versions}"
    );
    let overview = b.source().await;
    assert!(
        overview.contains("hash_mismatch"),
        "recent anomaly on the overview"
    );
    assert!(
        overview.contains(&dep),
        "the running deployment on the overview"
    );
    b.screenshot(&shots.join("overview.png")).await;

    // The other pages render with their data.
    b.goto(&server.url("/ui/devices")).await;
    assert_eq!(b.find_all("#devices tbody tr").await.len(), 4);
    b.screenshot(&shots.join("devices.png")).await;
    b.goto(&server.url("/ui/devices?status=pending")).await;
    assert_eq!(b.find_all("#devices tbody tr").await.len(), 1);
    assert!(b.text_of("#devices").await.contains("dev-04"));
    b.goto(&server.url("/ui/devices/dev-04")).await;
    assert_eq!(
        b.find_all("#accept").await.len(),
        1,
        "an operator may accept dev-04"
    );
    b.goto(&server.url("/ui/devices/dev-02")).await;
    assert!(b.source().await.contains("hash_mismatch"));
    b.screenshot(&shots.join("device.png")).await;
    b.goto(&server.url("/ui/releases")).await;
    let releases = b.text_of("#releases").await;
    assert!(
        releases.contains("support ended"),
        "1.0.0's support ended: {releases}"
    );
    assert!(
        releases.contains("ends in"),
        "2.0.0's support ends within 90 days: {releases}"
    );
    b.screenshot(&shots.join("releases.png")).await;
    b.goto(&server.url("/ui/anomalies")).await;
    assert!(b.text_of("main").await.contains("hash_mismatch"));
    b.screenshot(&shots.join("anomalies.png")).await;

    // Pause the deployment from its page.
    b.goto(&server.url("/ui/deployments")).await;
    b.screenshot(&shots.join("deployments.png")).await;
    let pause = b.find(&format!("#pause-{dep}")).await;
    b.click_and_wait(&pause).await;
    assert_eq!(b.url().await, server.url("/ui/deployments?notice=paused"));
    assert!(b.text_of(".notice").await.contains("Deployment paused."));
    assert!(b
        .text_of(&format!("#dep-{dep} .state"))
        .await
        .contains("paused"));
    assert_eq!(b.find_all(&format!("#resume-{dep}")).await.len(), 1);
    assert_eq!(
        deployment_state(&server, &dep).await,
        "paused",
        "the JSON API agrees"
    );
    b.screenshot(&shots.join("deployments-paused.png")).await;
    b.goto(&server.url("/ui/audit")).await;
    let audit = b.text_of("#audit").await;
    assert!(
        audit.contains("deployment.pause") && audit.contains("ui.login"),
        "{audit}"
    );
    b.screenshot(&shots.join("audit.png")).await;
    sign_out(&b, &server).await;

    // The viewer: no action buttons, and forged posts are refused.
    sign_in(&b, &server, &viewer).await;
    b.goto(&server.url("/ui/deployments")).await;
    assert!(b.source().await.contains(&dep));
    assert!(
        b.find_all("form[action^='/ui/deployments/']")
            .await
            .is_empty(),
        "no pause/resume/abort for a viewer"
    );
    b.screenshot(&shots.join("deployments-viewer.png")).await;
    let resume = format!("/ui/deployments/{dep}/resume");
    assert_eq!(fetch_post(&b, &resume, "").await, 403, "no CSRF token");
    assert_eq!(
        fetch_post(&b, &resume, &format!("csrf={}", "0".repeat(64))).await,
        403,
        "wrong CSRF token"
    );
    let own = b
        .execute_async(
            "arguments[arguments.length - 1](document.querySelector('input[name=csrf]').value)",
            vec![],
        )
        .await;
    let own = own.as_str().expect("the viewer's CSRF token").to_string();
    assert_eq!(
        fetch_post(&b, &resume, &format!("csrf={own}")).await,
        403,
        "a viewer may not operate"
    );
    b.goto(&server.url("/ui/devices/dev-04")).await;
    assert!(
        b.find_all("#accept").await.is_empty(),
        "no decision buttons for a viewer"
    );
    // Straight to the server with the viewer's session cookie (no browser in between).
    let cookie = b
        .cookie("ota_session")
        .await
        .expect("viewer session cookie");
    for form in [String::new(), format!("csrf={own}")] {
        let resp = server
            .client()
            .post(server.url(&resume))
            .header("cookie", format!("ota_session={cookie}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
            .send()
            .await
            .expect("direct POST");
        assert_eq!(resp.status().as_u16(), 403, "direct POST {form:?}");
        let csp = resp.headers()["content-security-policy"]
            .to_str()
            .unwrap_or_default()
            .to_string();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert_eq!(resp.headers()["x-frame-options"], "DENY");
        assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    }
    assert_eq!(
        deployment_state(&server, &dep).await,
        "paused",
        "nothing the viewer sent changed it"
    );
    let (_, accepted) = api(&server, &viewer, "GET", "/api/v1/devices/dev-04", None).await;
    assert_eq!(accepted["device"]["status"], "pending");
    sign_out(&b, &server).await;
    b.quit().await;
    drop(driver);
    eprintln!("dashboard screenshots in {}", shots.display());
}
