//! Operator decisions over the registry: accept, reject, preauthorize, decommission, and
//! the device list. Each change and its audit entry are one atomic, durable batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    DeviceError, DeviceRecord, DeviceStatus, Devices, Tombstone, DEVICES_TREE, LIST_PAGE,
    TOMBSTONES_TREE,
};
use crate::audit::AuditLog;
use crate::identity::validate_device_id;
use crate::store::{Op, StoreError, StoreExt};

/// Most ids in one preauthorization.
pub const MAX_PREAUTHORIZE: usize = 1000;

/// The result of an operator decision.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    /// The record after it.
    pub device: DeviceRecord,
    /// False when the device already had that status (nothing written, nothing audited).
    pub changed: bool,
}

/// What preauthorizing did to one id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreauthOutcome {
    /// Not seen yet: it will be accepted on first contact.
    Preauthorized,
    /// It was pending and is now accepted.
    Accepted,
    /// Already accepted: nothing changed.
    AlreadyAccepted,
    /// Rejected by an operator: left so (accept it explicitly to change that).
    LeftRejected,
    /// Decommissioned: it can never come back.
    Decommissioned,
}

/// Filters of [`Devices::list`].
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    /// Only this status (not `Decommissioned`: see [`Devices::list_tombstones`]).
    pub status: Option<DeviceStatus>,
    /// Only this board.
    pub hardware_id: Option<String>,
}

impl DeviceFilter {
    /// Whether `rec` passes the filter.
    pub fn matches(&self, rec: &DeviceRecord) -> bool {
        self.status.is_none_or(|s| s == rec.status)
            && self
                .hardware_id
                .as_deref()
                .is_none_or(|h| rec.hardware_id.as_deref() == Some(h))
    }
}

impl Devices {
    /// An operator accepts or rejects a device. The change and its audit entry are one
    /// atomic, durable batch; a device that already has `status` is left alone.
    pub fn decide(
        &self,
        id: &str,
        status: DeviceStatus,
        audit: &AuditLog,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Decision, DeviceError> {
        validate_device_id(id)?;
        let action = match status {
            DeviceStatus::Accepted => "device.accept",
            DeviceStatus::Rejected => "device.reject",
            other => {
                return Err(DeviceError::Invalid {
                    what: "decision",
                    reason: format!("{other:?} is not a decision; accept or reject"),
                })
            }
        };
        let _guard = self.write_guard();
        if let Some(at) = self.decommissioned_at(id) {
            return Err(DeviceError::Decommissioned { id: id.into(), at });
        }
        let (raw, mut rec) = self
            .read_raw(id)?
            .ok_or_else(|| DeviceError::Unknown { id: id.into() })?;
        if rec.status == status {
            self.cache_put(Arc::new(rec.clone()));
            return Ok(Decision {
                device: self.with_seen(&rec),
                changed: false,
            });
        }
        let from = rec.status;
        rec.status = status;
        rec.status_changed_at = now;
        rec.status_changed_by = actor.to_owned();
        let ops = Self::record_ops(Some(raw), &mut rec)?;
        audit.append_with(ops, actor, action, id, json!({ "from": from }), now)?;
        self.cache_put(Arc::new(rec.clone()));
        Ok(Decision {
            device: self.with_seen(&rec),
            changed: true,
        })
    }

    /// An operator enters ids in advance: unknown ids are accepted on first contact and
    /// pending ones are accepted now. One atomic batch and one audit entry for all changes.
    pub fn preauthorize(
        &self,
        ids: &[String],
        audit: &AuditLog,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, PreauthOutcome>, DeviceError> {
        if ids.is_empty() || ids.len() > MAX_PREAUTHORIZE {
            return Err(DeviceError::Invalid {
                what: "ids",
                reason: format!("give 1 to {MAX_PREAUTHORIZE} device ids, got {}", ids.len()),
            });
        }
        for id in ids {
            validate_device_id(id)?;
        }
        let _guard = self.write_guard();
        let mut outcomes = BTreeMap::new();
        let mut ops = Vec::new();
        let mut written = Vec::new();
        for id in ids {
            if outcomes.contains_key(id) {
                continue;
            }
            let outcome = if self.decommissioned_at(id).is_some() {
                PreauthOutcome::Decommissioned
            } else {
                match self.read_raw(id)? {
                    None => {
                        let mut rec = DeviceRecord::new(id, DeviceStatus::Accepted, actor, now);
                        rec.preauthorized = true;
                        ops.extend(Self::record_ops(None, &mut rec)?);
                        written.push(rec);
                        PreauthOutcome::Preauthorized
                    }
                    Some((raw, mut rec)) => match rec.status {
                        DeviceStatus::Pending => {
                            rec.status = DeviceStatus::Accepted;
                            rec.status_changed_at = now;
                            rec.status_changed_by = actor.to_owned();
                            rec.preauthorized = true;
                            ops.extend(Self::record_ops(Some(raw), &mut rec)?);
                            written.push(rec);
                            PreauthOutcome::Accepted
                        }
                        DeviceStatus::Accepted => PreauthOutcome::AlreadyAccepted,
                        DeviceStatus::Rejected | DeviceStatus::Decommissioned => {
                            PreauthOutcome::LeftRejected
                        }
                    },
                }
            };
            outcomes.insert(id.clone(), outcome);
        }
        if !ops.is_empty() {
            let changed: BTreeMap<&String, &PreauthOutcome> = outcomes
                .iter()
                .filter(|(_, o)| {
                    matches!(o, PreauthOutcome::Preauthorized | PreauthOutcome::Accepted)
                })
                .collect();
            audit.append_with(
                ops,
                actor,
                "device.preauthorize",
                &format!("{} devices", changed.len()),
                json!({ "devices": changed }),
                now,
            )?;
            for rec in written {
                self.cache_put(Arc::new(rec));
            }
        }
        Ok(outcomes)
    }

    /// Revokes a device for good: its record, status reports, anomalies and operation log
    /// are deleted and a tombstone written, with the audit entry, in one atomic batch.
    pub fn decommission(
        &self,
        id: &str,
        audit: &AuditLog,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Tombstone, DeviceError> {
        validate_device_id(id)?;
        let _guard = self.write_guard();
        if let Some(at) = self.decommissioned_at(id) {
            return Err(DeviceError::Decommissioned { id: id.into(), at });
        }
        let (raw, rec) = self
            .read_raw(id)?
            .ok_or_else(|| DeviceError::Unknown { id: id.into() })?;
        let tomb = Tombstone {
            id: id.to_owned(),
            decommissioned_at: now,
        };
        let mut ops = vec![
            Op::expect(DEVICES_TREE, id.as_bytes(), Some(raw)),
            Op::delete(DEVICES_TREE, id.as_bytes()),
            Op::put_json(TOMBSTONES_TREE, id.as_bytes(), &tomb)?,
        ];
        let deleted = self.device_data_ops(id, &mut ops)?;
        audit.append_with(
            ops,
            actor,
            "device.decommission",
            id,
            json!({ "was": rec.status, "deleted": deleted }),
            now,
        )?;
        let mut shard = self.shard(id);
        shard.tombstones.insert(id.to_owned(), now);
        let cached = shard.records.remove(id);
        shard.seen.remove(id);
        if cached.is_some() {
            self.notify(cached.as_deref(), None);
        }
        if let Some(obs) = self.observer.get() {
            obs.tombstoned(id);
        }
        Ok(tomb)
    }

    /// Up to `limit` records with ids after `after`, in id order, matching `filter`, with
    /// unflushed contacts applied. Returns them and the id to continue after, if the page
    /// is full.
    ///
    /// A filtered list is answered from the in-memory list index once the cache holds
    /// the fleet ([`Devices::load_all`]): O(log fleet + page), whatever the fleet size
    /// and however few records match. The unfiltered list reads the store in id order.
    pub fn list(
        &self,
        filter: &DeviceFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<DeviceRecord>, Option<String>), StoreError> {
        let filtered = filter.status.is_some() || filter.hardware_id.is_some();
        if filtered && self.list_index.is_complete() {
            return Ok(self.list_indexed(filter, after, limit));
        }
        self.list_scan(filter, after, limit)
    }

    /// Records looked at so far by filtered lists answered from the index (a cost
    /// counter for diagnostics and tests: it grows with the pages, not the fleet).
    pub fn list_records_examined(&self) -> u64 {
        self.list_index.examined()
    }

    /// [`Devices::list`] from the list index and the cache.
    fn list_indexed(
        &self,
        filter: &DeviceFilter,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<DeviceRecord>, Option<String>) {
        let mut out = Vec::new();
        let mut cursor: Option<Arc<str>> = after.map(Arc::from);
        while out.len() < limit {
            let ids = self
                .list_index
                .ids(filter, cursor.as_deref(), limit - out.len());
            let Some(last) = ids.last() else { break };
            cursor = Some(Arc::clone(last));
            self.list_index.note_examined(ids.len());
            for id in &ids {
                // A record may change between the index lookup and this read: the filter
                // is checked again, and a short batch just means another lookup.
                let Some(rec) = self.cached(id) else { continue };
                if filter.matches(&rec) {
                    out.push(self.with_seen(&rec));
                }
            }
        }
        let next = (out.len() == limit && limit > 0)
            .then(|| out.last().map(|r| r.id.clone()))
            .flatten();
        (out, next)
    }

    /// [`Devices::list`] by scanning the store (before the cache holds the fleet, and for
    /// the unfiltered list).
    fn list_scan(
        &self,
        filter: &DeviceFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<DeviceRecord>, Option<String>), StoreError> {
        let mut out = Vec::new();
        let mut cursor = after.map(|a| a.as_bytes().to_vec());
        while out.len() < limit {
            let page: Vec<(Vec<u8>, DeviceRecord)> =
                self.store
                    .scan_json(DEVICES_TREE, b"", cursor.as_deref(), LIST_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            cursor = Some(last.clone());
            for (_, rec) in page {
                if filter.matches(&rec) {
                    out.push(self.with_seen(&rec));
                    if out.len() == limit {
                        break;
                    }
                }
            }
        }
        let next = (out.len() == limit && limit > 0)
            .then(|| out.last().map(|r| r.id.clone()))
            .flatten();
        Ok((out, next))
    }

    /// Up to `limit` tombstones with ids after `after`, and the id to continue after.
    pub fn list_tombstones(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Tombstone>, Option<String>), StoreError> {
        let page: Vec<(Vec<u8>, Tombstone)> =
            self.store
                .scan_json(TOMBSTONES_TREE, b"", after.map(str::as_bytes), limit)?;
        let out: Vec<Tombstone> = page.into_iter().map(|(_, t)| t).collect();
        let next = (out.len() == limit && limit > 0)
            .then(|| out.last().map(|t| t.id.clone()))
            .flatten();
        Ok((out, next))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::devices::testing::{ident, peer, registry, req};
    use crate::devices::DeviceConfig;

    #[test]
    fn decommissioned_ids_are_refused_forever_and_not_recreated() {
        let (store, d, audit) = registry();
        let now = Utc::now();
        d.poll(&ident("d1", "A"), &req("hw"), peer(), now).unwrap();
        d.decide("d1", DeviceStatus::Accepted, &audit, "op", now)
            .unwrap();
        d.mark_seen("d1", peer(), now);
        d.decommission("d1", &audit, "op", now).unwrap();
        assert!(store.get(DEVICES_TREE, b"d1").unwrap().is_none());
        // The pending last-seen time does not bring the record back.
        d.mark_seen("d1", peer(), now);
        assert_eq!(d.flush_last_seen().unwrap(), 0);
        assert!(store.get(DEVICES_TREE, b"d1").unwrap().is_none());
        for dev in [
            &d,
            &Devices::open(Arc::clone(&store), DeviceConfig::default()).unwrap(),
        ] {
            assert!(dev
                .poll_fast(&ident("d1", "B"), &req("hw"), peer(), now)
                .is_none());
            let err = dev
                .poll(&ident("d1", "B"), &req("hw"), peer(), now)
                .unwrap_err();
            assert!(matches!(err, DeviceError::Decommissioned { .. }), "{err}");
            assert!(matches!(
                dev.decide("d1", DeviceStatus::Accepted, &audit, "op", now),
                Err(DeviceError::Decommissioned { .. })
            ));
            let out = dev.preauthorize(&["d1".into()], &audit, "op", now).unwrap();
            assert_eq!(out["d1"], PreauthOutcome::Decommissioned);
        }
        assert!(store.get(DEVICES_TREE, b"d1").unwrap().is_none());
        let (tombs, _) = d.list_tombstones(None, 10).unwrap();
        assert_eq!(tombs.len(), 1);
    }

    #[test]
    fn preauthorized_ids_are_accepted_on_first_contact() {
        let (_s, d, audit) = registry();
        let now = Utc::now();
        d.poll(&ident("pend", "P"), &req("hw"), peer(), now)
            .unwrap();
        let out = d
            .preauthorize(
                &["new".into(), "pend".into(), "new".into()],
                &audit,
                "op",
                now,
            )
            .unwrap();
        assert_eq!(out["new"], PreauthOutcome::Preauthorized);
        assert_eq!(out["pend"], PreauthOutcome::Accepted);
        let first = d.poll(&ident("new", "N"), &req("hw"), peer(), now).unwrap();
        assert_eq!(first.record.status, DeviceStatus::Accepted);
        assert_eq!(first.record.first_cert_sha256.as_deref(), Some("N"));
        assert!(first.record.first_seen.is_some());
        let again = d.preauthorize(&["new".into()], &audit, "op", now).unwrap();
        assert_eq!(again["new"], PreauthOutcome::AlreadyAccepted);
        assert!(d
            .preauthorize(&["bad/id".into()], &audit, "op", now)
            .is_err());
        // One audit entry per call that changed something.
        assert_eq!(audit.list(0, 100).unwrap().len(), 1);
    }

    #[test]
    fn listing_filters_and_pages() {
        let (_s, d, audit) = registry();
        let now = Utc::now();
        for i in 0..5 {
            let hw = if i % 2 == 0 { "even" } else { "odd" };
            d.poll(&ident(&format!("d{i}"), "F"), &req(hw), peer(), now)
                .unwrap();
        }
        d.decide("d1", DeviceStatus::Accepted, &audit, "op", now)
            .unwrap();
        let (all, next) = d.list(&DeviceFilter::default(), None, 2).unwrap();
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["d0", "d1"]
        );
        let (rest, next) = d
            .list(&DeviceFilter::default(), next.as_deref(), 10)
            .unwrap();
        assert_eq!(rest.len(), 3);
        assert!(next.is_none());
        let f = DeviceFilter {
            hardware_id: Some("even".into()),
            status: Some(DeviceStatus::Pending),
        };
        let (even, _) = d.list(&f, None, 10).unwrap();
        assert_eq!(even.len(), 3);
        let f = DeviceFilter {
            status: Some(DeviceStatus::Accepted),
            ..Default::default()
        };
        assert_eq!(d.list(&f, None, 10).unwrap().0.len(), 1);
    }

    /// Every page of every filter, walked by cursor, from the index and from the store.
    fn assert_index_pages_match_the_store(d: &Devices) {
        assert!(d.list_index.is_complete());
        let statuses = [
            None,
            Some(DeviceStatus::Pending),
            Some(DeviceStatus::Accepted),
            Some(DeviceStatus::Rejected),
        ];
        let boards = [None, Some("hw-0"), Some("hw-1"), Some("hw-2"), Some("none")];
        for status in statuses {
            for hw in boards {
                let f = DeviceFilter {
                    status,
                    hardware_id: hw.map(Into::into),
                };
                for limit in [0, 1, 7, 50, 1000] {
                    let mut after: Option<String> = None;
                    for _ in 0..1000 {
                        let fast = d.list(&f, after.as_deref(), limit).unwrap();
                        let slow = d.list_scan(&f, after.as_deref(), limit).unwrap();
                        let ids = |p: &(Vec<DeviceRecord>, Option<String>)| {
                            (
                                p.0.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
                                p.1.clone(),
                            )
                        };
                        assert_eq!(
                            ids(&fast),
                            ids(&slow),
                            "{f:?} after {after:?} limit {limit}"
                        );
                        assert_eq!(
                            serde_json::to_value(&fast.0).unwrap(),
                            serde_json::to_value(&slow.0).unwrap()
                        );
                        match fast.1 {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn indexed_listing_returns_the_store_scan_pages_and_follows_changes() {
        let (_s, d, audit) = registry();
        let now = Utc::now();
        // Registered before load_all: the index starts from the loaded cache.
        for i in 0..60 {
            d.poll(
                &ident(&format!("a{i:03}"), "F"),
                &req(&format!("hw-{}", i % 3)),
                peer(),
                now,
            )
            .unwrap();
        }
        let (_, _) = d.list(&DeviceFilter::default(), None, 1).unwrap();
        let fresh = Devices::open(Arc::clone(d.store()), DeviceConfig::default()).unwrap();
        fresh.load_all().unwrap();
        let d = fresh;
        for i in 0..140 {
            // Ids out of order, some unlikely to sort with the others.
            let id = format!("{}{i}", ["b", "A", "z-", "0"][i % 4]);
            d.poll(
                &ident(&id, "F"),
                &req(&format!("hw-{}", i % 3)),
                peer(),
                now,
            )
            .unwrap();
            match i % 5 {
                0 | 1 => {
                    d.decide(&id, DeviceStatus::Accepted, &audit, "op", now)
                        .unwrap();
                }
                2 => {
                    d.decide(&id, DeviceStatus::Rejected, &audit, "op", now)
                        .unwrap();
                }
                _ => {}
            }
        }
        d.preauthorize(&["pre-1".into(), "a001".into()], &audit, "op", now)
            .unwrap();
        d.mark_seen("a002", peer(), now + chrono::Duration::seconds(5));
        assert_index_pages_match_the_store(&d);
        // Status changes, a board change, decommissions and new devices.
        d.decide("a003", DeviceStatus::Rejected, &audit, "op", now)
            .unwrap();
        d.decide("b0", DeviceStatus::Rejected, &audit, "op", now)
            .unwrap();
        d.poll(&ident("a004", "F"), &req("hw-2"), peer(), now)
            .unwrap();
        d.decommission("a005", &audit, "op", now).unwrap();
        d.decommission("A1", &audit, "op", now).unwrap();
        d.poll(&ident("new", "F"), &req("hw-1"), peer(), now)
            .unwrap();
        d.poll(&ident("pre-1", "F"), &req("hw-0"), peer(), now)
            .unwrap();
        assert_index_pages_match_the_store(&d);
        assert_eq!(d.list_index.len(), 60 + 140 + 2 - 2);
        let f = DeviceFilter {
            status: Some(DeviceStatus::Rejected),
            hardware_id: None,
        };
        let (rejected, _) = d.list(&f, None, 1000).unwrap();
        assert!(rejected.iter().any(|r| r.id == "a003"));
        assert!(!rejected.iter().any(|r| r.id == "A1"));
    }

    #[test]
    fn a_filtered_page_costs_the_page_not_the_fleet() {
        let (_s, d, audit) = registry();
        d.load_all().unwrap();
        let now = Utc::now();
        for i in 0..3000 {
            d.poll(
                &ident(&format!("d{i:05}"), "F"),
                &req("common"),
                peer(),
                now,
            )
            .unwrap();
        }
        for id in ["d00010", "d01500", "d02999"] {
            d.poll(&ident(id, "F"), &req("rare"), peer(), now).unwrap();
            d.decide(id, DeviceStatus::Accepted, &audit, "op", now)
                .unwrap();
        }
        let before = d.list_records_examined();
        let f = DeviceFilter {
            status: Some(DeviceStatus::Accepted),
            hardware_id: None,
        };
        let (page, next) = d.list(&f, None, 2).unwrap();
        assert_eq!(page.len(), 2);
        let (rest, end) = d.list(&f, next.as_deref(), 2).unwrap();
        assert_eq!(rest.len(), 1);
        assert!(end.is_none());
        let by_board = DeviceFilter {
            status: None,
            hardware_id: Some("rare".into()),
        };
        assert_eq!(d.list(&by_board, None, 10).unwrap().0.len(), 3);
        // 2 + 1 + 3 records read, out of 3000.
        assert_eq!(d.list_records_examined() - before, 6);
    }

    #[test]
    fn decisions_are_audited_only_when_they_change_something() {
        let (_s, d, audit) = registry();
        let now = Utc::now();
        assert!(matches!(
            d.decide("nobody", DeviceStatus::Accepted, &audit, "op", now),
            Err(DeviceError::Unknown { .. })
        ));
        d.poll(&ident("d1", "A"), &req("hw"), peer(), now).unwrap();
        assert!(
            d.decide("d1", DeviceStatus::Rejected, &audit, "op", now)
                .unwrap()
                .changed
        );
        assert!(
            !d.decide("d1", DeviceStatus::Rejected, &audit, "op", now)
                .unwrap()
                .changed
        );
        let entries = audit.list(0, 10).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].action, "device.reject");
        assert_eq!(entries[0].actor, "op");
        assert!(d
            .decide("d1", DeviceStatus::Pending, &audit, "op", now)
            .is_err());
    }
}
