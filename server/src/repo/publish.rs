//! Changing the repository: first creation, publishing targets, withdrawing a release,
//! re-signing before expiry, and root rotation. Every change is one atomic store batch
//! guarded by the timestamp it replaces, flushed before it is acknowledged, then the
//! in-memory view is rebuilt. These functions block on disk I/O: call them from a
//! blocking thread.

use std::collections::BTreeMap;
use std::sync::MutexGuard;

use chrono::{DateTime, Utc};
use ota_common::metadata::{Role, RoleType, Root, TargetFile, Targets};
use ota_common::release::ReleaseInfo;
use ota_common::signed::RawSigned;
use ota_common::target::TargetName;
use ota_common::verify::{verify_role, VerifyError};
use serde::{Deserialize, Serialize};

use super::signer::{sign_snapshot, sign_targets, sign_timestamp};
use super::{version_key, RepoError, Repository, BLOBS_TREE, TREE};
use crate::blobs::BlobStore;
use crate::store::{Op, Store, StoreError, StoreExt};

/// Why a publish was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The body is not targets metadata.
    #[error("not valid targets metadata: {0}")]
    Malformed(String),
    /// Not signed by the targets role's threshold of the trusted root.
    #[error("targets metadata is not signed by the trusted targets keys: {0}")]
    Signature(VerifyError),
    /// Another publish got there first, or the version skips.
    #[error("conflict: current targets version is {current}, this one is {offered}; it must be {}. Fetch the current targets, re-apply your change and sign again", current + 1)]
    Conflict {
        /// Current targets version.
        current: u64,
        /// Version offered.
        offered: u64,
    },
    /// Already expired.
    #[error("targets metadata expired at {expires}")]
    Expired {
        /// Its expiry.
        expires: DateTime<Utc>,
    },
    /// A target name is unsafe.
    #[error(transparent)]
    TargetName(#[from] ota_common::target::TargetNameError),
    /// A target lists no sha256.
    #[error("target {0:?} lists no sha256 hash")]
    MissingHash(String),
    /// A target's image was not uploaded.
    #[error(
        "target {target:?}: image {sha256} has not been uploaded (PUT it to /api/v1/blobs first)"
    )]
    MissingBlob {
        /// Target.
        target: String,
        /// Its hash.
        sha256: String,
    },
    /// A target's compressed form was not uploaded.
    #[error(
        "target {target:?}: compressed form {sha256} has not been uploaded (PUT it to /api/v1/blobs first)"
    )]
    MissingCompressedBlob {
        /// Target.
        target: String,
        /// The form's sha256.
        sha256: String,
    },
    /// A target's compressed form does not decode to its image (or is not the blob it
    /// names, or needs more than the devices' window).
    #[error("target {target:?}: compressed form {sha256} refused: {source}")]
    CompressedForm {
        /// Target.
        target: String,
        /// The form's blob.
        sha256: String,
        /// The check that failed.
        #[source]
        source: ota_keys::compress::CompressedFormError,
    },
    /// Reading an uploaded blob failed (a server-side problem).
    #[error("reading uploaded blob {sha256}: {source}")]
    BlobRead {
        /// The blob.
        sha256: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A compressed form was given to a publish path that cannot check it.
    #[error("release {0:?} names a compressed form: publish it with publish_release_checked")]
    UncheckedCompressedForm(String),
    /// A target's length or sha512 differs from the uploaded image.
    #[error("target {target:?}: {what} differs from the uploaded image")]
    BlobMismatch {
        /// Target.
        target: String,
        /// Which field.
        what: &'static str,
    },
    /// The release fields are missing or invalid.
    #[error(transparent)]
    ReleaseFields(#[from] ota_common::release::ReleaseFieldsError),
    /// Delegated targets are not published through this server.
    #[error("targets with delegations are not supported by this server")]
    DelegationsUnsupported,
    /// The server does not hold the targets key (production mode).
    #[error("this server does not hold the targets key: sign the targets metadata with ota-keys and POST it to /api/v1/targets")]
    NoTargetsKey,
    /// No such target.
    #[error("no target named {0:?}")]
    UnknownTarget(String),
    /// A target of that name exists with other content.
    #[error("target {0:?} already exists with different content; publish under a new name")]
    TargetExists(String),
    /// The new root does not chain from the current one.
    #[error("root rotation refused: {0}")]
    Root(String),
    /// Storage or signing failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<StoreError> for PublishError {
    fn from(e: StoreError) -> Self {
        match e {
            // The batch precondition failed: another writer changed the timestamp.
            StoreError::Conflict(_) => PublishError::Repo(RepoError::Store(e)),
            e => PublishError::Repo(RepoError::Store(e)),
        }
    }
}

/// What a publish produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishOutcome {
    /// New targets version.
    pub targets_version: u64,
    /// New snapshot version.
    pub snapshot_version: u64,
    /// New timestamp version.
    pub timestamp_version: u64,
}

/// Facts about an uploaded image, kept in the `blobs` tree by sha256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobFacts {
    /// SHA-256, hex.
    pub sha256: String,
    /// SHA-512, hex.
    pub sha512: String,
    /// Length in bytes.
    pub length: u64,
}

/// A release to add in development mode (the server signs targets).
#[derive(Clone, Debug)]
pub struct NewRelease {
    /// Target name.
    pub name: String,
    /// The uploaded image.
    pub blob: BlobFacts,
    /// Release fields.
    pub info: ReleaseInfo,
}

impl Repository {
    fn lock(&self) -> MutexGuard<'_, ()> {
        match self.write_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Creates a repository in an empty store: every root version given (oldest first,
    /// each chaining from the previous), targets (given, or empty and signed by the
    /// server's targets key), and the first snapshot and timestamp.
    pub fn initialize(
        store: &dyn Store,
        roots: &[Vec<u8>],
        targets: Option<Vec<u8>>,
        keys: &super::OnlineKeys,
        policy: &super::RepoPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), PublishError> {
        let mut ops = vec![Op::expect(TREE, b"timestamp".to_vec(), None)];
        let mut trusted: Option<Root> = None;
        for bytes in roots {
            let root = check_root_chain(trusted.as_ref(), bytes)?;
            ops.push(Op::put(
                TREE,
                version_key("root", root.version),
                bytes.clone(),
            ));
            trusted = Some(root);
        }
        let root = trusted.ok_or_else(|| PublishError::Root("no root given".into()))?;
        let targets_bytes = match targets {
            Some(b) => {
                let raw =
                    RawSigned::parse(&b).map_err(|e| PublishError::Malformed(e.to_string()))?;
                verify_targets(&root, &raw)?;
                b
            }
            None => {
                let key = keys.targets.as_ref().ok_or(PublishError::NoTargetsKey)?;
                sign_targets(key, &Targets::new(1, policy.targets_expiry(now)))?
            }
        };
        let t: Targets = RawSigned::parse(&targets_bytes)
            .and_then(|r| r.decode())
            .map_err(|e| PublishError::Malformed(e.to_string()))?;
        let snapshot = sign_snapshot(&keys.snapshot, 1, policy.snapshot_expiry(now), t.version)?;
        let timestamp = sign_timestamp(
            &keys.timestamp,
            1,
            policy.timestamp_expiry(now),
            1,
            &snapshot,
        )?;
        ops.push(Op::put(
            TREE,
            version_key("targets", t.version),
            targets_bytes,
        ));
        ops.push(Op::put(TREE, version_key("snapshot", 1), snapshot));
        ops.push(Op::put(TREE, b"timestamp".to_vec(), timestamp));
        store.apply_batch_durable(ops)?;
        Ok(())
    }

    /// Publishes targets metadata signed by release engineers (production flow). Every
    /// compressed form a new target names is checked against the blobs in `blobs` first.
    pub fn publish_targets(
        &self,
        bytes: &[u8],
        blobs: &BlobStore,
        now: DateTime<Utc>,
    ) -> Result<PublishOutcome, PublishError> {
        let raw = RawSigned::parse(bytes).map_err(|e| PublishError::Malformed(e.to_string()))?;
        {
            // The cheap checks first, then the forms, before the write lock: decoding a
            // large form takes a while, and the blobs it reads never change. Under the lock
            // the cheap checks run again against the then current view.
            let view = self.view();
            let targets = verify_targets(&view.root, &raw)?;
            self.check_new_targets(&view.targets_signed, &targets, now)?;
            self.check_new_forms(&view.targets_signed, &targets, blobs)?;
        }
        let _guard = self.lock();
        let view = self.view();
        let targets = verify_targets(&view.root, &raw)?;
        self.check_new_targets(&view.targets_signed, &targets, now)?;
        self.commit(bytes.to_vec(), targets.version, now)
    }

    /// Adds a release and signs targets with the server's key (development mode), after
    /// checking its compressed form, if it names one, against the blobs in `blobs`.
    pub fn publish_release_checked(
        &self,
        release: &NewRelease,
        blobs: &BlobStore,
        now: DateTime<Utc>,
    ) -> Result<PublishOutcome, PublishError> {
        if let Some(form) = &release.info.zstd {
            self.check_compressed_form(&release.name, &release.blob, form, blobs)?;
        }
        self.sign_and_publish_release(release, now)
    }

    /// Adds a release without a compressed form and signs targets with the server's key
    /// (development mode). A release naming a compressed form is refused: use
    /// [`Repository::publish_release_checked`].
    pub fn publish_release(
        &self,
        release: &NewRelease,
        now: DateTime<Utc>,
    ) -> Result<PublishOutcome, PublishError> {
        if release.info.zstd.is_some() {
            return Err(PublishError::UncheckedCompressedForm(release.name.clone()));
        }
        self.sign_and_publish_release(release, now)
    }

    fn sign_and_publish_release(
        &self,
        release: &NewRelease,
        now: DateTime<Utc>,
    ) -> Result<PublishOutcome, PublishError> {
        let _guard = self.lock();
        let key = self
            .keys
            .targets
            .as_ref()
            .ok_or(PublishError::NoTargetsKey)?;
        let view = self.view();
        TargetName::new(&release.name)?;
        let custom = serde_json::to_value(&release.info)
            .map_err(|e| PublishError::Malformed(e.to_string()))?;
        let file = TargetFile {
            length: release.blob.length,
            hashes: BTreeMap::from([
                ("sha256".to_string(), release.blob.sha256.clone()),
                ("sha512".to_string(), release.blob.sha512.clone()),
            ]),
            custom: Some(custom),
            extra: BTreeMap::new(),
        };
        if let Some(existing) = view.targets_signed.targets.get(&release.name) {
            if existing.hashes != file.hashes || existing.length != file.length {
                return Err(PublishError::TargetExists(release.name.clone()));
            }
        }
        let mut targets = view.targets_signed.clone();
        targets.version += 1;
        targets.expires = self.policy.targets_expiry(now);
        targets.targets.insert(release.name.clone(), file);
        self.check_new_targets(&view.targets_signed, &targets, now)?;
        let bytes = sign_targets(key, &targets)?;
        self.commit(bytes, targets.version, now)
    }

    /// Removes a release from the signed targets (development mode; in production the
    /// release engineers sign targets without it).
    pub fn withdraw_release(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<PublishOutcome, PublishError> {
        let _guard = self.lock();
        let key = self
            .keys
            .targets
            .as_ref()
            .ok_or(PublishError::NoTargetsKey)?;
        let view = self.view();
        let mut targets = view.targets_signed.clone();
        if targets.targets.remove(name).is_none() {
            return Err(PublishError::UnknownTarget(name.into()));
        }
        targets.version += 1;
        targets.expires = self.policy.targets_expiry(now);
        let bytes = sign_targets(key, &targets)?;
        self.commit(bytes, targets.version, now)
    }

    /// Re-signs what is close to expiry: the timestamp always when due, the snapshot when
    /// due, and in development mode the targets when due. Returns whether anything changed.
    pub fn resign_if_due(&self, now: DateTime<Utc>) -> Result<bool, PublishError> {
        let _guard = self.lock();
        let view = self.view();
        if now < self.next_resign_due() && !self.targets_due(&view.targets_signed, now) {
            return Ok(false);
        }
        let old_ts = view.timestamp.bytes.to_vec();
        let mut ops = vec![Op::expect(TREE, b"timestamp".to_vec(), Some(old_ts))];
        let mut targets_version = view.targets_signed.version;
        if self.targets_due(&view.targets_signed, now) {
            if let Some(key) = &self.keys.targets {
                let mut t = view.targets_signed.clone();
                t.version += 1;
                t.expires = self.policy.targets_expiry(now);
                targets_version = t.version;
                ops.push(Op::put(
                    TREE,
                    version_key("targets", t.version),
                    sign_targets(key, &t)?,
                ));
            }
        }
        let snap_due = self.policy.due(
            view.snapshot_signed.expires,
            self.policy.snapshot_lifetime_secs,
        );
        let (snap_version, snap_bytes) =
            if now >= snap_due || targets_version != view.targets_signed.version {
                let v = view.snapshot_signed.version + 1;
                let b = sign_snapshot(
                    &self.keys.snapshot,
                    v,
                    self.policy.snapshot_expiry(now),
                    targets_version,
                )?;
                ops.push(Op::put(TREE, version_key("snapshot", v), b.clone()));
                (v, b)
            } else {
                let v = view.snapshot_signed.version;
                let b = view
                    .snapshots
                    .get(&v)
                    .map(|s| s.bytes.to_vec())
                    .ok_or_else(|| RepoError::Corrupt {
                        what: format!("snapshot {v}"),
                        reason: "current snapshot missing from view".into(),
                    })?;
                (v, b)
            };
        let ts = sign_timestamp(
            &self.keys.timestamp,
            view.timestamp_signed.version + 1,
            self.policy.timestamp_expiry(now),
            snap_version,
            &snap_bytes,
        )?;
        ops.push(Op::put(TREE, b"timestamp".to_vec(), ts));
        self.store.apply_batch_durable(ops)?;
        self.reload()?;
        Ok(true)
    }

    fn targets_due(&self, t: &Targets, now: DateTime<Utc>) -> bool {
        self.keys.targets.is_some()
            && self
                .policy
                .due(t.expires, self.policy.targets_lifetime_secs)
                <= now
    }

    /// Adds a new root version (key rotation), signed by a threshold of the current root's
    /// root keys and of its own; the server's online keys must still be authorised by it.
    pub fn rotate_root(&self, bytes: &[u8], now: DateTime<Utc>) -> Result<u64, PublishError> {
        let _guard = self.lock();
        let view = self.view();
        let new = check_root_chain(Some(&view.root), bytes)?;
        if new.expires <= now {
            return Err(PublishError::Root(format!(
                "new root expired at {}",
                new.expires
            )));
        }
        for (role, key) in [
            (RoleType::Snapshot, &self.keys.snapshot),
            (RoleType::Timestamp, &self.keys.timestamp),
        ] {
            let authorised = new
                .role(role)
                .is_some_and(|r| r.keyids.contains(&key.key_id()));
            if !authorised {
                return Err(PublishError::Root(format!(
                    "the new root does not authorise this server's {role} key {}; rotate online keys with the server's key tool first",
                    key.key_id()
                )));
            }
        }
        self.store.apply_batch_durable(vec![
            Op::expect(TREE, version_key("root", new.version), None),
            Op::put(TREE, version_key("root", new.version), bytes.to_vec()),
        ])?;
        self.reload()?;
        Ok(new.version)
    }

    /// Records an uploaded image so targets can refer to it.
    pub fn record_blob(&self, facts: &BlobFacts) -> Result<(), PublishError> {
        self.store
            .put_json_durable(BLOBS_TREE, facts.sha256.as_bytes(), facts)?;
        Ok(())
    }

    fn check_new_targets(
        &self,
        current: &Targets,
        new: &Targets,
        now: DateTime<Utc>,
    ) -> Result<(), PublishError> {
        if new.version != current.version + 1 {
            return Err(PublishError::Conflict {
                current: current.version,
                offered: new.version,
            });
        }
        if new.expires <= now {
            return Err(PublishError::Expired {
                expires: new.expires,
            });
        }
        if new.delegations.is_some() {
            return Err(PublishError::DelegationsUnsupported);
        }
        for (name, file) in &new.targets {
            TargetName::new(name)?;
            let sha = file
                .sha256()
                .ok_or_else(|| PublishError::MissingHash(name.clone()))?;
            let facts = self.uploaded_image(name, sha, file.length)?;
            if let Some(sha512) = file.hashes.get("sha512") {
                if !sha512.eq_ignore_ascii_case(&facts.sha512) {
                    return Err(PublishError::BlobMismatch {
                        target: name.clone(),
                        what: "sha512",
                    });
                }
            }
            ReleaseInfo::from_target(name, file)?;
        }
        Ok(())
    }

    /// The uploaded blob that target `name` (SHA-256 `sha`, signed `length`) lists: it
    /// must have been uploaded, with that length.
    pub(super) fn uploaded_image(
        &self,
        name: &str,
        sha: &str,
        length: u64,
    ) -> Result<BlobFacts, PublishError> {
        let facts: BlobFacts = self
            .store
            .get_json(BLOBS_TREE, sha.as_bytes())?
            .ok_or_else(|| PublishError::MissingBlob {
                target: name.into(),
                sha256: sha.into(),
            })?;
        if facts.length != length {
            return Err(PublishError::BlobMismatch {
                target: name.into(),
                what: "length",
            });
        }
        Ok(facts)
    }

    /// Writes targets + a new snapshot + a new timestamp in one guarded batch.
    fn commit(
        &self,
        targets_bytes: Vec<u8>,
        targets_version: u64,
        now: DateTime<Utc>,
    ) -> Result<PublishOutcome, PublishError> {
        let view = self.view();
        let snapshot_version = view.snapshot_signed.version + 1;
        let timestamp_version = view.timestamp_signed.version + 1;
        let snapshot = sign_snapshot(
            &self.keys.snapshot,
            snapshot_version,
            self.policy.snapshot_expiry(now),
            targets_version,
        )?;
        let timestamp = sign_timestamp(
            &self.keys.timestamp,
            timestamp_version,
            self.policy.timestamp_expiry(now),
            snapshot_version,
            &snapshot,
        )?;
        self.store.apply_batch_durable(vec![
            Op::expect(
                TREE,
                b"timestamp".to_vec(),
                Some(view.timestamp.bytes.to_vec()),
            ),
            Op::expect(TREE, version_key("targets", targets_version), None),
            Op::put(TREE, version_key("targets", targets_version), targets_bytes),
            Op::put(TREE, version_key("snapshot", snapshot_version), snapshot),
            Op::put(TREE, b"timestamp".to_vec(), timestamp),
        ])?;
        self.reload()?;
        Ok(PublishOutcome {
            targets_version,
            snapshot_version,
            timestamp_version,
        })
    }
}

fn verify_targets(root: &Root, raw: &RawSigned) -> Result<Targets, PublishError> {
    let role = root
        .role(RoleType::Targets)
        .ok_or_else(|| PublishError::Root("root has no targets role".into()))?;
    let verified = verify_role::<Targets>(raw, "targets", &root.keys, &role.keyids, role.threshold)
        .map_err(|e| match e {
            VerifyError::Metadata(m) => PublishError::Malformed(m.to_string()),
            e => PublishError::Signature(e),
        })?;
    Ok((*verified).clone())
}

/// Checks that `bytes` is the next root after `trusted` (or a self-signed first root).
fn check_root_chain(trusted: Option<&Root>, bytes: &[u8]) -> Result<Root, PublishError> {
    let raw = RawSigned::parse(bytes).map_err(|e| PublishError::Root(e.to_string()))?;
    let new: Root = raw
        .decode()
        .map_err(|e| PublishError::Root(e.to_string()))?;
    let by = |root: &Root, who: &str| -> Result<(), PublishError> {
        let r = root
            .role(RoleType::Root)
            .ok_or_else(|| PublishError::Root(format!("{who} root has no root role")))?;
        verify_role::<Root>(&raw, "root", &root.keys, &r.keyids, r.threshold)
            .map(|_| ())
            .map_err(|e| {
                PublishError::Root(format!("not signed by the {who} root's threshold: {e}"))
            })
    };
    if let Some(old) = trusted {
        by(old, "current")?;
        if new.version != old.version + 1 {
            return Err(PublishError::Root(format!(
                "version {} does not follow {}",
                new.version,
                old.version()
            )));
        }
    } else if new.version != 1 {
        // An imported chain may start later only if given whole; we require it from 1.
        return Err(PublishError::Root(format!(
            "the first root must be version 1, got {}",
            new.version
        )));
    }
    by(&new, "new")?;
    Ok(new)
}
