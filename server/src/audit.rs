//! Append-only, hash-chained audit log kept in the [`Store`].
//!
//! Every publish, key change, deployment and operator action gets an [`AuditEntry`]. Entries
//! are numbered densely from 1 and each one carries the hash of the one before, so an entry
//! altered, removed or inserted in the store shows up in [`AuditLog::verify_chain`].
//!
//! # Storage and the exact hashed bytes
//! Tree [`AUDIT_TREE`], key = `seq` as 8 big-endian bytes (so scans run in order), value =
//! `hash` (64 lowercase hex) + `"\n"` + `body`. `body` is the canonical JSON of the entry
//! without `hash`: the object
//! `{"action":..,"actor":..,"at":..,"detail":..,"prev_hash":..,"seq":..,"subject":..}` with
//! keys sorted by their UTF-8 bytes at every level, no whitespace, strings escaped as
//! `serde_json` writes them (`\"`, `\\`, `\n`, `\t`, ..., other control characters as
//! `\u00xx`), other characters as raw UTF-8, numbers as `serde_json` prints them — the
//! canonical form of the devices' operation log ([`ota_common::oplog::canonical_bytes`]);
//! `at` as RFC 3339 in UTC with a `Z` suffix and only as many fractional digits as needed
//! (chrono's `SecondsFormat::AutoSi`).
//!
//! `hash = lowercase_hex(SHA-256("ota-audit-v1\n" || body))`. The first entry's `prev_hash`
//! is 64 zeros ([`GENESIS_PREV_HASH`]). Verification hashes the stored `body` bytes as they
//! are, never a re-serialization, so numbers in `detail` cannot drift.
//!
//! Tree [`AUDIT_HEAD_TREE`] holds the head (last `seq` and `hash`), written in the same
//! atomic batch as each entry, so a truncated tail is detected too. The chain only proves
//! consistency: someone able to rewrite the whole store can rebuild it, so export
//! [`ChainReport::head_hash`] elsewhere to anchor it.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::{Op, Store, StoreError};

/// Tree holding the entries.
pub const AUDIT_TREE: &str = "audit";
/// Tree holding the chain head.
pub const AUDIT_HEAD_TREE: &str = "audit_head";
/// `prev_hash` of entry 1.
pub const GENESIS_PREV_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

const HEAD_KEY: &[u8] = b"head";
const HASH_DOMAIN: &[u8] = b"ota-audit-v1\n";
/// Entries read per scan while verifying.
const VERIFY_PAGE: usize = 512;

/// One audit record, as returned by [`AuditLog::append`] and [`AuditLog::list`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, dense from 1.
    pub seq: u64,
    /// When the action happened (passed in by the caller).
    pub at: DateTime<Utc>,
    /// Who did it (token name, device id, "system").
    pub actor: String,
    /// What was done ("publish", "device.accept", ...).
    pub action: String,
    /// What it was done to (release, device, key id).
    pub subject: String,
    /// Free-form details.
    pub detail: Value,
    /// `hash` of the previous entry, or [`GENESIS_PREV_HASH`].
    pub prev_hash: String,
    /// SHA-256 over the canonical body (see the module docs), lowercase hex.
    pub hash: String,
}

/// The hashed part of an entry, as stored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    seq: u64,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    subject: String,
    detail: Value,
    prev_hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// Why the chain broke at [`ChainReport::first_break`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BreakReason {
    /// The stored record is not `hash\nbody` with a parseable body.
    Unreadable,
    /// The record's hash does not match its body (the body or hash was altered).
    HashMismatch,
    /// The body's `seq` differs from its key.
    SeqMismatch,
    /// `prev_hash` differs from the previous entry's hash (an entry before was replaced).
    PrevHashMismatch,
    /// The entry is missing (a gap, or the tail was truncated below the head).
    Missing,
    /// The entry lies beyond the recorded head (appended outside [`AuditLog`]).
    BeyondHead,
    /// The head records a different hash for this entry, or is unreadable.
    HeadMismatch,
}

/// Result of [`AuditLog::verify_chain`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainReport {
    /// Entries verified intact, from 1, before the first break (all of them if none).
    pub entries: u64,
    /// `seq` of the first entry that fails verification.
    pub first_break: Option<u64>,
    /// Why it failed.
    pub reason: Option<BreakReason>,
    /// Hash of the last intact entry: export it to anchor the chain outside the store.
    pub head_hash: Option<String>,
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The store failed.
    #[error("audit log storage: {0}")]
    Store(#[from] StoreError),
    /// A stored entry cannot be read back.
    #[error("audit entry {seq} is corrupt: {reason}")]
    Corrupt {
        /// The entry's key.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The head or the next entry changed under us (another writer, or a damaged head);
    /// nothing was written.
    #[error("appending audit entry {seq}: the log changed concurrently or its head is damaged")]
    ConcurrentAppend {
        /// The seq we tried to write.
        seq: u64,
    },
    /// A batch passed to [`AuditLog::append_with`] touches the audit trees.
    #[error("batch op on reserved audit tree {tree}")]
    ReservedTree {
        /// The offending tree.
        tree: String,
    },
}

/// The audit log over a [`Store`]. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct AuditLog {
    store: Arc<dyn Store>,
    /// Serializes appends within this process; the head precondition in each batch
    /// catches writers outside it.
    append_lock: Mutex<()>,
}

impl AuditLog {
    /// An audit log kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            append_lock: Mutex::new(()),
        }
    }

    /// Appends an entry durably (flushed before returning) and returns it.
    pub fn append(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        detail: Value,
        at: DateTime<Utc>,
    ) -> Result<AuditEntry, AuditError> {
        self.append_with(Vec::new(), actor, action, subject, detail, at)
    }

    /// Applies `ops` and appends the entry in one atomic, durable batch: after a crash
    /// both the change and its audit entry are visible, or neither. `ops` must not touch
    /// the audit trees.
    pub fn append_with(
        &self,
        mut ops: Vec<Op>,
        actor: &str,
        action: &str,
        subject: &str,
        detail: Value,
        at: DateTime<Utc>,
    ) -> Result<AuditEntry, AuditError> {
        if let Some(op) = ops
            .iter()
            .find(|op| op.tree() == AUDIT_TREE || op.tree() == AUDIT_HEAD_TREE)
        {
            return Err(AuditError::ReservedTree {
                tree: op.tree().to_owned(),
            });
        }
        // The lock guards no data (the state is in the store), so a poisoned one is fine.
        let _guard = self.append_lock.lock().unwrap_or_else(|p| p.into_inner());
        let head_raw = self.store.get(AUDIT_HEAD_TREE, HEAD_KEY)?;
        let (last_seq, prev_hash) = match &head_raw {
            None => (0, GENESIS_PREV_HASH.to_owned()),
            Some(raw) => {
                let head: Head = crate::store::decode_json(AUDIT_HEAD_TREE, HEAD_KEY, raw)?;
                (head.seq, head.hash)
            }
        };
        let seq = last_seq + 1;
        let body = canonical_body(seq, at, actor, action, subject, &detail, &prev_hash);
        let hash = body_hash(&body);
        let mut record = Vec::with_capacity(65 + body.len());
        record.extend_from_slice(hash.as_bytes());
        record.push(b'\n');
        record.extend_from_slice(&body);

        let key = seq.to_be_bytes();
        ops.push(Op::expect(AUDIT_HEAD_TREE, HEAD_KEY, head_raw));
        ops.push(Op::expect(AUDIT_TREE, key, None));
        ops.push(Op::put(AUDIT_TREE, key, record));
        ops.push(Op::put_json(
            AUDIT_HEAD_TREE,
            HEAD_KEY,
            &Head {
                seq,
                hash: hash.clone(),
            },
        )?);
        match self.store.apply_batch_durable(ops) {
            Ok(()) => {}
            Err(StoreError::Conflict(c)) if c.tree == AUDIT_TREE || c.tree == AUDIT_HEAD_TREE => {
                return Err(AuditError::ConcurrentAppend { seq });
            }
            Err(e) => return Err(e.into()),
        }
        Ok(AuditEntry {
            seq,
            at,
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            detail,
            prev_hash,
            hash,
        })
    }

    /// Up to `limit` entries with `seq > after_seq`, in order (`after_seq = 0`: from the
    /// start). Fails on an unreadable entry; [`AuditLog::verify_chain`] locates damage.
    pub fn list(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        self.store
            .scan(AUDIT_TREE, b"", Some(&after_seq.to_be_bytes()), limit)?
            .into_iter()
            .map(|(k, v)| {
                let seq = key_seq(&k).ok_or_else(|| AuditError::Corrupt {
                    seq: after_seq,
                    reason: format!("key of {} bytes follows this entry", k.len()),
                })?;
                decode_record(&v)
                    .map(|(entry, _)| entry)
                    .map_err(|reason| AuditError::Corrupt { seq, reason })
            })
            .collect()
    }

    /// Checks the whole chain (hashes, links, dense seqs, head) and reports the first
    /// entry that fails. Store errors are errors; damage is reported, not an error.
    pub fn verify_chain(&self) -> Result<ChainReport, AuditError> {
        let mut entries = 0u64;
        let mut prev_hash = GENESIS_PREV_HASH.to_owned();
        // Hash before `prev_hash`, to report if the head disowns the last entry.
        let mut before_last = None;
        let mut after: Option<Vec<u8>> = None;
        let report = |entries: u64, at: u64, reason, prev_hash: &str| ChainReport {
            entries,
            first_break: Some(at),
            reason: Some(reason),
            head_hash: (entries > 0).then(|| prev_hash.to_owned()),
        };
        loop {
            let page = self
                .store
                .scan(AUDIT_TREE, b"", after.as_deref(), VERIFY_PAGE)?;
            let Some((last_key, _)) = page.last() else {
                break;
            };
            after = Some(last_key.clone());
            for (k, v) in page {
                let expected = entries + 1;
                if key_seq(&k) != Some(expected) {
                    return Ok(report(entries, expected, BreakReason::Missing, &prev_hash));
                }
                let (entry, hash_ok) = match decode_record(&v) {
                    Ok(decoded) => decoded,
                    Err(_) => {
                        return Ok(report(
                            entries,
                            expected,
                            BreakReason::Unreadable,
                            &prev_hash,
                        ))
                    }
                };
                let reason = if !hash_ok {
                    Some(BreakReason::HashMismatch)
                } else if entry.seq != expected {
                    Some(BreakReason::SeqMismatch)
                } else if entry.prev_hash != prev_hash {
                    Some(BreakReason::PrevHashMismatch)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Ok(report(entries, expected, reason, &prev_hash));
                }
                entries = expected;
                before_last = Some(std::mem::replace(&mut prev_hash, entry.hash));
            }
        }
        // The head must name the last entry and its hash.
        let head = match self.store.get(AUDIT_HEAD_TREE, HEAD_KEY)? {
            None => None,
            Some(raw) => match serde_json::from_slice::<Head>(&raw) {
                Ok(h) => Some(h),
                Err(_) => {
                    return Ok(report(
                        entries,
                        entries.max(1),
                        BreakReason::HeadMismatch,
                        &prev_hash,
                    ))
                }
            },
        };
        let head_seq = head.as_ref().map_or(0, |h| h.seq);
        if head_seq > entries {
            return Ok(report(
                entries,
                entries + 1,
                BreakReason::Missing,
                &prev_hash,
            ));
        }
        if head_seq < entries {
            // Entries past the head were not written by `append`; only those up to the
            // head are vouched for.
            return Ok(report(
                head_seq,
                head_seq + 1,
                BreakReason::BeyondHead,
                &prev_hash,
            ));
        }
        if let Some(h) = head {
            if h.hash != prev_hash {
                let before = before_last.unwrap_or_else(|| GENESIS_PREV_HASH.to_owned());
                let verified = entries.saturating_sub(1);
                return Ok(report(
                    verified,
                    entries.max(1),
                    BreakReason::HeadMismatch,
                    &before,
                ));
            }
        }
        Ok(ChainReport {
            entries,
            first_break: None,
            reason: None,
            head_hash: (entries > 0).then_some(prev_hash),
        })
    }
}

fn key_seq(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

/// Splits a stored record into its entry and whether its hash matches its body.
fn decode_record(record: &[u8]) -> Result<(AuditEntry, bool), String> {
    if record.len() < 65 || record[64] != b'\n' {
        return Err("record is not `<64 hex hash>\\n<body>`".into());
    }
    let (hash, body) = (&record[..64], &record[65..]);
    let hash = std::str::from_utf8(hash).map_err(|_| "hash is not ASCII hex".to_string())?;
    let b: Body = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let hash_ok = body_hash(body) == hash;
    let entry = AuditEntry {
        seq: b.seq,
        at: b.at,
        actor: b.actor,
        action: b.action,
        subject: b.subject,
        detail: b.detail,
        prev_hash: b.prev_hash,
        hash: hash.to_owned(),
    };
    Ok((entry, hash_ok))
}

fn body_hash(body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(body);
    hex::encode(h.finalize())
}

/// The canonical body bytes described in the module docs.
fn canonical_body(
    seq: u64,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &Value,
    prev_hash: &str,
) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    obj.insert("seq".into(), Value::from(seq));
    obj.insert(
        "at".into(),
        Value::from(at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    obj.insert("actor".into(), Value::from(actor));
    obj.insert("action".into(), Value::from(action));
    obj.insert("subject".into(), Value::from(subject));
    obj.insert("detail".into(), detail.clone());
    obj.insert("prev_hash".into(), Value::from(prev_hash));
    // The same canonical form as the devices' operation log (one implementation).
    ota_common::oplog::canonical_bytes(&Value::Object(obj))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::sled::SledStore;
    use crate::store::StoreExt;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_704_164_645 + secs, 0).unwrap()
    }

    fn log_with(n: u64) -> (Arc<dyn Store>, AuditLog) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::new(store.clone());
        for i in 1..=n {
            log.append(
                "alice",
                "publish",
                &format!("release-{i}"),
                json!({"n": i}),
                t(i as i64),
            )
            .unwrap();
        }
        (store, log)
    }

    fn raw(store: &Arc<dyn Store>, seq: u64) -> Vec<u8> {
        store.get(AUDIT_TREE, &seq.to_be_bytes()).unwrap().unwrap()
    }

    #[test]
    fn hashed_bytes_are_exactly_as_documented() {
        let (store, log) = log_with(0);
        let at = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        let e = log
            .append(
                "alice",
                "publish",
                "fw 1.2",
                json!({"z": [1, true, null], "a": "q\"\\\n\u{e9}"}),
                at,
            )
            .unwrap();
        let body = concat!(
            r#"{"action":"publish","actor":"alice","at":"2024-01-02T03:04:05Z","#,
            r#""detail":{"a":"q\"\\\né","z":[1,true,null]},"#,
            r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""seq":1,"subject":"fw 1.2"}"#
        );
        let mut h = Sha256::new();
        h.update(b"ota-audit-v1\n");
        h.update(body.as_bytes());
        let expected_hash = hex::encode(h.finalize());
        assert_eq!(e.hash, expected_hash);
        assert_eq!(
            raw(&store, 1),
            format!("{expected_hash}\n{body}").into_bytes()
        );
        // The stored body parses as JSON equal to the entry's fields.
        let parsed: Value = serde_json::from_str(body).unwrap();
        assert_eq!(parsed["detail"], e.detail);
    }

    #[test]
    fn entries_are_dense_and_linked() {
        let (_store, log) = log_with(5);
        let all = log.list(0, 100).unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(all[0].prev_hash, GENESIS_PREV_HASH);
        for w in all.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        assert_eq!(all[2].subject, "release-3");
        assert_eq!(all[2].at, t(3));
        // Pagination.
        let page = log.list(2, 2).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert!(log.list(5, 10).unwrap().is_empty());
        let report = log.verify_chain().unwrap();
        assert_eq!(
            report,
            ChainReport {
                entries: 5,
                first_break: None,
                reason: None,
                head_hash: Some(all[4].hash.clone()),
            }
        );
    }

    #[test]
    fn empty_log_verifies() {
        let (_s, log) = log_with(0);
        let r = log.verify_chain().unwrap();
        assert_eq!((r.entries, r.first_break, r.head_hash), (0, None, None));
    }

    #[test]
    fn altered_bytes_are_named() {
        let (store, log) = log_with(4);
        let mut bytes = raw(&store, 2);
        let text = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("alice", "mallory");
        bytes = text.into_bytes();
        store.put(AUDIT_TREE, &2u64.to_be_bytes(), &bytes).unwrap();
        let r = log.verify_chain().unwrap();
        assert_eq!(r.first_break, Some(2));
        assert_eq!(r.reason, Some(BreakReason::HashMismatch));
        assert_eq!(r.entries, 1);
    }

    #[test]
    fn rehashed_forgery_breaks_the_next_link() {
        let (store, log) = log_with(4);
        let (old, _) = decode_record(&raw(&store, 2)).unwrap();
        let body = canonical_body(
            2,
            old.at,
            "mallory",
            &old.action,
            &old.subject,
            &old.detail,
            &old.prev_hash,
        );
        let forged = [body_hash(&body).as_bytes(), b"\n", &body].concat();
        store.put(AUDIT_TREE, &2u64.to_be_bytes(), &forged).unwrap();
        let r = log.verify_chain().unwrap();
        assert_eq!(
            (r.first_break, r.reason),
            (Some(3), Some(BreakReason::PrevHashMismatch))
        );
    }

    #[test]
    fn garbage_gap_and_truncation_are_named() {
        let (store, log) = log_with(4);
        store
            .put(AUDIT_TREE, &3u64.to_be_bytes(), b"\x00garbage")
            .unwrap();
        let r = log.verify_chain().unwrap();
        assert_eq!(
            (r.first_break, r.reason),
            (Some(3), Some(BreakReason::Unreadable))
        );
        assert!(matches!(
            log.list(0, 10),
            Err(AuditError::Corrupt { seq: 3, .. })
        ));

        let (store, log) = log_with(4);
        store.delete(AUDIT_TREE, &2u64.to_be_bytes()).unwrap();
        let r = log.verify_chain().unwrap();
        assert_eq!(
            (r.first_break, r.reason),
            (Some(2), Some(BreakReason::Missing))
        );

        let (store, log) = log_with(4);
        store.delete(AUDIT_TREE, &4u64.to_be_bytes()).unwrap();
        let r = log.verify_chain().unwrap();
        assert_eq!(
            (r.first_break, r.reason),
            (Some(4), Some(BreakReason::Missing))
        );
        assert_eq!(r.entries, 3);
    }

    #[test]
    fn entries_beyond_head_and_changed_head_are_named() {
        let (store, log) = log_with(2);
        let (e2, _) = decode_record(&raw(&store, 2)).unwrap();
        let body = canonical_body(3, t(9), "x", "y", "z", &Value::Null, &e2.hash);
        let extra = [body_hash(&body).as_bytes(), b"\n", &body].concat();
        store.put(AUDIT_TREE, &3u64.to_be_bytes(), &extra).unwrap();
        let r = log.verify_chain().unwrap();
        assert_eq!(
            (r.first_break, r.reason),
            (Some(3), Some(BreakReason::BeyondHead))
        );
        // Appending refuses to overwrite the foreign entry 3.
        let err = log.append("a", "b", "c", Value::Null, t(10)).unwrap_err();
        assert!(
            matches!(err, AuditError::ConcurrentAppend { seq: 3 }),
            "{err}"
        );

        let (store, log) = log_with(2);
        let head = Head {
            seq: 2,
            hash: GENESIS_PREV_HASH.into(),
        };
        store.put_json(AUDIT_HEAD_TREE, HEAD_KEY, &head).unwrap();
        let r = log.verify_chain().unwrap();
        assert_eq!(
            (r.first_break, r.reason),
            (Some(2), Some(BreakReason::HeadMismatch))
        );
    }

    #[test]
    fn concurrent_appends_stay_dense() {
        let (_s, log) = log_with(0);
        let log = Arc::new(log);
        let threads: Vec<_> = (0..4)
            .map(|th| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        log.append(&format!("t{th}"), "act", &i.to_string(), Value::Null, t(i))
                            .unwrap();
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let r = log.verify_chain().unwrap();
        assert_eq!((r.entries, r.first_break), (100, None));
    }

    #[test]
    fn append_with_is_atomic_with_the_callers_ops() {
        let (store, log) = log_with(1);
        let e = log
            .append_with(
                vec![Op::put("releases", *b"r1", *b"{}")],
                "bob",
                "publish",
                "r1",
                Value::Null,
                t(5),
            )
            .unwrap();
        assert_eq!(e.seq, 2);
        assert!(store.get("releases", b"r1").unwrap().is_some());

        // A failing precondition in the caller's ops writes neither the ops nor the entry.
        let ops = vec![
            Op::put("releases", *b"r2", *b"{}"),
            Op::expect("releases", *b"r1", None),
        ];
        let err = log
            .append_with(ops, "bob", "publish", "r2", Value::Null, t(6))
            .unwrap_err();
        assert!(
            matches!(err, AuditError::Store(StoreError::Conflict(_))),
            "{err}"
        );
        assert!(store.get("releases", b"r2").unwrap().is_none());
        assert_eq!(log.list(0, 10).unwrap().len(), 2);

        let err = log
            .append_with(
                vec![Op::delete(AUDIT_TREE, *b"x")],
                "m",
                "a",
                "s",
                Value::Null,
                t(7),
            )
            .unwrap_err();
        assert!(matches!(err, AuditError::ReservedTree { .. }));
        assert_eq!(log.verify_chain().unwrap().entries, 2);
    }

    #[test]
    fn survives_reopen_on_sled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let last = {
            let log = AuditLog::new(Arc::new(SledStore::open(&path).unwrap()));
            log.append("a", "x", "s", json!({"k": 1.5}), t(0)).unwrap();
            log.append("a", "y", "s", json!({"k": 0.1}), t(1)).unwrap()
        };
        let log = AuditLog::new(Arc::new(SledStore::open(&path).unwrap()));
        let r = log.verify_chain().unwrap();
        assert_eq!((r.entries, r.first_break), (2, None));
        assert_eq!(r.head_hash.as_deref(), Some(last.hash.as_str()));
        assert_eq!(log.list(1, 1).unwrap(), vec![last]);
        let next = log.append("a", "z", "s", Value::Null, t(2)).unwrap();
        assert_eq!(next.seq, 3);
    }
}
