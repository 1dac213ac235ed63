//! Device groups: a static list of ids, or a dynamic filter on what devices report
//! (hardware id and attribute equalities). Groups are immutable once created: a
//! deployment's audience changes only as devices change, never because its group was
//! edited under it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::devices::record::{check_field, MAX_ATTRIBUTES, MAX_FIELD_LEN};
use crate::devices::DeviceRecord;
use crate::identity::validate_device_id;

/// Store tree of groups, keyed by name.
pub const GROUPS_TREE: &str = "groups";
/// Longest group name.
pub const MAX_GROUP_NAME: usize = 64;
/// Most ids in a static group.
pub const MAX_STATIC_MEMBERS: usize = 100_000;

/// A dynamic group's rule: every given field must be equal (an empty filter matches every
/// device).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFilter {
    /// Only this board.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_id: Option<String>,
    /// Only devices reporting each of these attributes with this value.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl GroupFilter {
    /// Whether `rec` matches.
    pub fn matches(&self, rec: &DeviceRecord) -> bool {
        self.hardware_id
            .as_deref()
            .is_none_or(|h| rec.hardware_id.as_deref() == Some(h))
            && self
                .attributes
                .iter()
                .all(|(k, v)| rec.attributes.get(k) == Some(v))
    }
}

/// Who belongs to a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Membership {
    /// Exactly these ids.
    Static {
        /// Device ids.
        devices: BTreeSet<String>,
    },
    /// Devices matching a filter, as they report themselves now.
    Dynamic {
        /// The rule.
        filter: GroupFilter,
    },
}

/// A stored group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Name (`[A-Za-z0-9._-]`, 1 to 64 bytes).
    pub name: String,
    /// Who belongs.
    pub members: Membership,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// By whom.
    pub created_by: String,
}

impl Group {
    /// Whether `rec` belongs to the group.
    pub fn contains(&self, rec: &DeviceRecord) -> bool {
        match &self.members {
            Membership::Static { devices } => devices.contains(&rec.id),
            Membership::Dynamic { filter } => filter.matches(rec),
        }
    }

    /// `"static"` or `"dynamic"`.
    pub fn kind(&self) -> &'static str {
        match self.members {
            Membership::Static { .. } => "static",
            Membership::Dynamic { .. } => "dynamic",
        }
    }
}

/// A group to create (`POST /api/v1/groups`): exactly one of `devices` and `filter`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Name.
    pub name: String,
    /// Static members.
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    /// Dynamic rule.
    #[serde(default)]
    pub filter: Option<GroupFilter>,
}

/// Checks a group name.
pub fn check_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME {
        return Err(format!(
            "group name must be 1 to {MAX_GROUP_NAME} bytes, got {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "group name {name:?} may hold only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

impl GroupSpec {
    /// Checks the spec and turns it into a group.
    pub fn into_group(self, actor: &str, now: DateTime<Utc>) -> Result<Group, String> {
        check_group_name(&self.name)?;
        let members = match (self.devices, self.filter) {
            (Some(ids), None) => {
                if ids.is_empty() || ids.len() > MAX_STATIC_MEMBERS {
                    return Err(format!(
                        "a static group lists 1 to {MAX_STATIC_MEMBERS} device ids, got {}",
                        ids.len()
                    ));
                }
                for id in &ids {
                    validate_device_id(id).map_err(|e| e.to_string())?;
                }
                Membership::Static {
                    devices: ids.into_iter().collect(),
                }
            }
            (None, Some(filter)) => {
                if let Some(h) = &filter.hardware_id {
                    check_field("filter.hardware_id", h)?;
                }
                if filter.attributes.len() > MAX_ATTRIBUTES {
                    return Err(format!(
                        "a filter names at most {MAX_ATTRIBUTES} attributes, got {}",
                        filter.attributes.len()
                    ));
                }
                for (k, v) in &filter.attributes {
                    check_field("filter attribute name", k)?;
                    if v.len() > MAX_FIELD_LEN || v.chars().any(char::is_control) {
                        return Err(format!(
                            "filter attribute {k:?}: value must be at most {MAX_FIELD_LEN} bytes without control characters"
                        ));
                    }
                }
                Membership::Dynamic { filter }
            }
            _ => {
                return Err(
                    "give exactly one of devices (a static group) and filter (a dynamic group)"
                        .into(),
                )
            }
        };
        Ok(Group {
            name: self.name,
            members,
            created_at: now,
            created_by: actor.to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::devices::DeviceStatus;

    fn rec(id: &str, hw: &str, attrs: &[(&str, &str)]) -> DeviceRecord {
        let mut r = DeviceRecord::new(id, DeviceStatus::Accepted, "t", Utc::now());
        r.hardware_id = Some(hw.into());
        r.attributes = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        r
    }

    fn spec(json: serde_json::Value) -> Result<Group, String> {
        serde_json::from_value::<GroupSpec>(json)
            .map_err(|e| e.to_string())?
            .into_group("op", Utc::now())
    }

    #[test]
    fn dynamic_filters_match_hardware_and_every_attribute() {
        let g = spec(serde_json::json!({"name": "eu-pi",
            "filter": {"hardware_id": "pi4", "attributes": {"site": "eu", "ring": "beta"}}}))
        .unwrap();
        assert_eq!(g.kind(), "dynamic");
        assert!(g.contains(&rec(
            "a",
            "pi4",
            &[("site", "eu"), ("ring", "beta"), ("x", "y")]
        )));
        assert!(!g.contains(&rec("b", "pi4", &[("site", "eu")])));
        assert!(!g.contains(&rec("c", "pi3", &[("site", "eu"), ("ring", "beta")])));
        assert!(!g.contains(&rec("d", "pi4", &[("site", "us"), ("ring", "beta")])));
        let mut unknown_hw = rec("e", "pi4", &[("site", "eu"), ("ring", "beta")]);
        unknown_hw.hardware_id = None;
        assert!(!g.contains(&unknown_hw));
        // Attributes only; and the empty filter is everyone.
        let g = spec(serde_json::json!({"name": "eu", "filter": {"attributes": {"site": "eu"}}}))
            .unwrap();
        assert!(g.contains(&rec("a", "anything", &[("site", "eu")])));
        let all = spec(serde_json::json!({"name": "all", "filter": {}})).unwrap();
        assert!(all.contains(&rec("z", "q", &[])));
    }

    #[test]
    fn static_groups_match_ids_only() {
        let g = spec(serde_json::json!({"name": "s", "devices": ["a", "b", "a"]})).unwrap();
        assert_eq!(g.kind(), "static");
        assert!(g.contains(&rec("a", "x", &[])));
        assert!(!g.contains(&rec("c", "x", &[])));
        match &g.members {
            Membership::Static { devices } => assert_eq!(devices.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            serde_json::json!({"name": "x"}),
            serde_json::json!({"name": "x", "devices": ["a"], "filter": {}}),
            serde_json::json!({"name": "x", "devices": []}),
            serde_json::json!({"name": "x", "devices": ["bad/id"]}),
            serde_json::json!({"name": "", "devices": ["a"]}),
            serde_json::json!({"name": "a b", "devices": ["a"]}),
            serde_json::json!({"name": "x", "filter": {"hardware_id": ""}}),
            serde_json::json!({"name": "x", "filter": {"attributes": {"k": "v\n"}}}),
            serde_json::json!({"name": "x", "filter": {"colour": "red"}}),
        ] {
            assert!(spec(bad.clone()).is_err(), "{bad}");
        }
    }
}
