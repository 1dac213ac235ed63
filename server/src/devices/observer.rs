//! Hooks for views of the fleet kept outside the registry (summary counters, group member
//! counts, the silent-device detector), so that they never scan the store per request.
//!
//! - A [`RecordObserver`] is told of every change of the in-memory record cache, under the
//!   lock of the record's shard: so for one device, the observer sees changes in the
//!   order the cache took them, and can keep exact counters from `(old, new)` pairs.
//! - [`Devices::set_observer`] replays the cache to a new observer with every shard
//!   locked: nothing changes meanwhile, so the replay and the hooks that follow it count
//!   every record exactly once.
//! - [`Devices::load_all`] fills the cache from the store once (at startup), which makes
//!   "cached" mean "registered" and the observer's counters cover the whole fleet.
//! - [`Devices::snapshot_shards`] copies the cache one shard at a time (each shard locked
//!   only to copy its pointers), telling the caller when each copy was taken: a counter
//!   registered before the walk can then apply a device's changes exactly when they come
//!   after its shard's copy (see [`shard_of`]), without stalling the fleet while it counts.
//! - [`Devices::visit_cached`] walks the cache shard by shard with last-contact times.
//! - [`Devices::record_server_anomaly`] stores an anomaly the server detected elsewhere.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, MutexGuard};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{lock, DeviceError, DeviceRecord, Devices, Shard, DEVICES_TREE, LIST_PAGE, SHARDS};
use crate::store::{Op, StoreError, StoreExt};

/// Told of every change of the registry's record cache.
///
/// Both methods run with the record's shard locked: keep them short, and never call back
/// into the registry from them (that would deadlock).
pub trait RecordObserver: Send + Sync {
    /// The cached record of a device changed: `old` was cached before (`None`: it was not
    /// cached), `new` is cached now (`None`: removed by a decommission).
    fn record_changed(&self, old: Option<&DeviceRecord>, new: Option<&DeviceRecord>);
    /// An id was decommissioned (its tombstone written), or was found decommissioned when
    /// the observer was installed.
    fn tombstoned(&self, id: &str);
}

/// The index of the cache shard holding `id` (stable for the life of the process), in
/// `0..shard_count()`.
pub fn shard_of(id: &str) -> usize {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    // The modulo keeps the index below SHARDS, which fits any usize.
    (h.finish() % SHARDS as u64) as usize
}

/// How many shards the cache has.
pub fn shard_count() -> usize {
    SHARDS
}

/// The whole record cache with every shard locked, for [`Devices::set_observer`]'s
/// replay (counts of new groups and deployments use [`Devices::snapshot_shards`], which
/// never locks more than one shard).
pub struct CacheView<'a> {
    shards: Vec<MutexGuard<'a, Shard>>,
}

impl<'a> CacheView<'a> {
    /// Locks every shard, in index order (nothing else locks two shards, so this cannot
    /// deadlock). Polls of cached devices wait until the view is dropped.
    fn lock_all(devices: &'a Devices) -> Self {
        CacheView {
            shards: devices.shards.iter().map(lock).collect(),
        }
    }

    /// Every cached record, in no particular order.
    fn records(&self) -> impl Iterator<Item = &DeviceRecord> + '_ {
        self.shards
            .iter()
            .flat_map(|s| s.records.values().map(AsRef::as_ref))
    }

    /// Every decommissioned id.
    fn tombstones(&self) -> impl Iterator<Item = &str> + '_ {
        self.shards
            .iter()
            .flat_map(|s| s.tombstones.keys().map(String::as_str))
    }
}

impl Devices {
    /// Installs the observer and tells it of every record already cached and every
    /// tombstone, with all shards locked so that nothing is counted twice or missed.
    /// Only one observer can be installed; a second call returns `false` and changes
    /// nothing.
    pub fn set_observer(&self, observer: Arc<dyn RecordObserver>) -> bool {
        let view = CacheView::lock_all(self);
        if self.observer.set(Arc::clone(&observer)).is_err() {
            return false;
        }
        for rec in view.records() {
            observer.record_changed(None, Some(rec));
        }
        for id in view.tombstones() {
            observer.tombstoned(id);
        }
        true
    }

    /// Tells the list index and the observer of one change of the cache; call it under
    /// the record's shard lock, so that both see one device's changes in order.
    pub(super) fn notify(&self, old: Option<&DeviceRecord>, new: Option<&DeviceRecord>) {
        self.list_index.changed(old, new);
        if let Some(obs) = self.observer.get() {
            obs.record_changed(old, new);
        }
    }

    /// Copies the cache one shard at a time: for shard `i`, with only that shard locked,
    /// calls `taken(i)` and copies the shard's record pointers; then, unlocked, calls
    /// `visit(i, copy)`. A change of a device in shard `i` reaches the observer
    /// either before `taken(i)` (and is in the copy) or after it (and is not): so a count
    /// kept from `visit` plus the observer's changes after `taken(shard_of(id))` is exact,
    /// while each shard is locked only for a pointer copy.
    pub fn snapshot_shards(
        &self,
        mut taken: impl FnMut(usize),
        mut visit: impl FnMut(usize, &[Arc<DeviceRecord>]),
    ) {
        let mut copy: Vec<Arc<DeviceRecord>> = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            copy.clear();
            {
                let shard = lock(shard);
                taken(i);
                copy.extend(shard.records.values().map(Arc::clone));
            }
            visit(i, &copy);
        }
    }

    /// Calls `f` for every cached record with its last contact (the newer of the stored
    /// and the unflushed one), one shard at a time with that shard locked: keep `f` short.
    pub fn visit_cached(&self, mut f: impl FnMut(&DeviceRecord, Option<DateTime<Utc>>)) {
        for shard in &self.shards {
            let shard = lock(shard);
            for (id, rec) in &shard.records {
                let unflushed = shard.seen.get(id).map(|s| s.at);
                let last = match (rec.last_seen, unflushed) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                f(rec, last);
            }
        }
    }

    /// Reads every record of the store into the cache (records cached already with a
    /// newer revision, and decommissioned ids, are left alone). Run once at startup: the
    /// cache then holds the whole fleet and the observer counts it. Returns how many
    /// records were read.
    pub fn load_all(&self) -> Result<usize, StoreError> {
        let mut after: Option<Vec<u8>> = None;
        let mut n = 0;
        loop {
            let page: Vec<(Vec<u8>, DeviceRecord)> =
                self.store
                    .scan_json(DEVICES_TREE, b"", after.as_deref(), LIST_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            n += page.len();
            for (_, rec) in page {
                self.cache_put(Arc::new(rec));
            }
        }
        // Every stored record is cached now, and every later change goes through the
        // cache: the list index covers the fleet.
        self.list_index.set_complete();
        Ok(n)
    }

    /// Stores an anomaly the server detected about `device` (for example `device_silent`
    /// or `rollout_paused`), durably. Idempotent by `local_id`: returns `false` if one
    /// with that id was stored before, or if the device is unknown or decommissioned.
    pub fn record_server_anomaly(
        &self,
        device: &str,
        local_id: &str,
        kind: &str,
        message: &str,
        detail: Value,
        now: DateTime<Utc>,
    ) -> Result<bool, DeviceError> {
        let guard = self.write_guard();
        if self.decommissioned_at(device).is_some() {
            return Ok(false);
        }
        let Some((raw, _)) = self.read_raw(device)? else {
            return Ok(false);
        };
        let Some(more) =
            self.server_anomaly_ops(device, local_id, kind, message, detail, now, 0)?
        else {
            return Ok(false);
        };
        // Expecting the record as read keeps the anomaly from outliving a decommission.
        let mut ops = vec![Op::expect(DEVICES_TREE, device.as_bytes(), Some(raw))];
        ops.extend(more);
        self.store.apply_batch(ops)?;
        drop(guard);
        self.store.flush()?;
        Ok(true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::devices::testing::{ident, peer, registry, req};
    use crate::devices::{DeviceConfig, DeviceStatus};

    /// Records what it is told.
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl RecordObserver for Log {
        fn record_changed(&self, old: Option<&DeviceRecord>, new: Option<&DeviceRecord>) {
            let s =
                |r: Option<&DeviceRecord>| r.map_or("-".to_string(), |r| format!("{:?}", r.status));
            let id = new.or(old).map_or("", |r| r.id.as_str());
            lock(&self.0).push(format!("{id}:{}>{}", s(old), s(new)));
        }
        fn tombstoned(&self, id: &str) {
            lock(&self.0).push(format!("{id}:tomb"));
        }
    }

    #[test]
    fn observer_sees_replay_then_every_change() {
        let (store, d, audit) = registry();
        let now = Utc::now();
        d.poll(&ident("d1", "A"), &req("hw"), peer(), now).unwrap();
        let log = Arc::new(Log::default());
        assert!(d.set_observer(log.clone()));
        assert!(!d.set_observer(Arc::new(Log::default())));
        d.decide("d1", DeviceStatus::Accepted, &audit, "op", now)
            .unwrap();
        d.poll(&ident("d2", "B"), &req("hw"), peer(), now).unwrap();
        d.decommission("d2", &audit, "op", now).unwrap();
        assert_eq!(
            *lock(&log.0),
            [
                "d1:->Pending",
                "d1:Pending>Accepted",
                "d2:->Pending",
                "d2:Pending>-",
                "d2:tomb"
            ]
        );
        // A restart: the cache starts empty and load_all fills it through the observer.
        let d2 = Devices::open(store, DeviceConfig::default()).unwrap();
        let log2 = Arc::new(Log::default());
        d2.set_observer(log2.clone());
        assert_eq!(d2.load_all().unwrap(), 1);
        assert_eq!(*lock(&log2.0), ["d2:tomb", "d1:->Accepted"]);
        let view = CacheView::lock_all(&d2);
        assert_eq!(view.records().count(), 1);
        assert_eq!(view.tombstones().collect::<Vec<_>>(), ["d2"]);
        drop(view);
        let mut seen = Vec::new();
        d2.visit_cached(|r, last| seen.push((r.id.clone(), last)));
        assert_eq!(seen, [("d1".to_string(), Some(now))]);
    }

    #[test]
    fn server_anomalies_are_idempotent_and_need_a_device() {
        let (_s, d, _a) = registry();
        let now = Utc::now();
        assert!(!d
            .record_server_anomaly("nobody", "x:1", "device_silent", "m", Value::Null, now)
            .unwrap());
        d.poll(&ident("d1", "A"), &req("hw"), peer(), now).unwrap();
        for expect in [true, false] {
            assert_eq!(
                d.record_server_anomaly("d1", "x:1", "device_silent", "m", Value::Null, now)
                    .unwrap(),
                expect
            );
        }
        let (feed, _) = d.list_anomalies(None, 10).unwrap();
        assert_eq!(feed.len(), 1);
        assert_eq!(feed[0].kind, "device_silent");
    }
}
