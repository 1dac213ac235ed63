//! Production [`Store`] over sled 0.34.
//!
//! sled keeps writes in memory and a background thread writes them out every 500 ms; a
//! write is durable only once [`Store::flush`] returns (`Db::flush` fsyncs sled's log).
//! Batches run as sled transactions over every tree they touch, which sled recovers
//! all-or-nothing. sled 0.34 is no longer developed, which is why it sits behind the
//! [`Store`] trait and why the tests below kill a writer with SIGKILL and check what
//! survived.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use ::sled::transaction::{
    abort, ConflictableTransactionResult, TransactionError, TransactionalTree,
};
use ::sled::{Config, Db, Transactional, Tree};

use super::{scan_start, validate_tree, BackendError, CasConflict, Entries, Op, Store, StoreError};

/// A [`Store`] in a sled database directory.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: Db,
    path: PathBuf,
}

impl SledStore {
    /// Opens (creating if needed) the sled database in directory `path`. Fails if another
    /// process holds it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Config::new()
            .path(path)
            .open()
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                source: Box::new(e),
            })?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens tree `name` after validating it; `op` and `key` name the failed operation.
    fn tree(&self, op: &'static str, name: &str, key: &[u8]) -> Result<Tree, StoreError> {
        validate_tree(name)?;
        self.db
            .open_tree(name)
            .map_err(|e| key_error(op, name, key, e))
    }
}

fn key_error(op: &'static str, tree: &str, key: &[u8], e: ::sled::Error) -> StoreError {
    StoreError::Key {
        op,
        tree: tree.to_owned(),
        key: key.to_vec(),
        source: Box::new(e),
    }
}

impl Store for SledStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.tree("get", tree, key)?;
        let v = t.get(key).map_err(|e| key_error("get", tree, key, e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let t = self.tree("put", tree, key)?;
        t.insert(key, value)
            .map_err(|e| key_error("put", tree, key, e))?;
        Ok(())
    }

    fn delete(&self, tree: &str, key: &[u8]) -> Result<bool, StoreError> {
        let t = self.tree("delete", tree, key)?;
        let prev = t
            .remove(key)
            .map_err(|e| key_error("delete", tree, key, e))?;
        Ok(prev.is_some())
    }

    fn scan(
        &self,
        tree: &str,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let scan_error = |e: ::sled::Error| StoreError::Scan {
            tree: tree.to_owned(),
            prefix: prefix.to_vec(),
            source: Box::new(e),
        };
        validate_tree(tree)?;
        let t = self.db.open_tree(tree).map_err(scan_error)?;
        let (start, exclusive) = scan_start(prefix, start_after);
        let lower = if exclusive {
            Bound::Excluded(start)
        } else {
            Bound::Included(start)
        };
        let mut out = Vec::new();
        for item in t.range::<&[u8], _>((lower, Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(scan_error)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasConflict>, StoreError> {
        let t = self.tree("compare_and_swap", tree, key)?;
        let swapped = t
            .compare_and_swap(key, expected, new)
            .map_err(|e| key_error("compare_and_swap", tree, key, e))?;
        Ok(swapped.map_err(|c| CasConflict {
            tree: tree.to_owned(),
            key: key.to_vec(),
            current: c.current.map(|v| v.to_vec()),
        }))
    }

    fn apply_batch(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        // Distinct trees in first-use order, and each op's index into them (sled's
        // transaction locks each tree once, so a tree must not appear twice).
        let mut names: Vec<String> = Vec::new();
        let mut index = Vec::with_capacity(ops.len());
        for op in &ops {
            validate_tree(op.tree())?;
            let i = match names.iter().position(|n| n == op.tree()) {
                Some(i) => i,
                None => {
                    names.push(op.tree().to_owned());
                    names.len() - 1
                }
            };
            index.push(i);
        }
        let batch_error = |names: &[String], source: BackendError| StoreError::Batch {
            ops: ops.len(),
            trees: names.to_vec(),
            source,
        };
        let trees = names
            .iter()
            .map(|n| self.db.open_tree(n))
            .collect::<Result<Vec<Tree>, _>>()
            .map_err(|e| batch_error(&names, Box::new(e)))?;

        // sled may run the closure more than once (on a conflict with another
        // transaction); it only reads `ops`, so a retry redoes the same writes.
        let result = trees[..].transaction(
            |views: &Vec<TransactionalTree>| -> ConflictableTransactionResult<(), CasConflict> {
                for (op, &i) in ops.iter().zip(&index) {
                    let view = &views[i];
                    match op {
                        Op::Put { key, value, .. } => {
                            view.insert(key.as_slice(), value.as_slice())?;
                        }
                        Op::Delete { key, .. } => {
                            view.remove(key.as_slice())?;
                        }
                        Op::Expect { tree, key, value } => {
                            let current = view.get(key.as_slice())?;
                            if current.as_deref() != value.as_deref() {
                                return abort(CasConflict {
                                    tree: tree.clone(),
                                    key: key.clone(),
                                    current: current.map(|v| v.to_vec()),
                                });
                            }
                        }
                    }
                }
                Ok(())
            },
        );
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(conflict)) => Err(StoreError::Conflict(conflict)),
            Err(TransactionError::Storage(e)) => Err(batch_error(&names, Box::new(e))),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| StoreError::Flush {
            source: Box::new(e),
        })?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use std::collections::BTreeSet;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    use super::super::conformance;
    use super::*;

    fn store() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("db")).unwrap();
        (dir, s)
    }

    #[test]
    fn basic_ops() {
        conformance::basic_ops(&store().1);
    }

    #[test]
    fn invalid_tree_names() {
        conformance::invalid_tree_names(&store().1);
    }

    #[test]
    fn scans_are_ordered_and_paginated() {
        conformance::scans_are_ordered_and_paginated(&store().1);
    }

    #[test]
    fn cas_conflict() {
        conformance::cas(&store().1);
    }

    #[test]
    fn batch_atomicity() {
        conformance::batch_atomicity(&store().1);
    }

    #[test]
    fn json_helpers() {
        conformance::json(&store().1);
    }

    #[test]
    fn flushed_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = SledStore::open(&path).unwrap();
            s.put_durable("t", b"k", b"v").unwrap();
            s.apply_batch_durable(vec![Op::put("u", *b"k", *b"w")])
                .unwrap();
        }
        let s = SledStore::open(&path).unwrap();
        assert_eq!(s.get("t", b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(s.get("u", b"k").unwrap().as_deref(), Some(&b"w"[..]));
        assert_eq!(s.path(), path);
    }

    #[test]
    fn second_open_of_same_dir_fails_with_path() {
        let (dir, _s) = store();
        let err = SledStore::open(&dir.path().join("db")).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        assert!(err.to_string().contains("db"), "{err}");
    }

    // ---- crash test: a child process is killed with SIGKILL while writing ----

    const CRASH_DIR_ENV: &str = "OTA_SLED_CRASH_CHILD_DIR";
    /// The child stops by itself after this many rounds if nobody kills it.
    const CRASH_MAX_ROUNDS: u64 = 100_000;
    /// The parent kills the child after this many reported rounds.
    const CRASH_KILL_AFTER: usize = 60;

    fn crash_value(i: u64) -> Vec<u8> {
        format!("value-{i}-")
            .repeat((i % 40 + 1) as usize)
            .into_bytes()
    }

    /// Child half of `killed_writer_keeps_every_flushed_entry`: a no-op unless the parent
    /// re-executes this test binary with `CRASH_DIR_ENV` set.
    #[test]
    fn crash_child_writer() {
        let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
            return;
        };
        let s = SledStore::open(Path::new(&dir)).unwrap();
        let mut out = std::io::stdout().lock();
        // libtest has printed "test <name> ... " without a newline; end that line.
        writeln!(out).unwrap();
        for i in 0..CRASH_MAX_ROUNDS {
            let key = i.to_be_bytes();
            s.put_durable("plain", &key, &crash_value(i)).unwrap();
            s.apply_batch_durable(vec![
                Op::put("batch_a", key, crash_value(i)),
                Op::put("batch_b", key, crash_value(i)),
            ])
            .unwrap();
            // Unflushed batches: whatever part of these sled's background flusher wrote
            // out before the kill must be whole batches.
            for j in 0..4u64 {
                let k = (i * 4 + j).to_be_bytes();
                s.apply_batch(vec![
                    Op::put("loose_a", k, crash_value(i)),
                    Op::put("loose_b", k, crash_value(i)),
                ])
                .unwrap();
            }
            writeln!(out, "flushed {i}").unwrap();
            out.flush().unwrap();
        }
    }

    #[test]
    fn killed_writer_keeps_every_flushed_entry() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let test_path = module_path!().split_once("::").unwrap().1;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{test_path}::crash_child_writer")])
            .args(["--nocapture", "--test-threads=1"])
            .env(CRASH_DIR_ENV, &db)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut flushed = Vec::new();
        let parse = |line: &str| {
            line.strip_prefix("flushed ")
                .map(|n| n.parse::<u64>().unwrap())
        };
        while flushed.len() < CRASH_KILL_AFTER {
            let line = lines
                .next()
                .expect("child exited before reporting enough rounds")
                .unwrap();
            flushed.extend(parse(&line));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Rounds reported between our last read and the kill count too.
        for line in lines {
            flushed.extend(parse(&line.unwrap()));
        }
        let last = *flushed.last().unwrap();
        assert!(
            last + 1 < CRASH_MAX_ROUNDS,
            "child finished before it was killed"
        );
        assert_eq!(flushed, (0..=last).collect::<Vec<_>>());

        let s = SledStore::open(&db).unwrap();
        for &i in &flushed {
            let key = i.to_be_bytes();
            for tree in ["plain", "batch_a", "batch_b"] {
                assert_eq!(
                    s.get(tree, &key).unwrap(),
                    Some(crash_value(i)),
                    "{tree}/{i} lost"
                );
            }
        }
        // Whatever else survived is intact, and batches are whole.
        for tree in ["plain", "batch_a", "batch_b"] {
            for (k, v) in s.scan_prefix(tree, b"").unwrap() {
                let i = u64::from_be_bytes(k.as_slice().try_into().unwrap());
                assert_eq!(v, crash_value(i), "{tree}/{i} corrupt");
            }
        }
        let keys = |tree: &str| -> BTreeSet<Vec<u8>> {
            s.scan_prefix(tree, b"")
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys("batch_a"), keys("batch_b"), "a flushed batch was torn");
        assert_eq!(
            keys("loose_a"),
            keys("loose_b"),
            "an unflushed batch was torn"
        );
        for (k, v) in s.scan_prefix("loose_a", b"").unwrap() {
            let i = u64::from_be_bytes(k.as_slice().try_into().unwrap()) / 4;
            assert_eq!(v, crash_value(i));
        }
    }
}
