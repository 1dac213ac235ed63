//! The repository editor: load the latest metadata, change it in memory, sign, then commit.
//!
//! Every mutator works in memory and says so; nothing touches the disk before
//! [`RepoEditor::commit`], which writes in an order that keeps the repository valid after a
//! crash at any point: images first, then the new root, targets and snapshot under new
//! versioned names (never replacing a file), and `timestamp.json` last, the one atomic
//! replacement that makes the new metadata current.
//!
//! Versions are bumped relative to what was on disk when the editor was loaded, so signing a
//! role twice in one session replaces the pending file instead of skipping a version. Time is
//! passed in: expiries are `now` plus the [`ExpiryPolicy`].
//!
//! The snapshot lists the targets version only, and the timestamp the snapshot version only
//! (python-tuf's defaults): a k-of-n role can then gain signatures after it was published
//! without invalidating the metadata that refers to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ota_common::keys::{Key, KeyId, SigningKey};
use ota_common::metadata::{
    MetaFile, Role, RoleType, Root, Snapshot, TargetFile, Targets, Timestamp,
};
use ota_common::signed::{sign_role, RawSigned};
use ota_common::target::TargetName;

use crate::authority::{self, root_key_sets, KeySet, SignedFile};
use crate::compress::Compressed;
use crate::durable::{self, Overwrite};
use crate::error::{Error, Result};
pub use crate::image::TargetCustom;
use crate::image::{copy_image, hash_and_compress, hash_file, place_compressed};
use crate::image::{PendingCompressed, PendingImage};
use crate::repo::{ExpiryPolicy, RepoLayout};

/// The four top-level roles, in the order metadata depends on them.
pub const ROLES: [RoleType; 4] = [
    RoleType::Root,
    RoleType::Targets,
    RoleType::Snapshot,
    RoleType::Timestamp,
];

/// A role's keys and threshold, for a new repository or a root edit.
#[derive(Clone, Debug)]
pub struct RoleSpec {
    /// The role.
    pub role: RoleType,
    /// Its public keys.
    pub keys: Vec<Key>,
    /// Signatures needed.
    pub threshold: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Versions {
    root: u64,
    targets: u64,
    snapshot: u64,
    timestamp: u64,
}

/// What [`RepoEditor::commit`] wrote.
#[derive(Debug, Default)]
pub struct CommitReport {
    /// Metadata files written, with their signature status.
    pub metadata: Vec<SignedFile>,
    /// Images (and compressed forms) copied into `targets/`.
    pub images: Vec<PathBuf>,
    /// Whether `metadata/root.json` was updated.
    pub latest_root_updated: bool,
}

/// Edits a repository directory. See the module documentation.
pub struct RepoEditor {
    layout: RepoLayout,
    now: DateTime<Utc>,
    policy: ExpiryPolicy,
    base: Versions,
    // The latest root on disk (None for a new repository), and whether its thresholds are met.
    base_root: Option<Root>,
    base_root_status: Option<SignedFile>,
    root: Root,
    targets: Targets,
    snapshot: Snapshot,
    timestamp: Timestamp,
    root_dirty: bool,
    targets_dirty: bool,
    images: Vec<PendingImage>,
    out: BTreeMap<RoleType, SignedFile>,
}

impl RepoEditor {
    /// Loads the latest metadata of the repository at `dir`. Does not write to the disk.
    pub fn load(dir: impl Into<PathBuf>, now: DateTime<Utc>) -> Result<Self> {
        let layout = RepoLayout::new(dir);
        let latest = layout.load_latest()?;
        let prev = latest.prev_root.as_ref().map(|l| &l.signed);
        let sets = root_key_sets(&latest.root.signed, prev)?;
        let checks = authority::check(&latest.root.raw, &sets, &latest.root.path)?;
        let base_root_status = SignedFile {
            role: RoleType::Root,
            version: latest.root.signed.version,
            path: latest.root.path.clone(),
            bytes: latest.root.raw.bytes().to_vec(),
            checks,
        };
        Ok(RepoEditor {
            base: Versions {
                root: latest.root.signed.version,
                targets: latest.targets.signed.version,
                snapshot: latest.snapshot.signed.version,
                timestamp: latest.timestamp.signed.version,
            },
            layout,
            now,
            policy: ExpiryPolicy::default(),
            base_root: Some(latest.root.signed.clone()),
            base_root_status: Some(base_root_status),
            root: latest.root.signed,
            targets: latest.targets.signed,
            snapshot: latest.snapshot.signed,
            timestamp: latest.timestamp.signed,
            root_dirty: false,
            targets_dirty: false,
            images: Vec::new(),
            out: BTreeMap::new(),
        })
    }

    /// Starts a new repository at `dir` with the given roles; every role then needs signing
    /// (`sign_root`, `sign_targets`, `sign_snapshot`, `sign_timestamp`) before `commit`.
    /// Refuses a directory that already holds metadata. Does not write to the disk.
    pub fn create(dir: impl Into<PathBuf>, now: DateTime<Utc>, roles: &[RoleSpec]) -> Result<Self> {
        let layout = RepoLayout::new(dir);
        if layout.has_metadata()? {
            return Err(Error::Invalid(format!(
                "{} already holds metadata: refusing to initialise over it",
                layout.metadata_dir().display()
            )));
        }
        let mut root = Root::new(0, now);
        for spec in roles {
            set_role_checked(&mut root, spec)?;
        }
        Ok(RepoEditor {
            layout,
            now,
            policy: ExpiryPolicy::default(),
            base: Versions::default(),
            base_root: None,
            base_root_status: None,
            root,
            targets: Targets::new(0, now),
            snapshot: Snapshot::new(0, now),
            timestamp: Timestamp::new(0, now, MetaFile::version_only(0)),
            root_dirty: true,
            targets_dirty: true,
            images: Vec::new(),
            out: BTreeMap::new(),
        })
    }

    /// Uses `policy` for the expiry of what is signed from now on.
    pub fn with_expiry_policy(mut self, policy: ExpiryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The repository's paths.
    pub fn layout(&self) -> &RepoLayout {
        &self.layout
    }

    /// The time expiries are computed from.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The root as edited so far (the latest on disk if unedited).
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The targets as edited so far.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The snapshot as signed so far.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The timestamp as signed so far.
    pub fn timestamp(&self) -> &Timestamp {
        &self.timestamp
    }

    /// The signature status of the latest root on disk (None for a new repository).
    pub fn base_root_status(&self) -> Option<&SignedFile> {
        self.base_root_status.as_ref()
    }

    /// The key sets a new root version must satisfy: the latest root's root keys (if any)
    /// and the root keys of the root as edited.
    pub fn root_key_sets(&self) -> Result<Vec<KeySet>> {
        root_key_sets(&self.root, self.base_root.as_ref())
    }

    /// The key ids `role` has in the root as edited.
    pub fn role_key_ids(&self, role: RoleType) -> Vec<KeyId> {
        self.root
            .role(role)
            .map(|r| r.keyids.clone())
            .unwrap_or_default()
    }

    /// Adds a target from an image file: length, SHA-256 and SHA-512 are computed
    /// streaming; the image is copied into `targets/` on commit. A name already listed is
    /// refused (remove it first). Does not write to the disk.
    pub fn add_target_from_file(
        &mut self,
        name: &str,
        image: &Path,
        custom: &TargetCustom,
    ) -> Result<TargetFile> {
        let target = checked_name(name)?;
        let custom = custom.to_value(name)?;
        let (length, sha256, sha512) = hash_file(image)?;
        let file = image_target(length, &sha256, sha512, custom);
        self.add_target(name, file.clone())?;
        self.images.push(PendingImage {
            src: image.to_path_buf(),
            dest: self.layout.target_path(&target, &sha256),
            sha256,
            compressed: None,
        });
        Ok(file)
    }

    /// Like [`RepoEditor::add_target_from_file`], and also makes a zstd-compressed form of
    /// the image ([`crate::compress::compress_frames`] at `level`) in the same pass, named
    /// in `custom.zstd` (any value there is replaced). The form is written to a temporary
    /// file in its `targets/` directory now and placed at
    /// [`RepoLayout::compressed_path`] on commit; no metadata is written before commit.
    pub fn add_target_from_file_compressed(
        &mut self,
        name: &str,
        image: &Path,
        custom: &TargetCustom,
        level: i32,
    ) -> Result<(TargetFile, Compressed)> {
        let target = checked_name(name)?;
        // Cheap refusals first: compressing a large image takes a while.
        custom.to_value(name)?;
        self.refuse_listed(name)?;
        // The directory of the image's content-addressed path (independent of the hash).
        let any = self.layout.target_path(&target, "0");
        let dir = any
            .parent()
            .ok_or_else(|| Error::Invalid("target path has no directory".into()))?;
        let ((length, sha256, sha512), tmp, compressed) = hash_and_compress(image, dir, level)?;
        let form = compressed.form();
        let mut custom = custom.clone();
        custom.release.zstd = Some(form.clone());
        let file = image_target(length, &sha256, sha512, custom.to_value(name)?);
        self.add_target(name, file.clone())?;
        self.images.push(PendingImage {
            src: image.to_path_buf(),
            dest: self.layout.target_path(&target, &sha256),
            sha256,
            compressed: Some(PendingCompressed {
                file: tmp,
                dest: self.layout.compressed_path(&target, &form),
            }),
        });
        Ok((file, compressed))
    }

    /// A name already listed is refused: replacing a target takes a removal first.
    fn refuse_listed(&self, name: &str) -> Result<()> {
        if self.targets.targets.contains_key(name) {
            return Err(Error::Target {
                name: name.into(),
                reason: format!(
                    "already listed in targets v{}: remove it first to replace it",
                    self.targets.version
                ),
            });
        }
        Ok(())
    }

    /// Adds a target whose image is stored elsewhere (a server's blob store). Does not write
    /// to the disk.
    pub fn add_target(&mut self, name: &str, file: TargetFile) -> Result<()> {
        checked_name(name)?;
        if file.sha256().is_none() {
            return Err(Error::Target {
                name: name.into(),
                reason: "no sha256 hash (the image's path in targets/ is named by it)".into(),
            });
        }
        self.refuse_listed(name)?;
        self.targets.targets.insert(name.into(), file);
        self.targets_dirty = true;
        Ok(())
    }

    /// Removes a target from the metadata (its image stays: older snapshots may name it).
    /// Does not write to the disk.
    pub fn remove_target(&mut self, name: &str) -> Result<TargetFile> {
        let file = self
            .targets
            .targets
            .remove(name)
            .ok_or_else(|| Error::Target {
                name: name.into(),
                reason: format!("not listed in targets v{}", self.targets.version),
            })?;
        // An image added in this session for the removed entry is not copied either.
        if let (Ok(target), Some(sha256)) = (TargetName::new(name), file.sha256()) {
            let dest = self.layout.target_path(&target, sha256);
            self.images.retain(|i| i.dest != dest);
        }
        self.targets_dirty = true;
        Ok(file)
    }

    /// The root for editing. Refused while the latest root on disk does not meet its
    /// thresholds (finish signing it first: two unfinished roots cannot be chained).
    /// Does not write to the disk.
    pub fn root_mut(&mut self) -> Result<&mut Root> {
        if let Some(status) = &self.base_root_status {
            status.require_complete()?;
        }
        self.root_dirty = true;
        Ok(&mut self.root)
    }

    /// Replaces a role's keys and threshold in the root. Does not write to the disk.
    pub fn set_role(&mut self, spec: &RoleSpec) -> Result<()> {
        set_role_checked(self.root_mut()?, spec)
    }

    /// Replaces one key of a role, keeping its threshold. Does not write to the disk.
    pub fn replace_key(&mut self, role: RoleType, old: &KeyId, new: Key) -> Result<()> {
        let root = self.root_mut()?;
        let rk = root
            .role(role)
            .ok_or_else(|| Error::Invalid(format!("root has no {role} role")))?
            .clone();
        if !rk.keyids.contains(old) {
            return Err(Error::UnknownKeyId {
                key_id: old.0.clone(),
                context: format!("not a {role} key of root v{}", root.version),
            });
        }
        let mut keys = Vec::with_capacity(rk.keyids.len());
        for id in &rk.keyids {
            if id == old {
                keys.push(new.clone());
            } else if let Some(k) = root.keys.get(id) {
                keys.push(k.clone());
            }
        }
        set_role_checked(
            root,
            &RoleSpec {
                role,
                keys,
                threshold: rk.threshold,
            },
        )
    }

    /// Signs the next root version (latest + 1, expiring now + policy) with `keys`, which may
    /// be fewer than the thresholds (others add theirs with
    /// [`crate::authority::add_signatures`]). Each key must be a root key of the previous
    /// root or of the new one. Does not write to the disk.
    pub fn sign_root(&mut self, keys: &[&SigningKey]) -> Result<SignedFile> {
        self.root_mut()?;
        validate_root(&self.root)?;
        self.root.version = self.base.root + 1;
        self.root.expires = self.policy.expires(RoleType::Root, self.now);
        let sets = root_key_sets(&self.root, self.base_root.as_ref())?;
        let path = self.layout.role_file(RoleType::Root, self.root.version);
        let signed = sign_with(&self.root, RoleType::Root, keys, &sets, path)?;
        self.root_dirty = false;
        self.out.insert(RoleType::Root, signed.clone());
        Ok(signed)
    }

    /// Signs the next targets version. Does not write to the disk.
    pub fn sign_targets(&mut self, keys: &[&SigningKey]) -> Result<SignedFile> {
        self.targets.version = self.base.targets + 1;
        self.targets.expires = self.policy.expires(RoleType::Targets, self.now);
        let sets = [KeySet::of(&self.root, RoleType::Targets)?];
        let path = self
            .layout
            .role_file(RoleType::Targets, self.targets.version);
        let signed = sign_with(&self.targets, RoleType::Targets, keys, &sets, path)?;
        self.targets_dirty = false;
        self.out.insert(RoleType::Targets, signed.clone());
        Ok(signed)
    }

    /// Signs the next snapshot version, naming the current targets version. Does not write
    /// to the disk.
    pub fn sign_snapshot(&mut self, keys: &[&SigningKey]) -> Result<SignedFile> {
        self.snapshot.version = self.base.snapshot + 1;
        self.snapshot.expires = self.policy.expires(RoleType::Snapshot, self.now);
        self.snapshot.meta.insert(
            "targets.json".into(),
            MetaFile::version_only(self.targets.version),
        );
        let sets = [KeySet::of(&self.root, RoleType::Snapshot)?];
        let path = self
            .layout
            .role_file(RoleType::Snapshot, self.snapshot.version);
        let signed = sign_with(&self.snapshot, RoleType::Snapshot, keys, &sets, path)?;
        self.out.insert(RoleType::Snapshot, signed.clone());
        Ok(signed)
    }

    /// Signs the next timestamp version, naming the current snapshot version. Does not
    /// write to the disk.
    pub fn sign_timestamp(&mut self, keys: &[&SigningKey]) -> Result<SignedFile> {
        self.timestamp.version = self.base.timestamp + 1;
        self.timestamp.expires = self.policy.expires(RoleType::Timestamp, self.now);
        self.timestamp.meta.insert(
            "snapshot.json".into(),
            MetaFile::version_only(self.snapshot.version),
        );
        let sets = [KeySet::of(&self.root, RoleType::Timestamp)?];
        let path = self.layout.timestamp_file();
        let signed = sign_with(&self.timestamp, RoleType::Timestamp, keys, &sets, path)?;
        self.out.insert(RoleType::Timestamp, signed.clone());
        Ok(signed)
    }

    /// Writes everything signed, in crash-safe order (see the module documentation).
    pub fn commit(mut self) -> Result<CommitReport> {
        if self.root_dirty {
            return Err(Error::Invalid(
                "root was edited but not signed (sign_root)".into(),
            ));
        }
        if self.targets_dirty {
            return Err(Error::Invalid(
                "targets were edited but not signed (sign_targets)".into(),
            ));
        }
        if self.out.contains_key(&RoleType::Snapshot)
            && self.snapshot.meta.get("targets.json").map(|m| m.version)
                != Some(self.targets.version)
        {
            return Err(Error::Invalid(
                "targets were signed after the snapshot: sign the snapshot again".into(),
            ));
        }
        if self.out.contains_key(&RoleType::Timestamp)
            && self.timestamp.snapshot_meta().map(|m| m.version) != Some(self.snapshot.version)
        {
            return Err(Error::Invalid(
                "the snapshot was signed after the timestamp: sign the timestamp again".into(),
            ));
        }
        let mut report = CommitReport::default();
        for mut image in std::mem::take(&mut self.images) {
            if copy_image(&image)? {
                report.images.push(image.dest.clone());
            }
            if let Some(c) = image.compressed.take() {
                let dest = c.dest.clone();
                if place_compressed(c)? {
                    report.images.push(dest);
                }
            }
        }
        for role in ROLES {
            let Some(signed) = self.out.get(&role) else {
                continue;
            };
            let overwrite = if role == RoleType::Timestamp {
                Overwrite::Replace
            } else {
                Overwrite::Refuse
            };
            durable::write(&signed.path, &signed.bytes, durable::PUBLIC, overwrite)?;
            if role == RoleType::Root && signed.complete() {
                durable::write(
                    &self.layout.latest_root_file(),
                    &signed.bytes,
                    durable::PUBLIC,
                    Overwrite::Replace,
                )?;
                report.latest_root_updated = true;
            }
            report.metadata.push(signed.clone());
        }
        Ok(report)
    }
}

fn checked_name(name: &str) -> Result<TargetName> {
    TargetName::new(name).map_err(|e| Error::Target {
        name: name.into(),
        reason: format!("unsafe target name: {}", e.reason),
    })
}

fn set_role_checked(root: &mut Root, spec: &RoleSpec) -> Result<()> {
    let mut ids = std::collections::BTreeSet::new();
    for k in &spec.keys {
        let id = k
            .key_id()
            .map_err(|e| Error::Invalid(format!("{} key: {e}", spec.role)))?;
        if !ids.insert(id.clone()) {
            return Err(Error::Invalid(format!(
                "{} lists key {id} twice",
                spec.role
            )));
        }
    }
    if spec.threshold == 0 || spec.threshold > spec.keys.len() as u64 {
        return Err(Error::Invalid(format!(
            "{} threshold {} with {} key(s): it must be between 1 and the number of keys",
            spec.role,
            spec.threshold,
            spec.keys.len()
        )));
    }
    root.set_role(spec.role, &spec.keys, spec.threshold)
        .map_err(|e| Error::Invalid(format!("{} key: {e}", spec.role)))
}

fn validate_root(root: &Root) -> Result<()> {
    for role in ROLES {
        let rk = root
            .role(role)
            .ok_or_else(|| Error::Invalid(format!("root lists no {role} role")))?;
        let distinct: std::collections::BTreeSet<&KeyId> = rk
            .keyids
            .iter()
            .filter(|id| root.keys.contains_key(*id))
            .collect();
        if rk.threshold == 0 || rk.threshold > distinct.len() as u64 {
            return Err(Error::Invalid(format!(
                "{role} threshold {} with {} usable key(s)",
                rk.threshold,
                distinct.len()
            )));
        }
    }
    Ok(())
}

fn sign_with<T: Role>(
    value: &T,
    role: RoleType,
    keys: &[&SigningKey],
    sets: &[KeySet],
    path: PathBuf,
) -> Result<SignedFile> {
    for key in keys {
        let id = key.key_id();
        if !sets.iter().any(|s| s.authorises(&id)) {
            return Err(Error::NotAuthorised {
                key_id: id.0,
                role: role.name().into(),
            });
        }
    }
    let bytes = sign_role(value, keys).map_err(|e| Error::malformed(&path, e))?;
    let raw = RawSigned::parse(&bytes).map_err(|e| Error::malformed(&path, e))?;
    let checks = authority::check(&raw, sets, &path)?;
    Ok(SignedFile {
        role,
        version: value.version(),
        path,
        bytes,
        checks,
    })
}

/// The target entry of an image: its length, SHA-256 and SHA-512, and `custom`.
fn image_target(
    length: u64,
    sha256: &str,
    sha512: String,
    custom: serde_json::Value,
) -> TargetFile {
    TargetFile {
        length,
        hashes: BTreeMap::from([
            ("sha256".to_string(), sha256.to_string()),
            ("sha512".to_string(), sha512),
        ]),
        custom: Some(custom),
        extra: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};
    use ota_common::client::{
        refresh_with, ClientError, ClientLimits, LocalMetadata, RefreshError, TrustedRepository,
    };
    use ota_common::release::ReleaseInfo;
    use ota_common::verify::VerifyError;
    use serde_json::Map;
    use sha2::{Digest, Sha256};
    use std::fs;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
    }

    struct Keys {
        root: Vec<SigningKey>,
        targets: Vec<SigningKey>,
        snapshot: SigningKey,
        timestamp: SigningKey,
    }

    fn gen(n: usize) -> Vec<SigningKey> {
        (0..n).map(|_| SigningKey::generate()).collect()
    }

    fn refs(v: &[SigningKey]) -> Vec<&SigningKey> {
        v.iter().collect()
    }

    fn spec(role: RoleType, keys: &[SigningKey], threshold: u64) -> RoleSpec {
        RoleSpec {
            role,
            keys: keys.iter().map(SigningKey::public).collect(),
            threshold,
        }
    }

    /// A committed v1 repository.
    fn init(dir: &Path, n_root: usize, root_t: u64, n_targets: usize, targets_t: u64) -> Keys {
        let k = Keys {
            root: gen(n_root),
            targets: gen(n_targets),
            snapshot: SigningKey::generate(),
            timestamp: SigningKey::generate(),
        };
        let specs = [
            spec(RoleType::Root, &k.root, root_t),
            spec(RoleType::Targets, &k.targets, targets_t),
            spec(RoleType::Snapshot, std::slice::from_ref(&k.snapshot), 1),
            spec(RoleType::Timestamp, std::slice::from_ref(&k.timestamp), 1),
        ];
        let mut ed = RepoEditor::create(dir, now(), &specs).unwrap();
        assert!(ed.sign_root(&refs(&k.root)).unwrap().complete());
        ed.sign_targets(&refs(&k.targets)).unwrap();
        ed.sign_snapshot(&[&k.snapshot]).unwrap();
        ed.sign_timestamp(&[&k.timestamp]).unwrap();
        let report = ed.commit().unwrap();
        assert_eq!(report.metadata.len(), 4);
        assert!(report.latest_root_updated);
        k
    }

    /// The real client workflow, trusting root v1, over the directory.
    fn client(dir: &Path, at: DateTime<Utc>) -> Result<TrustedRepository, RefreshError<Error>> {
        let layout = RepoLayout::new(dir);
        let root = fs::read(layout.role_file(RoleType::Root, 1)).unwrap();
        let local = LocalMetadata {
            root,
            ..Default::default()
        };
        refresh_with(local, at, ClientLimits::default(), |req| layout.fetch(req))
    }

    fn threshold_failure(r: Result<TrustedRepository, RefreshError<Error>>) -> (String, u64, u64) {
        match r {
            Err(RefreshError::Client(ClientError::Signature {
                file,
                source:
                    VerifyError::ThresholdNotMet {
                        valid, threshold, ..
                    },
            })) => (file, valid, threshold),
            other => panic!("expected a threshold failure, got {other:?}"),
        }
    }

    fn custom(version: &str) -> TargetCustom {
        let release = ReleaseInfo::from_custom(
            "t",
            &serde_json::json!({"version": version, "hardware_ids": ["board-a"]}),
        )
        .unwrap();
        let mut extra = Map::new();
        extra.insert("notes".into(), "first release".into());
        TargetCustom { release, extra }
    }

    #[test]
    fn new_repository_and_added_target_pass_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let k = init(dir.path(), 1, 1, 1, 1);
        let trusted = client(dir.path(), now()).unwrap();
        assert_eq!(trusted.targets().version, 1);
        assert!(trusted.targets().targets.is_empty());

        let image = dir.path().join("img.bin");
        fs::write(&image, b"firmware bytes").unwrap();
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        let added = ed
            .add_target_from_file("fw/board-a.img", &image, &custom("1.2.0"))
            .unwrap();
        assert_eq!(added.length, 14);
        ed.sign_targets(&[&k.targets[0]]).unwrap();
        ed.sign_snapshot(&[&k.snapshot]).unwrap();
        ed.sign_timestamp(&[&k.timestamp]).unwrap();
        let report = ed.commit().unwrap();
        assert_eq!(report.images.len(), 1);
        assert_eq!(fs::read(&report.images[0]).unwrap(), b"firmware bytes");

        let trusted = client(dir.path(), now()).unwrap();
        assert_eq!(trusted.timestamp().version, 2);
        let (file, _) = trusted.find_target("fw/board-a.img").unwrap();
        let info = ReleaseInfo::from_target("fw/board-a.img", file).unwrap();
        assert_eq!(info.version.to_string(), "1.2.0");
        assert_eq!(file.custom.as_ref().unwrap()["notes"], "first release");
        let path = RepoLayout::new(dir.path()).target_path(
            &TargetName::new("fw/board-a.img").unwrap(),
            file.sha256().unwrap(),
        );
        assert_eq!(fs::read(path).unwrap(), b"firmware bytes");

        // The default timestamp lifetime is one day.
        let late = client(dir.path(), now() + TimeDelta::days(2));
        assert!(
            matches!(late, Err(RefreshError::Client(ClientError::Expired { ref role, .. })) if role == "timestamp")
        );

        // Removing it gives a new version without it.
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        ed.remove_target("fw/board-a.img").unwrap();
        ed.sign_targets(&[&k.targets[0]]).unwrap();
        ed.sign_snapshot(&[&k.snapshot]).unwrap();
        ed.sign_timestamp(&[&k.timestamp]).unwrap();
        ed.commit().unwrap();
        let trusted = client(dir.path(), now()).unwrap();
        assert_eq!(trusted.targets().version, 3);
        assert!(trusted.find_target("fw/board-a.img").is_none());
    }

    #[test]
    fn a_compressed_form_is_listed_and_placed_beside_the_image_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let k = init(dir.path(), 1, 1, 1, 1);
        let image = dir.path().join("img.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
        fs::write(&image, &data).unwrap();
        let layout = RepoLayout::new(dir.path());
        let name = TargetName::new("fw/board-a.img").unwrap();

        // Dropped without a commit: no file left, not even the temporary one.
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        ed.add_target_from_file_compressed("fw/board-a.img", &image, &custom("1.2.0"), 3)
            .unwrap();
        drop(ed);
        let fw_dir = layout.targets_dir().join("fw");
        assert_eq!(fs::read_dir(&fw_dir).map(|d| d.count()).unwrap_or(0), 0);

        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        let (file, c) = ed
            .add_target_from_file_compressed("fw/board-a.img", &image, &custom("1.2.0"), 3)
            .unwrap();
        let form = ReleaseInfo::from_target("fw/board-a.img", &file)
            .unwrap()
            .zstd
            .unwrap();
        assert_eq!(form, c.form());
        assert_eq!(
            file.length,
            data.len() as u64,
            "the TUF length is the image's"
        );
        ed.sign_targets(&[&k.targets[0]]).unwrap();
        ed.sign_snapshot(&[&k.snapshot]).unwrap();
        ed.sign_timestamp(&[&k.timestamp]).unwrap();
        let report = ed.commit().unwrap();
        let zst = layout.compressed_path(&name, &form);
        assert_eq!(report.images.len(), 2);
        assert!(report.images.contains(&zst));
        assert!(zst.to_str().unwrap().ends_with(".board-a.img.zst"));
        let bytes = fs::read(&zst).unwrap();
        assert_eq!(bytes.len() as u64, form.length);
        crate::compress::check_compressed_form(
            &bytes[..],
            file.length,
            &Sha256::digest(&data).into(),
            &form,
        )
        .unwrap();
        let trusted = client(dir.path(), now()).unwrap();
        assert!(trusted.find_target("fw/board-a.img").is_some());
    }

    #[test]
    fn root_rotation_with_two_of_three_thresholds() {
        let dir = tempfile::tempdir().unwrap();
        let old = init(dir.path(), 3, 2, 1, 1);
        let new = gen(3);
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        ed.set_role(&spec(RoleType::Root, &new, 2)).unwrap();
        let signed = ed.sign_root(&[&old.root[0], &new[0]]).unwrap();
        assert_eq!(signed.version, 2);
        assert_eq!(
            signed
                .checks
                .iter()
                .map(|c| (c.valid, c.threshold))
                .collect::<Vec<_>>(),
            vec![(1, 2), (1, 2)]
        );
        let report = ed.commit().unwrap();
        assert!(!report.latest_root_updated);

        // Partially signed: the client refuses the chain.
        let (file, valid, threshold) = threshold_failure(client(dir.path(), now()));
        assert_eq!((file.as_str(), valid, threshold), ("2.root.json", 1, 2));
        // A third unfinished root cannot be stacked on it.
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        assert!(matches!(
            ed.sign_root(&[&new[0]]),
            Err(Error::ThresholdNotMet { .. })
        ));

        // Two of the new keys but still one old key: refused (the old root must agree).
        let layout = RepoLayout::new(dir.path());
        let p2 = layout.role_file(RoleType::Root, 2);
        authority::add_signatures(&layout, &p2, &[&new[1]]).unwrap();
        threshold_failure(client(dir.path(), now()));
        let done = authority::add_signatures(&layout, &p2, &[&old.root[2]]).unwrap();
        assert!(done.complete());
        let trusted = client(dir.path(), now()).unwrap();
        assert_eq!(trusted.root().version, 2);
        assert_eq!(trusted.root().role(RoleType::Root).unwrap().threshold, 2);
        assert_eq!(
            fs::read(layout.latest_root_file()).unwrap(),
            fs::read(&p2).unwrap()
        );
    }

    #[test]
    fn k_of_n_targets_verify_only_once_the_threshold_is_met() {
        let dir = tempfile::tempdir().unwrap();
        let k = init(dir.path(), 1, 1, 2, 2);
        client(dir.path(), now()).unwrap();
        let image = dir.path().join("img.bin");
        fs::write(&image, b"v2").unwrap();
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        ed.add_target_from_file("img.bin", &image, &custom("2.0.0"))
            .unwrap();
        let t = ed.sign_targets(&[&k.targets[0]]).unwrap();
        assert!(!t.complete());
        ed.sign_snapshot(&[&k.snapshot]).unwrap();
        ed.sign_timestamp(&[&k.timestamp]).unwrap();
        ed.commit().unwrap();
        let (file, valid, threshold) = threshold_failure(client(dir.path(), now()));
        assert_eq!((file.as_str(), valid, threshold), ("2.targets.json", 1, 2));

        let layout = RepoLayout::new(dir.path());
        let signed = authority::add_signatures(
            &layout,
            &layout.role_file(RoleType::Targets, 2),
            &[&k.targets[1]],
        )
        .unwrap();
        assert!(signed.complete());
        let trusted = client(dir.path(), now()).unwrap();
        assert!(trusted.find_target("img.bin").is_some());
    }

    #[test]
    fn rotating_an_online_key_and_re_signing_keeps_clients_working() {
        let dir = tempfile::tempdir().unwrap();
        let k = init(dir.path(), 1, 1, 1, 1);
        let fresh = SigningKey::generate();
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        ed.replace_key(RoleType::Timestamp, &k.timestamp.key_id(), fresh.public())
            .unwrap();
        ed.sign_root(&[&k.root[0]]).unwrap();
        // The old timestamp key is no longer authorised.
        assert!(matches!(
            ed.sign_timestamp(&[&k.timestamp]),
            Err(Error::NotAuthorised { .. })
        ));
        ed.sign_timestamp(&[&fresh]).unwrap();
        ed.commit().unwrap();
        let trusted = client(dir.path(), now()).unwrap();
        assert_eq!(
            (trusted.root().version, trusted.timestamp().version),
            (2, 2)
        );
    }

    #[test]
    fn bad_edits_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let k = init(dir.path(), 1, 1, 1, 1);
        assert!(matches!(
            RepoEditor::create(dir.path(), now(), &[]),
            Err(Error::Invalid(_))
        ));
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        assert!(matches!(
            ed.set_role(&spec(RoleType::Targets, &k.targets, 2)),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            ed.set_role(&spec(RoleType::Targets, &k.targets, 0)),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            ed.remove_target("nope"),
            Err(Error::Target { .. })
        ));
        let image = dir.path().join("img.bin");
        fs::write(&image, b"x").unwrap();
        assert!(matches!(
            ed.add_target_from_file("../escape", &image, &custom("1.0.0")),
            Err(Error::Target { .. })
        ));
        // Custom-field refusals are tested in `image`.
        ed.add_target_from_file("a", &image, &custom("1.0.0"))
            .unwrap();
        assert!(matches!(
            ed.add_target_from_file("a", &image, &custom("1.0.1")),
            Err(Error::Target { .. })
        ));
        assert!(matches!(
            ed.sign_targets(&[&k.snapshot]),
            Err(Error::NotAuthorised { .. })
        ));
        ed.sign_snapshot(&[&k.snapshot]).unwrap();
        ed.sign_targets(&[&k.targets[0]]).unwrap();
        // Targets signed after the snapshot: the snapshot would name a stale version.
        assert!(matches!(ed.commit(), Err(Error::Invalid(_))));
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        ed.add_target_from_file("a", &image, &custom("1.0.0"))
            .unwrap();
        assert!(matches!(ed.commit(), Err(Error::Invalid(_))));
        // Nothing was written by the refused sessions.
        let layout = RepoLayout::new(dir.path());
        assert_eq!(layout.latest_version(RoleType::Targets).unwrap(), Some(1));
        assert!(!layout.targets_dir().exists());
    }
}
