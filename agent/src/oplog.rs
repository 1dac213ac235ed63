//! The operation log: an append-only, hash-chained JSON-lines file of every update step.
//!
//! The record format and the chain check live in [`chain`] (pure, shared with the server).
//! This module owns the file:
//!
//! - [`OpLog::append`] writes one line (`record` + `\n`) in a single `write` and fsyncs it
//!   before returning, so a record the agent acted on is on disk.
//! - [`OpLog::open`] reads the file in constant memory, verifies every record and the
//!   chain, and repairs a power cut mid-append: only the last append can be incomplete, so
//!   an unterminated last line, or an unparseable one, is cut off and a `log_recovered`
//!   record says how many bytes were dropped. Any other damage (an invalid line in the
//!   middle, a chain break) is an error: it is tampering or storage failure, not a crash.
//! - [`OpLog::records_after`] reads records for upload in batches.
//!
//! Time is passed in by the caller (no clock reads here). One process owns the log.

pub use ota_common::oplog as chain;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use self::chain::{ChainBreak, ChainHead, ChainVerifier, OpRecord};
use crate::fsutil::{self, FsError};

/// Longest accepted record line, in bytes: records are small, and a bound keeps reading a
/// damaged file in constant memory.
pub const MAX_RECORD_LEN: usize = 64 * 1024;

/// The steps the agent records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// Asked the server for updates.
    Poll,
    /// Refreshed TUF metadata (versions in the detail).
    Metadata,
    /// Started downloading a target.
    DownloadStart,
    /// Resumed a download after a restart.
    DownloadResume,
    /// Checked an image's length and hash.
    Verify,
    /// Switched the bootloader to try the new slot.
    Install,
    /// Asked for a reboot.
    Reboot,
    /// Started after a boot (which slot, which attempt).
    Boot,
    /// Ran the health check.
    Health,
    /// Committed an update.
    Commit,
    /// Rolled back an update.
    Rollback,
    /// Erased the device's data.
    Wipe,
    /// Queued an anomaly report.
    Anomaly,
    /// Repaired the log after a power cut (written by [`OpLog::open`]).
    LogRecovered,
}

impl OpKind {
    /// The `kind` string stored in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Poll => "poll",
            OpKind::Metadata => "metadata",
            OpKind::DownloadStart => "download_start",
            OpKind::DownloadResume => "download_resume",
            OpKind::Verify => "verify",
            OpKind::Install => "install",
            OpKind::Reboot => "reboot",
            OpKind::Boot => "boot",
            OpKind::Health => "health",
            OpKind::Commit => "commit",
            OpKind::Rollback => "rollback",
            OpKind::Wipe => "wipe",
            OpKind::Anomaly => "anomaly",
            OpKind::LogRecovered => "log_recovered",
        }
    }
}

/// The open operation log.
#[derive(Debug)]
pub struct OpLog {
    path: PathBuf,
    file: File,
    head: ChainHead,
    /// Set after a failed append: the file may end in a partial line, so further appends
    /// are refused until the log is reopened (which repairs it).
    poisoned: bool,
}

/// How an [`OpLog::open`] scan ended.
struct Scan {
    head: ChainHead,
    /// Offset of the first byte after the last good record, and why the rest is dropped.
    torn: Option<(u64, &'static str)>,
    len: u64,
}

impl OpLog {
    /// Opens (or creates) the log at `path`, verifies it, and repairs a torn last append;
    /// `now` dates the `log_recovered` record written in that case.
    pub fn open(path: &Path, now: DateTime<Utc>) -> Result<OpLog, OpLogError> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| OpLogError::Io {
                op: "opening operation log",
                path: path.to_path_buf(),
                source,
            })?;
        if !existed {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fsutil::fsync_dir(dir)?;
            }
        }
        let scan = scan(path)?;
        let mut log = OpLog {
            path: path.to_path_buf(),
            file,
            head: scan.head,
            poisoned: false,
        };
        if let Some((good_len, reason)) = scan.torn {
            log.file
                .set_len(good_len)
                .map_err(|source| OpLogError::Io {
                    op: "truncating torn record of operation log",
                    path: path.to_path_buf(),
                    source,
                })?;
            fsutil::fsync_file(&log.file, path)?;
            let dropped = scan.len - good_len;
            tracing::warn!(path = %path.display(), dropped, reason, "operation log: dropped torn last record");
            log.append(
                now,
                OpKind::LogRecovered,
                json!({ "truncated_bytes": dropped, "at_offset": good_len, "reason": reason }),
            )?;
        }
        Ok(log)
    }

    /// Appends a record and fsyncs it. Returns the record written.
    pub fn append(
        &mut self,
        at: DateTime<Utc>,
        kind: OpKind,
        detail: Value,
    ) -> Result<OpRecord, OpLogError> {
        if self.poisoned {
            return Err(OpLogError::Poisoned {
                path: self.path.clone(),
            });
        }
        let record = OpRecord::next(
            &self.head,
            at.to_rfc3339_opts(SecondsFormat::Millis, true),
            kind.as_str().to_string(),
            detail,
        );
        let mut line =
            serde_json::to_vec(&record).map_err(|source| OpLogError::Serialize { source })?;
        line.push(b'\n');
        if line.len() > MAX_RECORD_LEN {
            return Err(OpLogError::RecordTooLarge {
                kind: kind.as_str(),
                len: line.len(),
                max: MAX_RECORD_LEN,
            });
        }
        // One write of the whole line: a power cut leaves at most this line partial.
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            self.poisoned = true;
            return Err(OpLogError::Io {
                op: "appending to operation log",
                path: self.path.clone(),
                source,
            });
        }
        self.head = ChainHead {
            seq: record.seq,
            hash: record.hash.clone(),
        };
        Ok(record)
    }

    /// The last record's seq and hash (seq 0 for an empty log).
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `max` records with seq greater than `seq`, in order: the next upload batch
    /// after the server acknowledged `seq`.
    pub fn records_after(&self, seq: u64, max: usize) -> Result<Vec<OpRecord>, OpLogError> {
        let mut out = Vec::new();
        if max == 0 || seq >= self.head.seq {
            return Ok(out);
        }
        let mut lines = LineReader::open(&self.path)?;
        while let Some(line) = lines.next_line()? {
            let Line::Complete { bytes, number, .. } = line else {
                break;
            };
            let record = parse_record(&self.path, number, bytes)?;
            if record.seq > seq {
                out.push(record);
                if out.len() == max || out.last().is_some_and(|r| r.seq >= self.head.seq) {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Reads the whole log, verifying it, and finds a torn tail.
fn scan(path: &Path) -> Result<Scan, OpLogError> {
    let mut lines = LineReader::open(path)?;
    let mut verifier = ChainVerifier::from_genesis();
    let mut good_len = 0u64;
    let mut torn = None;
    while let Some(line) = lines.next_line()? {
        match line {
            Line::Complete { bytes, number, end } => {
                let record = match serde_json::from_slice::<OpRecord>(bytes) {
                    Ok(record) => record,
                    Err(_) if lines.at_eof()? => {
                        // The last append's data may be partly on disk despite its newline.
                        torn = Some((good_len, "unparseable last line"));
                        break;
                    }
                    Err(e) => {
                        return Err(OpLogError::Corrupt {
                            path: path.to_path_buf(),
                            line: number,
                            reason: e.to_string(),
                        })
                    }
                };
                verifier.push(&record).map_err(|source| OpLogError::Chain {
                    path: path.to_path_buf(),
                    source,
                })?;
                good_len = end;
            }
            Line::Unterminated => {
                torn = Some((good_len, "unterminated last line"));
                break;
            }
            Line::TooLong { number } => {
                return Err(OpLogError::Corrupt {
                    path: path.to_path_buf(),
                    line: number,
                    reason: format!("line longer than {MAX_RECORD_LEN} bytes"),
                })
            }
        }
    }
    let head = verifier.head().cloned().unwrap_or_else(ChainHead::genesis);
    Ok(Scan {
        head,
        torn,
        len: lines.offset,
    })
}

fn parse_record(path: &Path, line: u64, bytes: &[u8]) -> Result<OpRecord, OpLogError> {
    serde_json::from_slice(bytes).map_err(|e| OpLogError::Corrupt {
        path: path.to_path_buf(),
        line,
        reason: e.to_string(),
    })
}

/// Reads newline-terminated lines of at most [`MAX_RECORD_LEN`] bytes, in constant memory.
struct LineReader {
    reader: BufReader<File>,
    path: PathBuf,
    buf: Vec<u8>,
    /// Bytes consumed so far.
    offset: u64,
    number: u64,
}

enum Line<'a> {
    /// A full line, without its newline; `end` is the offset after the newline.
    Complete {
        bytes: &'a [u8],
        number: u64,
        end: u64,
    },
    /// Bytes up to end of file without a newline.
    Unterminated,
    /// A newline-terminated line over the limit.
    TooLong { number: u64 },
}

impl LineReader {
    fn open(path: &Path) -> Result<Self, OpLogError> {
        let file = File::open(path).map_err(|source| OpLogError::Io {
            op: "reading operation log",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(LineReader {
            reader: BufReader::with_capacity(64 * 1024, file),
            path: path.to_path_buf(),
            buf: Vec::with_capacity(MAX_RECORD_LEN),
            offset: 0,
            number: 0,
        })
    }

    fn io_err(&self, source: io::Error) -> OpLogError {
        OpLogError::Io {
            op: "reading operation log",
            path: self.path.clone(),
            source,
        }
    }

    fn next_line(&mut self) -> Result<Option<Line<'_>>, OpLogError> {
        self.buf.clear();
        self.number += 1;
        let limit = MAX_RECORD_LEN as u64 + 1;
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| self.io_err(e))?;
        self.offset += n as u64;
        if n == 0 {
            return Ok(None);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            return Ok(Some(Line::Complete {
                bytes: &self.buf,
                number: self.number,
                end: self.offset,
            }));
        }
        if n as u64 == limit {
            // Over the limit: find out whether a newline follows (corruption) or the file
            // ends (a torn append), without keeping the bytes.
            let (skipped, found_newline) = self.skip_line().map_err(|e| self.io_err(e))?;
            self.offset += skipped;
            if found_newline {
                return Ok(Some(Line::TooLong {
                    number: self.number,
                }));
            }
        }
        Ok(Some(Line::Unterminated))
    }

    fn skip_line(&mut self) -> io::Result<(u64, bool)> {
        let mut skipped = 0u64;
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Ok((skipped, false));
            }
            if let Some(pos) = available.iter().position(|&b| b == b'\n') {
                self.reader.consume(pos + 1);
                return Ok((skipped + pos as u64 + 1, true));
            }
            let len = available.len();
            self.reader.consume(len);
            skipped += len as u64;
        }
    }

    fn at_eof(&mut self) -> Result<bool, OpLogError> {
        match self.reader.fill_buf() {
            Ok(available) => Ok(available.is_empty()),
            Err(e) => Err(self.io_err(e)),
        }
    }
}

/// A failed operation-log operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpLogError {
    /// Reading, writing or truncating the log failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Syncing the log's directory or file failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A line before the last is not a valid record.
    #[error("operation log {path} line {line} is not a valid record: {reason}")]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// The line number (from 1).
        line: u64,
        /// Why.
        reason: String,
    },
    /// The records do not form an unbroken hash chain.
    #[error("operation log {path} failed verification")]
    Chain {
        /// The log file.
        path: PathBuf,
        /// Where and why.
        source: ChainBreak,
    },
    /// A record's line would exceed [`MAX_RECORD_LEN`].
    #[error("{kind} record of {len} bytes exceeds the operation log's {max}-byte limit")]
    RecordTooLarge {
        /// The record kind.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A previous append failed; reopen the log to repair it.
    #[error("operation log {path} had a failed append; reopen it to repair")]
    Poisoned {
        /// The log file.
        path: PathBuf,
    },
    /// Serializing a record failed.
    #[error("serializing operation log record")]
    Serialize {
        /// The serde error.
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::chain::{verify_chain, BreakReason};
    use super::*;
    use chrono::TimeZone;

    fn at(secs: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, secs).unwrap()
    }

    fn log_with(dir: &Path, n: u32) -> (PathBuf, OpLog) {
        let path = dir.join("oplog.jsonl");
        let mut log = OpLog::open(&path, at(0)).unwrap();
        for i in 0..n {
            log.append(at(i), OpKind::Poll, json!({ "i": i })).unwrap();
        }
        (path, log)
    }

    fn read_all(path: &Path) -> Vec<OpRecord> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn append_reopen_continue() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut log) = log_with(dir.path(), 3);
        let r = log
            .append(at(9), OpKind::Commit, json!({"version": "1.0.0"}))
            .unwrap();
        assert_eq!(r.seq, 4);
        assert_eq!(r.kind, "commit");
        assert_eq!(r.at, "2025-06-01T12:00:09.000Z");
        drop(log);

        let mut log = OpLog::open(&path, at(10)).unwrap();
        assert_eq!(log.head().seq, 4);
        assert_eq!(log.head().hash, r.hash);
        log.append(at(11), OpKind::Reboot, json!(null)).unwrap();
        let records = read_all(&path);
        assert_eq!(records.len(), 5);
        verify_chain(&records).unwrap();
        assert_eq!(records[0].prev_hash, chain::GENESIS_HASH);
    }

    #[test]
    fn torn_append_is_truncated_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = log_with(dir.path(), 2);
        drop(log);
        let good = std::fs::read(&path).unwrap();
        // Power cut mid-append: half a line, no newline.
        let mut torn = good.clone();
        torn.extend_from_slice(br#"{"seq":3,"at":"2025-06-01T12:0"#);
        std::fs::write(&path, &torn).unwrap();

        let mut log = OpLog::open(&path, at(30)).unwrap();
        let records = read_all(&path);
        assert_eq!(records.len(), 3);
        verify_chain(&records).unwrap();
        let rec = &records[2];
        assert_eq!(rec.kind, "log_recovered");
        assert_eq!(rec.at, "2025-06-01T12:00:30.000Z");
        assert_eq!(rec.detail["truncated_bytes"], 30);
        assert_eq!(rec.detail["at_offset"], good.len() as u64);
        assert_eq!(rec.detail["reason"], "unterminated last line");
        log.append(at(31), OpKind::Poll, json!({})).unwrap();
        verify_chain(&read_all(&path)).unwrap();
    }

    #[test]
    fn zero_filled_tail_is_truncated() {
        // Some filesystems extend the file before its data reaches the disk.
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = log_with(dir.path(), 1);
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend(std::iter::repeat_n(0u8, 300));
        bytes.push(b'\n');
        std::fs::write(&path, &bytes).unwrap();
        let log = OpLog::open(&path, at(5)).unwrap();
        assert_eq!(log.head().seq, 2);
        let records = read_all(&path);
        assert_eq!(records[1].detail["reason"], "unparseable last line");
        assert_eq!(records[1].detail["truncated_bytes"], 301);
    }

    #[test]
    fn huge_unterminated_tail_is_truncated_in_constant_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = log_with(dir.path(), 1);
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend(std::iter::repeat_n(b'x', 3 * MAX_RECORD_LEN));
        std::fs::write(&path, &bytes).unwrap();
        let log = OpLog::open(&path, at(5)).unwrap();
        assert_eq!(log.head().seq, 2);
        assert_eq!(
            read_all(&path)[1].detail["truncated_bytes"],
            3 * MAX_RECORD_LEN
        );
    }

    #[test]
    fn tampered_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = log_with(dir.path(), 3);
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen(r#"{"i":1}"#, r#"{"i":7}"#, 1)).unwrap();
        let err = OpLog::open(&path, at(5)).unwrap_err();
        match &err {
            OpLogError::Chain { source, .. } => {
                assert_eq!(source.seq, 2);
                assert!(matches!(source.reason, BreakReason::HashMismatch { .. }));
            }
            other => panic!("expected a chain break, got {other:?}"),
        }
        // The file is left untouched for inspection.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text.replacen(r#"{"i":1}"#, r#"{"i":7}"#, 1)
        );
    }

    #[test]
    fn tampered_last_record_is_refused_not_truncated() {
        // Valid JSON with a wrong hash is tampering, even on the last line.
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = log_with(dir.path(), 2);
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen(r#"{"i":1}"#, r#"{"i":5}"#, 1)).unwrap();
        assert!(matches!(
            OpLog::open(&path, at(5)),
            Err(OpLogError::Chain { .. })
        ));
    }

    #[test]
    fn deleted_middle_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = log_with(dir.path(), 3);
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        let err = OpLog::open(&path, at(5)).unwrap_err();
        assert!(err.to_string().contains("failed verification"), "{err}");
    }

    #[test]
    fn garbage_in_the_middle_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = log_with(dir.path(), 2);
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\nnot json\n{}\n", lines[0], lines[1])).unwrap();
        let err = OpLog::open(&path, at(5)).unwrap_err();
        assert!(
            matches!(err, OpLogError::Corrupt { line: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn records_after_returns_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, log) = log_with(dir.path(), 7);
        let batch = log.records_after(0, 3).unwrap();
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let batch = log.records_after(3, 3).unwrap();
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5, 6]);
        let batch = log.records_after(6, 3).unwrap();
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [7]);
        assert!(log.records_after(7, 3).unwrap().is_empty());
        assert!(log.records_after(0, 0).unwrap().is_empty());
        // Batches verify against the previous batch's last record, as the server does.
        let mut server = ChainVerifier::from_genesis();
        let mut acked = 0;
        loop {
            let batch = log.records_after(acked, 2).unwrap();
            if batch.is_empty() {
                break;
            }
            batch.iter().for_each(|r| server.push(r).unwrap());
            acked = batch.last().unwrap().seq;
        }
        assert_eq!(server.head(), Some(log.head()));
    }

    #[test]
    fn oversized_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut log) = log_with(dir.path(), 1);
        let err = log
            .append(
                at(1),
                OpKind::Anomaly,
                json!({"blob": "x".repeat(MAX_RECORD_LEN)}),
            )
            .unwrap_err();
        assert!(matches!(err, OpLogError::RecordTooLarge { .. }), "{err:?}");
        assert_eq!(read_all(&path).len(), 1);
        log.append(at(2), OpKind::Poll, json!({})).unwrap();
    }

    #[test]
    fn kinds_are_snake_case() {
        assert_eq!(OpKind::DownloadResume.as_str(), "download_resume");
        assert_eq!(OpKind::LogRecovered.as_str(), "log_recovered");
    }
}
