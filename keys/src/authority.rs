//! Who may sign a metadata file, whether enough of them did, and adding signatures to an
//! existing file (k-of-n signing: each holder adds theirs).
//!
//! A root of version N must meet the threshold of the root keys listed by root N-1 *and* of
//! its own root keys (TUF 5.3.4-5.3.5); targets, snapshot and timestamp must meet the
//! threshold their role has in the latest root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ota_common::keys::{Key, KeyId, SigningKey};
use ota_common::metadata::{RoleType, Root};
use ota_common::signed::{add_signature, RawSigned};
use ota_common::verify::count_valid_signatures;

use crate::durable::{self, Overwrite};
use crate::error::{Error, Result};
use crate::repo::{read_role, role_of, RepoLayout};

/// The keys and threshold one root gives a role.
#[derive(Clone, Debug)]
pub struct KeySet {
    /// For messages: `root keys of root v1`, `targets keys of root v3`.
    pub name: String,
    /// The role.
    pub role: RoleType,
    /// Keys by id, as the root lists them.
    pub keys: BTreeMap<KeyId, Key>,
    /// Ids authorised for the role.
    pub ids: Vec<KeyId>,
    /// Signatures needed.
    pub threshold: u64,
}

impl KeySet {
    /// The keys `root` gives `role`.
    pub fn of(root: &Root, role: RoleType) -> Result<Self> {
        let rk = root
            .role(role)
            .ok_or_else(|| Error::Invalid(format!("root v{} has no {role} role", root.version)))?;
        Ok(KeySet {
            name: format!("{role} keys of root v{}", root.version),
            role,
            keys: root.keys.clone(),
            ids: rk.keyids.clone(),
            threshold: rk.threshold,
        })
    }

    /// Whether `id` may sign for this set.
    pub fn authorises(&self, id: &KeyId) -> bool {
        self.ids.contains(id)
    }
}

/// How many of a key set's keys validly signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThresholdCheck {
    /// The key set's name.
    pub key_set: String,
    /// The role.
    pub role: RoleType,
    /// Distinct authorised keys with a valid signature.
    pub valid: u64,
    /// Signatures needed.
    pub threshold: u64,
}

impl ThresholdCheck {
    /// Whether the threshold is met.
    pub fn met(&self) -> bool {
        self.threshold > 0 && self.valid >= self.threshold
    }
}

/// A metadata file produced or signed, with its signature status.
#[derive(Clone, Debug)]
pub struct SignedFile {
    /// Its role.
    pub role: RoleType,
    /// Its version.
    pub version: u64,
    /// Where it is (or will be) written.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// One check per key set it must satisfy.
    pub checks: Vec<ThresholdCheck>,
}

impl SignedFile {
    /// Whether every key set's threshold is met.
    pub fn complete(&self) -> bool {
        self.checks.iter().all(ThresholdCheck::met)
    }

    /// The first unmet threshold as an error.
    pub fn require_complete(&self) -> Result<()> {
        match self.checks.iter().find(|c| !c.met()) {
            None => Ok(()),
            Some(c) => Err(Error::ThresholdNotMet {
                role: c.key_set.clone(),
                file: self.path.display().to_string(),
                have: c.valid,
                need: c.threshold,
            }),
        }
    }
}

/// Counts valid signatures of `raw` for each key set.
pub fn check(raw: &RawSigned, sets: &[KeySet], path: &Path) -> Result<Vec<ThresholdCheck>> {
    sets.iter()
        .map(|s| {
            let valid = count_valid_signatures(raw, &s.keys, &s.ids)
                .map_err(|e| Error::malformed(path, e))?;
            Ok(ThresholdCheck {
                key_set: s.name.clone(),
                role: s.role,
                valid,
                threshold: s.threshold,
            })
        })
        .collect()
}

/// The key sets a new root must satisfy: its predecessor's root keys (if any) and its own.
pub fn root_key_sets(new: &Root, prev: Option<&Root>) -> Result<Vec<KeySet>> {
    let mut sets = Vec::with_capacity(2);
    if let Some(prev) = prev {
        sets.push(KeySet::of(prev, RoleType::Root)?);
    }
    sets.push(KeySet::of(new, RoleType::Root)?);
    Ok(sets)
}

/// A metadata file and the key sets that must sign it.
#[derive(Clone, Debug)]
pub struct FileAuthority {
    /// The file.
    pub path: PathBuf,
    /// Its parsed envelope.
    pub raw: RawSigned,
    /// Its role.
    pub role: RoleType,
    /// Its version.
    pub version: u64,
    /// Key sets whose thresholds it must meet.
    pub sets: Vec<KeySet>,
}

impl FileAuthority {
    /// Reads `path` and works out its key sets from the repository: for a root vN, root
    /// vN-1 of the repository; for other roles, the repository's latest root.
    pub fn read(layout: &RepoLayout, path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read metadata", path, e))?;
        let raw = RawSigned::parse(&bytes).map_err(|e| Error::malformed(path, e))?;
        let role = role_of(&raw, path)?;
        let (version, sets) = if role == RoleType::Root {
            let new: Root = raw.decode().map_err(|e| Error::malformed(path, e))?;
            let prev = match new.version {
                0 | 1 => None,
                v => Some(read_role::<Root>(&layout.role_file(RoleType::Root, v - 1))?.signed),
            };
            (new.version, root_key_sets(&new, prev.as_ref())?)
        } else {
            let latest = layout.latest_version(RoleType::Root)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "no root metadata in {}",
                    layout.metadata_dir().display()
                ))
            })?;
            let root = read_role::<Root>(&layout.role_file(RoleType::Root, latest))?.signed;
            let version = raw
                .decode_version()
                .ok_or_else(|| Error::malformed(path, "no integer `version`"))?;
            (version, vec![KeySet::of(&root, role)?])
        };
        Ok(FileAuthority {
            path: path.to_path_buf(),
            raw,
            role,
            version,
            sets,
        })
    }

    /// Every key id that may sign this file.
    pub fn authorised_ids(&self) -> std::collections::BTreeSet<KeyId> {
        self.sets
            .iter()
            .flat_map(|s| s.ids.iter().cloned())
            .collect()
    }

    /// The current signature status.
    pub fn status(&self) -> Result<SignedFile> {
        Ok(SignedFile {
            role: self.role,
            version: self.version,
            path: self.path.clone(),
            bytes: self.raw.bytes().to_vec(),
            checks: check(&self.raw, &self.sets, &self.path)?,
        })
    }
}

/// Adds each key's signature to the file at `path` and writes it back durably. A root that
/// is the repository's latest and now meets both thresholds also becomes `root.json`.
pub fn add_signatures(
    layout: &RepoLayout,
    path: &Path,
    keys: &[&SigningKey],
) -> Result<SignedFile> {
    let authority = FileAuthority::read(layout, path)?;
    let allowed = authority.authorised_ids();
    let mut raw = authority.raw.clone();
    for key in keys {
        if !allowed.contains(&key.key_id()) {
            return Err(Error::NotAuthorised {
                key_id: key.key_id().0,
                role: authority.role.name().into(),
            });
        }
        let bytes = add_signature(&raw, key).map_err(|e| Error::malformed(path, e))?;
        raw = RawSigned::parse(&bytes).map_err(|e| Error::malformed(path, e))?;
    }
    durable::write(path, raw.bytes(), durable::PUBLIC, Overwrite::Replace)?;
    let signed = SignedFile {
        role: authority.role,
        version: authority.version,
        path: path.to_path_buf(),
        bytes: raw.bytes().to_vec(),
        checks: check(&raw, &authority.sets, path)?,
    };
    let is_latest_root = authority.role == RoleType::Root
        && path.parent() == Some(layout.metadata_dir().as_path())
        && layout.latest_version(RoleType::Root)? == Some(authority.version);
    if is_latest_root && signed.complete() {
        durable::write(
            &layout.latest_root_file(),
            raw.bytes(),
            durable::PUBLIC,
            Overwrite::Replace,
        )?;
    }
    Ok(signed)
}

/// `version` of a metadata file without decoding the whole role.
trait DecodeVersion {
    fn decode_version(&self) -> Option<u64>;
}

impl DecodeVersion for RawSigned {
    fn decode_version(&self) -> Option<u64> {
        let value: serde_json::Value = serde_json::from_slice(self.bytes()).ok()?;
        value.get("signed")?.get("version")?.as_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use ota_common::signed::sign_role;

    fn root(version: u64, keys: &[&SigningKey], threshold: u64) -> Root {
        let mut r = Root::new(version, Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap());
        let pubs: Vec<Key> = keys.iter().map(|k| k.public()).collect();
        for role in [
            RoleType::Root,
            RoleType::Targets,
            RoleType::Snapshot,
            RoleType::Timestamp,
        ] {
            r.set_role(role, &pubs, threshold).unwrap();
        }
        r
    }

    #[test]
    fn root_needs_both_key_sets_and_signing_adds_up() {
        let dir = tempfile::tempdir().unwrap();
        let layout = RepoLayout::new(dir.path());
        std::fs::create_dir_all(layout.metadata_dir()).unwrap();
        let (a, b, c, d) = (
            SigningKey::generate(),
            SigningKey::generate(),
            SigningKey::generate(),
            SigningKey::generate(),
        );
        let v1 = root(1, &[&a, &b], 2);
        std::fs::write(
            layout.role_file(RoleType::Root, 1),
            sign_role(&v1, &[&a, &b]).unwrap(),
        )
        .unwrap();
        let v2 = root(2, &[&c, &d], 2);
        let p2 = layout.role_file(RoleType::Root, 2);
        std::fs::write(&p2, sign_role(&v2, &[]).unwrap()).unwrap();

        let auth = FileAuthority::read(&layout, &p2).unwrap();
        assert_eq!(auth.sets.len(), 2);
        assert_eq!(auth.authorised_ids().len(), 4);
        let s = add_signatures(&layout, &p2, &[&a, &c]).unwrap();
        assert!(!s.complete());
        assert!(matches!(
            s.require_complete(),
            Err(Error::ThresholdNotMet {
                have: 1,
                need: 2,
                ..
            })
        ));
        assert!(!layout.latest_root_file().exists());
        // Signing twice with the same key does not count twice.
        let s = add_signatures(&layout, &p2, &[&a, &c]).unwrap();
        assert_eq!(
            s.checks.iter().map(|c| c.valid).collect::<Vec<_>>(),
            vec![1, 1]
        );
        let s = add_signatures(&layout, &p2, &[&b, &d]).unwrap();
        assert!(s.complete(), "{:?}", s.checks);
        assert_eq!(std::fs::read(layout.latest_root_file()).unwrap(), s.bytes);

        let stranger = SigningKey::generate();
        assert!(matches!(
            add_signatures(&layout, &p2, &[&stranger]),
            Err(Error::NotAuthorised { .. })
        ));
    }
}
