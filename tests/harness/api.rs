//! The server's HTTP API as tests call it: health, uploads, releases, tokens, and the TUF
//! client workflow of `ota_common` run over HTTPS.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ota_common::client::{
    refresh_with, ClientLimits, FetchRequest, FetchResponse, LocalMetadata, TrustedRepository,
};
use serde_json::{json, Value};

use super::ServerProcess;

/// Reads a response body as JSON; panics with the status and text if it is not JSON.
pub async fn json_body(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.expect("reading response body");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"))
}

/// Checks that `body` has exactly the shape of `ota_common::api::ApiError`
/// (`{"error": "<code>", "message": "<text>"}`, both non-empty strings) and returns the code.
pub fn assert_api_error(body: &Value) -> String {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("ApiError must be a JSON object: {body}"));
    let code = obj.get("error").and_then(Value::as_str);
    let message = obj.get("message").and_then(Value::as_str);
    assert!(
        obj.len() == 2
            && code.is_some_and(|c| !c.is_empty())
            && message.is_some_and(|m| !m.is_empty()),
        "not an ApiError {{error, message}}: {body}"
    );
    // Serde agrees: the body decodes as the shared wire type.
    let decoded: ota_common::api::ApiError =
        serde_json::from_value(body.clone()).expect("decodes as ota_common::api::ApiError");
    decoded.error
}

/// Asserts `resp` has status `status` and an ApiError JSON body; returns the error code.
pub async fn expect_api_error(resp: reqwest::Response, status: u16) -> String {
    let got = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.expect("reading error body");
    assert_eq!(got, status, "status (body {text:?})");
    assert!(
        ctype.starts_with("application/json"),
        "status {got}: ApiError must be application/json, got {ctype:?} with body {text:?}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {got}: body is not JSON ({e}): {text:?}"));
    assert_api_error(&body)
}

/// Reads a body into memory, refusing (panicking) past `max` bytes.
pub async fn body_bytes(mut resp: reqwest::Response, max: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("reading body") {
        out.extend_from_slice(&chunk);
        assert!(out.len() as u64 <= max, "body longer than {max} bytes");
    }
    out
}

impl ServerProcess {
    /// `GET /healthz` as JSON, whatever the status.
    pub async fn healthz(&self) -> (u16, Value) {
        let resp = self
            .client()
            .get(self.url("/healthz"))
            .send()
            .await
            .expect("GET /healthz");
        let status = resp.status().as_u16();
        (status, json_body(resp).await)
    }

    /// Waits (bounded) until `/healthz` answers 200 with `status: ok`; returns its JSON.
    /// A server that has printed its listening line may still be sweeping before it serves.
    pub async fn wait_healthy(&self) -> Value {
        let client = self.client();
        let url = self.url("/healthz");
        super::wait_for(
            "healthz ok",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let resp = client.get(&url).send().await.ok()?;
                    if resp.status() != reqwest::StatusCode::OK {
                        return None;
                    }
                    let v: Value = resp.json().await.ok()?;
                    (v["status"] == "ok").then_some(v)
                }
            },
        )
        .await
    }

    /// `PUT /api/v1/blobs` with `token`; the raw response.
    pub async fn upload_with(&self, token: &str, bytes: Vec<u8>) -> reqwest::Response {
        self.client()
            .put(self.url("/api/v1/blobs"))
            .bearer_auth(token)
            .body(bytes)
            .send()
            .await
            .expect("PUT /api/v1/blobs")
    }

    /// Uploads an image with the admin token; asserts 201 and the echoed hash and length;
    /// returns its sha256 (hex).
    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let expected = super::sha256_hex(&bytes);
        let len = bytes.len() as u64;
        let resp = self.upload_with(&self.admin_token(), bytes).await;
        assert_eq!(resp.status().as_u16(), 201, "upload status");
        let body = json_body(resp).await;
        assert_eq!(body["sha256"], expected.as_str(), "upload echo: {body}");
        assert_eq!(body["length"], len, "upload echo: {body}");
        expected
    }

    /// `POST /api/v1/releases` with `token`; the raw response.
    pub async fn publish_release_with(
        &self,
        token: &str,
        name: &str,
        sha256: &str,
        version: &str,
        hardware_ids: &[&str],
    ) -> reqwest::Response {
        self.client()
            .post(self.url("/api/v1/releases"))
            .bearer_auth(token)
            .json(&json!({
                "name": name,
                "sha256": sha256,
                "version": version,
                "hardware_ids": hardware_ids,
            }))
            .send()
            .await
            .expect("POST /api/v1/releases")
    }

    /// Publishes a release with the admin token (development mode: the server signs
    /// targets); asserts 200 and returns the outcome (`targets_version`, ...).
    pub async fn publish_release(
        &self,
        name: &str,
        sha256: &str,
        version: &str,
        hardware_ids: &[&str],
    ) -> Value {
        let resp = self
            .publish_release_with(&self.admin_token(), name, sha256, version, hardware_ids)
            .await;
        let status = resp.status().as_u16();
        let body = json_body(resp).await;
        assert_eq!(status, 200, "publish {name}: {body}");
        body
    }

    /// `GET /api/v1/releases` with the admin token.
    pub async fn releases(&self) -> Vec<Value> {
        let resp = self
            .client()
            .get(self.url("/api/v1/releases"))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .expect("GET /api/v1/releases");
        assert_eq!(resp.status().as_u16(), 200, "list releases");
        match json_body(resp).await {
            Value::Array(list) => list,
            other => panic!("releases must be a JSON array: {other}"),
        }
    }

    /// Creates a token with `role` through `POST /api/v1/tokens` (admin token); returns
    /// its secret.
    pub async fn create_token(&self, role: &str) -> String {
        let resp = self
            .client()
            .post(self.url("/api/v1/tokens"))
            .bearer_auth(self.admin_token())
            .json(&json!({"name": format!("test-{role}"), "role": role}))
            .send()
            .await
            .expect("POST /api/v1/tokens");
        let status = resp.status().as_u16();
        let body = json_body(resp).await;
        assert_eq!(status, 200, "create {role} token: {body}");
        assert_eq!(body["record"]["role"], role, "token record: {body}");
        body["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token secret in {body}"))
            .to_string()
    }

    /// `GET /metadata/{file}`: `None` on 404, the bytes on 200; panics on anything else.
    pub async fn metadata(&self, file: &str) -> Option<Vec<u8>> {
        fetch_metadata(&self.client(), &self.base_url(), file, 16 * 1024 * 1024).await
    }

    /// `GET /targets/{sha256}.{name}` (the consistent-snapshot path) as bytes; panics
    /// unless 200.
    pub async fn download_target(&self, name: &str, sha256: &str) -> Vec<u8> {
        let resp = self
            .client()
            .get(self.url(&format!("/targets/{sha256}.{name}")))
            .send()
            .await
            .expect("GET target");
        assert_eq!(resp.status().as_u16(), 200, "download {name}");
        body_bytes(resp, u64::MAX).await
    }

    /// Runs `ota_common`'s TUF client workflow against this server over HTTPS, trusting
    /// `trusted_root` (bytes of a root.json), at the real current time.
    pub async fn tuf_refresh(&self, trusted_root: &[u8]) -> Result<TrustedRepository, String> {
        tuf_refresh(&self.client(), &self.base_url(), trusted_root, now()).await
    }
}

/// The current time (chrono's `clock` feature is not enabled in this workspace).
pub fn now() -> DateTime<Utc> {
    DateTime::<Utc>::from(std::time::SystemTime::now())
}

/// `GET base/metadata/file` reading at most `max` bytes (+1 to detect excess): `None` on 404.
pub async fn fetch_metadata(
    client: &reqwest::Client,
    base: &str,
    file: &str,
    max: u64,
) -> Option<Vec<u8>> {
    let resp = client
        .get(format!("{base}/metadata/{file}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET metadata/{file}: {e}"));
    match resp.status().as_u16() {
        404 => None,
        200 => {
            let mut resp = resp;
            let mut out = Vec::new();
            while let Some(c) = resp.chunk().await.expect("metadata body") {
                out.extend_from_slice(&c);
                if out.len() as u64 > max {
                    break;
                }
            }
            Some(out)
        }
        s => panic!("GET metadata/{file}: unexpected status {s}"),
    }
}

/// `ota_common::client::refresh_with` with an HTTPS fetcher. The workflow's fetcher is
/// blocking, so it runs on a blocking thread that drives each request on this runtime.
pub async fn tuf_refresh(
    client: &reqwest::Client,
    base: &str,
    trusted_root: &[u8],
    now: DateTime<Utc>,
) -> Result<TrustedRepository, String> {
    let local = LocalMetadata {
        root: trusted_root.to_vec(),
        ..LocalMetadata::default()
    };
    let (client, base) = (client.clone(), base.to_string());
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let fetch = |req: &FetchRequest| -> Result<FetchResponse, String> {
            let got = handle.block_on(fetch_metadata(&client, &base, &req.file, req.max_length));
            Ok(match got {
                Some(bytes) => FetchResponse::Found(bytes),
                None => FetchResponse::NotFound,
            })
        };
        refresh_with(local, now, ClientLimits::default(), fetch).map_err(|e| e.to_string())
    })
    .await
    .expect("refresh task")
}
