//! The server's rustls configuration.
//!
//! One crypto provider only: aws-lc-rs. [`install_crypto_provider`] makes it the process
//! default (rustls panics at runtime if a component asks for the default and none is set);
//! [`server_config`] passes it explicitly, so it does not depend on that call.
//!
//! Client authentication is optional at the TLS layer: devices present a certificate from
//! the device CA, operators connect without one and use API tokens. A certificate that *is*
//! presented must chain to the device CA and carry the clientAuth EKU, or the handshake
//! fails. Routes that serve devices require the resulting [`crate::identity::PeerIdentity`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// ALPN id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// How many TLS 1.2 sessions (and TLS 1.3 sessions when tickets cannot be used) the
/// server remembers for resumption. Entries are small; a fleet reconnects often.
const SESSION_CACHE_SIZE: usize = 4096;

/// The oldest TLS version the server accepts.
///
/// CAUTION: TLS 1.2 is only for old clients that cannot do 1.3; it has a weaker handshake
/// (no encrypted certificates, so a device's identity is visible on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum MinTlsVersion {
    /// TLS 1.3 only (the default).
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    Tls12,
}

/// Where the server's TLS material lives (the `[tls]` table of the server config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the server certificate, followed by any intermediates.
    pub cert_path: PathBuf,
    /// PEM file with the server's private key (PKCS#8, SEC1 or PKCS#1).
    pub key_path: PathBuf,
    /// PEM file with the CA certificate(s) that issue device client certificates.
    pub device_ca_path: PathBuf,
    /// Oldest TLS version accepted: `"1.3"` (default) or `"1.2"`.
    #[serde(default)]
    pub min_version: MinTlsVersion,
}

/// A failure to build the TLS configuration, naming the file or step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds no object of the expected kind.
    #[error("load {what} from {path}: {reason}")]
    Pem {
        /// What was expected ("server certificate chain", "device CA", ...).
        what: &'static str,
        /// The file (or `<memory>` for PEM passed as bytes).
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A device CA certificate was rejected as a trust anchor.
    #[error("add device CA certificate from {path} as trust anchor: {source}")]
    TrustAnchor {
        /// The file.
        path: PathBuf,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("build client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// rustls refused a part of the configuration.
    #[error("{op}: {source}")]
    Rustls {
        /// The step ("set server certificate", ...).
        op: &'static str,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
}

/// Installs aws-lc-rs as the process-wide rustls crypto provider. Idempotent: call it at
/// the top of every `main` and test helper.
pub fn install_crypto_provider() {
    // Err means a provider is already installed; with one provider compiled in, it is ours.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The crypto provider every config in this crate is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server's provider: aws-lc with TLS 1.3's AES-128-GCM-SHA256 preferred (see
/// [`server_config`]: the server's order wins over the client's).
///
/// Why: a resumed handshake, what a polling device does every few minutes, is mostly
/// key-schedule hashing, and with the client's usual first choice (AES-256-GCM-SHA384)
/// that is SHA-384, which has no hardware instruction on common x86 CPUs; SHA-256 has
/// (SHA-NI). AES-128-GCM also encrypts downloads faster. Both are TLS 1.3's standard
/// suites; nothing weaker is offered, and the rest keep aws-lc's order.
pub fn server_provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// Builds the server config from the PEM files named in `settings`.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let chain = read("server certificate chain", &settings.cert_path)?;
    let key = read("server private key", &settings.key_path)?;
    let device_ca = read("device CA", &settings.device_ca_path)?;
    build(
        PemSource::new(&chain, &settings.cert_path),
        PemSource::new(&key, &settings.key_path),
        PemSource::new(&device_ca, &settings.device_ca_path),
        settings.min_version,
    )
}

/// Builds the server config from PEM bytes already in memory.
pub fn server_config_from_pem(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    device_ca_pem: &[u8],
    min_version: MinTlsVersion,
) -> Result<Arc<ServerConfig>, TlsError> {
    let memory = Path::new("<memory>");
    build(
        PemSource::new(cert_chain_pem, memory),
        PemSource::new(key_pem, memory),
        PemSource::new(device_ca_pem, memory),
        min_version,
    )
}

/// PEM bytes and where they came from, for error messages.
struct PemSource<'a> {
    bytes: &'a [u8],
    path: &'a Path,
}

impl<'a> PemSource<'a> {
    fn new(bytes: &'a [u8], path: &'a Path) -> Self {
        Self { bytes, path }
    }

    fn error(&self, what: &'static str, reason: impl ToString) -> TlsError {
        TlsError::Pem {
            what,
            path: self.path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    fn certs(&self, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(what, e))?;
        if certs.is_empty() {
            return Err(self.error(what, "no CERTIFICATE block found"));
        }
        Ok(certs)
    }
}

fn build(
    chain: PemSource<'_>,
    key: PemSource<'_>,
    device_ca: PemSource<'_>,
    min_version: MinTlsVersion,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain_certs = chain.certs("server certificate chain")?;
    let key_der =
        PrivateKeyDer::from_pem_slice(key.bytes).map_err(|e| key.error("server private key", e))?;

    let mut roots = RootCertStore::empty();
    for ca in device_ca.certs("device CA")? {
        roots.add(ca).map_err(|source| TlsError::TrustAnchor {
            path: device_ca.path.to_path_buf(),
            source,
        })?;
    }
    let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()?;

    let versions: &[&'static SupportedProtocolVersion] = match min_version {
        MinTlsVersion::Tls13 => &[&rustls::version::TLS13],
        MinTlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(versions)
        .map_err(|source| TlsError::Rustls {
            op: "select TLS versions",
            source,
        })?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain_certs, key_der)
        .map_err(|source| TlsError::Rustls {
            op: "set server certificate and key",
            source,
        })?;

    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.ignore_client_order = true;
    // Resumption: stateless tickets (TLS 1.3 and 1.2) plus a stateful cache, so that a
    // fleet of reconnecting devices mostly skips the full handshake.
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|source| TlsError::Rustls {
            op: "create session ticketer",
            source,
        })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::pki::DevPki;

    #[test]
    fn builds_from_dev_pki_files() {
        install_crypto_provider();
        install_crypto_provider(); // idempotent
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let config = server_config(&pki.tls_settings()).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(config.ticketer.enabled());
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let mut settings = pki.tls_settings();
        settings.key_path = dir.path().join("nope.key");
        let err = server_config(&settings).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("server private key") && msg.contains("nope.key"),
            "{msg}"
        );
    }

    #[test]
    fn empty_pem_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let key = std::fs::read(pki.server_key_path()).unwrap();
        let chain = std::fs::read(pki.server_cert_path()).unwrap();
        let err = server_config_from_pem(b"", &key, b"x", MinTlsVersion::Tls13).unwrap_err();
        assert!(
            err.to_string().contains("server certificate chain"),
            "{err}"
        );
        let err = server_config_from_pem(&chain, &key, b"", MinTlsVersion::Tls13).unwrap_err();
        assert!(err.to_string().contains("device CA"), "{err}");
        let err = server_config_from_pem(&chain, b"", &chain, MinTlsVersion::Tls13).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
    }

    #[test]
    fn wrong_key_for_cert_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::load_or_create(dir.path()).unwrap();
        let chain = std::fs::read(pki.server_cert_path()).unwrap();
        let other_key = std::fs::read(dir.path().join("ca.key")).unwrap();
        let ca = pki.device_ca_cert_pem().as_bytes();
        let err = server_config_from_pem(&chain, &other_key, ca, MinTlsVersion::Tls13);
        assert!(matches!(err, Err(TlsError::Rustls { .. })), "{err:?}");
    }

    #[test]
    fn settings_parse_from_toml_with_default_version() {
        let s: TlsSettings =
            toml::from_str("cert_path = 'a.crt'\nkey_path = 'a.key'\ndevice_ca_path = 'd.crt'")
                .unwrap();
        assert_eq!(s.min_version, MinTlsVersion::Tls13);
        let s: TlsSettings = toml::from_str(
            "cert_path = 'a'\nkey_path = 'b'\ndevice_ca_path = 'c'\nmin_version = '1.2'",
        )
        .unwrap();
        assert_eq!(s.min_version, MinTlsVersion::Tls12);
        let bad = toml::from_str::<TlsSettings>(
            "cert_path = 'a'\nkey_path = 'b'\ndevice_ca_path = 'c'\nmin_version = '1.1'",
        );
        assert!(bad.is_err());
    }
}
