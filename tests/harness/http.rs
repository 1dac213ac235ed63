//! TLS and HTTP clients that trust exactly one CA (never the system store), optionally
//! presenting a device certificate, plus a raw TLS connection for requests that an HTTP
//! client library would refuse to send or would normalise.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::ServerProcess;

/// Per-request bound for the harness's clients: generous, only there so that a hung
/// server fails the test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Installs aws-lc-rs as rustls's process default (idempotent): reqwest's
/// `rustls-tls-manual-roots-no-provider` build and our configs both need one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A rustls client configuration trusting only the CA certificates in `ca_pem_path`, with
/// the device identity `(cert_path, key_path)` if given. ALPN offers `alpn` (e.g.
/// `[b"http/1.1"]`); empty offers none.
pub fn tls_client_config(
    ca_pem_path: &Path,
    identity: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_pem_path)
        .unwrap_or_else(|e| panic!("reading CA {}: {e}", ca_pem_path.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("parsing CA {}: {e}", ca_pem_path.display()));
    assert!(
        !cas.is_empty(),
        "no certificate in {}",
        ca_pem_path.display()
    );
    for ca in cas {
        roots
            .add(ca)
            .expect("CA certificate is a usable trust anchor");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .unwrap_or_else(|e| panic!("reading {}: {e}", cert.display()))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("parsing {}: {e}", cert.display()));
            let key = PrivateKeyDer::from_pem_file(key)
                .unwrap_or_else(|e| panic!("reading key {}: {e}", key.display()));
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate and key match")
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// An HTTPS client (HTTP/1.1) trusting only `ca_pem_path`, with an optional device identity.
pub fn https_client(ca_pem_path: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let tls = tls_client_config(ca_pem_path, identity, &[b"http/1.1"]);
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("building the HTTPS client")
}

/// Opens a TLS connection to `addr` (SNI `127.0.0.1`, which the development server
/// certificate names) and completes the handshake.
pub async fn tls_connect(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("IP server name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Sends `request` (raw bytes, e.g. `GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`)
/// over a fresh TLS connection and reads until the server closes it (bounded by
/// [`REQUEST_TIMEOUT`]). Returns everything received, or the I/O error that ended the
/// exchange together with what arrived before it.
pub async fn raw_exchange(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    request: &[u8],
) -> Result<Vec<u8>, (std::io::Error, Vec<u8>)> {
    let exchange = async {
        let mut tls = tls_connect(addr, config)
            .await
            .map_err(|e| (e, Vec::new()))?;
        tls.write_all(request).await.map_err(|e| (e, Vec::new()))?;
        tls.flush().await.map_err(|e| (e, Vec::new()))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err((e, got)),
            }
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => panic!("raw exchange with {addr} did not finish within {REQUEST_TIMEOUT:?}"),
    }
}

/// The status code of a raw HTTP/1.x response (`HTTP/1.1 404 Not Found` → 404).
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

impl ServerProcess {
    /// An HTTPS client trusting only this server's development CA.
    pub fn client(&self) -> reqwest::Client {
        https_client(&self.ca_path(), None)
    }

    /// An HTTPS client trusting this server's CA and presenting a device identity.
    pub fn client_with_identity(&self, cert: &Path, key: &Path) -> reqwest::Client {
        https_client(&self.ca_path(), Some((cert, key)))
    }

    /// A rustls configuration trusting this server's CA (HTTP/1.1 ALPN), for raw requests.
    pub fn tls_config(&self) -> rustls::ClientConfig {
        tls_client_config(&self.ca_path(), None, &[b"http/1.1"])
    }

    /// Sends raw HTTP bytes to this server over TLS; see [`raw_exchange`].
    pub async fn raw(&self, request: &[u8]) -> Result<Vec<u8>, (std::io::Error, Vec<u8>)> {
        raw_exchange(self.addr(), self.tls_config(), request).await
    }
}
