//! The operation log a device uploads: stored once per seq, its hash chain checked
//! against the last record accepted before (see [`crate::oplog_chain`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use ota_common::api::{OplogAck, OplogRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::record::{check_field, OPLOG_HEADS_TREE, OPLOG_TREE};
use super::reports::{invalid, oplog_key};
use super::{DeviceError, Devices};
use crate::oplog_chain::{self, BreakKind, ChainBreak, ChainHead};
use crate::store::{Op, StoreExt};

/// Most operation-log records in one batch.
pub const MAX_OPLOG_BATCH: usize = 1000;
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
        let start: ChainHead = match &head_raw {
            None => ChainHead::genesis(),
            Some(b) => crate::store::decode_json(OPLOG_HEADS_TREE, device.as_bytes(), b)?,
        };
        let mut head = start.clone();
        let mut breaks: Vec<ChainBreak> = Vec::new();
        let mut flagged_before = false;
        let mut batch: HashMap<u64, StoredOplog> = HashMap::new();
        let mut order = Vec::new();
        for r in records {
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
        if order.is_empty() && breaks.is_empty() {
            return Ok(ack);
        }
        let mut ops = vec![
            Op::expect(super::DEVICES_TREE, device.as_bytes(), Some(raw)),
            Op::expect(OPLOG_HEADS_TREE, device.as_bytes(), head_raw),
        ];
        for seq in order {
            if let Some(s) = batch.remove(&seq) {
                ops.push(Op::put_json(OPLOG_TREE, oplog_key(device, seq), &s)?);
            }
        }
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
    use crate::devices::testing::{accept, oplog_records as chain, reporting_registry as setup};

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
