//! The on-disk queue of anomaly reports waiting for the server.
//!
//! An anomaly (a failed signature or hash check, a downgrade offered, a rollback, ...) must
//! reach the server even if it happens offline or just before a power cut. Each report is
//! one file, `<seq>.json` (seq zero-padded to 20 digits so names sort numerically), written
//! atomically with [`crate::fsutil::write_atomic`], and removed only when the server
//! acknowledges it ([`AnomalyQueue::ack`]). Seqs never repeat, even after every report was
//! acknowledged: the next seq is kept in a `next_seq` file, also written atomically, so the
//! server can deduplicate retried deliveries by `(device, seq)`.
//!
//! The report type is generic (any `Serialize`), so the wire type can live in
//! `ota-common`. A file that no longer parses is moved aside as `<name>.corrupt` (with a
//! warning) rather than blocking the queue forever.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};

/// Default bound on queued reports: a device offline for months must not fill its disk.
pub const DEFAULT_MAX_PENDING: usize = 1000;

const NEXT_SEQ_FILE: &str = "next_seq";

/// One queued report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedAnomaly<T> {
    /// Its seq, unique on this device.
    pub seq: u64,
    /// The report.
    pub report: T,
}

/// The queue directory.
#[derive(Debug)]
pub struct AnomalyQueue<T> {
    dir: PathBuf,
    next_seq: u64,
    max_pending: usize,
    report: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> AnomalyQueue<T> {
    /// Opens the queue in `dir`, creating the directory if needed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, AnomalyQueueError> {
        let dir = dir.into();
        fsutil::ensure_dir(&dir)?;
        let stored = match std::fs::read_to_string(dir.join(NEXT_SEQ_FILE)) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| AnomalyQueueError::Corrupt {
                    path: dir.join(NEXT_SEQ_FILE),
                    reason: e.to_string(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(source) => {
                return Err(AnomalyQueueError::Io {
                    op: "reading",
                    path: dir.join(NEXT_SEQ_FILE),
                    source,
                })
            }
        };
        // A crash after writing a report but before saving the counter leaves the counter
        // behind the files: take whichever is further.
        let after_files = entries(&dir)?.last().map_or(1, |(seq, _)| seq + 1);
        Ok(AnomalyQueue {
            dir,
            next_seq: stored.max(after_files).max(1),
            max_pending: DEFAULT_MAX_PENDING,
            report: PhantomData,
        })
    }

    /// Sets the bound on queued reports.
    pub fn with_max_pending(mut self, max_pending: usize) -> Self {
        self.max_pending = max_pending;
        self
    }

    /// Queues `report` durably and returns its seq. Refuses when the queue is full (the
    /// caller still has the operation log).
    pub fn push(&mut self, report: &T) -> Result<u64, AnomalyQueueError> {
        let queued = entries(&self.dir)?.len();
        if queued >= self.max_pending {
            return Err(AnomalyQueueError::Full {
                dir: self.dir.clone(),
                max: self.max_pending,
            });
        }
        let seq = self.next_seq;
        let entry = QueuedAnomaly { seq, report };
        let mut bytes =
            serde_json::to_vec(&entry).map_err(|source| AnomalyQueueError::Serialize { source })?;
        bytes.push(b'\n');
        fsutil::write_atomic(&self.dir.join(file_name(seq)), &bytes)?;
        self.next_seq = seq + 1;
        fsutil::write_atomic(
            &self.dir.join(NEXT_SEQ_FILE),
            format!("{}\n", self.next_seq).as_bytes(),
        )?;
        Ok(seq)
    }

    /// All queued reports, oldest first.
    pub fn pending(&self) -> Result<Vec<QueuedAnomaly<T>>, AnomalyQueueError> {
        let mut out = Vec::new();
        for (seq, path) in entries(&self.dir)? {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // Acknowledged between listing and reading.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(AnomalyQueueError::Io {
                        op: "reading",
                        path,
                        source,
                    })
                }
            };
            match serde_json::from_slice::<QueuedAnomaly<T>>(&bytes) {
                Ok(entry) if entry.seq == seq => out.push(entry),
                Ok(entry) => self.quarantine(&path, &format!("holds seq {}", entry.seq))?,
                Err(e) => self.quarantine(&path, &e.to_string())?,
            }
        }
        Ok(out)
    }

    /// Removes report `seq` after the server acknowledged it. Returns whether it was still
    /// queued (a repeated acknowledgement is not an error).
    pub fn ack(&mut self, seq: u64) -> Result<bool, AnomalyQueueError> {
        let path = self.dir.join(file_name(seq));
        match std::fs::remove_file(&path) {
            Ok(()) => {
                fsutil::fsync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(AnomalyQueueError::Io {
                op: "removing",
                path,
                source,
            }),
        }
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn quarantine(&self, path: &Path, reason: &str) -> Result<(), AnomalyQueueError> {
        let mut aside = path.as_os_str().to_owned();
        aside.push(".corrupt");
        tracing::warn!(path = %path.display(), reason, "anomaly queue: moving aside unreadable report");
        std::fs::rename(path, &aside).map_err(|source| AnomalyQueueError::Io {
            op: "moving aside",
            path: path.to_path_buf(),
            source,
        })?;
        fsutil::fsync_dir(&self.dir)?;
        Ok(())
    }
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

/// The queued report files, sorted by seq. Other files (the counter, temporaries,
/// quarantined reports) are ignored.
fn entries(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AnomalyQueueError> {
    let io_err = |source| AnomalyQueueError::Io {
        op: "listing",
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .filter(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// A failed anomaly-queue operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnomalyQueueError {
    /// A file operation failed.
    #[error("{op} anomaly queue file {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A durable write failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The seq counter file is unreadable.
    #[error("anomaly queue file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The queue holds its maximum number of reports.
    #[error("anomaly queue {dir} is full ({max} reports waiting)")]
    Full {
        /// The queue directory.
        dir: PathBuf,
        /// The bound.
        max: usize,
    },
    /// Serializing a report failed.
    #[error("serializing anomaly report")]
    Serialize {
        /// The serde error.
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    type Queue = AnomalyQueue<Value>;

    fn seqs(queue: &Queue) -> Vec<u64> {
        queue.pending().unwrap().iter().map(|a| a.seq).collect()
    }

    #[test]
    fn push_pending_ack_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let qdir = dir.path().join("anomalies");
        let mut q = Queue::open(&qdir).unwrap();
        assert!(q.pending().unwrap().is_empty());
        assert_eq!(q.push(&json!({"kind": "hash_mismatch"})).unwrap(), 1);
        assert_eq!(q.push(&json!({"kind": "downgrade"})).unwrap(), 2);
        assert_eq!(q.push(&json!({"kind": "rollback"})).unwrap(), 3);
        drop(q);

        let mut q = Queue::open(&qdir).unwrap();
        let pending = q.pending().unwrap();
        assert_eq!(pending.len(), 3);
        assert_eq!(pending[1].report, json!({"kind": "downgrade"}));
        assert!(q.ack(2).unwrap());
        assert!(!q.ack(2).unwrap(), "a repeated ack is harmless");
        drop(q);

        let q = Queue::open(&qdir).unwrap();
        assert_eq!(seqs(&q), [1, 3]);
    }

    #[test]
    fn seqs_never_repeat_after_the_queue_empties() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        for _ in 0..3 {
            let seq = q.push(&json!(1)).unwrap();
            q.ack(seq).unwrap();
        }
        drop(q);
        let mut q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.push(&json!(1)).unwrap(), 4);
    }

    #[test]
    fn counter_behind_the_files_is_caught_up() {
        // Crash after the report was written, before the counter was.
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        q.push(&json!("a")).unwrap();
        q.push(&json!("b")).unwrap();
        std::fs::write(dir.path().join(NEXT_SEQ_FILE), "2\n").unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.push(&json!("c")).unwrap(), 3);
        assert_eq!(seqs(&q), [1, 2, 3]);
    }

    #[test]
    fn names_sort_numerically_and_strays_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        for _ in 0..11 {
            q.push(&json!(null)).unwrap();
        }
        std::fs::write(dir.path().join("notes.json"), "{}").unwrap();
        std::fs::write(dir.path().join(".00000000000000000099.json.tmp"), "{").unwrap();
        assert_eq!(seqs(&q), (1..=11).collect::<Vec<_>>());
        assert!(dir.path().join("00000000000000000010.json").exists());
    }

    #[test]
    fn unreadable_report_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        q.push(&json!("ok")).unwrap();
        q.push(&json!("will break")).unwrap();
        q.push(&json!("ok too")).unwrap();
        let broken = dir.path().join(file_name(2));
        std::fs::write(&broken, b"{\"seq\":2,\"rep").unwrap();
        assert_eq!(seqs(&q), [1, 3]);
        assert!(!broken.exists());
        assert!(dir
            .path()
            .join("00000000000000000002.json.corrupt")
            .exists());
        // A file renamed to another seq is not trusted either.
        std::fs::rename(dir.path().join(file_name(3)), dir.path().join(file_name(7))).unwrap();
        assert_eq!(seqs(&q), [1]);
    }

    #[test]
    fn full_queue_refuses_new_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap().with_max_pending(2);
        q.push(&json!(1)).unwrap();
        q.push(&json!(2)).unwrap();
        let err = q.push(&json!(3)).unwrap_err();
        assert!(
            matches!(err, AnomalyQueueError::Full { max: 2, .. }),
            "{err:?}"
        );
        q.ack(1).unwrap();
        assert_eq!(q.push(&json!(3)).unwrap(), 3);
    }

    #[test]
    fn corrupt_counter_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NEXT_SEQ_FILE), "lots").unwrap();
        let err = Queue::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("next_seq"), "{err}");
    }

    #[test]
    fn typed_reports() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Report {
            kind: String,
            seq_in_log: u64,
        }
        let dir = tempfile::tempdir().unwrap();
        let mut q = AnomalyQueue::<Report>::open(dir.path()).unwrap();
        q.push(&Report {
            kind: "rollback".into(),
            seq_in_log: 12,
        })
        .unwrap();
        let pending = q.pending().unwrap();
        assert_eq!(pending[0].report.seq_in_log, 12);
    }
}
