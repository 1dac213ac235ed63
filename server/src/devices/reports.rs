//! What accepted devices report: status reports and anomalies, each idempotent (a
//! retried report is stored once) and durable before the caller answers; the anomalies
//! the server raises itself; and the queries operators run. The operation log has its
//! own module (`oplog`).
//!
//! Only accepted devices may report; the check is repeated under the registry's write
//! lock, and every batch expects the device record it read, so a report racing a
//! decommission can never leave data behind a tombstone.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ota_common::api::{AnomalyReport, StatusReport};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::oplog::StoredOplog;
use super::record::{
    check_field, device_prefix, inverted_micros, ANOMALIES_TREE, DEVICE_ANOMALIES_TREE,
    OPLOG_HEADS_TREE, OPLOG_TREE, STATUS_IDS_TREE, STATUS_TREE,
};
use super::{DeviceError, DeviceRecord, Devices, LastStatus, Tombstone};
use crate::oplog_chain::ChainHead;
use crate::store::{Op, StoreError, StoreExt};

/// Longest report or anomaly id.
pub const MAX_REPORT_ID_LEN: usize = 128;
/// Longest free text (status detail, anomaly message), in bytes.
pub const MAX_TEXT_LEN: usize = 16 * 1024;
/// Most anomalies in one batch.
pub const MAX_ANOMALY_BATCH: usize = 500;
/// A stored status report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredStatus {
    /// The device.
    pub device_id: String,
    /// When the server took it.
    pub received_at: DateTime<Utc>,
    /// The report as sent.
    pub report: StatusReport,
}

/// Who detected an anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalySource {
    /// The device reported it.
    Device,
    /// The server detected it (`identity_conflict`, `oplog_chain_break`).
    Server,
}

impl AnomalySource {
    fn tag(self) -> &'static str {
        match self {
            AnomalySource::Device => "d",
            AnomalySource::Server => "s",
        }
    }
}

/// A stored anomaly, from a device or from the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredAnomaly {
    /// The device concerned.
    pub device_id: String,
    /// Who detected it.
    pub source: AnomalySource,
    /// Idempotency id (the device's, or the server's own).
    pub id: String,
    /// Stable kind.
    pub kind: String,
    /// For a person.
    pub message: String,
    /// Structured detail.
    pub detail: Value,
    /// When it was observed.
    pub at: DateTime<Utc>,
    /// When the server stored it.
    pub received_at: DateTime<Utc>,
}

/// Everything operators see about one device.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceDetail {
    /// The record, with unflushed contacts applied (`None` once decommissioned).
    pub device: Option<DeviceRecord>,
    /// The tombstone, if decommissioned.
    pub decommissioned: Option<Tombstone>,
    /// Newest first.
    pub status_reports: Vec<StoredStatus>,
    /// Newest first.
    pub anomalies: Vec<StoredAnomaly>,
    /// The last operation-log records, oldest first.
    pub oplog: Vec<StoredOplog>,
    /// The last record the chain check accepted.
    pub oplog_head: Option<ChainHead>,
}

pub(super) fn invalid(what: &'static str, reason: impl Into<String>) -> DeviceError {
    DeviceError::Invalid {
        what,
        reason: reason.into(),
    }
}

fn check_id(what: &'static str, id: &str) -> Result<(), DeviceError> {
    if id.is_empty() || id.len() > MAX_REPORT_ID_LEN || id.chars().any(char::is_control) {
        return Err(invalid(
            what,
            format!("must be 1 to {MAX_REPORT_ID_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

fn check_text(what: &'static str, text: &str) -> Result<(), DeviceError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(invalid(
            what,
            format!("{} bytes, at most {MAX_TEXT_LEN}", text.len()),
        ));
    }
    Ok(())
}

pub(super) fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub(super) fn oplog_key(device: &str, seq: u64) -> Vec<u8> {
    key(&device_prefix(device), &[&seq.to_be_bytes()])
}

/// Feed key: newest first, then by position in the batch (later first), then device/id.
fn feed_key(now: DateTime<Utc>, index: usize, device_anomaly_key: &[u8]) -> Vec<u8> {
    let inv_index = u32::MAX - u32::try_from(index).unwrap_or(u32::MAX);
    key(
        &inverted_micros(now),
        &[&inv_index.to_be_bytes(), device_anomaly_key],
    )
}

fn device_anomaly_key(device: &str, source: AnomalySource, id: &str) -> Vec<u8> {
    key(
        &device_prefix(device),
        &[source.tag().as_bytes(), b"/", id.as_bytes()],
    )
}

impl Devices {
    /// Stores a status report of an accepted device; `Ok(false)` if its id was stored
    /// before. The record's last status moves forward only (by `at`).
    pub fn record_status(
        &self,
        device: &str,
        report: &StatusReport,
        now: DateTime<Utc>,
    ) -> Result<bool, DeviceError> {
        check_id("status report id", &report.id)?;
        check_field("target", &report.target).map_err(|r| invalid("status report", r))?;
        check_field("version", &report.version).map_err(|r| invalid("status report", r))?;
        if let Some(d) = &report.detail {
            check_text("status report detail", d)?;
        }
        for (what, v) in [("deployment", &report.deployment)] {
            if let Some(v) = v {
                check_field(what, v).map_err(|r| invalid("status report", r))?;
            }
        }
        let guard = self.write_guard();
        let (raw, mut rec) = self.accepted_raw(device)?;
        let id_key = key(&device_prefix(device), &[report.id.as_bytes()]);
        if self.store.get(STATUS_IDS_TREE, &id_key)?.is_some() {
            return Ok(false);
        }
        let report_key = key(
            &device_prefix(device),
            &[&inverted_micros(now), report.id.as_bytes()],
        );
        let stored = StoredStatus {
            device_id: device.to_owned(),
            received_at: now,
            report: report.clone(),
        };
        let newer = rec.last_status.as_ref().is_none_or(|s| s.at <= report.at);
        let mut ops = if newer {
            rec.last_status = Some(LastStatus {
                state: report.state,
                target: report.target.clone(),
                version: report.version.clone(),
                at: report.at,
            });
            Self::record_ops(Some(raw), &mut rec)?
        } else {
            vec![Op::expect(
                super::DEVICES_TREE,
                device.as_bytes(),
                Some(raw),
            )]
        };
        ops.push(Op::expect(STATUS_IDS_TREE, id_key.clone(), None));
        ops.push(Op::put(STATUS_IDS_TREE, id_key, report_key.clone()));
        ops.push(Op::put_json(STATUS_TREE, report_key, &stored)?);
        self.prune_status_ops(device, &mut ops)?;
        self.store.apply_batch(ops)?;
        if newer {
            self.cache_put(Arc::new(rec));
        }
        drop(guard);
        self.store.flush()?;
        Ok(true)
    }

    /// Adds to `ops` the deletion of the device's oldest status reports (and their ids)
    /// so that, with the one being stored, [`super::DeviceConfig::keep_status_reports`]
    /// remain. Reads only the id index, whose values are the report keys (newest first).
    fn prune_status_ops(&self, device: &str, ops: &mut Vec<Op>) -> Result<(), StoreError> {
        let keep = self.config().keep_status_reports.max(1);
        let mut ids = self
            .store
            .scan_prefix(STATUS_IDS_TREE, &device_prefix(device))?;
        let excess = (ids.len() + 1).saturating_sub(keep);
        if excess == 0 {
            return Ok(());
        }
        // Report keys hold the inverted receive time: the largest are the oldest.
        ids.sort_by(|a, b| b.1.cmp(&a.1));
        for (id_key, report_key) in ids.into_iter().take(excess) {
            ops.push(Op::delete(STATUS_IDS_TREE, id_key));
            ops.push(Op::delete(STATUS_TREE, report_key));
        }
        Ok(())
    }

    /// Stores the anomalies of an accepted device (oldest first); those whose id was
    /// stored before are skipped. Returns how many were new.
    pub fn record_anomalies(
        &self,
        device: &str,
        anomalies: &[AnomalyReport],
        now: DateTime<Utc>,
    ) -> Result<usize, DeviceError> {
        if anomalies.len() > MAX_ANOMALY_BATCH {
            return Err(invalid(
                "anomaly batch",
                format!("{} anomalies, at most {MAX_ANOMALY_BATCH}", anomalies.len()),
            ));
        }
        for a in anomalies {
            check_id("anomaly id", &a.id)?;
            check_field("anomaly kind", &a.kind).map_err(|r| invalid("anomaly", r))?;
            check_text("anomaly message", &a.message)?;
        }
        let guard = self.write_guard();
        let (raw, _) = self.accepted_raw(device)?;
        let mut ops = vec![Op::expect(
            super::DEVICES_TREE,
            device.as_bytes(),
            Some(raw),
        )];
        let mut seen = std::collections::HashSet::new();
        let mut new = 0;
        for (i, a) in anomalies.iter().enumerate() {
            let dkey = device_anomaly_key(device, AnomalySource::Device, &a.id);
            if !seen.insert(dkey.clone()) || self.store.get(DEVICE_ANOMALIES_TREE, &dkey)?.is_some()
            {
                continue;
            }
            let stored = StoredAnomaly {
                device_id: device.to_owned(),
                source: AnomalySource::Device,
                id: a.id.clone(),
                kind: a.kind.clone(),
                message: a.message.clone(),
                detail: a.detail.clone(),
                at: a.at,
                received_at: now,
            };
            let fkey = feed_key(now, i, &dkey);
            ops.push(Op::expect(DEVICE_ANOMALIES_TREE, dkey.clone(), None));
            ops.push(Op::put(DEVICE_ANOMALIES_TREE, dkey, fkey.clone()));
            ops.push(Op::put_json(ANOMALIES_TREE, fkey, &stored)?);
            new += 1;
        }
        if new == 0 {
            return Ok(0);
        }
        self.store.apply_batch(ops)?;
        drop(guard);
        self.store.flush()?;
        Ok(new)
    }

    /// Ops storing an anomaly the server detected, or `None` if one with this id was
    /// stored before. Callers hold the write lock and apply the ops in their batch.
    #[allow(clippy::too_many_arguments)] // one anomaly's fields
    pub(crate) fn server_anomaly_ops(
        &self,
        device: &str,
        local_id: &str,
        kind: &str,
        message: &str,
        detail: Value,
        now: DateTime<Utc>,
        index: usize,
    ) -> Result<Option<Vec<Op>>, StoreError> {
        let dkey = device_anomaly_key(device, AnomalySource::Server, local_id);
        if self.store.get(DEVICE_ANOMALIES_TREE, &dkey)?.is_some() {
            return Ok(None);
        }
        let stored = StoredAnomaly {
            device_id: device.to_owned(),
            source: AnomalySource::Server,
            id: local_id.to_owned(),
            kind: kind.to_owned(),
            message: message.to_owned(),
            detail,
            at: now,
            received_at: now,
        };
        let fkey = feed_key(now, index, &dkey);
        Ok(Some(vec![
            Op::expect(DEVICE_ANOMALIES_TREE, dkey.clone(), None),
            Op::put(DEVICE_ANOMALIES_TREE, dkey, fkey.clone()),
            Op::put_json(ANOMALIES_TREE, fkey, &stored)?,
        ]))
    }

    /// Adds to `ops` the deletion of everything stored about `device` except its record;
    /// returns how many entries of each kind go.
    pub(crate) fn device_data_ops(
        &self,
        device: &str,
        ops: &mut Vec<Op>,
    ) -> Result<Value, StoreError> {
        let prefix = device_prefix(device);
        let count = |tree: &str, ops: &mut Vec<Op>| -> Result<usize, StoreError> {
            let entries = self.store.scan_prefix(tree, &prefix)?;
            let n = entries.len();
            ops.extend(entries.into_iter().map(|(k, _)| Op::delete(tree, k)));
            Ok(n)
        };
        let status = count(STATUS_TREE, ops)?;
        count(STATUS_IDS_TREE, ops)?;
        let oplog = count(OPLOG_TREE, ops)?;
        let index = self.store.scan_prefix(DEVICE_ANOMALIES_TREE, &prefix)?;
        let anomalies = index.len();
        for (k, feed) in index {
            ops.push(Op::delete(DEVICE_ANOMALIES_TREE, k));
            ops.push(Op::delete(ANOMALIES_TREE, feed));
        }
        ops.push(Op::delete(OPLOG_HEADS_TREE, device.as_bytes()));
        ops.push(Op::delete(
            OPLOG_HEADS_TREE,
            super::oplog::reset_key(device),
        ));
        Ok(json!({ "status_reports": status, "anomalies": anomalies, "oplog_records": oplog }))
    }

    /// The fleet's anomalies, newest first: up to `limit` after the cursor `after` (the
    /// hex cursor a previous page returned). Returns them and the next cursor.
    pub fn list_anomalies(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<StoredAnomaly>, Option<String>), StoreError> {
        let page: Vec<(Vec<u8>, StoredAnomaly)> =
            self.store.scan_json(ANOMALIES_TREE, b"", after, limit)?;
        let next = (page.len() == limit && limit > 0)
            .then(|| page.last().map(|(k, _)| hex::encode(k)))
            .flatten();
        Ok((page.into_iter().map(|(_, a)| a).collect(), next))
    }

    /// Everything operators see about `id`: the record (or tombstone), the newest
    /// `limit` status reports and anomalies, and the last `limit` operation-log records.
    pub fn detail(&self, id: &str, limit: usize) -> Result<Option<DeviceDetail>, StoreError> {
        if let Some(at) = self.decommissioned_at(id) {
            return Ok(Some(DeviceDetail {
                device: None,
                decommissioned: Some(Tombstone {
                    id: id.to_owned(),
                    decommissioned_at: at,
                }),
                status_reports: Vec::new(),
                anomalies: Vec::new(),
                oplog: Vec::new(),
                oplog_head: None,
            }));
        }
        let Some(rec) = self.record(id)? else {
            return Ok(None);
        };
        let prefix = device_prefix(id);
        let status_reports = self
            .store
            .scan_json::<StoredStatus>(STATUS_TREE, &prefix, None, limit)?
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        // Feed keys sort newest first: take the smallest `limit` of them.
        let mut feed: Vec<Vec<u8>> = self
            .store
            .scan_prefix(DEVICE_ANOMALIES_TREE, &prefix)?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        feed.sort();
        feed.truncate(limit);
        let mut anomalies = Vec::with_capacity(feed.len());
        for k in feed {
            if let Some(a) = self.store.get_json::<StoredAnomaly>(ANOMALIES_TREE, &k)? {
                anomalies.push(a);
            }
        }
        let oplog_head: Option<ChainHead> = self.store.get_json(OPLOG_HEADS_TREE, id.as_bytes())?;
        let from = oplog_head.as_ref().map_or(0, |h| {
            h.seq
                .saturating_sub(u64::try_from(limit).unwrap_or(u64::MAX))
        });
        let start = oplog_key(id, from);
        let oplog = self
            .store
            .scan_json::<StoredOplog>(OPLOG_TREE, &prefix, Some(&start), limit)?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        Ok(Some(DeviceDetail {
            device: Some(self.with_seen(&rec)),
            decommissioned: None,
            status_reports,
            anomalies,
            oplog,
            oplog_head,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::devices::testing::{accept, oplog_records as chain, reporting_registry as setup};
    use ota_common::api::UpdateState;

    fn status(id: &str, state: UpdateState, at: &str) -> StatusReport {
        StatusReport {
            id: id.into(),
            target: "fw".into(),
            version: "1.2.0".into(),
            state,
            progress_bytes: None,
            total_bytes: None,
            detail: None,
            deployment: None,
            at: at.parse().unwrap(),
        }
    }

    fn anomaly(id: &str) -> AnomalyReport {
        AnomalyReport {
            id: id.into(),
            kind: "bad_signature".into(),
            message: "timestamp signature did not verify".into(),
            detail: json!({"role": "timestamp"}),
            at: Utc::now(),
        }
    }

    #[test]
    fn only_accepted_devices_report() {
        let (_s, d, audit) = setup();
        let now = Utc::now();
        let r = status("r1", UpdateState::Downloading, "2025-01-01T00:00:00Z");
        assert!(matches!(
            d.record_status("d1", &r, now),
            Err(DeviceError::NotAccepted { .. })
        ));
        assert!(matches!(
            d.record_status("ghost", &r, now),
            Err(DeviceError::Unknown { .. })
        ));
        assert!(matches!(
            d.record_anomalies("d1", &[anomaly("a")], now),
            Err(DeviceError::NotAccepted { .. })
        ));
        assert!(matches!(
            d.record_oplog("d1", &chain(1), now),
            Err(DeviceError::NotAccepted { .. })
        ));
        accept(&d, &audit);
        assert!(d.record_status("d1", &r, now).unwrap());
    }

    #[test]
    fn status_reports_are_idempotent_and_move_last_status_forward() {
        let (_s, d, audit) = setup();
        accept(&d, &audit);
        let now = Utc::now();
        let first = status("r1", UpdateState::Installed, "2025-01-01T00:01:00Z");
        assert!(d.record_status("d1", &first, now).unwrap());
        assert!(!d.record_status("d1", &first, now).unwrap());
        // An older report arriving late is stored but does not move the last status back.
        let late = status("r0", UpdateState::Downloading, "2025-01-01T00:00:00Z");
        assert!(d.record_status("d1", &late, now).unwrap());
        let detail = d.detail("d1", 10).unwrap().unwrap();
        assert_eq!(detail.status_reports.len(), 2);
        let last = detail.device.unwrap().last_status.unwrap();
        assert_eq!(last.state, UpdateState::Installed);
        let mut bad = first.clone();
        bad.id = String::new();
        assert!(matches!(
            d.record_status("d1", &bad, now),
            Err(DeviceError::Invalid { .. })
        ));
    }

    #[test]
    fn anomalies_are_idempotent_and_in_the_feed_newest_first() {
        let (_s, d, audit) = setup();
        accept(&d, &audit);
        let t0: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            d.record_anomalies("d1", &[anomaly("a"), anomaly("b"), anomaly("a")], t0)
                .unwrap(),
            2
        );
        assert_eq!(d.record_anomalies("d1", &[anomaly("a")], t0).unwrap(), 0);
        let t1 = t0 + chrono::Duration::seconds(1);
        assert_eq!(d.record_anomalies("d1", &[anomaly("c")], t1).unwrap(), 1);
        let (feed, next) = d.list_anomalies(None, 2).unwrap();
        let ids: Vec<&str> = feed.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["c", "b"]);
        let cursor = hex::decode(next.unwrap()).unwrap();
        let (rest, next) = d.list_anomalies(Some(&cursor), 2).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].id, "a");
        assert!(next.is_none());
        assert_eq!(d.detail("d1", 10).unwrap().unwrap().anomalies.len(), 3);
    }

    #[test]
    fn status_reports_beyond_the_bound_are_deleted_oldest_first() {
        let (store, d, audit) = setup();
        accept(&d, &audit);
        assert_eq!(d.config().keep_status_reports, 200);
        let t0: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
        for i in 0..205i64 {
            let r = status(
                &format!("r{i}"),
                UpdateState::Downloading,
                "2025-01-01T00:00:00Z",
            );
            assert!(d
                .record_status("d1", &r, t0 + chrono::Duration::seconds(i))
                .unwrap());
        }
        let prefix = device_prefix("d1");
        assert_eq!(store.scan_prefix(STATUS_TREE, &prefix).unwrap().len(), 200);
        assert_eq!(
            store.scan_prefix(STATUS_IDS_TREE, &prefix).unwrap().len(),
            200
        );
        let detail = d.detail("d1", 1000).unwrap().unwrap();
        assert_eq!(detail.status_reports.first().unwrap().report.id, "r204");
        assert_eq!(detail.status_reports.last().unwrap().report.id, "r5");
    }

    #[test]
    fn decommission_deletes_every_trace_but_the_tombstone() {
        let (store, d, audit) = setup();
        accept(&d, &audit);
        let now = Utc::now();
        d.record_status(
            "d1",
            &status("r1", UpdateState::Committed, "2025-01-01T00:00:00Z"),
            now,
        )
        .unwrap();
        d.record_anomalies("d1", &[anomaly("a")], now).unwrap();
        let mut records = chain(3);
        records.remove(1);
        d.record_oplog("d1", &records, now).unwrap();
        d.decommission("d1", &audit, "op", now).unwrap();
        for tree in [
            super::super::DEVICES_TREE,
            STATUS_TREE,
            STATUS_IDS_TREE,
            ANOMALIES_TREE,
            DEVICE_ANOMALIES_TREE,
            OPLOG_TREE,
            OPLOG_HEADS_TREE,
        ] {
            assert!(store.scan_prefix(tree, b"").unwrap().is_empty(), "{tree}");
        }
        assert_eq!(
            store
                .scan_prefix(super::super::TOMBSTONES_TREE, b"")
                .unwrap()
                .len(),
            1
        );
        let detail = d.detail("d1", 10).unwrap().unwrap();
        assert!(detail.device.is_none());
        assert!(detail.decommissioned.is_some());
        assert!(matches!(
            d.record_status(
                "d1",
                &status("r2", UpdateState::Committed, "2025-01-01T00:00:00Z"),
                now
            ),
            Err(DeviceError::Decommissioned { .. })
        ));
        let last = audit.list(0, 100).unwrap().pop().unwrap();
        assert_eq!(last.action, "device.decommission");
        assert_eq!(last.detail["deleted"]["oplog_records"], 2);
    }
}
