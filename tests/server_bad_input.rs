//! Bad input never breaks the server: malformed JSON, wrong content types, oversized
//! bodies and bad field values get a 4xx with the `ApiError` JSON shape; garbage paths get
//! 404; nothing gets a 5xx, and the server still answers afterwards.
//!
//! Each test checks every case and reports all mismatches at once.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod harness;

use harness::{assert_api_error, raw_status, ServerProcess};
use reqwest::Method;

/// Small caps so that "oversized" is cheap to send.
const CONFIG: &str = "[limits]\nmax_body_bytes = 2048\nmax_upload_bytes = 1048576\n";

struct Case {
    what: String,
    method: Method,
    path: &'static str,
    token: Option<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
}

fn case(
    what: &str,
    method: Method,
    path: &'static str,
    token: &str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    Case {
        what: what.into(),
        method,
        path,
        token: (!token.is_empty()).then(|| token.to_string()),
        content_type,
        body: body.into(),
        status,
    }
}

/// Sends `c`; returns a description of what was wrong with the answer, if anything.
async fn check(server: &ServerProcess, c: &Case) -> Option<String> {
    let mut req = server
        .client()
        .request(c.method.clone(), server.url(c.path))
        .body(c.body.clone());
    if let Some(t) = &c.token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = c.content_type {
        req = req.header("content-type", ct);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Some(format!("{}: no response: {e}", c.what)),
    };
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    let mut problems = Vec::new();
    if status != c.status {
        problems.push(format!("status {status}, expected {}", c.status));
    }
    if !ctype.starts_with("application/json") {
        problems.push(format!("content-type {ctype:?}"));
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => {
            if let Err(e) = std::panic::catch_unwind(|| assert_api_error(&v)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "not an ApiError".into());
                problems.push(msg);
            }
        }
        Err(_) => problems.push("body is not JSON".into()),
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{} ({} {}): {} -- body {:?}",
            c.what,
            c.method,
            c.path,
            problems.join("; "),
            text.chars().take(200).collect::<String>()
        )
    })
}

async fn check_all(server: &ServerProcess, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        if let Some(problem) = check(server, c).await {
            failures.push(problem);
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_wrongly_typed_and_oversized_bodies_get_api_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("data"), Some(CONFIG));
    server.wait_healthy().await;
    let admin = server.admin_token();
    let image = harness::pseudo_random_bytes("bad-input", 10_000);
    let sha = server.upload(image).await;
    let json = Some("application/json");
    let release = |name: &str, sha: &str, version: &str| {
        format!(
            r#"{{"name":"{name}","sha256":"{sha}","version":"{version}","hardware_ids":["b"]}}"#
        )
    };
    let big_json = format!(r#"{{"name":"{}","role":"viewer"}}"#, "x".repeat(4096));
    let cases = vec![
        // JSON routes: syntax, shape, content type, size.
        case(
            "truncated JSON",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            r#"{"name": "#,
            400,
        ),
        case(
            "empty body",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            "",
            400,
        ),
        case(
            "not UTF-8",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            vec![0xff, 0xfe, 0x00, 0x7b],
            400,
        ),
        case(
            "JSON array",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            "[1,2,3]",
            422,
        ),
        case(
            "wrong field type",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            r#"{"name":5,"sha256":"x","version":"1.0.0","hardware_ids":[]}"#,
            422,
        ),
        case(
            "unknown field",
            Method::POST,
            "/api/v1/tokens",
            &admin,
            json,
            r#"{"name":"a","role":"viewer","extra":1}"#,
            422,
        ),
        case(
            "text/plain",
            Method::POST,
            "/api/v1/tokens",
            &admin,
            Some("text/plain"),
            r#"{"name":"a","role":"viewer"}"#,
            415,
        ),
        case(
            "no content type",
            Method::POST,
            "/api/v1/tokens",
            &admin,
            None,
            r#"{"name":"a","role":"viewer"}"#,
            415,
        ),
        case(
            "form content type",
            Method::POST,
            "/api/v1/tokens/revoke",
            &admin,
            Some("application/x-www-form-urlencoded"),
            "id=abc",
            415,
        ),
        case(
            "oversized JSON",
            Method::POST,
            "/api/v1/tokens",
            &admin,
            json,
            big_json.clone(),
            413,
        ),
        case(
            "oversized JSON, releases",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            big_json.clone(),
            413,
        ),
        // Field values.
        case(
            "unknown role",
            Method::POST,
            "/api/v1/tokens",
            &admin,
            json,
            r#"{"name":"a","role":"root"}"#,
            400,
        ),
        case(
            "empty token name",
            Method::POST,
            "/api/v1/tokens",
            &admin,
            json,
            r#"{"name":"","role":"viewer"}"#,
            400,
        ),
        case(
            "bad sha256",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            release("a-1.bin", "xyz", "1.0.0"),
            400,
        ),
        case(
            "unknown image",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            release("a-1.bin", &"a".repeat(64), "1.0.0"),
            422,
        ),
        case(
            "bad version",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            release("a-1.bin", &sha, "one"),
            422,
        ),
        case(
            "unsafe target name",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            release("../../etc/passwd", &sha, "1.0.0"),
            400,
        ),
        case(
            "no hardware ids",
            Method::POST,
            "/api/v1/releases",
            &admin,
            json,
            format!(r#"{{"name":"a-1.bin","sha256":"{sha}","version":"1.0.0","hardware_ids":[]}}"#),
            400,
        ),
        case(
            "revoke unknown token",
            Method::POST,
            "/api/v1/tokens/revoke",
            &admin,
            json,
            r#"{"id":"nope"}"#,
            404,
        ),
        case(
            "withdraw unknown release",
            Method::DELETE,
            "/api/v1/releases/nope.bin",
            &admin,
            None,
            "",
            404,
        ),
        case(
            "bad query",
            Method::GET,
            "/api/v1/audit?after=abc",
            &admin,
            None,
            "",
            400,
        ),
        // Raw-body routes.
        case(
            "targets: garbage",
            Method::POST,
            "/api/v1/targets",
            &admin,
            json,
            "not json at all",
            400,
        ),
        case(
            "targets: JSON, not metadata",
            Method::POST,
            "/api/v1/targets",
            &admin,
            json,
            r#"{"signed":{"_type":"root"},"signatures":[]}"#,
            400,
        ),
        case(
            "root: garbage",
            Method::POST,
            "/api/v1/root",
            &admin,
            json,
            "{",
            422,
        ),
        // Authentication.
        case(
            "no token",
            Method::POST,
            "/api/v1/tokens",
            "",
            json,
            r#"{"name":"a","role":"viewer"}"#,
            401,
        ),
        case(
            "unknown token",
            Method::POST,
            "/api/v1/tokens",
            "ota_0000",
            json,
            r#"{"name":"a","role":"viewer"}"#,
            401,
        ),
    ];
    let mut failures = check_all(&server, &cases).await;
    // A Basic (not Bearer) Authorization header is refused the same way.
    let resp = server
        .client()
        .get(server.url("/api/v1/releases"))
        .basic_auth("admin", Some(admin.as_str()))
        .send()
        .await
        .unwrap();
    if resp.status().as_u16() != 401 {
        failures.push(format!("Basic auth: status {}", resp.status()));
    }

    let health = server.wait_healthy().await;
    assert_eq!(health["status"], "ok");
    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    assert!(
        failures.is_empty(),
        "{} of {} cases answered wrongly:\n{}",
        failures.len(),
        cases.len() + 1,
        failures.join("\n")
    );
}

/// Bodies refused by a size cap outside the JSON extractors: the transport's hard cap
/// (`max_upload_bytes`, enforced for every route) and the routes that buffer raw bytes
/// (`/api/v1/targets`, `/api/v1/root`). They must be refused with the same ApiError shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_hard_cap_and_raw_body_limits_get_api_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("data"), Some(CONFIG));
    server.wait_healthy().await;
    let admin = server.admin_token();
    let mut failures = Vec::new();

    // A declared length over the hard cap is refused before the body is read, so send the
    // head only: a client still writing the body would race the server's early close.
    for (method, path) in [("PUT", "/api/v1/blobs"), ("POST", "/api/v1/targets")] {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin}\r\n\
             Content-Type: application/json\r\nContent-Length: 1048577\r\nConnection: close\r\n\r\n"
        );
        match server.raw(head.as_bytes()).await {
            Ok(resp) | Err((_, resp)) => {
                if let Some(problem) = raw_api_error_problem(&resp, 413) {
                    failures.push(format!(
                        "{method} {path} with Content-Length over max_upload_bytes: {problem}"
                    ));
                }
            }
        }
    }

    // A raw-bytes route over the JSON cap (small enough to be sent whole).
    let c = case(
        "root over max_body_bytes",
        Method::POST,
        "/api/v1/root",
        &admin,
        Some("application/json"),
        vec![b' '; 4096],
        413,
    );
    failures.extend(check(&server, &c).await);

    // An upload streamed without a Content-Length: the cap trips mid-body.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..17).map(|_| Ok(vec![7u8; 65_536])).collect();
    let resp = server
        .client()
        .put(server.url("/api/v1/blobs"))
        .bearer_auth(&admin)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    if status != 413 || !is_api_error(&text) {
        failures.push(format!(
            "chunked upload over max_upload_bytes: status {status}, body {text:?}"
        ));
    }

    let health = server.wait_healthy().await;
    assert_eq!(health["status"], "ok");
    assert!(
        failures.is_empty(),
        "{} of 4 cases answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn is_api_error(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .is_ok_and(|v| std::panic::catch_unwind(|| assert_api_error(&v)).is_ok())
}

/// What is wrong with a raw HTTP/1.1 response expected to be `status` with an ApiError body.
fn raw_api_error_problem(resp: &[u8], status: u16) -> Option<String> {
    let text = String::from_utf8_lossy(resp);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Some(format!("no complete response: {text:?}"));
    };
    let mut problems = Vec::new();
    if raw_status(resp) != Some(status) {
        problems.push(format!("status {:?}, expected {status}", raw_status(resp)));
    }
    let head = head.to_ascii_lowercase();
    if !head.contains("content-type: application/json") {
        problems.push("not application/json".to_string());
    }
    // Bodies here are small and sent with Content-Length; a chunked one is not JSON as is.
    if !is_api_error(body) {
        problems.push(format!("body is not an ApiError: {body:?}"));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Paths no route serves, as raw request lines (an HTTP library would normalise some).
fn garbage_paths() -> Vec<String> {
    let mut paths: Vec<String> = [
        "/nope",
        "/metadata/",
        "/metadata/3.root.json",
        "/metadata/999999999999999999999999.root.json",
        "/metadata/-1.root.json",
        "/metadata/1.root.json.bak",
        "/metadata/1.foo.json",
        "/metadata/a.b.c.json",
        "/metadata/..%2F..%2Fetc%2Fpasswd",
        "/metadata/%00.json",
        "/metadata/1.targets.json%00",
        "/metadata/2.snapshot.json",
        "/metadata/18446744073709551615.targets.json",
        "/targets/",
        "/targets/../blobs",
        "/targets/..%2F..%2Fadmin.token",
        "/targets/%2e%2e/%2e%2e/admin.token",
        "/targets/0000.x",
        "/api",
        "/api/v1",
        "/api/v1/",
        "/api/v2/releases",
        "/healthz/extra",
        "//healthz/..",
        "/%ff%fe",
        "/\u{e9}t\u{e9}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let long = format!("/targets/{}", "a".repeat(8000));
    paths.push(long);
    // Pseudo-random paths: 1 to 4 segments of URI-safe characters and percent-escapes.
    let alphabet =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@";
    let noise = harness::pseudo_random_bytes("garbage-paths", 64 * 40);
    for chunk in noise.chunks(64) {
        let segments = 1 + usize::from(chunk[0] % 4);
        let mut path = String::new();
        for s in 0..segments {
            path.push('/');
            let len = 1 + usize::from(chunk[1 + s] % 12);
            for &b in &chunk[8 + s * 12..8 + s * 12 + len] {
                if b % 7 == 0 {
                    path.push_str(&format!("%{b:02X}"));
                } else {
                    path.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
                }
            }
        }
        paths.push(path);
    }
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_paths_and_garbage_requests_never_get_a_5xx() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("data"), Some(CONFIG));
    server.wait_healthy().await;

    let mut failures = Vec::new();
    for path in garbage_paths() {
        for method in ["GET", "HEAD"] {
            let req =
                format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            match server.raw(req.as_bytes()).await {
                Ok(resp) => match raw_status(&resp) {
                    Some(404) => {}
                    other => failures.push(format!("{method} {path}: status {other:?}")),
                },
                Err((e, _)) => failures.push(format!("{method} {path}: {e}")),
            }
        }
    }

    // Requests that are not valid HTTP: a 4xx or a closed connection, never a 5xx.
    let garbage: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03 hello\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n".to_vec(),
        b"POST /api/v1/releases HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX: \x01\x02\xff\r\nConnection: close\r\n\r\n".to_vec(),
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n", "y".repeat(1_000_000)).into_bytes(),
        harness::pseudo_random_bytes("noise", 4096),
    ];
    for (i, req) in garbage.iter().enumerate() {
        match server.raw(req).await {
            Ok(resp) | Err((_, resp)) => {
                if let Some(status) = raw_status(&resp) {
                    if !(400..500).contains(&status) {
                        failures.push(format!("garbage request #{i}: status {status}"));
                    }
                }
            }
        }
    }

    let health = server.wait_healthy().await;
    assert_eq!(health["status"], "ok");
    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    assert!(
        failures.is_empty(),
        "{} wrong answers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
