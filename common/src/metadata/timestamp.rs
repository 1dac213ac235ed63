//! Timestamp metadata: names the current snapshot; re-signed often by an online key.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{check_type, expiry, MetaFile, Role, SPEC_VERSION};

/// The `signed` part of `timestamp.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Always `timestamp`.
    #[serde(rename = "_type", deserialize_with = "timestamp_type")]
    pub type_: String,
    /// The specification version the writer followed.
    pub spec_version: String,
    /// Monotonic version.
    pub version: u64,
    /// After this, the metadata is not trusted.
    #[serde(with = "expiry")]
    pub expires: DateTime<Utc>,
    /// Exactly one entry, `snapshot.json`.
    pub meta: BTreeMap<String, MetaFile>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn timestamp_type<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    check_type(d, Timestamp::TYPE)
}

impl Role for Timestamp {
    const TYPE: &'static str = "timestamp";
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> DateTime<Utc> {
        self.expires
    }
}

impl Timestamp {
    /// A timestamp naming one snapshot.
    pub fn new(version: u64, expires: DateTime<Utc>, snapshot: MetaFile) -> Self {
        Timestamp {
            type_: Self::TYPE.into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            meta: BTreeMap::from([("snapshot.json".to_string(), snapshot)]),
            extra: BTreeMap::new(),
        }
    }

    /// The snapshot entry, if present.
    pub fn snapshot_meta(&self) -> Option<&MetaFile> {
        self.meta.get("snapshot.json")
    }
}
