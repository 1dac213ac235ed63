//! The HTTPS client of the ota API: TLS 1.3 trusting only the pinned CA, the bearer token,
//! and the mapping of every failure to a [`CliError`] that says which kind it is (server
//! unreachable, certificate not trusted, unauthorized, refused with the server's message).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ota_common::api::ApiError;
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::CliError;

/// Environment variable holding the API token itself (never an option: command lines are
/// visible to every user of the machine).
pub const TOKEN_ENV: &str = "OTA_TOKEN";

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the server may stay silent mid-request (not a total: uploads may be long).
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest error body read to find the server's message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// An API token. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads a token from `file` (surrounding whitespace removed).
    pub fn from_file(file: &Path) -> Result<Token, CliError> {
        let text = std::fs::read_to_string(file).map_err(|source| CliError::ReadFile {
            what: "reading the token file",
            path: file.to_path_buf(),
            source,
        })?;
        warn_if_readable_by_others(file);
        Token::parse(&text)
            .ok_or_else(|| CliError::Usage(format!("token file {} is empty", file.display())))
    }

    /// A token from text; `None` when it is blank.
    pub fn parse(text: &str) -> Option<Token> {
        let t = text.trim();
        (!t.is_empty()).then(|| Token(t.to_string()))
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(file) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: token file {} is readable by other users; chmod 600 it",
                file.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_file: &Path) {}

/// How to reach the server.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Base URL, `https://host:port[/prefix]`.
    pub server: String,
    /// PEM file of the CA that issued the server's certificate (the only trust anchor).
    pub ca: PathBuf,
    /// API token, when the command needs one.
    pub token: Option<Token>,
}

/// A client of one server.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<Token>,
}

impl Client {
    /// Builds the client: parses the URL, loads the CA, configures TLS 1.3.
    pub fn new(opts: &ConnectOptions) -> Result<Client, CliError> {
        let base = parse_base_url(&opts.server)?;
        let roots = load_roots(&opts.ca)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CliError::ClientSetup(format!("TLS 1.3: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("ota-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::ClientSetup(e.to_string()))?;
        Ok(Client {
            http,
            base,
            token: opts.token.clone(),
        })
    }

    /// The URL of `segments` under the base; each segment is percent-encoded, so a name
    /// holding `/` or `?` stays one segment.
    pub fn endpoint(&self, segments: &[&str]) -> Result<Url, CliError> {
        endpoint_url(&self.base, segments)
    }

    /// A request with the token attached; refuses before sending when there is none.
    fn authed(&self, method: Method, url: Url) -> Result<RequestBuilder, CliError> {
        let token = self.token.as_ref().ok_or_else(|| {
            CliError::Usage(format!(
                "this command needs an API token: give --token-file PATH or set {TOKEN_ENV}"
            ))
        })?;
        Ok(self.http.request(method, url).bearer_auth(&token.0))
    }

    /// GET an authenticated JSON resource.
    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        let url = self.endpoint(segments)?;
        let req = self.authed(Method::GET, url.clone())?.query(query);
        json_body(&url, send(req, &url, "GET").await?).await
    }

    /// POST a JSON body; returns the JSON answer.
    pub async fn post<B: Serialize + ?Sized>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<Value, CliError> {
        let url = self.endpoint(segments)?;
        let req = self.authed(Method::POST, url.clone())?.json(body);
        json_body(&url, send(req, &url, "POST").await?).await
    }

    /// POST raw JSON bytes (signed metadata must reach the server byte for byte).
    pub async fn post_bytes(&self, segments: &[&str], bytes: Vec<u8>) -> Result<Value, CliError> {
        let url = self.endpoint(segments)?;
        let req = self
            .authed(Method::POST, url.clone())?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes);
        json_body(&url, send(req, &url, "POST").await?).await
    }

    /// DELETE; returns the JSON answer.
    pub async fn delete(&self, segments: &[&str]) -> Result<Value, CliError> {
        let url = self.endpoint(segments)?;
        let req = self.authed(Method::DELETE, url.clone())?;
        json_body(&url, send(req, &url, "DELETE").await?).await
    }

    /// PUT a streamed body of known length; returns the JSON answer.
    pub async fn put_stream(
        &self,
        segments: &[&str],
        body: reqwest::Body,
        length: u64,
    ) -> Result<Value, CliError> {
        let url = self.endpoint(segments)?;
        let req = self
            .authed(Method::PUT, url.clone())?
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(body);
        json_body(&url, send(req, &url, "PUT").await?).await
    }

    /// GET a public resource (`/healthz`, TUF metadata) without the token. Returns the
    /// status and body for any answer, so that callers decide what a 404 or 503 means.
    pub async fn get_public(&self, segments: &[&str]) -> Result<(StatusCode, Vec<u8>), CliError> {
        let url = self.endpoint(segments)?;
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| classify(&url, &e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| classify(&url, &e))?;
        Ok((status, bytes.to_vec()))
    }
}

/// Decodes a JSON answer into `T`, naming the URL when it does not fit.
pub fn decode<T: DeserializeOwned>(what: &str, value: Value) -> Result<T, CliError> {
    serde_json::from_value(value).map_err(|e| CliError::BadResponse {
        url: what.to_string(),
        reason: e.to_string(),
    })
}

fn endpoint_url(base: &Url, segments: &[&str]) -> Result<Url, CliError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| CliError::ServerUrl {
            url: base.to_string(),
            reason: "cannot hold a path".into(),
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

fn parse_base_url(server: &str) -> Result<Url, CliError> {
    let bad = |reason: &str| CliError::ServerUrl {
        url: server.to_string(),
        reason: reason.to_string(),
    };
    let mut url = Url::parse(server).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("only https:// is supported (the API carries tokens)"));
    }
    if url.host_str().is_none() {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment allowed"));
    }
    // A trailing slash makes the path a directory, so endpoints go under any prefix.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn load_roots(ca: &Path) -> Result<rustls::RootCertStore, CliError> {
    let pem = std::fs::read(ca).map_err(|source| CliError::ReadFile {
        what: "reading the CA certificate",
        path: ca.to_path_buf(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| CliError::CaFile {
            path: ca.to_path_buf(),
            reason: format!("not PEM: {e}"),
        })?;
        roots.add(cert).map_err(|e| CliError::CaFile {
            path: ca.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    if roots.is_empty() {
        return Err(CliError::CaFile {
            path: ca.to_path_buf(),
            reason: "holds no CERTIFICATE block".into(),
        });
    }
    Ok(roots)
}

/// Sends a request; a non-2xx answer becomes the matching error with the server's message.
async fn send(req: RequestBuilder, url: &Url, method: &str) -> Result<Response, CliError> {
    let resp = req.send().await.map_err(|e| classify(url, &e))?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    Err(refusal(url, method, resp).await)
}

async fn json_body(url: &Url, resp: Response) -> Result<Value, CliError> {
    let bytes = resp.bytes().await.map_err(|e| classify(url, &e))?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| CliError::BadResponse {
        url: url.to_string(),
        reason: format!("not JSON: {e}"),
    })
}

/// The error for a non-2xx answer, carrying the server's [`ApiError`] message.
async fn refusal(url: &Url, method: &str, mut resp: Response) -> CliError {
    let status = resp.status();
    // Read a bounded prefix: an error body is small, a hostile one need not be.
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    let (code, message) = match serde_json::from_slice::<ApiError>(&body) {
        Ok(api) => (api.error, api.message),
        Err(_) => {
            let text = String::from_utf8_lossy(&body).trim().to_string();
            let message = if text.is_empty() && status == StatusCode::NOT_FOUND {
                "no such resource or API endpoint on this server (is the server older than this client?)".to_string()
            } else if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no message")
                    .to_string()
            } else {
                text
            };
            (String::new(), message)
        }
    };
    match status {
        StatusCode::UNAUTHORIZED => CliError::Unauthorized { message },
        StatusCode::FORBIDDEN => CliError::Forbidden { code, message },
        StatusCode::CONFLICT => CliError::Conflict { code, message },
        _ => CliError::Api {
            method: method.to_string(),
            path: url.path().to_string(),
            status,
            code,
            message,
        },
    }
}

/// Sorts a transport failure into unreachable, untrusted certificate, other TLS failure or
/// other transport failure, by looking for the typed cause in the error chain.
fn classify(url: &Url, err: &reqwest::Error) -> CliError {
    let url_text = url.to_string();
    if let Some(tls) = find_rustls_error(err) {
        let detail = tls.to_string();
        return match tls {
            rustls::Error::InvalidCertificate(_) => CliError::Untrusted {
                url: url_text,
                detail,
            },
            _ => CliError::Tls {
                url: url_text,
                detail,
            },
        };
    }
    let detail = innermost(err);
    if err.is_connect() || (err.is_timeout() && !err.is_body()) {
        CliError::Unreachable {
            url: url_text,
            detail,
        }
    } else {
        CliError::Transport {
            url: url_text,
            detail,
        }
    }
}

/// The rustls error somewhere in the chain. `io::Error::source` skips the error it wraps,
/// so each `io::Error` is also opened with `get_ref`.
fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(found) = find_rustls_error(inner) {
                    return Some(found);
                }
            }
        }
        cur = e.source();
    }
    None
}

/// The last message of the chain (the specific cause, such as "Connection refused").
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        last = e.to_string();
        cur = e.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_must_be_https_and_gets_a_trailing_slash() {
        assert!(parse_base_url("http://127.0.0.1:1").is_err());
        assert!(parse_base_url("127.0.0.1:1").is_err());
        assert!(parse_base_url("https://h/?q=1").is_err());
        assert_eq!(
            parse_base_url("https://h:8443").unwrap().as_str(),
            "https://h:8443/"
        );
        assert_eq!(
            parse_base_url("https://h/ota").unwrap().as_str(),
            "https://h/ota/"
        );
    }

    #[test]
    fn endpoints_encode_each_segment() {
        let base = parse_base_url("https://h/prefix").unwrap();
        let url = endpoint_url(&base, &["api", "v1", "releases", "fw/a b?.bin"]).unwrap();
        assert_eq!(
            url.as_str(),
            "https://h/prefix/api/v1/releases/fw%2Fa%20b%3F.bin"
        );
        let root = parse_base_url("https://h:1").unwrap();
        assert_eq!(
            endpoint_url(&root, &["healthz"]).unwrap().as_str(),
            "https://h:1/healthz"
        );
    }

    #[test]
    fn ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = load_roots(&ca).unwrap_err();
        assert!(matches!(err, CliError::CaFile { .. }), "{err}");
        let missing = load_roots(&dir.path().join("missing.crt")).unwrap_err();
        assert!(matches!(missing, CliError::ReadFile { .. }), "{missing}");
    }

    #[test]
    fn tokens_are_trimmed_and_never_printed() {
        let t = Token::parse("  ota_secret\n").unwrap();
        assert_eq!(t.0, "ota_secret");
        assert!(!format!("{t:?}").contains("secret"));
        assert!(Token::parse(" \n").is_none());
    }

    #[test]
    fn rustls_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let found = find_rustls_error(&io).unwrap();
        assert!(matches!(found, rustls::Error::InvalidCertificate(_)));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(find_rustls_error(&plain).is_none());
    }
}
