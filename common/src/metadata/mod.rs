//! TUF 1.0 metadata: the four top-level roles, delegated targets, and what they share.
//!
//! Each type keeps the fields it does not know in `extra`, so metadata written by other tools
//! can be read, edited and re-signed without losing anything. Verification never
//! re-serialises these types: it works on the exact bytes received (see [`crate::signed`]).

mod root;
mod snapshot;
mod targets;
mod timestamp;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

pub use root::{RoleKeys, Root};
pub use snapshot::Snapshot;
pub use targets::{DelegatedRole, Delegations, TargetFile, Targets};
pub use timestamp::Timestamp;

/// The TUF specification version we write.
pub const SPEC_VERSION: &str = "1.0.31";

/// The four top-level roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleType {
    /// Root: the keys and thresholds of every role.
    Root,
    /// Timestamp: the current snapshot.
    Timestamp,
    /// Snapshot: the versions of all targets metadata.
    Snapshot,
    /// Targets: the images.
    Targets,
}

impl RoleType {
    /// The role's name as written in metadata (`_type` and the `roles` map).
    pub fn name(self) -> &'static str {
        match self {
            RoleType::Root => "root",
            RoleType::Timestamp => "timestamp",
            RoleType::Snapshot => "snapshot",
            RoleType::Targets => "targets",
        }
    }
}

impl fmt::Display for RoleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What every role's `signed` part has, so generic code can check it.
pub trait Role: Serialize + for<'de> Deserialize<'de> {
    /// The `_type` value this role must carry.
    const TYPE: &'static str;
    /// The `version` field.
    fn version(&self) -> u64;
    /// The `expires` field.
    fn expires(&self) -> DateTime<Utc>;
}

/// `meta` entries of timestamp and snapshot: a version and, optionally, length and hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// The metadata file's version.
    pub version: u64,
    /// Its length in bytes, if the repository states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes (algorithm name → hex), if the repository states them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<Hashes>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl MetaFile {
    /// A `meta` entry that names only a version.
    pub fn version_only(version: u64) -> Self {
        MetaFile {
            version,
            length: None,
            hashes: None,
            extra: BTreeMap::new(),
        }
    }
}

/// Hashes by algorithm name (`sha256`, `sha512`), hex-encoded.
pub type Hashes = BTreeMap<String, String>;

/// Serde helpers for TUF's `expires`: `YYYY-MM-DDTHH:MM:SSZ`, whole seconds, UTC.
///
/// python-tuf parses expiry with exactly that format, so we never write fractions.
pub mod expiry {
    use super::*;

    /// Writes whole seconds with a `Z`.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    /// Reads RFC 3339; python-tuf accepts only the `Z` form, we accept any offset.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("bad expires {s:?}: {e}")))
    }

    /// The TUF form of a time.
    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

/// Checks `_type`, used by every role's deserialisation.
pub(crate) fn check_type<'de, D: Deserializer<'de>>(
    d: D,
    want: &'static str,
) -> Result<String, D::Error> {
    let got = String::deserialize(d)?;
    if got != want {
        return Err(serde::de::Error::custom(format!(
            "_type is {got:?}, expected {want:?}"
        )));
    }
    Ok(got)
}
