//! The HTTPS client: rustls (TLS 1.3, pinned CA, optional device certificate, session
//! resumption per device, shared, or off) under hyper's HTTP/1.1 client connection.
//!
//! The connection future is driven inline, in the task that makes the requests, instead of
//! in a spawned task: one task per connection and no hand-off per request, so the client
//! spends as little CPU per request as it can (it shares the machine with the server).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::client::{ClientSessionMemoryCache, ResolvesClientCert, Resumption};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::identity::Identity;
use crate::sessions::DeviceSessions;
use crate::target::Target;

/// Largest response body kept in memory (JSON answers); bigger bodies are only counted.
const KEEP_BODY: usize = 64 * 1024;

/// Why a request failed, by the step that failed (the step is the error's class in the
/// report).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Local TLS material is unusable.
    #[error("TLS setup: {0}")]
    Setup(String),
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    /// HTTP failed (connection closed, malformed response, ...).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
}

impl ClientError {
    /// A short class name for counting.
    pub fn class(&self) -> &'static str {
        match self {
            ClientError::Setup(_) => "setup",
            ClientError::Connect(_) => "connect",
            ClientError::Tls(_) => "tls",
            ClientError::Http(_) => "http",
        }
    }
}

/// How TLS sessions are resumed when a new connection is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResumeMode {
    /// Every connection is a full handshake.
    Off,
    /// Each device keeps its own session cache: what real devices do.
    Device,
    /// One cache for all devices. CAUTION: a resumed session carries the identity of the
    /// device that made it, so the server attributes polls to the wrong devices; only for
    /// measuring the cost of resumption itself.
    Global,
}

/// The shared part of every connection's TLS configuration.
#[derive(Clone)]
pub struct TlsBase {
    config: Arc<ClientConfig>,
    global_sessions: Arc<ClientSessionMemoryCache>,
    resume: ResumeMode,
}

impl TlsBase {
    /// TLS 1.3 only, trusting only the CA certificates in `ca_pem`, ALPN `http/1.1`.
    pub fn new(ca_pem: &[u8], resume: ResumeMode) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ClientError::Setup(format!("CA file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Setup(format!("CA file: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Setup("CA file holds no certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(TlsBase {
            config: Arc::new(config),
            global_sessions: Arc::new(ClientSessionMemoryCache::new(4096)),
            resume,
        })
    }

    /// The configuration of one device (or of an anonymous client with `None`). Make it once
    /// per device and keep it: it holds the device's session cache.
    pub fn device_config(
        &self,
        identity: Option<&Identity>,
    ) -> Result<Arc<ClientConfig>, ClientError> {
        let mut config = (*self.config).clone();
        if let Some(id) = identity {
            let provider = config.crypto_provider().clone();
            let key = provider
                .key_provider
                .load_private_key(id.key.clone_key())
                .map_err(|e| ClientError::Setup(format!("device key {}: {e}", id.id)))?;
            let certified = CertifiedKey::new(vec![id.cert.clone()], key);
            config.client_auth_cert_resolver = Arc::new(OneCert(Arc::new(certified)));
        }
        config.resumption = match self.resume {
            ResumeMode::Off => Resumption::disabled(),
            ResumeMode::Device => Resumption::store(Arc::new(DeviceSessions::default())),
            ResumeMode::Global => Resumption::store(self.global_sessions.clone()),
        };
        Ok(Arc::new(config))
    }
}

/// Presents the device's certificate whenever the server asks for one.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesClientCert for OneCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

type ConnFuture = http1::Connection<TokioIo<TlsStream<TcpStream>>, Full<Bytes>>;

/// One HTTP/1.1 connection over TLS.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Pin<Box<ConnFuture>>,
    driver_done: bool,
    /// Whether the TLS handshake resumed a session.
    pub resumed: bool,
}

/// A response: its status, its body length, and the body itself if small.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body bytes received.
    pub bytes: u64,
    /// The body, when at most 64 KiB.
    pub body: Option<Bytes>,
}

impl Conn {
    /// Connects to `target` with `config`.
    pub async fn open(target: &Target, config: Arc<ClientConfig>) -> Result<Conn, ClientError> {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(ClientError::Connect)?;
        // Small requests: do not wait for Nagle.
        tcp.set_nodelay(true).map_err(ClientError::Connect)?;
        let tls = TlsConnector::from(config)
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(ClientError::Tls)?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let (sender, driver) = http1::handshake(TokioIo::new(tls)).await?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            driver_done: false,
            resumed,
        })
    }

    /// Whether the connection can take another request.
    pub fn is_usable(&self) -> bool {
        !self.driver_done && !self.sender.is_closed()
    }

    /// Sends `req` and reads the whole answer (keeping it only if small).
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, ClientError> {
        let Conn {
            sender,
            driver,
            driver_done,
            ..
        } = self;
        drive(driver, driver_done, async move {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            let (mut bytes, mut kept) = (0u64, Vec::new());
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    bytes += data.len() as u64;
                    if kept.len() + data.len() <= KEEP_BODY {
                        kept.extend_from_slice(&data);
                    }
                }
            }
            let body = (bytes as usize <= KEEP_BODY).then(|| Bytes::from(kept));
            Ok(Answer {
                status,
                bytes,
                body,
            })
        })
        .await
    }
}

/// Runs `work` while also driving the connection's I/O, in this task.
async fn drive<T>(
    driver: &mut Pin<Box<ConnFuture>>,
    done: &mut bool,
    work: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::pin!(work);
    loop {
        if *done {
            return work.await;
        }
        tokio::select! {
            biased;
            out = &mut work => return out,
            // The connection ended (closed or failed); `work` then fails by itself.
            _ = driver.as_mut() => *done = true,
        }
    }
}

/// A request to `target`'s path (or `path`), with the Host header set.
pub fn request(
    method: http::Method,
    target: &Target,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, target.host_header.as_str());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body))
}
