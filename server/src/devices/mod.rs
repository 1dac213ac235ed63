//! The device registry: who may poll, what each device runs, and what it reported.
//!
//! # Identity and status
//! A device is identified by the common name of its client certificate, which the
//! transport has already verified against the device CA. The registry decides what that
//! identity may do: a first contact is recorded as `pending`; operators accept, reject or
//! decommission. Ids entered in advance ([`Devices::preauthorize`]) are accepted on first
//! contact. A decommissioned id leaves only a [`Tombstone`] (id and time) and can never
//! poll or report again, whatever certificate it presents.
//!
//! # The poll path
//! Polling must not write to the store on every request. Every record read is cached in
//! memory (per shard, keeping the highest [`DeviceRecord::revision`]), so an accepted
//! device's poll is answered from memory by [`Devices::poll_fast`]. Last-seen times and
//! peer addresses are kept in memory too and written in batches by
//! [`Devices::flush_last_seen`] (run it periodically with
//! [`Devices::spawn_last_seen_flusher`], and once at shutdown). A poll writes only when
//! something changed: first contact, a new inventory, a new certificate.
//!
//! # Certificates
//! One identity may legitimately change certificate (re-issue, re-enrollment): that is
//! recorded quietly. Only a return to the previous certificate within
//! [`DeviceConfig::identity_window_secs`] of the change raises the server-side anomaly
//! `identity_conflict` (two devices, one identity); it is rate-limited to one per window.
//! The device is still served: both certificates are valid and we cannot tell which is
//! the original, so the operator decides (decommissioning revokes the identity for both).
//!
//! # Consistency
//! All record writes of this process go through one write lock and every batch also
//! expects the stored bytes it read, so a concurrent writer elsewhere fails loudly rather
//! than being overwritten. Writes are applied under the lock and flushed after it, before
//! the caller answers.

mod decisions;
pub mod enroll;
mod index;
mod last_seen;
mod observer;
mod oplog;
pub mod record;
pub mod reports;

pub use decisions::{Decision, DeviceFilter, PreauthOutcome, MAX_PREAUTHORIZE};
pub use last_seen::Seen;
pub use observer::{shard_count, shard_of, RecordObserver};
pub use oplog::{StoredOplog, MAX_OPLOG_BATCH};
pub use record::{
    poll_interval_for, CertChange, DeviceRecord, DeviceStatus, LastStatus, Tombstone, DEVICES_TREE,
    TOMBSTONES_TREE,
};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use chrono::{DateTime, Duration, Utc};
use ota_common::api::PollRequest;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::AuditError;
use crate::identity::{DeviceIdError, PeerIdentity};
use crate::store::{Op, Store, StoreError, StoreExt};

const SHARDS: usize = 32;
/// Records read per scan when listing.
const LIST_PAGE: usize = 512;

/// Device-facing settings of the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// The poll interval asked of devices, before the ±10 % per-device jitter. Default 300.
    pub poll_interval_secs: u64,
    /// How soon a return to the previous certificate counts as an identity conflict, and
    /// how often such a conflict is raised again. Default one day.
    pub identity_window_secs: u64,
    /// Whether devices install only what a deployment sends them (see
    /// [`crate::config::RolloutMode`]). Default true.
    pub directed_updates: bool,
    /// Status reports kept per device; storing a new one deletes the oldest beyond this
    /// (with their idempotency ids). Default 200, at least 1.
    pub keep_status_reports: usize,
    /// Operation-log records kept per device: those more than this many seqs behind the
    /// head are deleted as new ones arrive. Default 10 000, at least 1.
    pub keep_oplog_records: u64,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            poll_interval_secs: 300,
            identity_window_secs: 86_400,
            directed_updates: true,
            keep_status_reports: 200,
            keep_oplog_records: 10_000,
        }
    }
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The store failed.
    #[error("device registry storage: {0}")]
    Store(#[from] StoreError),
    /// The audit log failed (the change it recorded was not applied).
    #[error("device registry audit: {0}")]
    Audit(#[from] AuditError),
    /// The device id is not a valid id.
    #[error("invalid device id: {0}")]
    InvalidId(#[from] DeviceIdError),
    /// A request field is not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was checked.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// No record for this id.
    #[error("device {id} is not registered")]
    Unknown {
        /// The id.
        id: String,
    },
    /// The device is not accepted (pending or rejected).
    #[error("device {id} is {status:?}, not accepted")]
    NotAccepted {
        /// The id.
        id: String,
        /// Its status.
        status: DeviceStatus,
    },
    /// The id was decommissioned.
    #[error("device {id} was decommissioned at {at}; the identity cannot be used again")]
    Decommissioned {
        /// The id.
        id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// What a poll found.
#[derive(Clone, Debug)]
pub struct PollOutcome {
    /// The record after the poll.
    pub record: Arc<DeviceRecord>,
    /// Whether this poll registered the device.
    pub created: bool,
    /// Whether this poll raised an `identity_conflict` anomaly.
    pub identity_conflict: bool,
}

#[derive(Default)]
struct Shard {
    records: HashMap<String, Arc<DeviceRecord>>,
    tombstones: HashMap<String, DateTime<Utc>>,
    seen: HashMap<String, Seen>,
}

/// The registry over a [`Store`]. Share it behind an `Arc`.
pub struct Devices {
    store: Arc<dyn Store>,
    config: DeviceConfig,
    shards: Vec<Mutex<Shard>>,
    write_lock: Mutex<()>,
    /// Told of every cache change (see [`Devices::set_observer`]).
    observer: OnceLock<Arc<dyn RecordObserver>>,
    /// The ids of cached records by the fields the list filters on.
    list_index: index::ListIndex,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every update is a
/// single insert or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Devices {
    /// The registry over `store`, loading every tombstone into memory.
    pub fn open(store: Arc<dyn Store>, config: DeviceConfig) -> Result<Self, StoreError> {
        let devices = Devices {
            store,
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            write_lock: Mutex::new(()),
            observer: OnceLock::new(),
            list_index: index::ListIndex::default(),
        };
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page: Vec<(Vec<u8>, Tombstone)> =
                devices
                    .store
                    .scan_json(TOMBSTONES_TREE, b"", after.as_deref(), LIST_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, t) in page {
                devices
                    .shard(&t.id)
                    .tombstones
                    .insert(t.id.clone(), t.decommissioned_at);
            }
        }
        Ok(devices)
    }

    /// The settings.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The poll interval to give `device_id` (jittered, stable per id).
    pub fn poll_interval_secs(&self, device_id: &str) -> u64 {
        poll_interval_for(device_id, self.config.poll_interval_secs)
    }

    fn window(&self) -> Duration {
        Duration::seconds(
            i64::try_from(self.config.identity_window_secs).unwrap_or(i64::MAX / 1000),
        )
    }

    fn shard(&self, id: &str) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_of(id)])
    }

    fn write_guard(&self) -> MutexGuard<'_, ()> {
        lock(&self.write_lock)
    }

    /// When `id` was decommissioned, if it was (from memory: every tombstone is loaded).
    pub fn decommissioned_at(&self, id: &str) -> Option<DateTime<Utc>> {
        self.shard(id).tombstones.get(id).copied()
    }

    /// Caches `rec` unless a newer revision is cached or the id is tombstoned.
    fn cache_put(&self, rec: Arc<DeviceRecord>) {
        let mut shard = self.shard(&rec.id);
        if shard.tombstones.contains_key(&rec.id) {
            return;
        }
        match shard.records.get(&rec.id) {
            Some(cur) if cur.revision >= rec.revision => {}
            old => {
                // Under the shard lock, so the observers see one device's changes in order.
                self.notify(old.map(AsRef::as_ref), Some(&rec));
                shard.records.insert(rec.id.clone(), rec);
            }
        }
    }

    /// The record of `id` if it is in memory (no I/O).
    pub fn cached(&self, id: &str) -> Option<Arc<DeviceRecord>> {
        self.shard(id).records.get(id).map(Arc::clone)
    }

    /// The record of `id`: from memory, else from the store (then cached).
    pub fn record(&self, id: &str) -> Result<Option<Arc<DeviceRecord>>, StoreError> {
        if let Some(rec) = self.shard(id).records.get(id) {
            return Ok(Some(Arc::clone(rec)));
        }
        match self
            .store
            .get_json::<DeviceRecord>(DEVICES_TREE, id.as_bytes())?
        {
            None => Ok(None),
            Some(rec) => {
                let rec = Arc::new(rec);
                self.cache_put(Arc::clone(&rec));
                Ok(Some(rec))
            }
        }
    }

    /// The stored bytes and record of `id`, bypassing the cache (for read-modify-write).
    fn read_raw(&self, id: &str) -> Result<Option<(Vec<u8>, DeviceRecord)>, StoreError> {
        match self.store.get(DEVICES_TREE, id.as_bytes())? {
            None => Ok(None),
            Some(raw) => {
                let rec = crate::store::decode_json(DEVICES_TREE, id.as_bytes(), &raw)?;
                Ok(Some((raw, rec)))
            }
        }
    }

    /// Ops that write `rec` with its revision bumped, expecting `old` to be stored now.
    fn record_ops(old: Option<Vec<u8>>, rec: &mut DeviceRecord) -> Result<Vec<Op>, StoreError> {
        rec.revision += 1;
        Ok(vec![
            Op::expect(DEVICES_TREE, rec.id.as_bytes(), old),
            Op::put_json(DEVICES_TREE, rec.id.as_bytes(), rec)?,
        ])
    }

    /// The poll path without I/O: answers from memory when the device's record is cached,
    /// its certificate and inventory are unchanged and it is not tombstoned. `None` means
    /// "use [`Devices::poll`]".
    pub fn poll_fast(
        &self,
        identity: &PeerIdentity,
        req: &PollRequest,
        peer: SocketAddr,
        now: DateTime<Utc>,
    ) -> Option<Arc<DeviceRecord>> {
        let id = identity.device_id.as_str();
        let mut shard = self.shard(id);
        if shard.tombstones.contains_key(id) {
            return None;
        }
        let rec = shard.records.get(id)?;
        if rec.cert_sha256.as_deref() != Some(identity.cert_sha256.as_str())
            || rec.first_seen.is_none()
            || rec.inventory_differs(req)
        {
            return None;
        }
        let rec = Arc::clone(rec);
        Self::note_seen(&mut shard, id, peer, now);
        Some(rec)
    }

    /// The full poll path (blocking I/O): registers an unknown device as pending, records
    /// inventory and certificate changes, raises `identity_conflict`. Decommissioned ids
    /// get [`DeviceError::Decommissioned`]; other statuses come back in the outcome.
    pub fn poll(
        &self,
        identity: &PeerIdentity,
        req: &PollRequest,
        peer: SocketAddr,
        now: DateTime<Utc>,
    ) -> Result<PollOutcome, DeviceError> {
        let id = identity.device_id.as_str();
        let fp = identity.cert_sha256.as_str();
        let guard = self.write_guard();
        if let Some(at) = self.decommissioned_at(id) {
            return Err(DeviceError::Decommissioned { id: id.into(), at });
        }
        let mut conflict = false;
        let (rec, created, wrote) = match self.read_raw(id)? {
            None => {
                let mut rec = DeviceRecord::new(id, DeviceStatus::Pending, "device", now);
                rec.first_seen = Some(now);
                rec.last_seen = Some(now);
                rec.last_peer = Some(peer.to_string());
                rec.set_inventory(req);
                record::apply_cert(&mut rec, fp, CertChange::First, now);
                let ops = Self::record_ops(None, &mut rec)?;
                self.store.apply_batch(ops)?;
                tracing::info!(device = id, %peer, "new device registered as pending");
                (rec, true, true)
            }
            Some((raw, mut rec)) => {
                let mut changed = false;
                if rec.first_seen.is_none() {
                    rec.first_seen = Some(now);
                    changed = true;
                }
                let change = record::classify_cert(&rec, fp, now, self.window());
                let mut extra = Vec::new();
                if change == CertChange::Alternating {
                    conflict = self.identity_conflict_ops(&mut rec, fp, peer, now, &mut extra)?;
                } else if change == CertChange::Reissued {
                    tracing::info!(device = id, "device presents a new certificate");
                }
                if change != CertChange::Same {
                    record::apply_cert(&mut rec, fp, change, now);
                    changed = true;
                }
                if rec.inventory_differs(req) {
                    rec.set_inventory(req);
                    changed = true;
                }
                if changed {
                    let mut ops = Self::record_ops(Some(raw), &mut rec)?;
                    ops.extend(extra);
                    self.store.apply_batch(ops)?;
                }
                (rec, false, changed)
            }
        };
        let rec = Arc::new(rec);
        self.cache_put(Arc::clone(&rec));
        self.mark_seen(id, peer, now);
        drop(guard);
        if wrote {
            self.store.flush()?;
        }
        Ok(PollOutcome {
            record: rec,
            created,
            identity_conflict: conflict,
        })
    }

    /// Adds the anomaly ops for a certificate that came back, unless one was raised within
    /// the window. Returns whether one was raised.
    fn identity_conflict_ops(
        &self,
        rec: &mut DeviceRecord,
        fp: &str,
        peer: SocketAddr,
        now: DateTime<Utc>,
        ops: &mut Vec<Op>,
    ) -> Result<bool, StoreError> {
        tracing::warn!(device = %rec.id, %peer, "device identity used with two certificates");
        if rec
            .identity_conflict_at
            .is_some_and(|t| now - t <= self.window())
        {
            return Ok(false);
        }
        let last_peer = self
            .unflushed_seen(&rec.id)
            .map(|s| s.peer.to_string())
            .or_else(|| rec.last_peer.clone());
        let detail = json!({
            "certificate_sha256": fp,
            "other_certificate_sha256": rec.cert_sha256,
            "peer": peer.to_string(),
            "last_peer": last_peer,
        });
        let local_id = format!("identity_conflict:{}", now.timestamp_micros());
        let message = format!(
            "device identity {} is in use with two certificates that take turns; \
             two devices may share it (decommission it if one is a clone)",
            rec.id
        );
        match self.server_anomaly_ops(
            &rec.id,
            &local_id,
            "identity_conflict",
            &message,
            detail,
            now,
            0,
        )? {
            Some(more) => {
                ops.extend(more);
                rec.identity_conflict_at = Some(now);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The record of a device that may report, or why it may not.
    pub fn require_accepted(&self, id: &str) -> Result<Arc<DeviceRecord>, DeviceError> {
        if let Some(at) = self.decommissioned_at(id) {
            return Err(DeviceError::Decommissioned { id: id.into(), at });
        }
        match self.record(id)? {
            None => Err(DeviceError::Unknown { id: id.into() }),
            Some(rec) if rec.status == DeviceStatus::Accepted => Ok(rec),
            Some(rec) => Err(DeviceError::NotAccepted {
                id: id.into(),
                status: rec.status,
            }),
        }
    }

    /// Under the write lock: the stored record of an accepted device, or why it may not
    /// report.
    fn accepted_raw(&self, id: &str) -> Result<(Vec<u8>, DeviceRecord), DeviceError> {
        if let Some(at) = self.decommissioned_at(id) {
            return Err(DeviceError::Decommissioned { id: id.into(), at });
        }
        match self.read_raw(id)? {
            None => Err(DeviceError::Unknown { id: id.into() }),
            Some((raw, rec)) if rec.status == DeviceStatus::Accepted => Ok((raw, rec)),
            Some((_, rec)) => Err(DeviceError::NotAccepted {
                id: id.into(),
                status: rec.status,
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::devices::testing::{ident, peer, registry, req};

    #[test]
    fn unknown_device_becomes_pending_once_and_is_then_served_from_memory() {
        let (store, d, audit) = registry();
        let now = Utc::now();
        let out = d.poll(&ident("d1", "A"), &req("hw"), peer(), now).unwrap();
        assert!(out.created);
        assert_eq!(out.record.status, DeviceStatus::Pending);
        assert_eq!(out.record.hardware_id.as_deref(), Some("hw"));
        let rev = out.record.revision;
        // The next polls are answered from memory and write nothing.
        assert!(d
            .poll_fast(&ident("d1", "A"), &req("hw"), peer(), now)
            .is_some());
        let out = d.poll(&ident("d1", "A"), &req("hw"), peer(), now).unwrap();
        assert!(!out.created);
        assert_eq!(out.record.revision, rev);
        // Accepting it reaches the cache.
        d.decide("d1", DeviceStatus::Accepted, &audit, "op", now)
            .unwrap();
        let rec = d
            .poll_fast(&ident("d1", "A"), &req("hw"), peer(), now)
            .unwrap();
        assert_eq!(rec.status, DeviceStatus::Accepted);
        // Another registry over the same store (a restart) sees it too.
        let d2 = Devices::open(store, DeviceConfig::default()).unwrap();
        assert!(d2
            .poll_fast(&ident("d1", "A"), &req("hw"), peer(), now)
            .is_none());
        let out = d2.poll(&ident("d1", "A"), &req("hw"), peer(), now).unwrap();
        assert_eq!(out.record.status, DeviceStatus::Accepted);
    }

    #[test]
    fn inventory_change_is_written_and_poll_fast_declines_it() {
        let (_s, d, _a) = registry();
        let now = Utc::now();
        d.poll(&ident("d1", "A"), &req("hw"), peer(), now).unwrap();
        let mut moved = req("hw");
        moved.current_version = Some("2.0.0".into());
        assert!(d
            .poll_fast(&ident("d1", "A"), &moved, peer(), now)
            .is_none());
        let out = d.poll(&ident("d1", "A"), &moved, peer(), now).unwrap();
        assert_eq!(out.record.current_version.as_deref(), Some("2.0.0"));
        let stored: DeviceRecord = d.store().get_json(DEVICES_TREE, b"d1").unwrap().unwrap();
        assert_eq!(stored.current_version.as_deref(), Some("2.0.0"));
    }

    #[test]
    fn alternating_certificates_raise_one_identity_conflict() {
        let (_s, d, _a) = registry();
        let t0: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
        d.poll(&ident("d1", "A"), &req("hw"), peer(), t0).unwrap();
        // A re-issued certificate is fine.
        let out = d
            .poll(
                &ident("d1", "B"),
                &req("hw"),
                peer(),
                t0 + Duration::minutes(1),
            )
            .unwrap();
        assert!(!out.identity_conflict);
        // Going back to A soon after is a conflict; raised once per window.
        let out = d
            .poll(
                &ident("d1", "A"),
                &req("hw"),
                peer(),
                t0 + Duration::minutes(2),
            )
            .unwrap();
        assert!(out.identity_conflict);
        let out = d
            .poll(
                &ident("d1", "B"),
                &req("hw"),
                peer(),
                t0 + Duration::minutes(3),
            )
            .unwrap();
        assert!(!out.identity_conflict);
        let (feed, _) = d.list_anomalies(None, 10).unwrap();
        assert_eq!(feed.len(), 1);
        assert_eq!(feed[0].kind, "identity_conflict");
        assert_eq!(feed[0].device_id, "d1");
    }
}
