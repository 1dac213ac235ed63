//! The online keys and what they sign: snapshot and timestamp, and in development mode the
//! targets role too. Documents are built here from plain values; time is passed in.

use chrono::{DateTime, Duration, Utc};
use ota_common::keys::SigningKey;
use ota_common::metadata::{Hashes, MetaFile, Snapshot, Targets, Timestamp};
use ota_common::signed::sign_role;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::RepoError;

/// The keys the server holds. In production only snapshot and timestamp; in development
/// mode also targets, so one command can publish.
pub struct OnlineKeys {
    /// Signs snapshot metadata.
    pub snapshot: SigningKey,
    /// Signs timestamp metadata.
    pub timestamp: SigningKey,
    /// Signs targets metadata (development mode only).
    pub targets: Option<SigningKey>,
}

/// How long each document the server signs stays valid, and when it is re-signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepoPolicy {
    /// Timestamp lifetime in seconds (default one day).
    pub timestamp_lifetime_secs: u64,
    /// Snapshot lifetime in seconds (default seven days).
    pub snapshot_lifetime_secs: u64,
    /// Targets lifetime in seconds when the server signs targets (default 90 days).
    pub targets_lifetime_secs: u64,
    /// Re-sign when less than this fraction of the lifetime is left, in percent (default
    /// 50): devices that poll rarely still see metadata with time to spare.
    pub resign_when_left_percent: u8,
}

impl Default for RepoPolicy {
    fn default() -> Self {
        RepoPolicy {
            timestamp_lifetime_secs: 86_400,
            snapshot_lifetime_secs: 7 * 86_400,
            targets_lifetime_secs: 90 * 86_400,
            resign_when_left_percent: 50,
        }
    }
}

fn secs(s: u64) -> Duration {
    Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

impl RepoPolicy {
    /// Expiry of a timestamp signed at `now`.
    pub fn timestamp_expiry(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + secs(self.timestamp_lifetime_secs)
    }
    /// Expiry of a snapshot signed at `now`.
    pub fn snapshot_expiry(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + secs(self.snapshot_lifetime_secs)
    }
    /// Expiry of targets signed at `now`.
    pub fn targets_expiry(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + secs(self.targets_lifetime_secs)
    }
    /// When a document expiring at `expires`, with this lifetime, is due for re-signing.
    pub fn due(&self, expires: DateTime<Utc>, lifetime_secs: u64) -> DateTime<Utc> {
        expires - self.margin(lifetime_secs)
    }
    fn margin(&self, lifetime_secs: u64) -> Duration {
        secs(lifetime_secs.saturating_mul(u64::from(self.resign_when_left_percent.min(100))) / 100)
    }
}

/// When the timestamp or snapshot next needs re-signing.
pub fn resign_due(ts: &Timestamp, snap: &Snapshot, policy: &RepoPolicy) -> DateTime<Utc> {
    let ts_due = policy.due(ts.expires, policy.timestamp_lifetime_secs);
    let snap_due = policy.due(snap.expires, policy.snapshot_lifetime_secs);
    ts_due.min(snap_due)
}

/// Length and hashes of a document, as snapshot and timestamp list them.
pub fn meta_for(version: u64, bytes: &[u8]) -> MetaFile {
    let mut m = MetaFile::version_only(version);
    m.length = Some(bytes.len() as u64);
    m.hashes = Some(Hashes::from([(
        "sha256".to_string(),
        hex::encode(Sha256::digest(bytes)),
    )]));
    m
}

/// Signs a snapshot naming `targets` (version and bytes).
pub fn sign_snapshot(
    key: &SigningKey,
    version: u64,
    expires: DateTime<Utc>,
    targets_version: u64,
) -> Result<Vec<u8>, RepoError> {
    let mut s = Snapshot::new(version, expires);
    // Version only: python-tuf and our client both accept it, and it keeps the snapshot
    // independent of the targets file's exact bytes.
    s.meta.insert(
        "targets.json".into(),
        MetaFile::version_only(targets_version),
    );
    sign_role(&s, &[key]).map_err(|e| RepoError::Sign {
        role: "snapshot",
        reason: e.to_string(),
    })
}

/// Signs a timestamp naming a snapshot by version, length and hash.
pub fn sign_timestamp(
    key: &SigningKey,
    version: u64,
    expires: DateTime<Utc>,
    snapshot_version: u64,
    snapshot_bytes: &[u8],
) -> Result<Vec<u8>, RepoError> {
    let t = Timestamp::new(version, expires, meta_for(snapshot_version, snapshot_bytes));
    sign_role(&t, &[key]).map_err(|e| RepoError::Sign {
        role: "timestamp",
        reason: e.to_string(),
    })
}

/// Signs targets with the development key.
pub fn sign_targets(key: &SigningKey, targets: &Targets) -> Result<Vec<u8>, RepoError> {
    sign_role(targets, &[key]).map_err(|e| RepoError::Sign {
        role: "targets",
        reason: e.to_string(),
    })
}
