//! HTTPS to the server: mutual TLS with the device certificate, a pinned CA, bounded
//! reads of metadata, ranged downloads, and JSON calls. Errors say whether the server
//! refused us, could not be reached, or presented a certificate we do not trust.

use std::time::Duration;

use ota_common::api::ApiError;
use ota_common::client::{FetchRequest, FetchResponse};
use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::AgentConfig;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Local TLS material is missing or invalid.
    #[error("TLS setup: {0}")]
    Setup(String),
    /// The server's certificate does not chain to our pinned CA (or names another host).
    #[error("server certificate not trusted: {0}")]
    CertificateMismatch(String),
    /// Connecting or reading failed.
    #[error("network: {0}")]
    Network(String),
    /// The server answered with an error.
    #[error("server refused ({status}): {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Stable code from the body.
        code: String,
        /// Message from the body.
        message: String,
    },
    /// The server (or a mirror) answered a ranged request with the whole file.
    #[error("the server ignored the Range request; the download must restart from 0")]
    RangeIgnored,
    /// The response is not what the API promises.
    #[error("unexpected response: {0}")]
    Protocol(String),
}

impl TransportError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        // rustls' certificate errors are deep in the source chain.
        let mut chain = String::new();
        let mut src: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = src {
            chain.push_str(&s.to_string());
            chain.push_str(": ");
            src = s.source();
        }
        let lower = chain.to_lowercase();
        if lower.contains("certificate") && !lower.contains("certificate required") {
            TransportError::CertificateMismatch(chain)
        } else {
            TransportError::Network(chain)
        }
    }
}

/// The HTTPS client.
#[derive(Clone)]
pub struct Transport {
    client: reqwest::Client,
    base: String,
}

impl Transport {
    /// Builds a client from the configuration's CA, certificate and key.
    pub fn new(cfg: &AgentConfig) -> Result<Self, TransportError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| TransportError::Setup(format!("{}: {e}", p.display())))
        };
        let ca_pem = read(&cfg.ca_file)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| TransportError::Setup(format!("CA file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| TransportError::Setup(format!("CA file: {e}")))?;
        }
        let cert_pem = read(&cfg.cert_file)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TransportError::Setup(format!("device certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&cfg.key_file)?)
            .map_err(|e| TransportError::Setup(format!("device key: {e}")))?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TransportError::Setup(format!("device identity: {e}")))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| TransportError::Setup(e.to_string()))?;
        Ok(Transport {
            client,
            base: cfg.server_url.trim_end_matches('/').to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// Fetches a metadata file, reading at most `max_length + 1` bytes (so that an endless
    /// response is refused by the client workflow without being held in memory).
    pub async fn fetch_metadata(
        &self,
        req: &FetchRequest,
    ) -> Result<FetchResponse, TransportError> {
        let mut resp = self
            .client
            .get(self.url(&format!("metadata/{}", req.file)))
            .send()
            .await
            .map_err(TransportError::from_reqwest)?;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN if req.not_found_ends_step => {
                return Ok(FetchResponse::NotFound)
            }
            StatusCode::NOT_FOUND => return Ok(FetchResponse::NotFound),
            s if !s.is_success() => {
                return Err(TransportError::Protocol(format!(
                    "metadata/{}: HTTP {s}",
                    req.file
                )))
            }
            _ => {}
        }
        let cap = usize::try_from(req.max_length.saturating_add(1)).unwrap_or(usize::MAX);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(TransportError::from_reqwest)? {
            let room = cap.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= cap {
                break;
            }
        }
        Ok(FetchResponse::Found(body))
    }

    /// Starts downloading `path` (below `targets/`) from byte `offset`. Returns the response
    /// positioned at `offset`, checking that the server honoured the range.
    pub async fn download(
        &self,
        path: &str,
        offset: u64,
    ) -> Result<reqwest::Response, TransportError> {
        let mut req = self.client.get(self.url(&format!("targets/{path}")));
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().await.map_err(TransportError::from_reqwest)?;
        match resp.status() {
            StatusCode::OK if offset == 0 => Ok(resp),
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let ok = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with(&format!("bytes {offset}-")));
                if ok {
                    Ok(resp)
                } else {
                    Err(TransportError::Protocol(
                        "Content-Range does not match the requested offset".into(),
                    ))
                }
            }
            StatusCode::OK => Err(TransportError::RangeIgnored),
            s => Err(TransportError::Protocol(format!(
                "targets/{path}: HTTP {s}"
            ))),
        }
    }

    /// POSTs JSON and decodes the JSON answer; a 4xx/5xx becomes [`TransportError::Refused`].
    pub async fn post_json<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, TransportError> {
        let resp = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .map_err(TransportError::from_reqwest)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(TransportError::from_reqwest)?;
        if !status.is_success() {
            let err: Option<ApiError> = serde_json::from_slice(&bytes).ok();
            return Err(TransportError::Refused {
                status: status.as_u16(),
                code: err
                    .as_ref()
                    .map(|e| e.error.clone())
                    .unwrap_or_else(|| "http_error".into()),
                message: err
                    .map(|e| e.message)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect()),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| TransportError::Protocol(format!("{path}: {e}")))
    }
}
