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
        if let Some(obs) = self.observer.get() {
            if cached.is_some() {
                obs.record_changed(cached.as_deref(), None);
            }
            obs.tombstoned(id);
        }
        Ok(tomb)
    }

    /// Up to `limit` records with ids after `after`, in id order, matching `filter`, with
    /// unflushed contacts applied. Returns them and the id to continue after, if the page
    /// is full.
    pub fn list(
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
                let wanted = filter.status.is_none_or(|s| s == rec.status)
                    && filter
                        .hardware_id
                        .as_deref()
                        .is_none_or(|h| rec.hardware_id.as_deref() == Some(h));
                if wanted {
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
