//! The one error type of `ota`: each variant names what failed and where, and maps to an
//! exit code so that scripts can tell "server down" from "not allowed" from "refused".

use std::path::PathBuf;

use reqwest::StatusCode;

/// Exit code for a refusal by the server or a local failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code when the server cannot be reached (connection refused, DNS, timeout).
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code when the TLS handshake fails (certificate not trusted, protocol).
pub const EXIT_TLS: u8 = 4;
/// Exit code for 401 and 403.
pub const EXIT_AUTH: u8 = 5;
/// Exit code for 409 (another change landed first).
pub const EXIT_CONFLICT: u8 = 6;

/// Text for `--help`: the exit codes above.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 success, 1 refused or failed, 2 usage, \
3 cannot reach server, 4 certificate not trusted / TLS failure, 5 unauthorized or forbidden, \
6 conflict (another change landed first).";

/// Everything that can go wrong in `ota`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A required option is missing or a value is unusable before anything is sent.
    #[error("{0}")]
    Usage(String),
    /// The server URL is not an absolute `https://` URL.
    #[error("server URL {url:?} is not usable: {reason}")]
    ServerUrl {
        /// As given.
        url: String,
        /// Why not.
        reason: String,
    },
    /// A local file could not be read.
    #[error("{what} {}: {source}", path.display())]
    ReadFile {
        /// What it was for ("reading the CA certificate").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("CA file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// Building the TLS or HTTP client failed.
    #[error("setting up the HTTPS client: {0}")]
    ClientSetup(String),
    /// No route to the server: refused, unresolvable, timed out.
    #[error("cannot reach server {url}: {detail}")]
    Unreachable {
        /// What was requested.
        url: String,
        /// The innermost cause.
        detail: String,
    },
    /// The server's certificate does not chain to the pinned CA (or is otherwise invalid).
    #[error("certificate not trusted: the server at {url} presented a certificate that fails verification against the pinned CA ({detail})")]
    Untrusted {
        /// What was requested.
        url: String,
        /// The certificate error.
        detail: String,
    },
    /// The TLS handshake failed for another reason (protocol version, alert).
    #[error("TLS handshake with {url} failed: {detail}")]
    Tls {
        /// What was requested.
        url: String,
        /// The cause.
        detail: String,
    },
    /// Any other transport failure after connecting (reset, truncated body).
    #[error("request to {url} failed: {detail}")]
    Transport {
        /// What was requested.
        url: String,
        /// The cause chain.
        detail: String,
    },
    /// 401: no token, unknown token or revoked token.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// The server's message.
        message: String,
    },
    /// 403: the token's role does not allow this (or a signature was refused).
    #[error("forbidden: {message}")]
    Forbidden {
        /// The server's stable code (`forbidden`, `bad_signature`, ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// 409: another change landed first, or the object exists.
    #[error("conflict: {message}")]
    Conflict {
        /// The server's stable code (`conflict`, `no_targets_key`, ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// Any other refusal, with the server's [`ota_common::api::ApiError`] message.
    #[error("server refused {method} {path} ({status}): {message}")]
    Api {
        /// Method.
        method: String,
        /// Path requested.
        path: String,
        /// HTTP status.
        status: StatusCode,
        /// The server's stable code, or empty when the body was not an `ApiError`.
        code: String,
        /// The server's message.
        message: String,
    },
    /// A 2xx answer whose body is not what this client expects.
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse {
        /// What was requested.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server stored different bytes than the ones this client sent or the metadata lists.
    #[error("upload of {} does not match: {what} is {actual}, expected {expected}", path.display())]
    UploadMismatch {
        /// The uploaded file.
        path: PathBuf,
        /// Which fact differs (`sha256`, `length`).
        what: &'static str,
        /// What it should be.
        expected: String,
        /// What it is.
        actual: String,
    },
    /// Compressing the image for `--zstd` failed.
    #[error("compressing {} for --zstd: {source}", image.display())]
    Compress {
        /// The image.
        image: PathBuf,
        /// What failed.
        source: ota_keys::compress::CompressError,
    },
    /// A repository directory made by `ota-keys` could not be read.
    #[error("reading repository {}: {source}", dir.display())]
    Repo {
        /// The repository directory.
        dir: PathBuf,
        /// The cause.
        source: ota_keys::Error,
    },
    /// Metadata in the repository or from the server cannot be decoded.
    #[error("metadata {what}: {reason}")]
    Metadata {
        /// Which file.
        what: String,
        /// Why.
        reason: String,
    },
    /// The server's root does not trust the keys that signed the repository's targets.
    #[error("the server does not trust this repository's targets keys: {detail}")]
    UntrustedRepo {
        /// What differs.
        detail: String,
    },
    /// The server's audit log hash chain is broken.
    #[error("audit log chain is broken at entry {first_break} ({reason})")]
    AuditBroken {
        /// First entry whose link fails.
        first_break: String,
        /// The server's reason.
        reason: String,
    },
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable { .. } => EXIT_UNREACHABLE,
            CliError::Untrusted { .. } | CliError::Tls { .. } => EXIT_TLS,
            CliError::Unauthorized { .. } | CliError::Forbidden { .. } => EXIT_AUTH,
            CliError::Conflict { .. } => EXIT_CONFLICT,
            _ => EXIT_FAILURE,
        }
    }

    /// What to do about it, when there is something general to say.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CliError::Unreachable { .. } => {
                Some("check --server (or OTA_SERVER) and that ota-server is running and reachable")
            }
            CliError::Untrusted { .. } => Some(
                "give the CA certificate that issued the server's certificate with --ca (or \
                 OTA_CA); a development server writes it to DATA_DIR/pki/ca.crt",
            ),
            CliError::Unauthorized { .. } => Some(
                "check the token given with --token-file or OTA_TOKEN; it may have been revoked",
            ),
            CliError::Forbidden { code, .. } if code == "forbidden" => {
                Some("ask an admin for a token whose role allows this (ota tokens create)")
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_have_distinct_exit_codes() {
        let unreachable = CliError::Unreachable {
            url: "u".into(),
            detail: "d".into(),
        };
        let untrusted = CliError::Untrusted {
            url: "u".into(),
            detail: "d".into(),
        };
        let forbidden = CliError::Forbidden {
            code: "forbidden".into(),
            message: "m".into(),
        };
        let conflict = CliError::Conflict {
            code: "conflict".into(),
            message: "m".into(),
        };
        let codes = [
            unreachable.exit_code(),
            untrusted.exit_code(),
            forbidden.exit_code(),
            conflict.exit_code(),
            CliError::Usage("x".into()).exit_code(),
        ];
        let mut unique = codes.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len(), "{codes:?}");
        assert!(codes.iter().all(|&c| c != 0 && c != 2));
        assert!(untrusted.to_string().starts_with("certificate not trusted"));
        assert!(unreachable.to_string().starts_with("cannot reach server"));
        assert!(forbidden.hint().is_some());
    }
}
