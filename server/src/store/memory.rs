//! In-memory [`Store`] for unit tests: sorted maps behind one mutex.
//!
//! Same semantics as the sled backend (validation, ordering, atomic batches, CAS), no
//! durability: `flush` does nothing.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use super::{scan_start, validate_tree, CasConflict, Entries, Op, Store, StoreError};

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;
type Trees = BTreeMap<String, Tree>;

/// A [`Store`] held in memory; everything is lost on drop.
#[derive(Debug, Default)]
pub struct MemoryStore {
    trees: Mutex<Trees>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Trees> {
        // Every mutation below completes before the guard drops (no panicking calls in
        // between), so a poisoned lock still guards consistent maps.
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        validate_tree(tree)?;
        Ok(self.lock().get(tree).and_then(|t| t.get(key)).cloned())
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        validate_tree(tree)?;
        self.lock()
            .entry(tree.to_owned())
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&self, tree: &str, key: &[u8]) -> Result<bool, StoreError> {
        validate_tree(tree)?;
        Ok(self
            .lock()
            .get_mut(tree)
            .and_then(|t| t.remove(key))
            .is_some())
    }

    fn scan(
        &self,
        tree: &str,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        validate_tree(tree)?;
        let trees = self.lock();
        let Some(t) = trees.get(tree) else {
            return Ok(Vec::new());
        };
        let (start, exclusive) = scan_start(prefix, start_after);
        let lower = if exclusive {
            Bound::Excluded(start.to_vec())
        } else {
            Bound::Included(start.to_vec())
        };
        Ok(t.range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasConflict>, StoreError> {
        validate_tree(tree)?;
        let mut trees = self.lock();
        let t = trees.entry(tree.to_owned()).or_default();
        let current = t.get(key);
        if current.map(Vec::as_slice) != expected {
            return Ok(Err(CasConflict {
                tree: tree.to_owned(),
                key: key.to_vec(),
                current: current.cloned(),
            }));
        }
        match new {
            Some(v) => t.insert(key.to_vec(), v.to_vec()),
            None => t.remove(key),
        };
        Ok(Ok(()))
    }

    fn apply_batch(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        for op in &ops {
            validate_tree(op.tree())?;
        }
        let mut trees = self.lock();
        // Apply in order, keeping the previous value of every written key; on a failed
        // precondition, undo in reverse so the batch leaves no trace.
        let mut undo: Vec<(String, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut conflict = None;
        for op in ops {
            match op {
                Op::Put { tree, key, value } => {
                    let prev = trees
                        .entry(tree.clone())
                        .or_default()
                        .insert(key.clone(), value);
                    undo.push((tree, key, prev));
                }
                Op::Delete { tree, key } => {
                    let prev = trees.get_mut(&tree).and_then(|t| t.remove(&key));
                    undo.push((tree, key, prev));
                }
                Op::Expect { tree, key, value } => {
                    let current = trees.get(&tree).and_then(|t| t.get(&key));
                    if current != value.as_ref() {
                        let current = current.cloned();
                        conflict = Some(CasConflict { tree, key, current });
                        break;
                    }
                }
            }
        }
        let Some(conflict) = conflict else {
            return Ok(());
        };
        for (tree, key, prev) in undo.into_iter().rev() {
            let t = trees.entry(tree).or_default();
            match prev {
                Some(v) => t.insert(key, v),
                None => t.remove(&key),
            };
        }
        Err(StoreError::Conflict(conflict))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::super::conformance;
    use super::*;

    #[test]
    fn basic_ops() {
        conformance::basic_ops(&MemoryStore::new());
    }

    #[test]
    fn invalid_tree_names() {
        conformance::invalid_tree_names(&MemoryStore::new());
    }

    #[test]
    fn scans_are_ordered_and_paginated() {
        conformance::scans_are_ordered_and_paginated(&MemoryStore::new());
    }

    #[test]
    fn cas_conflict() {
        conformance::cas(&MemoryStore::new());
    }

    #[test]
    fn batch_atomicity() {
        conformance::batch_atomicity(&MemoryStore::new());
    }

    #[test]
    fn json_helpers() {
        conformance::json(&MemoryStore::new());
    }
}
