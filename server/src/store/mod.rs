//! The server's state store: named trees of byte keys to byte values.
//!
//! [`Store`] is deliberately narrow (get, put, delete, ordered prefix scans, compare-and-swap,
//! atomic multi-tree batches, flush) so that a PostgreSQL backend can implement it later.
//! It is object-safe: the server holds an `Arc<dyn Store>`. Typed JSON helpers live in
//! [`StoreExt`], implemented for every store (including `dyn Store`).
//!
//! Backends: [`sled::SledStore`] (production, embedded) and [`memory::MemoryStore`] (tests).
//! [`sealed::SealedStore`] wraps a backend and encrypts the values of the device trees
//! ([`sealed::SEALED_TREES`]) at rest; keys stay in clear (ids and ordering). The server
//! always runs behind it; callers see plaintext and need not care.
//!
//! # Durability contract
//! A write is durable only after [`Store::flush`] returns. **Every write that the server
//! acknowledges to a client must be flushed before the answer is sent.** Use
//! [`Store::put_durable`] / [`Store::apply_batch_durable`], or write several things and
//! call `flush` once (a batch is cheaper than one flush per write). Flushing is blocking
//! disk I/O: async callers run it on a blocking thread where latency matters.
//!
//! # Atomicity
//! [`Store::apply_batch`] is atomic across trees: after a crash, all or none of its ops are
//! visible. Single puts outside a batch are not ordered against concurrent batches on the
//! same keys; use a batch with [`Op::Expect`] or [`Store::compare_and_swap`] where two
//! writers can race.

pub mod memory;
pub mod sealed;
pub mod sled;

use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Error from a storage backend, boxed so the trait does not name sled's types.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// Key-value pairs returned by scans, in ascending key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Longest accepted tree name, in bytes.
pub const MAX_TREE_NAME: usize = 64;

/// One write in an atomic batch (see [`Store::apply_batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Set `tree/key` to `value`.
    Put {
        /// Tree name.
        tree: String,
        /// Key bytes.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
    },
    /// Remove `tree/key` (no error if absent).
    Delete {
        /// Tree name.
        tree: String,
        /// Key bytes.
        key: Vec<u8>,
    },
    /// Precondition: abort the whole batch with [`StoreError::Conflict`] unless
    /// `tree/key` holds `value` (`None`: is absent) at this point of the batch
    /// (earlier ops of the same batch are visible).
    Expect {
        /// Tree name.
        tree: String,
        /// Key bytes.
        key: Vec<u8>,
        /// Required current value, `None` for "absent".
        value: Option<Vec<u8>>,
    },
}

impl Op {
    /// `Op::Put` from borrowed parts.
    pub fn put(tree: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            tree: tree.to_owned(),
            key: key.into(),
            value: value.into(),
        }
    }

    /// `Op::Put` of `value` encoded as JSON.
    pub fn put_json<T: Serialize + ?Sized>(
        tree: &str,
        key: impl Into<Vec<u8>>,
        value: &T,
    ) -> Result<Self, StoreError> {
        let key = key.into();
        let value = encode_json(tree, &key, value)?;
        Ok(Op::Put {
            tree: tree.to_owned(),
            key,
            value,
        })
    }

    /// `Op::Delete` from borrowed parts.
    pub fn delete(tree: &str, key: impl Into<Vec<u8>>) -> Self {
        Op::Delete {
            tree: tree.to_owned(),
            key: key.into(),
        }
    }

    /// `Op::Expect`: the batch applies only if `tree/key` currently holds `value`.
    pub fn expect(tree: &str, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) -> Self {
        Op::Expect {
            tree: tree.to_owned(),
            key: key.into(),
            value,
        }
    }

    /// The tree this op touches.
    pub fn tree(&self) -> &str {
        match self {
            Op::Put { tree, .. } | Op::Delete { tree, .. } | Op::Expect { tree, .. } => tree,
        }
    }
}

/// A compare-and-swap or batch precondition that did not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conflict on {tree}/{key}: current value differs from the expected one", key = KeyDisplay(.key))]
pub struct CasConflict {
    /// Tree of the contested key.
    pub tree: String,
    /// The contested key.
    pub key: Vec<u8>,
    /// The value found instead of the expected one (`None`: absent).
    pub current: Option<Vec<u8>>,
}

/// Everything that can go wrong in a [`Store`], naming the tree and key involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not be opened.
    #[error("opening store at {path}: {source}")]
    Open {
        /// Where the store lives.
        path: PathBuf,
        /// Backend error.
        #[source]
        source: BackendError,
    },
    /// A tree name is empty, too long, reserved or has characters outside `[a-z0-9_.-]`.
    #[error("invalid tree name {name:?}: {reason}")]
    InvalidTree {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A single-key operation failed in the backend.
    #[error("{op} {tree}/{key} failed: {source}", key = KeyDisplay(.key))]
    Key {
        /// "get", "put", "delete" or "compare_and_swap".
        op: &'static str,
        /// Tree name.
        tree: String,
        /// Key bytes.
        key: Vec<u8>,
        /// Backend error.
        #[source]
        source: BackendError,
    },
    /// A scan failed in the backend.
    #[error("scan of {tree} with prefix {prefix} failed: {source}", prefix = KeyDisplay(.prefix))]
    Scan {
        /// Tree name.
        tree: String,
        /// Scanned prefix.
        prefix: Vec<u8>,
        /// Backend error.
        #[source]
        source: BackendError,
    },
    /// An atomic batch failed in the backend; none of its ops were applied.
    #[error("batch of {ops} ops over trees {trees:?} failed: {source}")]
    Batch {
        /// Number of ops in the batch.
        ops: usize,
        /// Distinct trees touched.
        trees: Vec<String>,
        /// Backend error.
        #[source]
        source: BackendError,
    },
    /// Flushing to disk failed: writes since the last flush may not be durable.
    #[error("flushing store to disk failed: {source}")]
    Flush {
        /// Backend error.
        #[source]
        source: BackendError,
    },
    /// A value could not be encoded as JSON.
    #[error("encoding {type_name} for {tree}/{key} as JSON: {source}", key = KeyDisplay(.key))]
    Encode {
        /// Tree name.
        tree: String,
        /// Key bytes.
        key: Vec<u8>,
        /// Rust type being encoded.
        type_name: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value is not valid JSON for the requested type.
    #[error("decoding {tree}/{key} as {type_name}: {source}", key = KeyDisplay(.key))]
    Decode {
        /// Tree name.
        tree: String,
        /// Key bytes.
        key: Vec<u8>,
        /// Rust type requested.
        type_name: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// A value of an encrypted tree could not be sealed or opened (see [`sealed`]).
    #[error("{op} {tree}/{key}: {failure}", key = KeyDisplay(.key))]
    Sealed {
        /// "get", "scan", "seal", "compare" or "upgrade".
        op: &'static str,
        /// Tree name.
        tree: String,
        /// Key bytes.
        key: Vec<u8>,
        /// What was wrong with the value.
        failure: sealed::SealFailure,
    },
    /// An [`Op::Expect`] in a batch did not hold; nothing was applied.
    #[error(transparent)]
    Conflict(#[from] CasConflict),
}

/// A store of named trees; see the module docs for the durability contract.
pub trait Store: Send + Sync + fmt::Debug {
    /// Reads `tree/key`.
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Sets `tree/key` to `value` (not durable until [`Store::flush`]).
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    /// Removes `tree/key`; returns whether it existed (not durable until flush).
    fn delete(&self, tree: &str, key: &[u8]) -> Result<bool, StoreError>;

    /// Up to `limit` entries of `tree` whose key starts with `prefix`, in ascending key
    /// order, starting strictly after `start_after` when given (pagination: pass the last
    /// key of the previous page).
    fn scan(
        &self,
        tree: &str,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError>;

    /// Atomically replaces `tree/key` with `new` (`None`: delete) if it currently holds
    /// `expected` (`None`: absent). The inner `Err` reports the value found instead.
    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasConflict>, StoreError>;

    /// Applies `ops` in order, atomically across trees: all or nothing, also after a
    /// crash. A failed [`Op::Expect`] aborts it with [`StoreError::Conflict`].
    fn apply_batch(&self, ops: Vec<Op>) -> Result<(), StoreError>;

    /// Makes every write made so far durable. Call before acknowledging a write.
    fn flush(&self) -> Result<(), StoreError>;

    /// Every entry of `tree` whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, StoreError> {
        self.scan(tree, prefix, None, usize::MAX)
    }

    /// [`Store::put`] then [`Store::flush`].
    fn put_durable(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.put(tree, key, value)?;
        self.flush()
    }

    /// [`Store::apply_batch`] then [`Store::flush`].
    fn apply_batch_durable(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.apply_batch(ops)?;
        self.flush()
    }
}

/// Typed JSON helpers over any [`Store`] (generic, so kept out of the object-safe trait).
pub trait StoreExt: Store {
    /// Reads `tree/key` and decodes it from JSON.
    fn get_json<T: DeserializeOwned>(
        &self,
        tree: &str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.get(tree, key)? {
            None => Ok(None),
            Some(bytes) => decode_json(tree, key, &bytes).map(Some),
        }
    }

    /// Encodes `value` as JSON and stores it at `tree/key` (not durable until flush).
    fn put_json<T: Serialize + ?Sized>(
        &self,
        tree: &str,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = encode_json(tree, key, value)?;
        self.put(tree, key, &bytes)
    }

    /// [`StoreExt::put_json`] then [`Store::flush`].
    fn put_json_durable<T: Serialize + ?Sized>(
        &self,
        tree: &str,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        self.put_json(tree, key, value)?;
        self.flush()
    }

    /// [`Store::scan`] with every value decoded from JSON.
    fn scan_json<T: DeserializeOwned>(
        &self,
        tree: &str,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        self.scan(tree, prefix, start_after, limit)?
            .into_iter()
            .map(|(k, v)| {
                let t = decode_json(tree, &k, &v)?;
                Ok((k, t))
            })
            .collect()
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// Decodes a stored JSON value, naming tree, key and type on failure.
pub fn decode_json<T: DeserializeOwned>(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        tree: tree.to_owned(),
        key: key.to_vec(),
        type_name: std::any::type_name::<T>(),
        source,
    })
}

fn encode_json<T: Serialize + ?Sized>(
    tree: &str,
    key: &[u8],
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        tree: tree.to_owned(),
        key: key.to_vec(),
        type_name: std::any::type_name::<T>(),
        source,
    })
}

/// Checks a tree name: 1..=64 bytes of `[a-z0-9_.-]`, not starting with `__` (sled keeps
/// its own default tree under such a name).
pub fn validate_tree(name: &str) -> Result<(), StoreError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_TREE_NAME {
        Some("longer than 64 bytes")
    } else if name.starts_with("__") {
        Some("names starting with `__` are reserved")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only a-z, 0-9, `_`, `.` and `-` are allowed")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(StoreError::InvalidTree {
            name: name.to_owned(),
            reason,
        }),
    }
}

/// Whether `key` belongs to a scan of `prefix` that starts strictly after `start_after`.
/// Returns the lower bound to start a range at, and whether it is exclusive.
pub(crate) fn scan_start<'a>(prefix: &'a [u8], start_after: Option<&'a [u8]>) -> (&'a [u8], bool) {
    match start_after {
        Some(after) if after >= prefix => (after, true),
        _ => (prefix, false),
    }
}

/// Shows a key as text when it is printable ASCII, else as `0x` + hex.
pub struct KeyDisplay<'a>(pub &'a [u8]);

impl fmt::Display for KeyDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            // Printable ASCII is valid UTF-8.
            f.write_str(&String::from_utf8_lossy(self.0))
        } else {
            write!(f, "0x{}", hex::encode(self.0))
        }
    }
}

/// Behaviour every backend must show; run by each backend's tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
pub(crate) mod conformance {
    use super::*;

    pub fn basic_ops(s: &dyn Store) {
        assert_eq!(s.get("t", b"k").unwrap(), None);
        s.put("t", b"k", b"v1").unwrap();
        assert_eq!(s.get("t", b"k").unwrap().as_deref(), Some(&b"v1"[..]));
        // Trees are separate namespaces.
        assert_eq!(s.get("other", b"k").unwrap(), None);
        s.put("t", b"k", b"v2").unwrap();
        assert_eq!(s.get("t", b"k").unwrap().as_deref(), Some(&b"v2"[..]));
        assert!(s.delete("t", b"k").unwrap());
        assert!(!s.delete("t", b"k").unwrap());
        assert_eq!(s.get("t", b"k").unwrap(), None);
        s.flush().unwrap();
    }

    pub fn invalid_tree_names(s: &dyn Store) {
        for bad in [
            "",
            "__sled__default",
            "Upper",
            "a/b",
            "x".repeat(65).as_str(),
        ] {
            let err = s.get(bad, b"k").unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidTree { .. }),
                "{bad:?}: {err}"
            );
            let err = s.apply_batch(vec![Op::put(bad, *b"k", *b"v")]).unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidTree { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    pub fn scans_are_ordered_and_paginated(s: &dyn Store) {
        for i in [3u64, 1, 2, 10, 256] {
            let mut k = b"dev/".to_vec();
            k.extend_from_slice(&i.to_be_bytes());
            s.put("scan", &k, &i.to_be_bytes()).unwrap();
        }
        s.put("scan", b"dea", b"before").unwrap();
        s.put("scan", b"dez", b"after").unwrap();
        let all = s.scan_prefix("scan", b"dev/").unwrap();
        let order: Vec<u64> = all
            .iter()
            .map(|(_, v)| u64::from_be_bytes(v.as_slice().try_into().unwrap()))
            .collect();
        assert_eq!(order, vec![1, 2, 3, 10, 256]);
        // Pages of two, each starting after the previous page's last key.
        let mut seen = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = s.scan("scan", b"dev/", after.as_deref(), 2).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 2);
            after = Some(page.last().unwrap().0.clone());
            seen.extend(page.into_iter().map(|(k, _)| k));
        }
        assert_eq!(seen, all.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());
        // A start key before the prefix does not leak keys outside it.
        let page = s.scan("scan", b"dev/", Some(b"a"), 10).unwrap();
        assert_eq!(page.len(), 5);
        assert_eq!(s.scan("scan", b"dev/", None, 0).unwrap().len(), 0);
        assert_eq!(s.scan_prefix("scan", b"").unwrap().len(), 7);
        assert!(s.scan_prefix("empty-tree", b"").unwrap().is_empty());
    }

    pub fn cas(s: &dyn Store) {
        // Create if absent.
        s.compare_and_swap("cas", b"k", None, Some(b"1"))
            .unwrap()
            .unwrap();
        // Absent expected, but present: conflict reports the current value.
        let c = s
            .compare_and_swap("cas", b"k", None, Some(b"x"))
            .unwrap()
            .unwrap_err();
        assert_eq!(c.current.as_deref(), Some(&b"1"[..]));
        assert_eq!(c.tree, "cas");
        assert_eq!(c.key, b"k");
        // Wrong expected value: conflict, value unchanged.
        let c = s
            .compare_and_swap("cas", b"k", Some(b"0"), Some(b"2"))
            .unwrap()
            .unwrap_err();
        assert_eq!(c.current.as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get("cas", b"k").unwrap().as_deref(), Some(&b"1"[..]));
        // Right expected value: swapped.
        s.compare_and_swap("cas", b"k", Some(b"1"), Some(b"2"))
            .unwrap()
            .unwrap();
        assert_eq!(s.get("cas", b"k").unwrap().as_deref(), Some(&b"2"[..]));
        // Delete via CAS.
        s.compare_and_swap("cas", b"k", Some(b"2"), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.get("cas", b"k").unwrap(), None);
        let c = s
            .compare_and_swap("cas", b"k", Some(b"2"), None)
            .unwrap()
            .unwrap_err();
        assert_eq!(c.current, None);
    }

    pub fn batch_atomicity(s: &dyn Store) {
        s.put("a", b"existing", b"old").unwrap();
        s.apply_batch(vec![
            Op::put("a", *b"1", *b"x"),
            Op::put("b", *b"1", *b"y"),
            Op::delete("a", *b"existing"),
            // Sees the batch's own earlier write.
            Op::expect("b", *b"1", Some(b"y".to_vec())),
        ])
        .unwrap();
        assert_eq!(s.get("a", b"1").unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(s.get("b", b"1").unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(s.get("a", b"existing").unwrap(), None);

        // A failed precondition at the end undoes every earlier op of the batch.
        let err = s
            .apply_batch(vec![
                Op::put("a", *b"2", *b"x"),
                Op::put("c", *b"2", *b"z"),
                Op::delete("b", *b"1"),
                Op::put("a", *b"1", *b"overwritten"),
                Op::expect("a", *b"missing", Some(b"v".to_vec())),
            ])
            .unwrap_err();
        match err {
            StoreError::Conflict(c) => {
                assert_eq!(
                    (c.tree.as_str(), c.key.as_slice(), c.current),
                    ("a", &b"missing"[..], None)
                );
            }
            other => panic!("expected conflict, got {other}"),
        }
        assert_eq!(s.get("a", b"2").unwrap(), None);
        assert_eq!(s.get("c", b"2").unwrap(), None);
        assert_eq!(s.get("b", b"1").unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(s.get("a", b"1").unwrap().as_deref(), Some(&b"x"[..]));

        // An invalid tree anywhere rejects the batch before anything is applied.
        let err = s
            .apply_batch(vec![
                Op::put("a", *b"3", *b"x"),
                Op::put("BAD", *b"3", *b"x"),
            ])
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidTree { .. }));
        assert_eq!(s.get("a", b"3").unwrap(), None);
        s.apply_batch(Vec::new()).unwrap();
        s.apply_batch_durable(vec![Op::put("a", *b"4", *b"d")])
            .unwrap();
        assert_eq!(s.get("a", b"4").unwrap().as_deref(), Some(&b"d"[..]));
    }

    pub fn json(s: &dyn Store) {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Rec {
            name: String,
            n: u32,
        }
        let rec = Rec {
            name: "dev-1".into(),
            n: 7,
        };
        s.put_json("json", b"r", &rec).unwrap();
        assert_eq!(s.get_json::<Rec>("json", b"r").unwrap(), Some(rec));
        assert_eq!(s.get_json::<Rec>("json", b"none").unwrap(), None);
        s.put("json", b"bad", b"{not json").unwrap();
        let err = s.get_json::<Rec>("json", b"bad").unwrap_err();
        match &err {
            StoreError::Decode {
                tree,
                key,
                type_name,
                ..
            } => {
                assert_eq!(tree, "json");
                assert_eq!(key, b"bad");
                assert!(type_name.ends_with("Rec"));
            }
            other => panic!("expected decode error, got {other}"),
        }
        assert!(err.to_string().contains("json/bad"), "{err}");
        s.put_json_durable(
            "json",
            b"r2",
            &Rec {
                name: "b".into(),
                n: 1,
            },
        )
        .unwrap();
        let ops = vec![Op::put_json(
            "json",
            *b"r3",
            &Rec {
                name: "c".into(),
                n: 2,
            },
        )
        .unwrap()];
        s.apply_batch(ops).unwrap();
        let all: Vec<(Vec<u8>, Rec)> = s.scan_json("json", b"r", None, 10).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].1.name, "c");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    #[test]
    fn tree_names() {
        for good in ["devices", "audit_head", "a.b-c_9", "x".repeat(64).as_str()] {
            validate_tree(good).unwrap();
        }
        for bad in [
            "",
            "__x",
            "Devices",
            "a b",
            "a/b",
            "ü",
            "x".repeat(65).as_str(),
        ] {
            assert!(validate_tree(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_display() {
        assert_eq!(KeyDisplay(b"dev/1").to_string(), "dev/1");
        assert_eq!(KeyDisplay(&[0, 1, 0xff]).to_string(), "0x0001ff");
        let err = StoreError::Key {
            op: "get",
            tree: "t".into(),
            key: vec![0, 2],
            source: "boom".into(),
        };
        assert_eq!(err.to_string(), "get t/0x0002 failed: boom");
    }

    #[test]
    fn scan_start_picks_the_later_bound() {
        assert_eq!(scan_start(b"p/", None), (&b"p/"[..], false));
        assert_eq!(scan_start(b"p/", Some(b"a")), (&b"p/"[..], false));
        assert_eq!(scan_start(b"p/", Some(b"p/5")), (&b"p/5"[..], true));
        assert_eq!(scan_start(b"p/", Some(b"p/")), (&b"p/"[..], true));
    }

    #[test]
    fn store_is_object_safe_and_ext_works_on_dyn() {
        let s: std::sync::Arc<dyn Store> = std::sync::Arc::new(memory::MemoryStore::new());
        s.put_json("t", b"k", &5u8).unwrap();
        assert_eq!(s.get_json::<u8>("t", b"k").unwrap(), Some(5));
    }
}
