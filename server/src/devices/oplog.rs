//! The operation log a device uploads: stored once per seq, its hash chain checked
//! against the last record accepted before (see [`crate::oplog_chain`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use ota_common::api::{OplogAck, OplogRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::record::{check_field, device_prefix, OPLOG_HEADS_TREE, OPLOG_TREE};
use super::reports::{invalid, oplog_key};
use super::{DeviceError, Devices};
use crate::oplog_chain::{self, BreakKind, ChainBreak, ChainHead, GENESIS_HASH};
use crate::store::{Op, StoreError, StoreExt};

/// Most operation-log records in one batch.
pub const MAX_OPLOG_BATCH: usize = 1000;
/// Most old records deleted by one upload when over the retention bound (after the bound
/// is lowered, the excess goes over several uploads).
const MAX_PRUNE: usize = 2 * MAX_OPLOG_BATCH;

/// Key in [`OPLOG_HEADS_TREE`] of the re-enrollment mark of `device` (ids have no `/`).
pub(crate) fn reset_key(device: &str) -> Vec<u8> {
    let mut k = device_prefix(device);
    k.extend_from_slice(b"reset");
    k
}

/// What a re-enrollment left for the next upload of the operation log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ResetMark {
    /// When the device re-enrolled.
    at: DateTime<Utc>,
    /// The head accepted before.
    head: Option<ChainHead>,
}
/// Most chain breaks kept in the detail of one `oplog_chain_break` anomaly.
const MAX_BREAKS_IN_DETAIL: usize = 20;

/// A stored operation-log record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredOplog {
    /// When the server took it.
    pub received_at: DateTime<Utc>,
    /// Why it did not continue the chain, if it did not.
    #[serde(default)]
    pub chain_break: Option<ChainBreak>,
    /// The record as sent.
    pub record: OplogRecord,
}

impl Devices {
    /// Stores operation-log records of an accepted device (oldest first) and checks their
    /// hash chain against the last record accepted before.
    ///
    /// A record at or below the head that is stored already with the same hash is a retry
    /// and skipped; one with another hash is refused and flagged. Records beyond the head
    /// are stored even when they do not continue the chain (gap, altered, wrong link): the
    /// ack then says `chain_ok = false` and the server raises `oplog_chain_break` with the
    /// first broken seq. A retried batch that was flagged is flagged again.
    pub fn record_oplog(
        &self,
        device: &str,
        records: &[OplogRecord],
        now: DateTime<Utc>,
    ) -> Result<OplogAck, DeviceError> {
        if records.len() > MAX_OPLOG_BATCH {
            return Err(invalid(
                "operation-log batch",
                format!("{} records, at most {MAX_OPLOG_BATCH}", records.len()),
            ));
        }
        for r in records {
            if r.seq == 0 {
                return Err(invalid("operation-log record", "seq counts from 1"));
            }
            r.at.parse::<DateTime<Utc>>().map_err(|e| {
                invalid(
                    "operation-log record",
                    format!("seq {}: at {:?} is not an RFC 3339 time: {e}", r.seq, r.at),
                )
            })?;
            for (name, v) in [
                ("kind", &r.kind),
                ("hash", &r.hash),
                ("prev_hash", &r.prev_hash),
            ] {
                check_field(name, v)
                    .map_err(|e| invalid("operation-log record", format!("seq {}: {e}", r.seq)))?;
            }
        }
        let guard = self.write_guard();
        let (raw, _) = self.accepted_raw(device)?;
        let head_raw = self.store.get(OPLOG_HEADS_TREE, device.as_bytes())?;
        let mut start: ChainHead = match &head_raw {
            None => ChainHead::genesis(),
            Some(b) => crate::store::decode_json(OPLOG_HEADS_TREE, device.as_bytes(), b)?,
        };
        let keep = self.config().keep_oplog_records.max(1);
        // After a re-enrollment (a wiped device), a log starting over at seq 1 is a new
        // chain: the old records go and the head restarts. A log that goes on from the
        // head is the old chain (the device was not wiped): the mark is dropped.
        let mark_key = reset_key(device);
        let mark_raw = self.store.get(OPLOG_HEADS_TREE, &mark_key)?;
        let mut ops = Vec::new();
        if mark_raw.is_some() && !records.is_empty() {
            ops.push(Op::expect(OPLOG_HEADS_TREE, mark_key.clone(), mark_raw));
            ops.push(Op::delete(OPLOG_HEADS_TREE, mark_key));
            let first = records.iter().min_by_key(|r| r.seq);
            if first.is_some_and(|r| r.seq == 1 && r.prev_hash == GENESIS_HASH) {
                tracing::info!(
                    device,
                    old_head = start.seq,
                    "operation log restarted after re-enrollment"
                );
                for (k, _) in self.store.scan_prefix(OPLOG_TREE, &device_prefix(device))? {
                    ops.push(Op::delete(OPLOG_TREE, k));
                }
                start = ChainHead::genesis();
            }
        }
        let mut head = start.clone();
        let mut breaks: Vec<ChainBreak> = Vec::new();
        let mut flagged_before = false;
        let mut batch: HashMap<u64, StoredOplog> = HashMap::new();
        let mut order = Vec::new();
        for r in records {
            if r.seq <= start.seq.saturating_sub(keep) {
                // Behind the retention window: deleted already, nothing to check against.
                continue;
            }
            if r.seq <= head.seq {
                let existing = match batch.get(&r.seq) {
                    Some(s) => Some(s.clone()),
                    None => self
                        .store
                        .get_json::<StoredOplog>(OPLOG_TREE, &oplog_key(device, r.seq))?,
                };
                match existing {
                    Some(s) if s.record.hash == r.hash => {
                        flagged_before |= s.chain_break.is_some();
                    }
                    Some(s) => breaks.push(ChainBreak {
                        seq: r.seq,
                        kind: BreakKind::Replaced {
                            stored: s.record.hash,
                            found: r.hash.clone(),
                        },
                    }),
                    None => {
                        // A record missing below the head (sent late): keep it, checking
                        // what can be checked on its own.
                        let b = oplog_chain::check_hash(r);
                        breaks.extend(b.clone());
                        batch.insert(r.seq, self.stored_oplog(r, b, now));
                        order.push(r.seq);
                    }
                }
                continue;
            }
            let b = oplog_chain::check_next(&head, r);
            breaks.extend(b.clone());
            batch.insert(r.seq, self.stored_oplog(r, b, now));
            order.push(r.seq);
            head = oplog_chain::head_after(r);
        }
        let chain_ok = breaks.is_empty() && !flagged_before;
        let ack = OplogAck {
            stored_through: head.seq,
            chain_ok,
        };
        if order.is_empty() && breaks.is_empty() && ops.is_empty() {
            return Ok(ack);
        }
        ops.push(Op::expect(
            super::DEVICES_TREE,
            device.as_bytes(),
            Some(raw),
        ));
        ops.push(Op::expect(OPLOG_HEADS_TREE, device.as_bytes(), head_raw));
        // Seqs up to `cutoff` fall out of the retention window (checked above, not kept).
        let cutoff = head.seq.saturating_sub(keep);
        let new = order.len();
        for seq in order.into_iter().filter(|s| *s > cutoff) {
            if let Some(s) = batch.remove(&seq) {
                ops.push(Op::put_json(OPLOG_TREE, oplog_key(device, seq), &s)?);
            }
        }
        self.prune_oplog_ops(device, cutoff, new, &mut ops)?;
        if head != start {
            ops.push(Op::put_json(OPLOG_HEADS_TREE, device.as_bytes(), &head)?);
        }
        if let Some(first) = breaks.first() {
            tracing::warn!(device, seq = first.seq, "operation-log chain break");
            let detail = json!({
                "seq": first.seq,
                "breaks": breaks.iter().take(MAX_BREAKS_IN_DETAIL).collect::<Vec<_>>(),
                "break_count": breaks.len(),
            });
            let message = format!(
                "the operation log of {device} does not continue its hash chain at seq {}: \
                 records are missing, reordered or altered",
                first.seq
            );
            let local_id = format!("oplog_chain_break:{}:{}", first.seq, now.timestamp_micros());
            if let Some(more) = self.server_anomaly_ops(
                device,
                &local_id,
                "oplog_chain_break",
                &message,
                detail,
                now,
                0,
            )? {
                ops.extend(more);
            }
        }
        self.store.apply_batch(ops)?;
        drop(guard);
        self.store.flush()?;
        Ok(ack)
    }

    /// Ops marking a re-enrollment of `device` (call from the enrollment batch, which
    /// audits it): its next upload may start a new chain at seq 1 without a chain-break
    /// alarm, replacing the old records. Returns the ops and the detail for the audit entry.
    pub fn oplog_reset_ops(
        &self,
        device: &str,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Op>, serde_json::Value), StoreError> {
        let head: Option<ChainHead> = self.store.get_json(OPLOG_HEADS_TREE, device.as_bytes())?;
        let detail = json!({ "oplog_head_seq": head.as_ref().map(|h| h.seq) });
        let mark = ResetMark { at: now, head };
        let ops = vec![Op::put_json(OPLOG_HEADS_TREE, reset_key(device), &mark)?];
        Ok((ops, detail))
    }

    /// Adds to `ops` the deletion of the device's stored records with seq up to `cutoff`,
    /// oldest first, at most [`MAX_PRUNE`]. Scans in pages sized to the records just
    /// added, so a log at its bound reads about that many old records.
    fn prune_oplog_ops(
        &self,
        device: &str,
        cutoff: u64,
        added: usize,
        ops: &mut Vec<Op>,
    ) -> Result<(), StoreError> {
        if cutoff == 0 {
            return Ok(());
        }
        let prefix = device_prefix(device);
        let end = oplog_key(device, cutoff);
        let page = added + 1;
        let mut after: Option<Vec<u8>> = None;
        let mut deleted = 0;
        loop {
            let entries = self
                .store
                .scan(OPLOG_TREE, &prefix, after.as_deref(), page)?;
            let full = entries.len() == page;
            for (k, _) in entries {
                // Keys end in the big-endian seq: byte order is seq order.
                if k > end || deleted >= MAX_PRUNE {
                    return Ok(());
                }
                after = Some(k.clone());
                ops.push(Op::delete(OPLOG_TREE, k));
                deleted += 1;
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn stored_oplog(
        &self,
        r: &OplogRecord,
        chain_break: Option<ChainBreak>,
        now: DateTime<Utc>,
    ) -> StoredOplog {
        StoredOplog {
            received_at: now,
            chain_break,
            record: r.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use crate::devices::testing::{
        accept, ident, oplog_records as chain, peer, reporting_registry as setup, req,
    };
    use crate::devices::DeviceConfig;
    use crate::store::memory::MemoryStore;
    use crate::store::Store;
    use ota_common::api::OplogRecord;
    use std::sync::Arc;

    #[test]
    fn oplog_chain_is_checked_across_batches() {
        let (_s, d, audit) = setup();
        accept(&d, &audit);
        let now = Utc::now();
        let records = chain(6);
        let ack = d.record_oplog("d1", &records[..3], now).unwrap();
        assert_eq!(
            ack,
            OplogAck {
                stored_through: 3,
                chain_ok: true
            }
        );
        // A retry that overlaps is stored once and still fine.
        let ack = d.record_oplog("d1", &records[1..4], now).unwrap();
        assert_eq!(
            ack,
            OplogAck {
                stored_through: 4,
                chain_ok: true
            }
        );
        assert!(d.list_anomalies(None, 10).unwrap().0.is_empty());
        // Record 5 is lost: 6 is stored but flagged.
        let ack = d.record_oplog("d1", &records[5..], now).unwrap();
        assert_eq!(
            ack,
            OplogAck {
                stored_through: 6,
                chain_ok: false
            }
        );
        let (feed, _) = d.list_anomalies(None, 10).unwrap();
        assert_eq!(feed.len(), 1);
        assert_eq!(feed[0].kind, "oplog_chain_break");
        assert_eq!(feed[0].detail["seq"], 6);
        // Retrying the flagged batch says so again, without a second anomaly.
        let ack = d.record_oplog("d1", &records[5..], now).unwrap();
        assert!(!ack.chain_ok);
        assert_eq!(d.list_anomalies(None, 10).unwrap().0.len(), 1);
        // A different record for a seq already stored is refused and flagged.
        let mut forged = records[2].clone();
        forged.kind = "commit".into();
        forged.hash = forged.compute_hash();
        let ack = d.record_oplog("d1", &[forged], now).unwrap();
        assert!(!ack.chain_ok);
        let detail = d.detail("d1", 100).unwrap().unwrap();
        assert_eq!(detail.oplog.len(), 5);
        assert_eq!(detail.oplog[2].record.kind, "poll");
        assert_eq!(detail.oplog_head.unwrap().seq, 6);
    }

    fn registry_keeping(keep: u64) -> (Arc<dyn Store>, Devices, AuditLog) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let config = DeviceConfig {
            keep_oplog_records: keep,
            ..DeviceConfig::default()
        };
        let d = Devices::open(Arc::clone(&store), config).unwrap();
        let audit = AuditLog::new(Arc::clone(&store));
        d.poll(&ident("d1", "F"), &req("hw"), peer(), Utc::now())
            .unwrap();
        accept(&d, &audit);
        (store, d, audit)
    }

    fn stored_seqs(store: &dyn Store) -> Vec<u64> {
        store
            .scan_json::<StoredOplog>(OPLOG_TREE, &device_prefix("d1"), None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r.record.seq)
            .collect()
    }

    #[test]
    fn oplog_beyond_the_bound_is_deleted_and_the_chain_still_checked() {
        let (store, d, _audit) = registry_keeping(5);
        let now = Utc::now();
        let records = chain(20);
        for batch in records[..12].chunks(3) {
            assert!(d.record_oplog("d1", batch, now).unwrap().chain_ok);
        }
        assert_eq!(stored_seqs(store.as_ref()), (8..=12).collect::<Vec<_>>());
        // A batch longer than the bound keeps only its last records.
        assert!(
            d.record_oplog("d1", &records[12..19], now)
                .unwrap()
                .chain_ok
        );
        assert_eq!(stored_seqs(store.as_ref()), (15..=19).collect::<Vec<_>>());
        // A retry of deleted records is skipped quietly; a gap is still flagged.
        assert!(d.record_oplog("d1", &records[..3], now).unwrap().chain_ok);
        assert!(d.list_anomalies(None, 10).unwrap().0.is_empty());
        assert_eq!(stored_seqs(store.as_ref()), (15..=19).collect::<Vec<_>>());
        let mut late = chain(22);
        let ack = d.record_oplog("d1", &late.split_off(21), now).unwrap();
        assert!(!ack.chain_ok);
        // Seqs up to 22 - 5 go; 20 and 21 never came.
        assert_eq!(stored_seqs(store.as_ref()), vec![18, 19, 22]);
    }

    fn other_chain(n: u64) -> Vec<OplogRecord> {
        let mut head = ChainHead::genesis();
        (0..n)
            .map(|i| {
                let r = OplogRecord::next(
                    &head,
                    "2025-02-01T00:00:00.000Z".into(),
                    "enrolled".into(),
                    json!({"life": 2, "i": i}),
                );
                head = oplog_chain::head_after(&r);
                r
            })
            .collect()
    }

    #[test]
    fn a_new_chain_after_re_enrollment_is_accepted_without_alarm() {
        let (store, d, _audit) = registry_keeping(100);
        let now = Utc::now();
        assert!(d.record_oplog("d1", &chain(4), now).unwrap().chain_ok);
        // Without a re-enrollment, starting over is a rewritten log.
        assert!(!d.record_oplog("d1", &other_chain(2), now).unwrap().chain_ok);
        assert_eq!(d.list_anomalies(None, 10).unwrap().0.len(), 1);
        let (ops, detail) = d.oplog_reset_ops("d1", now).unwrap();
        assert_eq!(detail["oplog_head_seq"], 4);
        store.apply_batch(ops).unwrap();
        let ack = d.record_oplog("d1", &other_chain(3), now).unwrap();
        assert_eq!(
            ack,
            OplogAck {
                stored_through: 3,
                chain_ok: true
            }
        );
        assert_eq!(d.list_anomalies(None, 10).unwrap().0.len(), 1);
        assert_eq!(stored_seqs(store.as_ref()), vec![1, 2, 3]);
        let detail = d.detail("d1", 10).unwrap().unwrap();
        assert_eq!(detail.oplog[0].record.kind, "enrolled");
        // The mark is spent: starting over again is flagged.
        assert!(!d.record_oplog("d1", &chain(1), now).unwrap().chain_ok);
        // A re-enrolled device that was not wiped goes on with its chain.
        let (ops, _) = d.oplog_reset_ops("d1", now).unwrap();
        store.apply_batch(ops).unwrap();
        let next = other_chain(4).pop().unwrap();
        assert!(d.record_oplog("d1", &[next], now).unwrap().chain_ok);
        assert_eq!(stored_seqs(store.as_ref()), vec![1, 2, 3, 4]);
        assert!(store
            .get(OPLOG_HEADS_TREE, &reset_key("d1"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn tampered_oplog_record_is_flagged_and_bad_input_refused() {
        let (_s, d, audit) = setup();
        accept(&d, &audit);
        let now = Utc::now();
        let mut records = chain(2);
        records[1].detail = json!({"i": 42});
        let ack = d.record_oplog("d1", &records, now).unwrap();
        assert_eq!(
            ack,
            OplogAck {
                stored_through: 2,
                chain_ok: false
            }
        );
        let mut bad = chain(1);
        bad[0].at = "yesterday".into();
        assert!(matches!(
            d.record_oplog("d1", &bad, now),
            Err(DeviceError::Invalid { .. })
        ));
        bad[0].at = "2025-01-01T00:00:00Z".into();
        bad[0].seq = 0;
        assert!(d.record_oplog("d1", &bad, now).is_err());
    }
}
