//! The TUF repository the server publishes: metadata kept in the store as the exact signed
//! bytes, served from an in-memory view that is swapped whole after each change.
//!
//! - [`signer`]: the online keys and the snapshot/timestamp documents they sign.
//! - [`publish`]: accepting new targets metadata (signed by release engineers, or by the
//!   server in development mode), all-or-nothing.
//! - [`compressed`]: checking the zstd-compressed forms new targets name, before publishing.
//!
//! Store layout (tree `tuf`): `root/<be u64>`, `targets/<be u64>`, `snapshot/<be u64>` hold
//! every version ever published; `timestamp` holds the current timestamp. A publish writes
//! targets, snapshot and timestamp in one atomic batch guarded by the previous timestamp,
//! so after a crash a release is either fully visible or absent, and two writers cannot
//! both win.

pub mod compressed;
pub mod publish;
pub mod signer;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ota_common::metadata::{Root, Snapshot, Targets, Timestamp};
use ota_common::release::ReleaseInfo;
use ota_common::signed::RawSigned;
use ota_common::target::TargetName;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};
pub use publish::{PublishError, PublishOutcome};
pub use signer::{OnlineKeys, RepoPolicy};

/// The store tree holding TUF metadata.
pub const TREE: &str = "tuf";
/// The store tree holding release bookkeeping (who published, withdrawn).
pub const RELEASES_TREE: &str = "releases";
/// The store tree holding facts about uploaded blobs.
pub const BLOBS_TREE: &str = "blobs";

const KEEP_IN_MEMORY: usize = 8;

/// Why the repository could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The store failed.
    #[error("repository store: {0}")]
    Store(#[from] StoreError),
    /// Stored metadata does not parse: the data directory is damaged.
    #[error("stored {what} is not valid metadata: {reason}")]
    Corrupt {
        /// Which file.
        what: String,
        /// Why.
        reason: String,
    },
    /// The repository has not been initialised (no root stored).
    #[error("no TUF root in the store: start with --dev, or import a repository made by ota-keys")]
    Empty,
    /// Signing failed.
    #[error("signing {role}: {reason}")]
    Sign {
        /// Role.
        role: &'static str,
        /// Why.
        reason: String,
    },
}

/// A metadata document ready to serve: bytes and their strong ETag.
#[derive(Clone, Debug)]
pub struct Served {
    /// The exact signed bytes.
    pub bytes: Bytes,
    /// `"<sha256 hex>"`, quoted as an ETag.
    pub etag: String,
}

impl Served {
    fn new(bytes: Vec<u8>) -> Self {
        let etag = format!("\"{}\"", hex::encode(Sha256::digest(&bytes)));
        Served {
            bytes: Bytes::from(bytes),
            etag,
        }
    }
}

/// A target file the repository serves: where its bytes are and how long it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedTarget {
    /// Blob id (sha256 hex).
    pub sha256: String,
    /// Length in bytes.
    pub length: u64,
}

/// An immutable picture of the repository; handlers clone the `Arc` and never lock.
#[derive(Debug)]
pub struct RepoView {
    /// Every root version.
    pub roots: BTreeMap<u64, Served>,
    /// The current timestamp.
    pub timestamp: Served,
    /// Recent snapshot versions (older ones are read from the store on demand).
    pub snapshots: BTreeMap<u64, Served>,
    /// Recent targets versions.
    pub targets: BTreeMap<u64, Served>,
    /// Parsed current root.
    pub root: Root,
    /// Parsed current timestamp.
    pub timestamp_signed: Timestamp,
    /// Parsed current snapshot.
    pub snapshot_signed: Snapshot,
    /// Parsed current targets.
    pub targets_signed: Targets,
    /// Target files by their consistent path (`dir/<sha256>.<base>`), and the compressed
    /// forms their `custom.zstd` names (`dir/<zstd sha256>.<base>.zst`), for the current and
    /// recent targets versions, so a device mid-download is not cut off by a publish.
    pub files: HashMap<String, ServedTarget>,
}

impl RepoView {
    /// The latest root.
    pub fn latest_root(&self) -> Option<&Served> {
        self.roots.values().next_back()
    }
}

/// The repository: store, online keys and the current view.
pub struct Repository {
    store: Arc<dyn Store>,
    keys: OnlineKeys,
    policy: RepoPolicy,
    view: RwLock<Arc<RepoView>>,
    // Serialises changes in this process; the batch precondition guards across processes.
    write_lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").finish_non_exhaustive()
    }
}

pub(crate) fn version_key(prefix: &str, version: u64) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    k.push(b'/');
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn parse_signed<T: ota_common::metadata::Role>(what: &str, bytes: &[u8]) -> Result<T, RepoError> {
    RawSigned::parse(bytes)
        .and_then(|r| r.decode::<T>())
        .map_err(|e| RepoError::Corrupt {
            what: what.into(),
            reason: e.to_string(),
        })
}

impl Repository {
    /// Opens the repository held in `store`. Fails with [`RepoError::Empty`] if there is none.
    pub fn open(
        store: Arc<dyn Store>,
        keys: OnlineKeys,
        policy: RepoPolicy,
    ) -> Result<Self, RepoError> {
        let view = load_view(store.as_ref())?;
        Ok(Repository {
            store,
            keys,
            policy,
            view: RwLock::new(Arc::new(view)),
            write_lock: std::sync::Mutex::new(()),
        })
    }

    /// Whether `store` holds a repository.
    pub fn exists(store: &dyn Store) -> Result<bool, RepoError> {
        Ok(store.get(TREE, b"timestamp")?.is_some())
    }

    /// The current view (cheap: an `Arc` clone).
    pub fn view(&self) -> Arc<RepoView> {
        match self.view.read() {
            Ok(v) => Arc::clone(&v),
            // A panic while holding the lock cannot leave a half-written Arc: recover it.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The online keys.
    pub fn keys(&self) -> &OnlineKeys {
        &self.keys
    }

    /// The expiry policy.
    pub fn policy(&self) -> &RepoPolicy {
        &self.policy
    }

    /// A snapshot version's bytes, from memory or the store.
    pub fn snapshot_bytes(&self, version: u64) -> Result<Option<Served>, RepoError> {
        if let Some(s) = self.view().snapshots.get(&version) {
            return Ok(Some(s.clone()));
        }
        Ok(self
            .store
            .get(TREE, &version_key("snapshot", version))?
            .map(Served::new))
    }

    /// A targets version's bytes, from memory or the store.
    pub fn targets_bytes(&self, version: u64) -> Result<Option<Served>, RepoError> {
        if let Some(s) = self.view().targets.get(&version) {
            return Ok(Some(s.clone()));
        }
        Ok(self
            .store
            .get(TREE, &version_key("targets", version))?
            .map(Served::new))
    }

    fn install_view(&self, view: RepoView) {
        let view = Arc::new(view);
        match self.view.write() {
            Ok(mut v) => *v = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }

    /// Re-reads the store into the view (after a change written by this process).
    pub(crate) fn reload(&self) -> Result<(), RepoError> {
        let view = load_view(self.store.as_ref())?;
        self.install_view(view);
        Ok(())
    }

    /// The instant at which the next re-signing is due, for the background task.
    pub fn next_resign_due(&self) -> DateTime<Utc> {
        let v = self.view();
        signer::resign_due(&v.timestamp_signed, &v.snapshot_signed, &self.policy)
    }
}

/// Builds the view from the store.
fn load_view(store: &dyn Store) -> Result<RepoView, RepoError> {
    let roots_raw = store.scan_prefix(TREE, b"root/")?;
    if roots_raw.is_empty() {
        return Err(RepoError::Empty);
    }
    let mut roots = BTreeMap::new();
    let mut root: Option<Root> = None;
    for (k, v) in roots_raw {
        let r: Root = parse_signed("root", &v)?;
        if version_key("root", r.version) != k {
            return Err(RepoError::Corrupt {
                what: format!("root version {}", r.version),
                reason: "stored under another version's key".into(),
            });
        }
        roots.insert(r.version, Served::new(v));
        root = Some(r);
    }
    let root = root.ok_or(RepoError::Empty)?;
    let ts_bytes = store.get(TREE, b"timestamp")?.ok_or(RepoError::Empty)?;
    let timestamp_signed: Timestamp = parse_signed("timestamp", &ts_bytes)?;
    let snap_version = timestamp_signed
        .snapshot_meta()
        .map(|m| m.version)
        .ok_or_else(|| RepoError::Corrupt {
            what: "timestamp".into(),
            reason: "names no snapshot".into(),
        })?;

    let mut snapshots = BTreeMap::new();
    for (_, v) in recent(store, "snapshot/")? {
        let s: Snapshot = parse_signed("snapshot", &v)?;
        snapshots.insert(s.version, Served::new(v));
    }
    let snapshot_served = snapshots
        .get(&snap_version)
        .ok_or_else(|| RepoError::Corrupt {
            what: format!("snapshot version {snap_version}"),
            reason: "named by the timestamp but not stored".into(),
        })?;
    let snapshot_signed: Snapshot = parse_signed("snapshot", &snapshot_served.bytes)?;
    let targets_version = snapshot_signed
        .role_meta("targets")
        .map(|m| m.version)
        .ok_or_else(|| RepoError::Corrupt {
            what: "snapshot".into(),
            reason: "names no targets".into(),
        })?;

    let mut targets = BTreeMap::new();
    let mut files = HashMap::new();
    let mut targets_signed = None;
    for (_, v) in recent(store, "targets/")? {
        let t: Targets = parse_signed("targets", &v)?;
        for (name, file) in &t.targets {
            let (Some(sha), Ok(name)) = (file.sha256(), TargetName::new(name)) else {
                continue;
            };
            files.insert(
                name.consistent_path(sha),
                ServedTarget {
                    sha256: sha.to_string(),
                    length: file.length,
                },
            );
            // Published forms were checked to decode to the image (see `compressed`).
            if let Some(form) = ReleaseInfo::from_target(name.as_str(), file)
                .ok()
                .and_then(|i| i.zstd)
            {
                files.insert(
                    form.consistent_path(&name),
                    ServedTarget {
                        sha256: form.sha256,
                        length: form.length,
                    },
                );
            }
        }
        if t.version == targets_version {
            targets_signed = Some(t.clone());
        }
        targets.insert(t.version, Served::new(v));
    }
    let targets_signed = targets_signed.ok_or_else(|| RepoError::Corrupt {
        what: format!("targets version {targets_version}"),
        reason: "named by the snapshot but not stored".into(),
    })?;
    Ok(RepoView {
        roots,
        timestamp: Served::new(ts_bytes),
        snapshots,
        targets,
        root,
        timestamp_signed,
        snapshot_signed,
        targets_signed,
        files,
    })
}

/// The last few entries under a prefix (keys are big-endian versions, so the scan is
/// ordered). A full scan is fine here: it runs at startup and after each publish, and
/// metadata versions number in the thousands at most.
fn recent(store: &dyn Store, prefix: &str) -> Result<crate::store::Entries, RepoError> {
    let mut all = store.scan_prefix(TREE, prefix.as_bytes())?;
    let skip = all.len().saturating_sub(KEEP_IN_MEMORY);
    Ok(all.split_off(skip))
}
