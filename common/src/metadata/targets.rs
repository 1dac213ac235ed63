//! Targets metadata: images, their hashes and lengths, and delegations.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{check_type, expiry, Hashes, Role, SPEC_VERSION};
use crate::keys::{Key, KeyId};

/// The `signed` part of `targets.json` or of a delegated role's file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// Always `targets`.
    #[serde(rename = "_type", deserialize_with = "targets_type")]
    pub type_: String,
    /// The specification version the writer followed.
    pub spec_version: String,
    /// Monotonic version.
    pub version: u64,
    /// After this, the metadata is not trusted.
    #[serde(with = "expiry")]
    pub expires: DateTime<Utc>,
    /// Target files by name.
    pub targets: BTreeMap<String, TargetFile>,
    /// Roles this one delegates to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn targets_type<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    check_type(d, Targets::TYPE)
}

impl Role for Targets {
    const TYPE: &'static str = "targets";
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> DateTime<Utc> {
        self.expires
    }
}

impl Targets {
    /// An empty targets role.
    pub fn new(version: u64, expires: DateTime<Utc>) -> Self {
        Targets {
            type_: Self::TYPE.into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            targets: BTreeMap::new(),
            delegations: None,
            extra: BTreeMap::new(),
        }
    }
}

/// One target file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Exact length in bytes.
    pub length: u64,
    /// Hashes by algorithm; we write `sha256` and `sha512`.
    pub hashes: Hashes,
    /// Application data: for ota, the release version, hardware ids and support period
    /// (see [`crate::release`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl TargetFile {
    /// The SHA-256 of the file, hex, if listed.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get("sha256").map(String::as_str)
    }
}

/// The `delegations` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegations {
    /// Keys the delegated roles use.
    pub keys: BTreeMap<KeyId, Key>,
    /// Delegated roles, in priority order.
    pub roles: Vec<DelegatedRole>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One delegated role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// The role's name; its file is `<version>.<name>.json`.
    pub name: String,
    /// Keys that may sign for it.
    pub keyids: Vec<KeyId>,
    /// How many distinct keys must sign.
    pub threshold: u64,
    /// When true, a search that reaches this role for a path it covers stops here.
    #[serde(default)]
    pub terminating: bool,
    /// Shell-style patterns of the target paths it is trusted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Alternatively, hex prefixes of SHA-256(target path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl DelegatedRole {
    /// Whether this role is trusted for `target_path` (spec 5.6.7.2, as python-tuf reads it:
    /// a pattern matches when it has as many `/`-separated parts as the path and each part
    /// matches with `*`, `?` and `[...]` wildcards; `*` never crosses a `/`).
    pub fn is_trusted_for(&self, target_path: &str) -> bool {
        if let Some(patterns) = &self.paths {
            return patterns.iter().any(|p| path_matches(p, target_path));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let digest = hex::encode(Sha256::digest(target_path.as_bytes()));
            return prefixes.iter().any(|p| digest.starts_with(p.as_str()));
        }
        false
    }
}

/// `fnmatch` per path component, with the same number of components.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    pat.len() == parts.len()
        && pat
            .iter()
            .zip(parts.iter())
            .all(|(p, s)| glob(p.as_bytes(), s.as_bytes()))
}

/// Shell-style matching of one component: `*`, `?`, `[seq]`, `[!seq]`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with backtracking on the last `*`: linear in practice, no recursion
    // depth an attacker could drive.
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&p[pi..], s[si]) {
                        if matched {
                            pi += next;
                            si += 1;
                            continue;
                        }
                    } else if s[si] == b'[' {
                        // An unclosed `[` is a literal, as in fnmatch.
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against a `[...]` class at the start of `p`; returns (matched, class length).
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!'));
    if negate {
        i += 1;
    }
    let start = i;
    let mut matched = false;
    while i < p.len() {
        if p[i] == b']' && i > start {
            return Some((matched != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_fnmatch_per_component() {
        assert!(path_matches("firmware/*", "firmware/a.bin"));
        assert!(!path_matches("firmware/*", "firmware/beta/a.bin"));
        assert!(path_matches("firmware/*/*", "firmware/beta/a.bin"));
        assert!(path_matches("*.bin", "a.bin"));
        assert!(!path_matches("*.bin", "a.tar"));
        assert!(path_matches("a?c", "abc"));
        assert!(path_matches("v[0-9].img", "v7.img"));
        assert!(!path_matches("v[!0-9].img", "v7.img"));
        assert!(path_matches("*", "anything"));
        assert!(!path_matches("*", "a/b"));
        assert!(path_matches("a*b*c", "axxbyyc"));
        assert!(!path_matches("a*b*c", "axxbyy"));
    }

    #[test]
    fn hash_prefixes_select_by_digest() {
        let digest = hex::encode(Sha256::digest(b"fw.bin"));
        let role = DelegatedRole {
            name: "bin".into(),
            keyids: vec![],
            threshold: 1,
            terminating: false,
            paths: None,
            path_hash_prefixes: Some(vec![digest[..2].to_string()]),
            extra: BTreeMap::new(),
        };
        assert!(role.is_trusted_for("fw.bin"));
    }
}
