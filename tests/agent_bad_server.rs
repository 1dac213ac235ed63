//! A hostile or wrong server never crashes the agent: it answers with a failed outcome of
//! a specific kind (exit code 2, no panic) and queues an anomaly for later delivery.
//!
//! - A server the agent trusts (it holds the development PKI's server certificate) that
//!   answers the poll and then serves garbage, or a 64 MiB body, as `timestamp.json`.
//! - The real server, with the agent pinning another CA: the TLS handshake fails.
//!
//! The hostile server is a few lines of HTTP/1.1 over tokio-rustls on its own thread and
//! runtime (the agent runs as a blocking child process meanwhile). It refuses the
//! anomaly, status and oplog uploads, so what the agent queued stays queued.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agent_harness::{AgentProcess, DeviceOptions, Lab};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body served as `/metadata/timestamp.json`.
#[derive(Clone, Copy, Debug)]
enum Timestamp {
    /// Bytes that are not JSON.
    Garbage,
    /// A 64 MiB body (the client's timestamp limit is 16 KiB).
    Huge,
}

const HUGE: u64 = 64 * 1024 * 1024;

/// What the hostile server saw.
#[derive(Default)]
struct Seen {
    paths: Mutex<Vec<String>>,
    timestamp_bytes_sent: AtomicU64,
}

/// Starts the hostile server with `cert`/`key` on 127.0.0.1; it lives until the test
/// process exits.
fn start_hostile(cert: &Path, key: &Path, ts: Timestamp) -> (SocketAddr, Arc<Seen>) {
    harness::install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let seen = Arc::new(Seen::default());
    let seen2 = Arc::clone(&seen);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen2));
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve(tls, ts, &seen).await;
                    }
                });
            }
        });
    });
    (rx.recv().unwrap(), seen)
}

/// One request per connection (`Connection: close`).
async fn serve<S>(mut conn: S, ts: Timestamp, seen: &Seen) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, path) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let body_len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + body_len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    seen.paths.lock().unwrap().push(format!("{method} {path}"));

    let respond = |status: &str, body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    match (method.as_str(), path.as_str()) {
        ("POST", "/api/v1/device/poll") => {
            conn.write_all(&respond("200 OK", br#"{"poll_after_secs":300}"#))
                .await?;
        }
        ("GET", "/metadata/timestamp.json") => match ts {
            Timestamp::Garbage => {
                conn.write_all(&respond("200 OK", b"\x00\xff<html>not metadata {{{"))
                    .await?;
            }
            Timestamp::Huge => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {HUGE}\r\nconnection: close\r\n\r\n"
                );
                conn.write_all(head.as_bytes()).await?;
                let block = vec![b'{'; 64 * 1024];
                let mut sent = 0u64;
                while sent < HUGE {
                    conn.write_all(&block).await?;
                    sent += block.len() as u64;
                    seen.timestamp_bytes_sent.store(sent, Ordering::Relaxed);
                }
            }
        },
        ("POST", _) => {
            conn.write_all(&respond(
                "503 Service Unavailable",
                br#"{"error":"unavailable","message":"hostile server keeps your reports"}"#,
            ))
            .await?;
        }
        _ => {
            conn.write_all(&respond(
                "404 Not Found",
                br#"{"error":"not_found","message":"no such file"}"#,
            ))
            .await?;
        }
    }
    conn.flush().await?;
    conn.shutdown().await
}

/// Asserts a clean failure of `kind` with the anomaly queued (not delivered).
fn assert_failed_with_queued_anomaly(dev: &AgentProcess, kind: &str) {
    let run = dev.once();
    let out = run.expect("failed");
    assert_eq!(out["kind"], kind, "{run}");
    assert_eq!(run.code, Some(2), "failed exits 2: {run}");
    assert!(
        !run.stderr.contains("panicked"),
        "the agent panicked: {run}"
    );
    let status = dev.status_json();
    let queued: Vec<&str> = status["undelivered_anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(queued.contains(&kind), "{kind} not queued: {status}");
    assert_eq!(status["pending"], serde_json::Value::Null, "{status}");
    assert_eq!(status["trying"], serde_json::Value::Null, "{status}");
}

#[tokio::test]
async fn hostile_or_wrong_servers_give_specific_failures_never_panics() {
    let lab = Lab::start().await;
    let pki = lab.server.data_dir().join("pki");
    let (cert, key) = (pki.join("server.crt"), pki.join("server.key"));

    // Garbage metadata.
    let (addr, seen) = start_hostile(&cert, &key, Timestamp::Garbage);
    let dev = lab.new_device(
        "hostile-garbage",
        DeviceOptions {
            server_url: Some(format!("https://{addr}")),
            ..DeviceOptions::default()
        },
    );
    assert_failed_with_queued_anomaly(&dev, "malformed_metadata");
    let paths = seen.paths.lock().unwrap().clone();
    assert!(
        paths.iter().any(|p| p == "GET /metadata/timestamp.json"),
        "the agent never asked for the timestamp: {paths:?}"
    );

    // Endless metadata: refused after the client's limit, not read to the end.
    let (addr, seen) = start_hostile(&cert, &key, Timestamp::Huge);
    let dev = lab.new_device(
        "hostile-huge",
        DeviceOptions {
            server_url: Some(format!("https://{addr}")),
            ..DeviceOptions::default()
        },
    );
    assert_failed_with_queued_anomaly(&dev, "endless_data");
    let sent = seen.timestamp_bytes_sent.load(Ordering::Relaxed);
    assert!(sent < HUGE, "the agent read all {sent} bytes");

    // The real server, but the agent pins another CA.
    let foreign = lab.dir().join("foreign");
    harness::issue_device_in(&foreign, "unused", &foreign.join("out"));
    let dev = lab.new_device(
        "wrong-ca",
        DeviceOptions {
            ca_file: Some(foreign.join("pki").join("ca.crt")),
            ..DeviceOptions::default()
        },
    );
    assert_failed_with_queued_anomaly(&dev, "certificate_mismatch");
    // The handshake failed, so the server never heard of the device.
    let resp = lab
        .server
        .client()
        .get(lab.server.url("/api/v1/devices/wrong-ca"))
        .bearer_auth(lab.server.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404, "the device reached the server");
}
