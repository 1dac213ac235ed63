//! Snapshot metadata: the versions of every targets metadata file.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{check_type, expiry, MetaFile, Role, SPEC_VERSION};

/// The `signed` part of `snapshot.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always `snapshot`.
    #[serde(rename = "_type", deserialize_with = "snapshot_type")]
    pub type_: String,
    /// The specification version the writer followed.
    pub spec_version: String,
    /// Monotonic version.
    pub version: u64,
    /// After this, the metadata is not trusted.
    #[serde(with = "expiry")]
    pub expires: DateTime<Utc>,
    /// `targets.json` and `<delegated role>.json` entries.
    pub meta: BTreeMap<String, MetaFile>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn snapshot_type<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    check_type(d, Snapshot::TYPE)
}

impl Role for Snapshot {
    const TYPE: &'static str = "snapshot";
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> DateTime<Utc> {
        self.expires
    }
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new(version: u64, expires: DateTime<Utc>) -> Self {
        Snapshot {
            type_: Self::TYPE.into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            meta: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// The entry for a targets role (`targets` or a delegated role name).
    pub fn role_meta(&self, role: &str) -> Option<&MetaFile> {
        self.meta.get(&format!("{role}.json"))
    }
}
