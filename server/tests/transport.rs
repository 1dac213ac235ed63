//! The HTTPS transport end to end, in process: real TLS on 127.0.0.1 port 0, a real
//! hyper client, and the dev PKI for every certificate.

#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ota_server::identity::PeerIdentity;
use ota_server::limits::Limits;
use ota_server::pki::DevPki;
use ota_server::serve::{serve_with_metrics, ConnectionInfo, TransportMetrics, TransportStats};
use ota_server::tls::{self, install_crypto_provider, MinTlsVersion};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Generous bound for anything that should happen "soon": a correctness bound, not a
/// speed test.
const SOON: Duration = Duration::from_secs(20);

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(SOON, fut).await.expect("timed out")
}

/// Lets a test hold a request inside its handler.
#[derive(Default)]
struct Gate {
    entered: Notify,
    release: Notify,
}

fn app(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/whoami",
            get(|id: Option<PeerIdentity>| async move {
                id.map_or("anonymous".to_string(), |i| i.device_id)
            }),
        )
        .route(
            "/device-only",
            get(|id: PeerIdentity| async move { id.cert_sha256 }),
        )
        .route(
            "/peer",
            get(|Extension(info): Extension<ConnectionInfo>| async move { info.peer.to_string() }),
        )
        .route(
            "/echo-len",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/upload",
            post(|body: Bytes| async move { body.len().to_string() })
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/wait",
            get(move || async move {
                gate.entered.notify_one();
                gate.release.notified().await;
                "done"
            }),
        )
}

struct TestServer {
    addr: SocketAddr,
    pki: DevPki,
    _dir: tempfile::TempDir,
    metrics: Arc<TransportMetrics>,
    gate: Arc<Gate>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<io::Result<()>>,
}

impl TestServer {
    async fn start(limits: Limits) -> Self {
        Self::start_with(limits, MinTlsVersion::Tls13).await
    }

    async fn start_with(limits: Limits, min_version: MinTlsVersion) -> Self {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let mut settings = pki.tls_settings();
        settings.min_version = min_version;
        let tls = tls::server_config(&settings).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(TransportMetrics::new());
        let gate = Arc::new(Gate::default());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve_with_metrics(
            listener,
            tls,
            limits,
            app(gate.clone()),
            metrics.clone(),
            async {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            pki,
            _dir: dir,
            metrics,
            gate,
            shutdown: Some(tx),
            handle,
        }
    }

    fn stats(&self) -> TransportStats {
        self.metrics.snapshot()
    }

    /// Waits until the server's counters satisfy `pred` (the server side of a handshake
    /// may finish after the client side).
    async fn wait_stats(&self, pred: impl Fn(&TransportStats) -> bool) -> TransportStats {
        within(async {
            loop {
                let s = self.stats();
                if pred(&s) {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// A client that trusts this server's CA and offers `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        client_config(
            self.pki.ca_cert_pem(),
            None,
            alpn,
            &[&rustls::version::TLS13],
        )
    }

    /// A client with a device certificate for `device_id` from this server's device CA.
    fn device_client(&self, device_id: &str) -> Arc<ClientConfig> {
        let cred = self.pki.issue_device_cert(device_id, 30).unwrap();
        client_config(
            self.pki.ca_cert_pem(),
            Some(cred),
            &[b"http/1.1"],
            &[&rustls::version::TLS13],
        )
    }
}

fn client_config(
    ca_pem: &str,
    client_cert: Option<(String, String)>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    within(TlsConnector::from(config).connect(name, tcp)).await
}

struct Reply {
    status: StatusCode,
    version: Version,
    body: String,
}

/// One request on a fresh HTTP connection over `stream`, by the ALPN it negotiated.
async fn request(
    stream: TlsStream<TcpStream>,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<Reply, hyper::Error> {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let req = Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header(http::header::HOST, "localhost")
        .body(Full::new(body))
        .unwrap();
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    };
    let (status, version) = (resp.status(), resp.version());
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        version,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

async fn get_on(addr: SocketAddr, config: Arc<ClientConfig>, path: &str) -> Reply {
    let stream = connect(addr, config).await.unwrap();
    within(request(stream, "GET", path, Bytes::new()))
        .await
        .unwrap()
}

/// Reads until the server closes the connection; `true` if it did (EOF or reset).
async fn closed_by_server(stream: &mut (impl AsyncReadExt + Unpin)) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

#[tokio::test]
async fn server_prefers_aes_128_gcm_sha256_whatever_the_client_lists_first() {
    let server = TestServer::start(Limits::default()).await;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server.pki.ca_cert_pem().as_bytes()).unwrap())
        .unwrap();
    // rustls' own default order lists AES-256-GCM-SHA384 first.
    let default = rustls::crypto::aws_lc_rs::default_provider();
    assert_eq!(
        default.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    let config = ClientConfig::builder_with_provider(Arc::new(default))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = connect(server.addr, Arc::new(config)).await.unwrap();
    let suite = stream
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .unwrap()
        .suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
}

#[tokio::test]
async fn trusted_client_gets_200_over_http1_and_h2() {
    let server = TestServer::start(Limits::default()).await;

    let r = get_on(server.addr, server.client(&[b"http/1.1"]), "/hello").await;
    assert_eq!(
        (r.status, r.version, r.body.as_str()),
        (StatusCode::OK, Version::HTTP_11, "hello")
    );

    let r = get_on(server.addr, server.client(&[b"h2"]), "/hello").await;
    assert_eq!(
        (r.status, r.version, r.body.as_str()),
        (StatusCode::OK, Version::HTTP_2, "hello")
    );

    // No ALPN at all: HTTP/1.1.
    let r = get_on(server.addr, server.client(&[]), "/hello").await;
    assert_eq!(r.version, Version::HTTP_11);

    // Without a client certificate the peer is anonymous, and device routes refuse it.
    let r = get_on(server.addr, server.client(&[b"h2"]), "/whoami").await;
    assert_eq!(r.body, "anonymous");
    let r = get_on(server.addr, server.client(&[b"h2"]), "/device-only").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = get_on(server.addr, server.client(&[b"http/1.1"]), "/peer").await;
    assert!(r.body.starts_with("127.0.0.1:"), "{}", r.body);
    let s = server.wait_stats(|s| s.handshakes_ok >= 6).await;
    assert_eq!(s.handshakes_failed, 0);
}

#[tokio::test]
async fn client_trusting_another_ca_fails_the_handshake() {
    let server = TestServer::start(Limits::default()).await;
    let other = tempfile::tempdir().unwrap();
    let other_pki = DevPki::load_or_create(other.path()).unwrap();
    let config = client_config(
        other_pki.ca_cert_pem(),
        None,
        &[b"h2"],
        &[&rustls::version::TLS13],
    );
    let err = connect(server.addr, config).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    server.wait_stats(|s| s.handshakes_failed == 1).await;
}

#[tokio::test]
async fn device_certificate_is_seen_as_peer_identity() {
    let server = TestServer::start(Limits::default()).await;
    let config = server.device_client("dev-0007");
    let r = get_on(server.addr, config.clone(), "/whoami").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "dev-0007"));
    let r = get_on(server.addr, config, "/device-only").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 64, "hex sha256 of the leaf: {}", r.body);
}

#[tokio::test]
async fn identity_survives_session_resumption() {
    let server = TestServer::start(Limits::default()).await;
    let config = server.device_client("dev-resume");
    // The first request also reads the session tickets the server sends after the handshake.
    assert_eq!(
        get_on(server.addr, config.clone(), "/whoami").await.body,
        "dev-resume"
    );
    let stream = connect(server.addr, config).await.unwrap();
    assert_eq!(
        stream.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let r = within(request(stream, "GET", "/whoami", Bytes::new()))
        .await
        .unwrap();
    assert_eq!(r.body, "dev-resume");
    server.wait_stats(|s| s.handshakes_resumed == 1).await;
}

#[tokio::test]
async fn client_certificate_from_foreign_ca_is_refused() {
    let server = TestServer::start(Limits::default()).await;
    let other = tempfile::tempdir().unwrap();
    let foreign = DevPki::load_or_create(other.path()).unwrap();
    let cred = foreign.issue_device_cert("dev-0007", 30).unwrap();
    let config = client_config(
        server.pki.ca_cert_pem(),
        Some(cred),
        &[b"http/1.1"],
        &[&rustls::version::TLS13],
    );
    // In TLS 1.3 the client finishes its side before the server has checked its
    // certificate, so the refusal may surface at connect or at the first request.
    let refused = match connect(server.addr, config).await {
        Err(_) => true,
        Ok(stream) => within(request(stream, "GET", "/whoami", Bytes::new()))
            .await
            .is_err(),
    };
    assert!(refused);
    let s = server.wait_stats(|s| s.handshakes_failed == 1).await;
    assert_eq!(s.handshakes_ok, 0);
}

#[tokio::test]
async fn silent_client_is_dropped_after_handshake_timeout() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    assert!(within(closed_by_server(&mut tcp)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the timeout"
    );
    let s = server.wait_stats(|s| s.handshake_timeouts == 1).await;
    assert_eq!(s.connections_active, 0);
}

#[tokio::test]
async fn http1_client_that_sends_no_request_is_dropped() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let mut stream = connect(server.addr, server.client(&[b"http/1.1"]))
        .await
        .unwrap();
    assert!(within(closed_by_server(&mut stream)).await);
}

#[tokio::test]
async fn idle_h2_connection_is_dropped() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let mut stream = connect(server.addr, server.client(&[b"h2"])).await.unwrap();
    // The server speaks first in h2 (SETTINGS), then must give up on the silent client.
    assert!(within(closed_by_server(&mut stream)).await);
}

#[tokio::test]
async fn connection_over_the_cap_is_dropped() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let config = server.client(&[b"http/1.1"]);

    // Hold one connection open (HTTP/1.1 keep-alive after a request).
    let first = connect(server.addr, config.clone()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(first))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = Request::get("/hello")
        .header(http::header::HOST, "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );

    assert!(connect(server.addr, config.clone()).await.is_err());
    server.wait_stats(|s| s.connections_rejected == 1).await;

    // Closing the first frees the slot (once the server has noticed).
    drop(sender);
    conn_task.abort();
    server.wait_stats(|s| s.connections_active == 0).await;
    let r = get_on(server.addr, config, "/hello").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_then_returns() {
    let mut server = TestServer::start(Limits::default()).await;
    let config = server.client(&[b"h2"]);
    let stream = connect(server.addr, config.clone()).await.unwrap();
    let in_flight = tokio::spawn(request(stream, "GET", "/wait", Bytes::new()));
    within(server.gate.entered.notified()).await;

    let _ = server.shutdown.take().unwrap().send(());
    // The listener closes: new connections are refused.
    within(async {
        while TcpStream::connect(server.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The request is still held, so serve cannot have returned.
    assert!(!server.handle.is_finished());

    server.gate.release.notify_one();
    let r = within(in_flight).await.unwrap().unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "done"));
    within(&mut server.handle).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_with_idle_server_returns() {
    let mut server = TestServer::start(Limits::default()).await;
    // An idle keep-alive connection must not hold shutdown up.
    let idle = connect(server.addr, server.client(&[b"http/1.1"]))
        .await
        .unwrap();
    server.wait_stats(|s| s.handshakes_ok == 1).await;
    let _ = server.shutdown.take().unwrap().send(());
    within(&mut server.handle).await.unwrap().unwrap();
    drop(idle);
}

#[tokio::test]
async fn tls12_only_when_configured() {
    let server = TestServer::start(Limits::default()).await;
    let tls12 = client_config(
        server.pki.ca_cert_pem(),
        None,
        &[b"h2"],
        &[&rustls::version::TLS12],
    );
    assert!(connect(server.addr, tls12.clone()).await.is_err());

    let server12 = TestServer::start_with(Limits::default(), MinTlsVersion::Tls12).await;
    let tls12 = client_config(
        server12.pki.ca_cert_pem(),
        None,
        &[b"h2"],
        &[&rustls::version::TLS12],
    );
    let stream = connect(server12.addr, tls12).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test]
async fn body_limits_default_and_hard_cap() {
    let limits = Limits {
        max_body_bytes: 100,
        max_upload_bytes: 1000,
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let config = server.client(&[b"h2"]);
    let post = |path: &'static str, len: usize| {
        let config = config.clone();
        async move {
            let stream = connect(server.addr, config).await.unwrap();
            within(request(stream, "POST", path, Bytes::from(vec![b'x'; len])))
                .await
                .unwrap()
        }
    };
    assert_eq!(post("/echo-len", 100).await.body, "100");
    assert_eq!(
        post("/echo-len", 101).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // An upload route lifts the default but not the hard cap.
    assert_eq!(post("/upload", 1000).await.body, "1000");
    assert_eq!(
        post("/upload", 1001).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}
