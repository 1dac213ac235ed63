//! The in-memory index behind the filtered device list: the ids of cached records by
//! status, and by status and hardware id, each in id order (the store's key order), so a
//! filtered page costs O(log fleet + page) instead of a scan of the fleet.
//!
//! The index follows the record cache exactly: it is changed with the same `(old, new)`
//! pairs the [`super::RecordObserver`] sees, under the record's shard lock. It answers
//! only once the cache holds the whole fleet ([`ListIndex::is_complete`], set by
//! [`super::Devices::load_all`]); before that the list scans the store.
//!
//! Memory: two ordered-set entries per device (16 bytes each plus B-tree slack) sharing
//! one `Arc<str>` of its id, about 100 bytes per device for ids of 20-30 bytes.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{DeviceFilter, DeviceRecord, DeviceStatus};

/// Ordered ids, one set per status.
type ByStatus = [BTreeSet<Arc<str>>; 4];

fn slot(s: DeviceStatus) -> usize {
    match s {
        DeviceStatus::Pending => 0,
        DeviceStatus::Accepted => 1,
        DeviceStatus::Rejected => 2,
        DeviceStatus::Decommissioned => 3,
    }
}

#[derive(Default)]
struct Sets {
    by_status: ByStatus,
    /// Devices that report no hardware id are in `by_status` only: no hardware filter
    /// matches them.
    by_hardware: HashMap<Arc<str>, ByStatus>,
}

/// The list index; see the module documentation.
#[derive(Default)]
pub(crate) struct ListIndex {
    sets: Mutex<Sets>,
    complete: AtomicBool,
    /// Records looked at by indexed list calls (a cost counter for tests and diagnostics).
    examined: AtomicU64,
}

impl ListIndex {
    fn lock(&self) -> MutexGuard<'_, Sets> {
        // Each change is a few set inserts and removes of one device: a panic between
        // them cannot happen short of an allocation failure.
        self.sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Follows one change of the cache (call it under the record's shard lock).
    pub(crate) fn changed(&self, old: Option<&DeviceRecord>, new: Option<&DeviceRecord>) {
        let key = |r: &DeviceRecord| (r.status, r.hardware_id.clone());
        if old.map(key) == new.map(key) {
            return;
        }
        let mut sets = self.lock();
        if let Some(old) = old {
            sets.remove(old);
        }
        if let Some(new) = new {
            sets.insert(new);
        }
    }

    /// Marks the index as covering the whole fleet.
    pub(crate) fn set_complete(&self) {
        self.complete.store(true, Ordering::Release);
    }

    /// Whether the index covers the whole fleet.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Counts `n` records looked at.
    pub(crate) fn note_examined(&self, n: usize) {
        self.examined
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Records looked at by indexed list calls so far.
    pub(crate) fn examined(&self) -> u64 {
        self.examined.load(Ordering::Relaxed)
    }

    /// Up to `limit` ids after `after`, in id order, whose status and hardware id match
    /// `filter` (which must filter on at least one of them).
    pub(crate) fn ids(
        &self,
        filter: &DeviceFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<str>> {
        let sets = self.lock();
        let from: Bound<&str> = after.map_or(Bound::Unbounded, Bound::Excluded);
        let chosen: Vec<&BTreeSet<Arc<str>>> = match (filter.status, &filter.hardware_id) {
            (Some(s), None) => vec![&sets.by_status[slot(s)]],
            (s, Some(h)) => match sets.by_hardware.get(h.as_str()) {
                None => Vec::new(),
                Some(by) => match s {
                    Some(s) => vec![&by[slot(s)]],
                    None => by.iter().collect(),
                },
            },
            (None, None) => sets.by_status.iter().collect(),
        };
        let mut out: Vec<Arc<str>> = Vec::new();
        for set in chosen {
            out.extend(
                set.range::<str, _>((from, Bound::Unbounded))
                    .take(limit)
                    .cloned(),
            );
        }
        if out.len() > limit {
            out.sort_unstable();
            out.truncate(limit);
        } else {
            out.sort_unstable();
        }
        out
    }

    /// How many ids the index holds (each device once), for tests.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().by_status.iter().map(BTreeSet::len).sum()
    }
}

impl Sets {
    fn insert(&mut self, rec: &DeviceRecord) {
        let id: Arc<str> = Arc::from(rec.id.as_str());
        if let Some(hw) = rec.hardware_id.as_deref() {
            if !self.by_hardware.contains_key(hw) {
                self.by_hardware.insert(Arc::from(hw), ByStatus::default());
            }
            if let Some(by) = self.by_hardware.get_mut(hw) {
                by[slot(rec.status)].insert(Arc::clone(&id));
            }
        }
        self.by_status[slot(rec.status)].insert(id);
    }

    fn remove(&mut self, rec: &DeviceRecord) {
        self.by_status[slot(rec.status)].remove(rec.id.as_str());
        if let Some(hw) = rec.hardware_id.as_deref() {
            if let Some(by) = self.by_hardware.get_mut(hw) {
                by[slot(rec.status)].remove(rec.id.as_str());
                if by.iter().all(BTreeSet::is_empty) {
                    self.by_hardware.remove(hw);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use chrono::Utc;

    fn rec(id: &str, status: DeviceStatus, hw: Option<&str>) -> DeviceRecord {
        let mut r = DeviceRecord::new(id, status, "t", Utc::now());
        r.hardware_id = hw.map(Into::into);
        r
    }

    fn ids(index: &ListIndex, status: Option<DeviceStatus>, hw: Option<&str>) -> Vec<String> {
        let f = DeviceFilter {
            status,
            hardware_id: hw.map(Into::into),
        };
        index
            .ids(&f, None, 100)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn sets_follow_changes_and_empty_boards_are_dropped() {
        let index = ListIndex::default();
        let a = rec("a", DeviceStatus::Pending, Some("x"));
        let b = rec("b", DeviceStatus::Pending, None);
        index.changed(None, Some(&a));
        index.changed(None, Some(&b));
        assert_eq!(ids(&index, Some(DeviceStatus::Pending), None), ["a", "b"]);
        assert_eq!(ids(&index, None, Some("x")), ["a"]);
        let a2 = rec("a", DeviceStatus::Accepted, Some("y"));
        index.changed(Some(&a), Some(&a2));
        assert_eq!(ids(&index, Some(DeviceStatus::Pending), None), ["b"]);
        assert!(ids(&index, None, Some("x")).is_empty());
        assert_eq!(ids(&index, Some(DeviceStatus::Accepted), Some("y")), ["a"]);
        assert_eq!(index.lock().by_hardware.len(), 1);
        index.changed(Some(&a2), None);
        assert!(index.lock().by_hardware.is_empty());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_board_across_statuses_is_merged_in_id_order_and_cut_at_the_limit() {
        let index = ListIndex::default();
        let statuses = [
            DeviceStatus::Pending,
            DeviceStatus::Accepted,
            DeviceStatus::Rejected,
        ];
        for i in 0..30 {
            let r = rec(&format!("d{i:02}"), statuses[i % 3], Some("x"));
            index.changed(None, Some(&r));
        }
        let f = DeviceFilter {
            status: None,
            hardware_id: Some("x".into()),
        };
        let page: Vec<String> = index
            .ids(&f, Some("d10"), 5)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(page, ["d11", "d12", "d13", "d14", "d15"]);
    }
}
