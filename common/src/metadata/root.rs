//! Root metadata: the trust anchor.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{check_type, expiry, Role, RoleType, SPEC_VERSION};
use crate::keys::{Key, KeyId};

/// The keys and threshold of one role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Ids of the keys that may sign for the role.
    pub keyids: Vec<KeyId>,
    /// How many distinct keys must sign.
    pub threshold: u64,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The `signed` part of `root.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Always `root`.
    #[serde(rename = "_type", deserialize_with = "root_type")]
    pub type_: String,
    /// The specification version the writer followed.
    pub spec_version: String,
    /// Whether files are published under version- and hash-prefixed names.
    #[serde(default)]
    pub consistent_snapshot: bool,
    /// Monotonic version.
    pub version: u64,
    /// After this, the metadata is not trusted.
    #[serde(with = "expiry")]
    pub expires: DateTime<Utc>,
    /// All keys any top-level role uses, by id.
    pub keys: BTreeMap<KeyId, Key>,
    /// Keys and threshold of each top-level role.
    pub roles: BTreeMap<String, RoleKeys>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn root_type<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    check_type(d, Root::TYPE)
}

impl Role for Root {
    const TYPE: &'static str = "root";
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> DateTime<Utc> {
        self.expires
    }
}

impl Root {
    /// An empty root of the given version; roles are added with [`Root::set_role`].
    pub fn new(version: u64, expires: DateTime<Utc>) -> Self {
        Root {
            type_: Self::TYPE.into(),
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: true,
            version,
            expires,
            keys: BTreeMap::new(),
            roles: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// The keys and threshold of a top-level role, if root lists it.
    pub fn role(&self, role: RoleType) -> Option<&RoleKeys> {
        self.roles.get(role.name())
    }

    /// Replaces a role's keys and threshold, adding the keys to `keys` and dropping keys that
    /// no role uses any more.
    pub fn set_role(
        &mut self,
        role: RoleType,
        keys: &[Key],
        threshold: u64,
    ) -> Result<(), crate::keys::KeyError> {
        let mut keyids = Vec::with_capacity(keys.len());
        for key in keys {
            let id = key.key_id()?;
            self.keys.insert(id.clone(), key.clone());
            keyids.push(id);
        }
        self.roles.insert(
            role.name().to_string(),
            RoleKeys {
                keyids,
                threshold,
                extra: BTreeMap::new(),
            },
        );
        let used: std::collections::BTreeSet<&KeyId> =
            self.roles.values().flat_map(|r| r.keyids.iter()).collect();
        self.keys.retain(|id, _| used.contains(id));
        Ok(())
    }
}
