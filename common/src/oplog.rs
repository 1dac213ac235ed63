//! The operation-log record format and its hash chain, as pure functions: the agent
//! writes records with it and the server verifies uploaded batches with the same code.
//!
//! # Format
//!
//! A record is one JSON object: `{seq, at, kind, detail, prev_hash, hash}`.
//!
//! - `seq` counts from 1 without gaps;
//! - `at` is an RFC 3339 time, passed in by the caller;
//! - `kind` names the step (`poll`, `download_start`, `commit`, ...), kept as a string so
//!   that a verifier accepts kinds newer than itself;
//! - `detail` is any JSON;
//! - `prev_hash` is the previous record's `hash`, or [`GENESIS_HASH`] for seq 1;
//! - `hash` is the lowercase hex SHA-256 of the record's canonical bytes without `hash`:
//!   the JSON object `{at, detail, kind, prev_hash, seq}` with object keys sorted by their
//!   UTF-8 bytes at every level, no whitespace, strings escaped as `serde_json` does and
//!   numbers as `serde_json` prints them ([`canonical_bytes`]). Sorting is done here rather
//!   than left to `serde_json::Map`, whose order depends on a cargo feature.
//!
//! Altering, removing, inserting or reordering records changes a `hash` or breaks a
//! `prev_hash` link, which [`verify_chain`] reports with the first broken `seq`. Dropping
//! records at the end is only visible against a head the verifier already knows
//! ([`ChainVerifier::resume`]), which is how the server checks each uploaded batch.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One operation-log record. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpRecord {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it happened (RFC 3339).
    pub at: String,
    /// The step.
    pub kind: String,
    /// Details of the step.
    pub detail: Value,
    /// `hash` of the previous record.
    pub prev_hash: String,
    /// SHA-256 (lowercase hex) of this record's canonical bytes without `hash`.
    pub hash: String,
}

impl OpRecord {
    /// Builds the record that follows `head`, with its hash.
    pub fn next(head: &ChainHead, at: String, kind: String, detail: Value) -> OpRecord {
        let mut record = OpRecord {
            seq: head.seq + 1,
            at,
            kind,
            detail,
            prev_hash: head.hash.clone(),
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        record
    }

    /// The hash this record should carry.
    pub fn compute_hash(&self) -> String {
        let unsigned = serde_json::json!({
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
        });
        hex_lower(&Sha256::digest(canonical_bytes(&unsigned)))
    }
}

/// The last record a verifier accepted (or the empty log's genesis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Its `seq` (0 for an empty log).
    pub seq: u64,
    /// Its `hash` ([`GENESIS_HASH`] for an empty log).
    pub hash: String,
}

impl ChainHead {
    /// The head of an empty log.
    pub fn genesis() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }
}

/// Where and why a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The `seq` of the first record that does not fit (for a gap, the record found).
    pub seq: u64,
    /// Why.
    pub reason: BreakReason,
}

/// Why a record does not fit the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakReason {
    /// The record's content does not match its `hash`: it was altered.
    HashMismatch {
        /// The stored `hash`.
        stored: String,
        /// The hash of the content.
        computed: String,
    },
    /// `prev_hash` is not the previous record's `hash`: a record was removed, inserted or
    /// replaced before this one.
    PrevHashMismatch {
        /// The previous record's hash.
        expected: String,
        /// The stored `prev_hash`.
        found: String,
    },
    /// `seq` does not follow the previous record's.
    SeqGap {
        /// The seq that should come next.
        expected: u64,
        /// The seq found.
        found: u64,
    },
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation log chain broken at seq {}: ", self.seq)?;
        match &self.reason {
            BreakReason::HashMismatch { stored, computed } => {
                write!(f, "content hashes to {computed}, record says {stored}")
            }
            BreakReason::PrevHashMismatch { expected, found } => {
                write!(
                    f,
                    "prev_hash is {found}, previous record's hash is {expected}"
                )
            }
            BreakReason::SeqGap { expected, found } => {
                write!(f, "expected seq {expected}, found {found}")
            }
        }
    }
}

impl std::error::Error for ChainBreak {}

/// Checks records one at a time against a known head, in constant memory.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    head: Option<ChainHead>,
}

impl ChainVerifier {
    /// A verifier for a log from its first record (seq 1, prev_hash [`GENESIS_HASH`]).
    pub fn from_genesis() -> Self {
        Self::resume(ChainHead::genesis())
    }

    /// A verifier for records that must continue `head` (the server's last verified record).
    pub fn resume(head: ChainHead) -> Self {
        ChainVerifier { head: Some(head) }
    }

    /// A verifier that takes the first record's position on trust (a batch cut from the
    /// middle of a log); a first record with seq 1 must still start from genesis.
    pub fn anywhere() -> Self {
        ChainVerifier { head: None }
    }

    /// Checks `record` and makes it the new head.
    pub fn push(&mut self, record: &OpRecord) -> Result<(), ChainBreak> {
        let broken = |reason| ChainBreak {
            seq: record.seq,
            reason,
        };
        let computed = record.compute_hash();
        if computed != record.hash {
            return Err(broken(BreakReason::HashMismatch {
                stored: record.hash.clone(),
                computed,
            }));
        }
        let expected = match &self.head {
            Some(head) => Some(head.clone()),
            None if record.seq <= 1 => Some(ChainHead::genesis()),
            None => None,
        };
        if let Some(head) = expected {
            if record.seq != head.seq + 1 {
                return Err(broken(BreakReason::SeqGap {
                    expected: head.seq + 1,
                    found: record.seq,
                }));
            }
            if record.prev_hash != head.hash {
                return Err(broken(BreakReason::PrevHashMismatch {
                    expected: head.hash,
                    found: record.prev_hash.clone(),
                }));
            }
        }
        self.head = Some(ChainHead {
            seq: record.seq,
            hash: record.hash.clone(),
        });
        Ok(())
    }

    /// The last accepted record, if any.
    pub fn head(&self) -> Option<&ChainHead> {
        self.head.as_ref()
    }
}

/// Checks that `records` form an unbroken chain: each hash matches its content, each
/// `prev_hash` links to the record before, seqs follow each other. The first record's
/// link is checked only if it is seq 1 (against genesis); to check a batch against what
/// came before it, use [`ChainVerifier::resume`].
pub fn verify_chain(records: &[OpRecord]) -> Result<(), ChainBreak> {
    let mut verifier = ChainVerifier::anywhere();
    records.iter().try_for_each(|r| verifier.push(r))
}

/// The canonical bytes of a JSON value (see the module docs).
pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Serializing a &str to JSON cannot fail; the fallback keeps this function total.
    match serde_json::to_vec(s) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: u64) -> Vec<OpRecord> {
        let mut head = ChainHead::genesis();
        (0..n)
            .map(|i| {
                let r = OpRecord::next(
                    &head,
                    format!("2025-01-01T00:00:{i:02}.000Z"),
                    "poll".into(),
                    json!({"i": i, "nested": {"z": 1, "a": [true, null, 1.5]}}),
                );
                head = ChainHead {
                    seq: r.seq,
                    hash: r.hash.clone(),
                };
                r
            })
            .collect()
    }

    #[test]
    fn canonical_bytes_sort_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [{"y": 1, "x": "é\n"}], "c": null}, "B": false});
        assert_eq!(
            String::from_utf8(canonical_bytes(&v)).unwrap(),
            r#"{"B":false,"a":{"c":null,"d":[{"x":"é\n","y":1}]},"b":1}"#
        );
    }

    #[test]
    fn known_hash_is_stable() {
        // Pins the format: a change here breaks every log already on devices.
        let r = OpRecord::next(
            &ChainHead::genesis(),
            "2025-01-01T00:00:00.000Z".into(),
            "commit".into(),
            json!({"version": "1.2.3"}),
        );
        let canonical = format!(
            r#"{{"at":"2025-01-01T00:00:00.000Z","detail":{{"version":"1.2.3"}},"kind":"commit","prev_hash":"{GENESIS_HASH}","seq":1}}"#
        );
        assert_eq!(r.hash, hex_lower(&Sha256::digest(canonical.as_bytes())));
        assert_eq!(r.hash.len(), 64);
    }

    #[test]
    fn valid_chain_verifies_and_survives_json_round_trip() {
        let records = chain(5);
        verify_chain(&records).unwrap();
        let text: Vec<String> = records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        let back: Vec<OpRecord> = text
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        verify_chain(&back).unwrap();
        verify_chain(&[]).unwrap();
        // A batch from the middle verifies on its own, and against its predecessor.
        verify_chain(&records[2..]).unwrap();
        let mut v = ChainVerifier::resume(ChainHead {
            seq: 2,
            hash: records[1].hash.clone(),
        });
        records[2..].iter().for_each(|r| v.push(r).unwrap());
        assert_eq!(v.head().unwrap().seq, 5);
    }

    #[test]
    fn altered_detail_is_detected() {
        let mut records = chain(4);
        records[2].detail["i"] = json!(99);
        let err = verify_chain(&records).unwrap_err();
        assert_eq!(err.seq, 3);
        assert!(
            matches!(err.reason, BreakReason::HashMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn rehashed_alteration_breaks_the_next_link() {
        let mut records = chain(4);
        records[1].kind = "rollback".into();
        records[1].hash = records[1].compute_hash();
        let err = verify_chain(&records).unwrap_err();
        assert_eq!(err.seq, 3);
        assert!(
            matches!(err.reason, BreakReason::PrevHashMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn removed_and_reordered_records_are_detected() {
        let mut records = chain(4);
        records.remove(1);
        let err = verify_chain(&records).unwrap_err();
        assert_eq!(
            err,
            ChainBreak {
                seq: 3,
                reason: BreakReason::SeqGap {
                    expected: 2,
                    found: 3
                }
            }
        );

        let mut records = chain(4);
        records.swap(1, 2);
        assert!(verify_chain(&records).is_err());
    }

    #[test]
    fn forged_first_record_and_truncated_batch_are_detected() {
        let mut records = chain(3);
        records[0].prev_hash = "1".repeat(64);
        records[0].hash = records[0].compute_hash();
        let err = verify_chain(&records).unwrap_err();
        assert_eq!(err.seq, 1);
        assert!(matches!(err.reason, BreakReason::PrevHashMismatch { .. }));

        // A batch that skips records after the server's head.
        let records = chain(5);
        let mut v = ChainVerifier::resume(ChainHead {
            seq: 2,
            hash: records[1].hash.clone(),
        });
        let err = v.push(&records[3]).unwrap_err();
        assert!(matches!(
            err.reason,
            BreakReason::SeqGap {
                expected: 3,
                found: 4
            }
        ));
    }

    #[test]
    fn hash_is_case_sensitive_hex() {
        let mut records = chain(1);
        records[0].hash = records[0].hash.to_uppercase();
        assert!(verify_chain(&records).is_err());
    }
}
