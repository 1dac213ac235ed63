//! The server's check of a device's operation-log hash chain, batch after batch.
//!
//! The record format and the hashed bytes are [`ota_common::oplog`]'s (the agent writes
//! records with the same code): `hash` is the SHA-256 of the record's canonical bytes
//! without `hash`, `prev_hash` of record 1 is [`GENESIS_HASH`], `seq` counts from 1
//! without gaps. This module adds what the server needs on top: a verdict that can be
//! stored and reported (serializable [`ChainBreak`]s), and a check that keeps going
//! after a break.
//!
//! [`check_next`] tells whether one record continues a chain whose last accepted record is
//! `head` (its content matches its hash, its `seq` is `head.seq + 1`, its `prev_hash` is
//! `head.hash`). [`verify`] runs it over a batch and resynchronises on each record's
//! claimed hash, so one altered or missing record is reported once and the records after
//! it are still checked against each other.

use ota_common::api::OplogRecord;
use ota_common::oplog::{BreakReason, ChainVerifier};
use serde::{Deserialize, Serialize};

pub use ota_common::oplog::{ChainHead, GENESIS_HASH};

/// Why a record does not continue the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "break")]
#[non_exhaustive]
pub enum BreakKind {
    /// The record's content does not match its `hash`: it was altered.
    Altered {
        /// The record's `hash`.
        stored: String,
        /// The hash of its content.
        computed: String,
    },
    /// `seq` is not the next one: records are missing (gap), repeated or out of order.
    Sequence {
        /// The seq that should have come.
        expected: u64,
        /// The seq that came.
        found: u64,
    },
    /// `prev_hash` is not the hash of the record before: a record was replaced or removed.
    WrongPrev {
        /// The previous record's hash.
        expected: String,
        /// The record's `prev_hash`.
        found: String,
    },
    /// A record with this `seq` was accepted before with another hash: the log was
    /// rewritten (the server keeps the first one).
    Replaced {
        /// The hash accepted before.
        stored: String,
        /// The hash sent now.
        found: String,
    },
    /// A reason the common verifier added after this server was built.
    Other {
        /// Its description.
        reason: String,
    },
}

/// A record that does not continue the chain, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// The record's `seq`.
    pub seq: u64,
    /// Why it does not fit.
    #[serde(flatten)]
    pub kind: BreakKind,
}

impl From<ota_common::oplog::ChainBreak> for ChainBreak {
    fn from(b: ota_common::oplog::ChainBreak) -> Self {
        let kind = match &b.reason {
            BreakReason::HashMismatch { stored, computed } => BreakKind::Altered {
                stored: stored.clone(),
                computed: computed.clone(),
            },
            BreakReason::SeqGap { expected, found } => BreakKind::Sequence {
                expected: *expected,
                found: *found,
            },
            BreakReason::PrevHashMismatch { expected, found } => BreakKind::WrongPrev {
                expected: expected.clone(),
                found: found.clone(),
            },
            _ => BreakKind::Other {
                reason: b.to_string(),
            },
        };
        ChainBreak { seq: b.seq, kind }
    }
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// The head after the last record (a batch's claimed end, even after a break).
    pub head: ChainHead,
    /// Every record that did not fit, in batch order; empty when the chain is intact.
    pub breaks: Vec<ChainBreak>,
}

/// The head after `record`, whether or not it fitted.
pub fn head_after(record: &OplogRecord) -> ChainHead {
    ChainHead {
        seq: record.seq,
        hash: record.hash.clone(),
    }
}

/// Whether the record's own `hash` matches its content.
pub fn check_hash(record: &OplogRecord) -> Option<ChainBreak> {
    let computed = record.compute_hash();
    (computed != record.hash).then(|| ChainBreak {
        seq: record.seq,
        kind: BreakKind::Altered {
            stored: record.hash.clone(),
            computed,
        },
    })
}

/// Whether `record` continues the chain that ends at `head` (the first problem found, in
/// the order of [`ChainVerifier::push`]: content, sequence, link).
pub fn check_next(head: &ChainHead, record: &OplogRecord) -> Option<ChainBreak> {
    ChainVerifier::resume(head.clone())
        .push(record)
        .err()
        .map(ChainBreak::from)
}

/// Checks `records` (oldest first) as the continuation of the chain ending at `head`.
pub fn verify(head: &ChainHead, records: &[OplogRecord]) -> ChainReport {
    let mut head = head.clone();
    let mut breaks = Vec::new();
    for r in records {
        breaks.extend(check_next(&head, r));
        head = head_after(r);
    }
    ChainReport { head, breaks }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: u64) -> Vec<OplogRecord> {
        let mut head = ChainHead::genesis();
        (0..n)
            .map(|i| {
                let r = OplogRecord::next(
                    &head,
                    format!("2025-01-01T00:00:0{i}.000Z"),
                    "poll".into(),
                    json!({"i": i, "text": "line\nbreak \"quoted\"", "ratio": 0.5}),
                );
                head = head_after(&r);
                r
            })
            .collect()
    }

    #[test]
    fn valid_chain_verifies() {
        let records = chain(5);
        let report = verify(&ChainHead::genesis(), &records);
        assert!(report.breaks.is_empty(), "{:?}", report.breaks);
        assert_eq!(report.head, head_after(&records[4]));
        assert_eq!(records[0].prev_hash, GENESIS_HASH);
        // Continuing from a known head works too, and agrees with the common verifier.
        let report = verify(&head_after(&records[1]), &records[2..]);
        assert!(report.breaks.is_empty());
        ota_common::oplog::verify_chain(&records).unwrap();
    }

    #[test]
    fn tampered_record_is_altered() {
        let mut records = chain(3);
        records[1].detail = json!({"i": 99});
        let report = verify(&ChainHead::genesis(), &records);
        assert_eq!(report.breaks.len(), 1);
        assert_eq!(report.breaks[0].seq, 2);
        assert!(matches!(report.breaks[0].kind, BreakKind::Altered { .. }));
        // A rewritten `at` is a change too, even when it names the same instant.
        let mut records = chain(1);
        records[0].at = "2025-01-01T00:00:00Z".into();
        let report = verify(&ChainHead::genesis(), &records);
        assert!(matches!(report.breaks[0].kind, BreakKind::Altered { .. }));
    }

    #[test]
    fn gap_is_a_sequence_break() {
        let records = chain(4);
        let batch = [records[0].clone(), records[2].clone(), records[3].clone()];
        let report = verify(&ChainHead::genesis(), &batch);
        assert_eq!(
            report.breaks,
            vec![ChainBreak {
                seq: 3,
                kind: BreakKind::Sequence {
                    expected: 2,
                    found: 3
                }
            }]
        );
        // After the gap the chain resynchronises: record 4 fits record 3.
        assert_eq!(report.head.seq, 4);
    }

    #[test]
    fn reorder_is_detected() {
        let records = chain(3);
        let batch = [records[0].clone(), records[2].clone(), records[1].clone()];
        let report = verify(&ChainHead::genesis(), &batch);
        let seqs: Vec<u64> = report.breaks.iter().map(|b| b.seq).collect();
        assert_eq!(seqs, vec![3, 2]);
    }

    #[test]
    fn replaced_record_breaks_the_link() {
        let records = chain(3);
        // A forged record 2 with a valid hash of its own, but not what record 3 links to.
        let forged = OplogRecord::next(
            &head_after(&records[0]),
            "2025-01-01T00:00:01.000Z".into(),
            "poll".into(),
            json!({"forged": true}),
        );
        let batch = [records[0].clone(), forged, records[2].clone()];
        let report = verify(&ChainHead::genesis(), &batch);
        assert_eq!(report.breaks.len(), 1);
        assert_eq!(report.breaks[0].seq, 3);
        assert!(matches!(report.breaks[0].kind, BreakKind::WrongPrev { .. }));
    }

    #[test]
    fn a_batch_must_start_at_the_head() {
        let records = chain(2);
        let report = verify(&head_after(&records[1]), &records[..1]);
        assert!(matches!(
            report.breaks[0].kind,
            BreakKind::Sequence {
                expected: 3,
                found: 1
            }
        ));
        assert!(check_hash(&records[0]).is_none());
    }

    #[test]
    fn breaks_serialize_flat() {
        let b = ChainBreak {
            seq: 7,
            kind: BreakKind::Sequence {
                expected: 6,
                found: 7,
            },
        };
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(
            v,
            json!({"seq": 7, "break": "sequence", "expected": 6, "found": 7})
        );
        assert_eq!(serde_json::from_value::<ChainBreak>(v).unwrap(), b);
    }
}
