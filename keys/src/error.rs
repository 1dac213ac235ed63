//! The crate's error type: one enum, each variant naming the failed operation and its context.
//!
//! Key file problems live in the [`KeyfileError`] sub-enum (a caller may want to branch on
//! [`KeyfileError::WrongPassphrase`] to ask again); everything else is a variant here.

use std::io;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use ota_common::client::ClientError;
use ota_common::metadata::expiry;

use crate::compress::CompressError;
use crate::keyfile::KeyfileError;

/// Everything that can go wrong in ota-keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key file could not be read, decrypted or written (wrong passphrase included).
    #[error(transparent)]
    Keyfile(#[from] KeyfileError),

    /// No passphrase could be obtained, or the one given is unusable.
    #[error("passphrase: {reason}")]
    Passphrase {
        /// What was wrong (never the passphrase itself).
        reason: String,
    },

    /// Fewer distinct authorised keys signed than the role's threshold asks.
    #[error("{role} threshold not met for {file}: {have} valid signature(s), {need} required")]
    ThresholdNotMet {
        /// The role (for a new root: `root (vN keys)`, naming which key set).
        role: String,
        /// The metadata file.
        file: String,
        /// Distinct authorised keys with a valid signature.
        have: u64,
        /// The threshold.
        need: u64,
    },

    /// Metadata is past its expiry.
    #[error(
        "{role} metadata expired at {}, now is {}",
        expiry::format(expires),
        expiry::format(now)
    )]
    Expired {
        /// The role.
        role: String,
        /// Its `expires`.
        expires: DateTime<Utc>,
        /// The time the check used.
        now: DateTime<Utc>,
    },

    /// A key id (or key id prefix) that no key file or role knows.
    #[error("unknown key id {key_id}: {context}")]
    UnknownKeyId {
        /// The id or prefix given.
        key_id: String,
        /// Where it was looked up.
        context: String,
    },

    /// A key prefix that matches more than one key.
    #[error("key id prefix {prefix} is ambiguous: matches {matches:?}")]
    AmbiguousKeyId {
        /// The prefix given.
        prefix: String,
        /// The ids it matches.
        matches: Vec<String>,
    },

    /// A key that the role does not list was asked to sign for it.
    #[error("key {key_id} is not authorised to sign {role} metadata")]
    NotAuthorised {
        /// The key.
        key_id: String,
        /// The role.
        role: String,
    },

    /// A file that is not what it should be (JSON, metadata of the expected role, ...).
    #[error("malformed {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Compressing an image failed.
    #[error("compressing {image}: {source}")]
    Compress {
        /// The image.
        image: PathBuf,
        /// What failed.
        #[source]
        source: CompressError,
    },

    /// A target could not be added, removed or checked.
    #[error("target {name}: {reason}")]
    Target {
        /// The target name.
        name: String,
        /// What was wrong.
        reason: String,
    },

    /// A request that cannot be carried out as asked (bad thresholds, missing keys, ...).
    #[error("{0}")]
    Invalid(String),

    /// The offline client workflow refused the repository for a reason not covered above.
    #[error("the repository does not verify: {0}")]
    Verify(#[source] ClientError),
}

impl Error {
    /// An I/O error on `path` while doing `op`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A malformed-file error.
    pub fn malformed(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Error::Malformed {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_role_file_and_counts() {
        let e = Error::ThresholdNotMet {
            role: "targets".into(),
            file: "metadata/2.targets.json".into(),
            have: 1,
            need: 2,
        };
        let msg = e.to_string();
        assert!(
            msg.contains("targets") && msg.contains("2.targets.json"),
            "{msg}"
        );
        assert!(
            msg.contains("1 valid") && msg.contains("2 required"),
            "{msg}"
        );
        let e = Error::malformed("/x/1.root.json", "not JSON");
        assert_eq!(e.to_string(), "malformed /x/1.root.json: not JSON");
    }
}
