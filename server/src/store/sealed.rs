//! Encryption at rest of device data: [`SealedStore`] wraps any [`Store`] and encrypts the
//! values of a fixed set of trees ([`SEALED_TREES`]); every other tree passes through.
//!
//! # Format
//! A sealed value is `MAGIC ‖ nonce (24) ‖ XChaCha20-Poly1305 ciphertext ‖ tag (16)` with
//! `nonce = HMAC-SHA256(mac_key, loc ‖ value)[..24]` and associated data `loc`, where
//! `loc = len(tree) ‖ tree ‖ len(key) ‖ key` (lengths as 8 big-endian bytes). So:
//! - a value copied to another key or tree fails authentication (the location is bound);
//! - the encryption is deterministic (SIV-style): the same plaintext at the same location
//!   always gives the same bytes. That is what lets [`Op::Expect`] and
//!   [`Store::compare_and_swap`], which compare *stored* bytes, keep working: the wrapper
//!   seals the expected plaintext and compares ciphertexts. The price, and the only thing
//!   an observer of the files learns beyond sizes, is whether a value was rewritten with
//!   the same content.
//!
//! Keys stay in clear: they are device ids, report ids and sequence numbers that give the
//! trees their order. A value without the magic in a sealed tree is an error
//! ([`SealFailure::NotSealed`]), never returned as is.
//!
//! # The key
//! One 32-byte master key in a file (64 hex digits, mode 0600), see [`SealedStore::open`].
//! Encryption and nonce keys are derived from it with HMAC-SHA256 under distinct labels.
//! The store keeps HMAC(mac_key, "ota store key check") in [`META_TREE`] so that a wrong
//! key is refused at start, and a missing key file is never silently replaced while the
//! store holds data sealed under the old one.
//!
//! # Upgrades
//! At open, trees of the sealed set not yet recorded in [`META_TREE`] (all of them on the
//! first start of a store written in clear) have their plaintext values sealed in place,
//! page by page; this is idempotent, so a crash in the middle is finished on the next
//! start. The old plaintext may stay in sled's log segments until sled rewrites them.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{validate_tree, CasConflict, Entries, Op, Store, StoreError};
use crate::fsutil::{self, FsError};

/// First bytes of every sealed value (format version 1).
pub const MAGIC: &[u8] = b"ota-sealed-v1\0";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + NONCE_LEN;

/// Tree holding the key check and the list of trees already sealed (plain values).
pub const META_TREE: &str = "store_meta";
const KEY_CHECK: &[u8] = b"key_check";
const SEALED_LIST: &[u8] = b"sealed_trees";
/// Default name of the key file in the data directory.
pub const KEY_FILE_NAME: &str = "store.key";
/// Entries per batch when sealing existing plaintext at open.
const UPGRADE_PAGE: usize = 256;

/// The trees whose values the server encrypts: device records, status reports, the
/// anomaly feed, operation logs and their heads, deployment progress per device, and
/// enrollment tokens (which name the device and operator). Not sealed, because their
/// values are only keys of sealed trees, which are in clear anyway: the status-id and
/// per-device anomaly indexes, tombstones (id and time). Not device data: TUF metadata,
/// releases, the audit log (hash-chained, readable by operators), tokens (hashes),
/// sessions, groups and deployments.
pub const SEALED_TREES: &[&str] = &[
    crate::devices::record::DEVICES_TREE,
    crate::devices::record::STATUS_TREE,
    crate::devices::record::ANOMALIES_TREE,
    crate::devices::record::OPLOG_TREE,
    crate::devices::record::OPLOG_HEADS_TREE,
    crate::devices::record::ENROLL_TOKENS_TREE,
    crate::deployments::model::DEPLOYMENT_DEVICES_TREE,
];

type HmacSha256 = Hmac<Sha256>;

/// Why a value of a sealed tree could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealFailure {
    /// The stored value lacks the [`MAGIC`] header: written in clear behind the wrapper.
    #[error("value is stored in clear in a tree that must be encrypted")]
    NotSealed,
    /// Shorter than header and tag.
    #[error("sealed value truncated to {len} bytes")]
    Truncated {
        /// Stored length.
        len: usize,
    },
    /// The tag does not verify.
    #[error("authentication failed: value altered, moved from another key or tree, or sealed with another key")]
    Authentication,
    /// The cipher refused to encrypt (value too long for the AEAD).
    #[error("encryption failed")]
    Encrypt,
}

/// Why [`SealedStore::open`] refused to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealedOpenError {
    /// The key file exists but could not be read or inspected.
    #[error("reading store key file {path}: {source}")]
    ReadKey {
        /// Key file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold 32 raw bytes or 64 hex digits.
    #[error(
        "store key file {path} must hold 64 hex digits (or 32 raw bytes), found {actual} bytes"
    )]
    KeyLength {
        /// Key file.
        path: PathBuf,
        /// Its length, trailing whitespace removed.
        actual: usize,
    },
    /// Group or others may read or write the key file.
    #[error("store key file {path} is accessible by group or others (mode {mode:04o}); run chmod 600 on it")]
    KeyPermissions {
        /// Key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A new key file could not be written.
    #[error("writing new store key file {path}: {source}")]
    WriteKey {
        /// Key file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: FsError,
    },
    /// No key file, but the store holds data sealed under some key.
    #[error("store key file {path} is missing but the store already holds encrypted device data; restore the key file or set [store] key_file to it (a new key could not read that data)")]
    KeyMissing {
        /// Where the key was looked for.
        path: PathBuf,
    },
    /// The key file does not match the key check in the store.
    #[error("store key file {path} is not the key this store was encrypted with (the key check in tree {META_TREE} differs)")]
    WrongKey {
        /// Key file.
        path: PathBuf,
    },
    /// A tree sealed by an earlier start is no longer in the sealed set.
    #[error("tree {tree} holds encrypted values but is not in the set of encrypted trees")]
    TreeDropped {
        /// The tree.
        tree: String,
    },
    /// A name in the sealed set is invalid or is the meta tree.
    #[error("invalid sealed tree {tree:?}")]
    BadTree {
        /// The tree.
        tree: String,
    },
    /// The store failed (reading the key check, sealing existing values).
    #[error("opening the encrypted store: {0}")]
    Store(#[from] StoreError),
}

/// The 32-byte master key, zeroed on drop.
pub struct StoreKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

impl StoreKey {
    /// A fresh random key from the OS.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        StoreKey(k)
    }

    /// Reads a key file: `None` if it does not exist. Refuses files that group or others
    /// can access (like ssh) and anything but 64 hex digits (optionally followed by
    /// whitespace) or exactly 32 raw bytes.
    pub fn read(path: &Path) -> Result<Option<Self>, SealedOpenError> {
        let read_err = |source| SealedOpenError::ReadKey {
            path: path.to_path_buf(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SealedOpenError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(read_err)?);
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() == 32 {
            key.copy_from_slice(&bytes);
            return Ok(Some(StoreKey(key)));
        }
        let text = bytes.trim_ascii_end();
        if text.len() != 64 || hex::decode_to_slice(text, key.as_mut()).is_err() {
            return Err(SealedOpenError::KeyLength {
                path: path.to_path_buf(),
                actual: text.len(),
            });
        }
        Ok(Some(StoreKey(key)))
    }

    /// Writes the key as 64 hex digits to `path`: mode 0600 from the first byte, then
    /// fsync, rename, fsync of the directory (which must exist).
    pub fn write_new(&self, path: &Path) -> Result<(), SealedOpenError> {
        let write_err = |source| SealedOpenError::WriteKey {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let (mut file, tmp) = fsutil::create_temp(dir).map_err(write_err)?;
        let io_err = |op, source| FsError {
            op,
            path: tmp.clone(),
            source,
        };
        let mut text = Zeroizing::new(hex::encode(self.0.as_ref()).into_bytes());
        text.push(b'\n');
        let written = file
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("chmod 600", e))
            .and_then(|()| file.write_all(&text).map_err(|e| io_err("write", e)))
            .and_then(|()| fsutil::persist(file, &tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(write_err)
    }
}

/// HMAC-SHA256 keyed with a 32-byte key. HMAC pads keys shorter than the 64-byte block
/// with zeros, so keying with the zero-padded block is the same function, and infallible.
fn hmac(key: &[u8; 32]) -> HmacSha256 {
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    <HmacSha256 as KeyInit>::new(&(*block).into())
}

fn derive(master: &StoreKey, label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = hmac(&master.0);
    mac.update(label);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// `len(tree) ‖ tree ‖ len(key) ‖ key`: the associated data and the nonce's prefix.
fn location(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut loc = Vec::with_capacity(16 + tree.len() + key.len());
    loc.extend_from_slice(&(tree.len() as u64).to_be_bytes());
    loc.extend_from_slice(tree.as_bytes());
    loc.extend_from_slice(&(key.len() as u64).to_be_bytes());
    loc.extend_from_slice(key);
    loc
}

fn seal_error(op: &'static str, tree: &str, key: &[u8], failure: SealFailure) -> StoreError {
    StoreError::Sealed {
        op,
        tree: tree.to_owned(),
        key: key.to_vec(),
        failure,
    }
}

/// A [`Store`] that encrypts the values of some trees; see the module docs.
pub struct SealedStore {
    inner: Arc<dyn Store>,
    trees: BTreeSet<String>,
    cipher: XChaCha20Poly1305,
    mac_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStore")
            .field("inner", &self.inner)
            .field("trees", &self.trees)
            .finish_non_exhaustive()
    }
}

impl SealedStore {
    /// Wraps `inner`, sealing the values of `trees` (the server passes [`SEALED_TREES`])
    /// with the key in `key_file`.
    ///
    /// A missing key file is created (random key, mode 0600) only if the store holds no
    /// sealed data; otherwise this fails with [`SealedOpenError::KeyMissing`]. A key that
    /// does not match the store's key check fails with [`SealedOpenError::WrongKey`].
    /// Plaintext values left in newly sealed trees are sealed before this returns.
    pub fn open(
        inner: Arc<dyn Store>,
        key_file: &Path,
        trees: &[&str],
    ) -> Result<Self, SealedOpenError> {
        for t in trees {
            if validate_tree(t).is_err() || *t == META_TREE {
                return Err(SealedOpenError::BadTree {
                    tree: (*t).to_owned(),
                });
            }
        }
        let key = match StoreKey::read(key_file)? {
            Some(k) => k,
            None => {
                if inner.get(META_TREE, KEY_CHECK)?.is_some() || holds_sealed(&*inner, trees)? {
                    return Err(SealedOpenError::KeyMissing {
                        path: key_file.to_path_buf(),
                    });
                }
                let k = StoreKey::generate();
                k.write_new(key_file)?;
                tracing::info!(path = %key_file.display(), "created the store encryption key");
                k
            }
        };
        let store = SealedStore {
            inner,
            trees: trees.iter().map(|t| (*t).to_owned()).collect(),
            cipher: XChaCha20Poly1305::new(derive(&key, b"ota store enc v1").as_ref().into()),
            mac_key: derive(&key, b"ota store mac v1"),
        };
        store.check_key(key_file)?;
        store.seal_new_trees()?;
        Ok(store)
    }

    /// The wrapped store (raw, sealed bytes).
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// Whether values of `tree` are encrypted.
    pub fn is_sealed(&self, tree: &str) -> bool {
        self.trees.contains(tree)
    }

    /// Compares the stored key check with this key, or records it on first use (before
    /// any value is sealed, so sealed data never exists without it).
    fn check_key(&self, key_file: &Path) -> Result<(), SealedOpenError> {
        let mut mac = hmac(&self.mac_key);
        mac.update(b"ota store key check");
        let check = mac.finalize().into_bytes();
        match self.inner.get(META_TREE, KEY_CHECK)? {
            Some(stored) if bool::from(stored.as_slice().ct_eq(&check[..])) => Ok(()),
            Some(_) => Err(SealedOpenError::WrongKey {
                path: key_file.to_path_buf(),
            }),
            None => Ok(self.inner.put_durable(META_TREE, KEY_CHECK, &check)?),
        }
    }

    /// Seals plaintext values of trees not yet recorded as sealed, then records them.
    fn seal_new_trees(&self) -> Result<(), SealedOpenError> {
        let recorded: BTreeSet<String> = match self.inner.get(META_TREE, SEALED_LIST)? {
            Some(bytes) => super::decode_json(META_TREE, SEALED_LIST, &bytes)?,
            None => BTreeSet::new(),
        };
        if let Some(tree) = recorded.difference(&self.trees).next() {
            return Err(SealedOpenError::TreeDropped { tree: tree.clone() });
        }
        if recorded == self.trees {
            return Ok(());
        }
        for tree in self.trees.difference(&recorded) {
            let n = self.seal_existing(tree)?;
            if n > 0 {
                tracing::info!(tree = %tree, values = n, "encrypted values stored in clear");
            }
        }
        let list = serde_json::to_vec(&self.trees).map_err(|source| StoreError::Encode {
            tree: META_TREE.to_owned(),
            key: SEALED_LIST.to_vec(),
            type_name: "BTreeSet<String>",
            source,
        })?;
        Ok(self.inner.put_durable(META_TREE, SEALED_LIST, &list)?)
    }

    /// Seals every plaintext value of `tree` in place; already sealed ones are checked.
    fn seal_existing(&self, tree: &str) -> Result<usize, StoreError> {
        let mut sealed = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.inner.scan(tree, b"", after.as_deref(), UPGRADE_PAGE)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            let mut ops = Vec::new();
            for (k, v) in page {
                if v.starts_with(MAGIC) {
                    self.open_value("upgrade", tree, &k, &v)?;
                    continue;
                }
                let s = self.seal(tree, &k, &v)?;
                ops.push(Op::expect(tree, k.clone(), Some(v)));
                ops.push(Op::put(tree, k, s));
                sealed += 1;
            }
            if !ops.is_empty() {
                self.inner.apply_batch_durable(ops)?;
            }
        }
        Ok(sealed)
    }

    fn seal(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let loc = location(tree, key);
        let mut mac = hmac(&self.mac_key);
        mac.update(&loc);
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&digest[..NONCE_LEN]);
        let mut out = Vec::with_capacity(HEADER_LEN + value.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&XNonce::from(nonce), &loc, &mut out[HEADER_LEN..])
            .map_err(|_| seal_error("seal", tree, key, SealFailure::Encrypt))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    fn open_value(
        &self,
        op: &'static str,
        tree: &str,
        key: &[u8],
        stored: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let fail = |f| seal_error(op, tree, key, f);
        let body = stored
            .strip_prefix(MAGIC)
            .ok_or_else(|| fail(SealFailure::NotSealed))?;
        let truncated = || fail(SealFailure::Truncated { len: stored.len() });
        let (nonce, rest) = body
            .split_first_chunk::<NONCE_LEN>()
            .ok_or_else(truncated)?;
        let (ciphertext, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or_else(truncated)?;
        let mut plain = ciphertext.to_vec();
        self.cipher
            .decrypt_in_place_detached(
                &XNonce::from(*nonce),
                &location(tree, key),
                &mut plain,
                &Tag::from(*tag),
            )
            .map_err(|_| fail(SealFailure::Authentication))?;
        Ok(plain)
    }

    /// Seals `value` if `tree` is sealed, else copies it.
    fn seal_if(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
        if self.is_sealed(tree) {
            self.seal(tree, key, value)
        } else {
            Ok(value.to_vec())
        }
    }

    /// Opens the value reported by a conflict, so callers see plaintext.
    fn open_conflict(&self, mut c: CasConflict) -> Result<CasConflict, StoreError> {
        if self.is_sealed(&c.tree) {
            if let Some(v) = c.current.take() {
                c.current = Some(self.open_value("compare", &c.tree, &c.key, &v)?);
            }
        }
        Ok(c)
    }
}

/// Whether any value of `trees` carries the sealed header (sealed data without a key check,
/// left by a crash during the first start).
fn holds_sealed(inner: &dyn Store, trees: &[&str]) -> Result<bool, StoreError> {
    for tree in trees {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = inner.scan(tree, b"", after.as_deref(), UPGRADE_PAGE)?;
            if page.iter().any(|(_, v)| v.starts_with(MAGIC)) {
                return Ok(true);
            }
            match page.last() {
                Some((k, _)) => after = Some(k.clone()),
                None => break,
            }
        }
    }
    Ok(false)
}

impl Store for SealedStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self.inner.get(tree, key)?;
        match v {
            Some(v) if self.is_sealed(tree) => self.open_value("get", tree, key, &v).map(Some),
            v => Ok(v),
        }
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if self.is_sealed(tree) {
            self.inner.put(tree, key, &self.seal(tree, key, value)?)
        } else {
            self.inner.put(tree, key, value)
        }
    }

    fn delete(&self, tree: &str, key: &[u8]) -> Result<bool, StoreError> {
        self.inner.delete(tree, key)
    }

    fn scan(
        &self,
        tree: &str,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let mut entries = self.inner.scan(tree, prefix, start_after, limit)?;
        if self.is_sealed(tree) {
            for (k, v) in &mut entries {
                *v = self.open_value("scan", tree, k, v)?;
            }
        }
        Ok(entries)
    }

    fn compare_and_swap(
        &self,
        tree: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasConflict>, StoreError> {
        let expected = expected.map(|v| self.seal_if(tree, key, v)).transpose()?;
        let new = new.map(|v| self.seal_if(tree, key, v)).transpose()?;
        match self
            .inner
            .compare_and_swap(tree, key, expected.as_deref(), new.as_deref())?
        {
            Ok(()) => Ok(Ok(())),
            Err(c) => Ok(Err(self.open_conflict(c)?)),
        }
    }

    fn apply_batch(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut sealed = Vec::with_capacity(ops.len());
        for op in ops {
            sealed.push(match op {
                Op::Put { tree, key, value } if self.is_sealed(&tree) => {
                    let value = self.seal(&tree, &key, &value)?;
                    Op::Put { tree, key, value }
                }
                Op::Expect {
                    tree,
                    key,
                    value: Some(value),
                } if self.is_sealed(&tree) => {
                    let value = Some(self.seal(&tree, &key, &value)?);
                    Op::Expect { tree, key, value }
                }
                other => other,
            });
        }
        match self.inner.apply_batch(sealed) {
            Err(StoreError::Conflict(c)) => Err(StoreError::Conflict(self.open_conflict(c)?)),
            other => other,
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::super::{conformance, memory::MemoryStore, sled::SledStore, StoreExt};
    use super::*;

    /// The conformance suite's trees, `b` left plain so batches mix both kinds.
    const TEST_TREES: &[&str] = &["t", "other", "scan", "cas", "a", "c", "json", "empty-tree"];

    struct Fixture {
        dir: tempfile::TempDir,
        raw: Arc<dyn Store>,
        sealed: SealedStore,
    }

    impl Fixture {
        fn key_file(&self) -> PathBuf {
            self.dir.path().join(KEY_FILE_NAME)
        }
        fn reopen(&self, trees: &[&str]) -> Result<SealedStore, SealedOpenError> {
            SealedStore::open(Arc::clone(&self.raw), &self.key_file(), trees)
        }
    }

    fn memory(trees: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let sealed =
            SealedStore::open(Arc::clone(&raw), &dir.path().join(KEY_FILE_NAME), trees).unwrap();
        Fixture { dir, raw, sealed }
    }

    fn sled() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let sealed = SealedStore::open(
            Arc::clone(&raw),
            &dir.path().join(KEY_FILE_NAME),
            TEST_TREES,
        )
        .unwrap();
        Fixture { dir, raw, sealed }
    }

    #[test]
    fn conformance_over_memory() {
        conformance::basic_ops(&memory(TEST_TREES).sealed);
        conformance::invalid_tree_names(&memory(TEST_TREES).sealed);
        conformance::scans_are_ordered_and_paginated(&memory(TEST_TREES).sealed);
        conformance::cas(&memory(TEST_TREES).sealed);
        conformance::batch_atomicity(&memory(TEST_TREES).sealed);
        conformance::json(&memory(TEST_TREES).sealed);
    }

    #[test]
    fn conformance_over_sled() {
        conformance::basic_ops(&sled().sealed);
        conformance::invalid_tree_names(&sled().sealed);
        conformance::scans_are_ordered_and_paginated(&sled().sealed);
        conformance::cas(&sled().sealed);
        conformance::batch_atomicity(&sled().sealed);
        conformance::json(&sled().sealed);
    }

    #[test]
    fn raw_values_hold_no_plaintext_and_passthrough_stays_plain() {
        let f = memory(SEALED_TREES);
        let devices = crate::devices::record::DEVICES_TREE;
        let value = br#"{"id":"dev-1","attributes":{"site":"berlin-lab-7"}}"#;
        f.sealed.put(devices, b"dev-1", value).unwrap();
        f.sealed.put("tuf", b"root", b"plain-metadata").unwrap();
        let raw = f.raw.get(devices, b"dev-1").unwrap().unwrap();
        assert!(raw.starts_with(MAGIC));
        assert_eq!(raw.len(), HEADER_LEN + value.len() + TAG_LEN);
        assert!(!raw.windows(12).any(|w| w == b"berlin-lab-7"));
        assert!(!raw.windows(5).any(|w| w == b"dev-1"));
        assert_eq!(f.sealed.get(devices, b"dev-1").unwrap().unwrap(), value);
        assert_eq!(
            f.raw.get("tuf", b"root").unwrap().unwrap(),
            b"plain-metadata"
        );
        // Deterministic per location, different across locations.
        f.sealed.put(devices, b"dev-2", value).unwrap();
        let raw2 = f.raw.get(devices, b"dev-2").unwrap().unwrap();
        assert_ne!(raw, raw2);
        f.sealed.put(devices, b"dev-1", value).unwrap();
        assert_eq!(f.raw.get(devices, b"dev-1").unwrap().unwrap(), raw);
    }

    #[test]
    fn moved_tampered_truncated_and_plain_values_are_refused() {
        let f = memory(TEST_TREES);
        f.sealed.put("t", b"k1", b"secret").unwrap();
        let raw = f.raw.get("t", b"k1").unwrap().unwrap();
        let failure = |tree: &str, key: &[u8]| match f.sealed.get(tree, key).unwrap_err() {
            StoreError::Sealed { failure, .. } => failure,
            other => panic!("expected a sealed error, got {other}"),
        };
        // Moved to another key, and to another sealed tree.
        f.raw.put("t", b"k2", &raw).unwrap();
        assert_eq!(failure("t", b"k2"), SealFailure::Authentication);
        f.raw.put("a", b"k1", &raw).unwrap();
        assert_eq!(failure("a", b"k1"), SealFailure::Authentication);
        // Every single flipped byte after the magic is caught.
        for i in MAGIC.len()..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 1;
            f.raw.put("t", b"k1", &bad).unwrap();
            assert_eq!(failure("t", b"k1"), SealFailure::Authentication, "byte {i}");
        }
        f.raw.put("t", b"k1", &raw[..HEADER_LEN + 3]).unwrap();
        assert_eq!(
            failure("t", b"k1"),
            SealFailure::Truncated {
                len: HEADER_LEN + 3
            }
        );
        // Plaintext written behind the wrapper is an error naming tree and key, also in
        // scans.
        f.raw.put("t", b"k1", b"secret").unwrap();
        assert_eq!(failure("t", b"k1"), SealFailure::NotSealed);
        let err = f.sealed.scan_prefix("t", b"k1").unwrap_err();
        assert!(err.to_string().contains("t/k1"), "{err}");
        // An expectation of that plaintext does not match what is stored.
        f.raw.put("t", b"k3", b"secret").unwrap();
        assert!(f
            .sealed
            .compare_and_swap("t", b"k3", Some(b"secret"), None)
            .is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let f = sled();
        f.sealed.put("t", b"k", b"v").unwrap();
        f.sealed.flush().unwrap();
        let meta = std::fs::metadata(f.key_file()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(f.key_file()).unwrap();
        assert_eq!(text.trim_end().len(), 64);
        let again = f.reopen(TEST_TREES).unwrap();
        assert_eq!(again.get("t", b"k").unwrap().unwrap(), b"v");
    }

    #[test]
    fn wrong_key_is_detected_at_open() {
        let f = memory(TEST_TREES);
        f.sealed.put("t", b"k", b"v").unwrap();
        StoreKey::generate().write_new(&f.key_file()).unwrap();
        assert!(matches!(
            f.reopen(TEST_TREES).unwrap_err(),
            SealedOpenError::WrongKey { .. }
        ));
    }

    #[test]
    fn missing_key_with_sealed_data_is_refused_and_not_recreated() {
        let f = memory(TEST_TREES);
        f.sealed.put("t", b"k", b"v").unwrap();
        std::fs::remove_file(f.key_file()).unwrap();
        let err = f.reopen(TEST_TREES).unwrap_err();
        assert!(matches!(err, SealedOpenError::KeyMissing { .. }), "{err}");
        assert!(!f.key_file().exists());
        // Also without the key check (a crash after sealing, before recording it).
        f.raw.delete(META_TREE, KEY_CHECK).unwrap();
        assert!(matches!(
            f.reopen(TEST_TREES).unwrap_err(),
            SealedOpenError::KeyMissing { .. }
        ));
    }

    #[test]
    fn bad_key_files_are_refused() {
        let f = memory(TEST_TREES);
        let path = f.key_file();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = f.reopen(TEST_TREES).unwrap_err();
        assert!(
            matches!(err, SealedOpenError::KeyPermissions { mode: 0o640, .. }),
            "{err}"
        );
        std::fs::write(&path, b"abcd\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            f.reopen(TEST_TREES).unwrap_err(),
            SealedOpenError::KeyLength { actual: 4, .. }
        ));
        std::fs::write(&path, "z".repeat(64)).unwrap();
        assert!(matches!(
            f.reopen(TEST_TREES).unwrap_err(),
            SealedOpenError::KeyLength { actual: 64, .. }
        ));
    }

    #[test]
    fn plaintext_of_an_older_store_is_sealed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
        for i in 0..(UPGRADE_PAGE as u32 + 10) {
            raw.put("t", &i.to_be_bytes(), format!("value-{i}").as_bytes())
                .unwrap();
        }
        raw.put("tuf", b"root", b"plain").unwrap();
        let key_file = dir.path().join(KEY_FILE_NAME);
        let s = SealedStore::open(Arc::clone(&raw), &key_file, &["t"]).unwrap();
        assert!(raw
            .scan_prefix("t", b"")
            .unwrap()
            .iter()
            .all(|(_, v)| v.starts_with(MAGIC)));
        assert_eq!(
            s.get("t", &7u32.to_be_bytes()).unwrap().unwrap(),
            b"value-7"
        );
        assert_eq!(raw.get("tuf", b"root").unwrap().unwrap(), b"plain");
        // A tree added to the set later is sealed on the next open; dropping one is refused.
        raw.put("u", b"k", b"old").unwrap();
        let s = SealedStore::open(Arc::clone(&raw), &key_file, &["t", "u"]).unwrap();
        assert!(raw.get("u", b"k").unwrap().unwrap().starts_with(MAGIC));
        assert_eq!(s.get("u", b"k").unwrap().unwrap(), b"old");
        assert!(matches!(
            SealedStore::open(raw, &key_file, &["t"]).unwrap_err(),
            SealedOpenError::TreeDropped { tree } if tree == "u"
        ));
    }

    #[test]
    fn json_and_expect_round_trip_through_sealed_trees() {
        let f = memory(TEST_TREES);
        f.sealed.put_json("t", b"n", &41u32).unwrap();
        let current = f.sealed.get("t", b"n").unwrap();
        f.sealed
            .apply_batch(vec![
                Op::expect("t", *b"n", current),
                Op::put_json("t", *b"n", &42u32).unwrap(),
            ])
            .unwrap();
        assert_eq!(f.sealed.get_json::<u32>("t", b"n").unwrap(), Some(42));
        // A stale expectation conflicts and reports the current plaintext.
        let err = f
            .sealed
            .apply_batch(vec![Op::expect("t", *b"n", Some(b"41".to_vec()))])
            .unwrap_err();
        match err {
            StoreError::Conflict(c) => assert_eq!(c.current.as_deref(), Some(&b"42"[..])),
            other => panic!("expected conflict, got {other}"),
        }
    }

    #[test]
    fn invalid_sealed_set_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let key_file = dir.path().join(KEY_FILE_NAME);
        for bad in [META_TREE, "Bad"] {
            assert!(matches!(
                SealedStore::open(Arc::clone(&raw), &key_file, &[bad]).unwrap_err(),
                SealedOpenError::BadTree { .. }
            ));
        }
    }
}
