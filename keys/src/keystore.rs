//! A directory of encrypted key files, and choosing which keys to unlock.
//!
//! Files are named `<label>-<first 16 hex of key id>.key.json`; anything else in the
//! directory is ignored. The directory is created 0700. Keys are looked up by key id (or a
//! unique prefix of at least 8 hex digits) or by path, and unlocked with one passphrase.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ota_common::keys::{KeyId, SigningKey};

use crate::durable;
use crate::error::{Error, Result};
use crate::keyfile::{EncryptedKey, KdfParams, KeyfileError};
use crate::passphrase::Passphrase;

/// Suffix of key files in a key store.
pub const KEY_FILE_SUFFIX: &str = ".key.json";
/// Shortest key id prefix accepted when naming a key.
pub const MIN_PREFIX: usize = 8;

/// A directory of key files.
#[derive(Clone, Debug)]
pub struct KeyStore {
    dir: PathBuf,
}

/// Keys unlocked, and those skipped because the passphrase did not open them.
#[derive(Debug, Default)]
pub struct Unlocked {
    /// Decrypted keys.
    pub keys: Vec<SigningKey>,
    /// Keys that another passphrase protects (each a [`KeyfileError::WrongPassphrase`]).
    pub skipped: Vec<KeyfileError>,
}

impl KeyStore {
    /// A key store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KeyStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every key file, sorted by label then key id. A missing directory holds no keys.
    pub fn list(&self) -> Result<Vec<EncryptedKey>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list key directory", &self.dir, e)),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list key directory", &self.dir, e))?;
            let path = entry.path();
            let is_key = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(KEY_FILE_SUFFIX) && !n.starts_with('.'));
            if is_key {
                keys.push(EncryptedKey::read(&path)?);
            }
        }
        keys.sort_by(|a, b| (a.label(), a.key_id()).cmp(&(b.label(), b.key_id())));
        Ok(keys)
    }

    /// Encrypts `key` into a new file of the store.
    pub fn store(
        &self,
        key: &SigningKey,
        label: &str,
        passphrase: &Passphrase,
        kdf: KdfParams,
    ) -> Result<EncryptedKey> {
        durable::create_private_dir(&self.dir)?;
        let mut enc = EncryptedKey::encrypt(key, label, passphrase, kdf)?;
        let id = key.key_id().0;
        let name = format!(
            "{}-{}{KEY_FILE_SUFFIX}",
            file_safe(label),
            &id[..16.min(id.len())]
        );
        enc.write_new(&self.dir.join(name))?;
        Ok(enc)
    }

    /// Generates a key and stores it.
    pub fn generate(
        &self,
        label: &str,
        passphrase: &Passphrase,
        kdf: KdfParams,
    ) -> Result<(SigningKey, EncryptedKey)> {
        let key = SigningKey::generate();
        let enc = self.store(&key, label, passphrase, kdf)?;
        Ok((key, enc))
    }

    /// Finds a key by path to a key file, full key id, or unique id prefix.
    pub fn find(&self, spec: &str) -> Result<EncryptedKey> {
        let as_path = Path::new(spec);
        if spec.ends_with(".json") && as_path.is_file() {
            return Ok(EncryptedKey::read(as_path)?);
        }
        let spec_lc = spec.to_ascii_lowercase();
        let matches: Vec<EncryptedKey> = self
            .list()?
            .into_iter()
            .filter(|k| {
                k.key_id().0 == spec_lc
                    || (spec_lc.len() >= MIN_PREFIX && k.key_id().0.starts_with(&spec_lc))
            })
            .collect();
        match matches.len() {
            0 => Err(Error::UnknownKeyId {
                key_id: spec.into(),
                context: format!(
                    "no key file in {} has this id (give a full id, a prefix of at least {MIN_PREFIX} hex digits, or a key file path)",
                    self.dir.display()
                ),
            }),
            1 => Ok(matches.into_iter().next().ok_or_else(|| Error::Invalid("lost match".into()))?),
            _ => Err(Error::AmbiguousKeyId {
                prefix: spec.into(),
                matches: matches.iter().map(|k| k.key_id().0.clone()).collect(),
            }),
        }
    }

    /// The keys in the store whose ids are in `ids`.
    pub fn with_ids(&self, ids: &BTreeSet<KeyId>) -> Result<Vec<EncryptedKey>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|k| ids.contains(k.key_id()))
            .collect())
    }
}

/// Decrypts `keys` with one passphrase.
///
/// With `strict` (keys the user named), any failure is an error. Otherwise keys protected
/// by another passphrase are skipped (k-of-n holders may share a key directory), unless none
/// opens, in which case the first wrong-passphrase error is returned.
pub fn unlock(keys: &[EncryptedKey], passphrase: &Passphrase, strict: bool) -> Result<Unlocked> {
    let mut out = Unlocked::default();
    for k in keys {
        match k.decrypt(passphrase) {
            Ok(key) => out.keys.push(key),
            Err(e @ KeyfileError::WrongPassphrase { .. }) if !strict => out.skipped.push(e),
            Err(e) => return Err(e.into()),
        }
    }
    if out.keys.is_empty() && !out.skipped.is_empty() {
        return Err(out.skipped.remove(0).into());
    }
    Ok(out)
}

/// A label reduced to characters safe in a file name.
fn file_safe(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "key".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.into()).unwrap()
    }

    #[test]
    fn store_list_find_and_unlock() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys"));
        assert!(store.list().unwrap().is_empty());
        let kdf = KdfParams::dangerous_fast();
        let (a, _) = store.generate("root", &pass("aaaa"), kdf).unwrap();
        let (b, enc_b) = store.generate("root/../x", &pass("bbbb"), kdf).unwrap();
        fs::write(store.dir().join("notes.txt"), "ignored").unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 2);
        // The label cannot escape the directory.
        assert_eq!(enc_b.path().unwrap().parent().unwrap(), store.dir());

        let found = store.find(&a.key_id().0[..MIN_PREFIX]).unwrap();
        assert_eq!(found.key_id(), &a.key_id());
        assert!(matches!(store.find("abc"), Err(Error::UnknownKeyId { .. })));
        assert!(matches!(
            store.find("0000000000"),
            Err(Error::UnknownKeyId { .. })
        ));
        let by_path = store.find(enc_b.path().unwrap().to_str().unwrap()).unwrap();
        assert_eq!(by_path.key_id(), &b.key_id());

        // Lenient unlocking skips keys of another holder; strict refuses.
        let got = unlock(&listed, &pass("aaaa"), false).unwrap();
        assert_eq!(got.keys.len(), 1);
        assert_eq!(got.skipped.len(), 1);
        assert!(matches!(
            unlock(&listed, &pass("aaaa"), true),
            Err(Error::Keyfile(KeyfileError::WrongPassphrase { .. }))
        ));
        assert!(matches!(
            unlock(&listed, &pass("zzzz"), false),
            Err(Error::Keyfile(KeyfileError::WrongPassphrase { .. }))
        ));
        let ids: BTreeSet<KeyId> = [b.key_id()].into();
        assert_eq!(store.with_ids(&ids).unwrap().len(), 1);
    }
}
