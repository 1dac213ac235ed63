//! Private keys encrypted at rest.
//!
//! A key file is JSON holding the ed25519 seed encrypted with XChaCha20-Poly1305 under a key
//! derived from a passphrase by Argon2id (memory-hard, so that a stolen file resists
//! guessing). The public key and key id are in clear, so that tools can list keys and pick
//! the ones a role needs without asking for a passphrase; the AEAD's associated data covers
//! them (and the label), so a file whose public part was swapped does not decrypt. The KDF
//! parameters are stored in the file, so that stronger defaults later still read old files.
//!
//! Files are written 0600, atomically and durably ([`crate::durable`]), and never replace an
//! existing file. Secrets (derived key, seed, passphrase) are zeroized after use.

use std::fs;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ota_common::cjson;
use ota_common::keys::{Key, KeyId, SigningKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::durable::{self, Overwrite};
use crate::passphrase::Passphrase;

/// The `format` field of every key file.
pub const FORMAT: &str = "ota-keys-encrypted-ed25519-key";
/// The file format version this code writes and reads.
pub const FILE_VERSION: u32 = 1;

const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const SEED_LEN: usize = 32;

// Bounds on parameters read from a file: a hostile file must not make us allocate without
// limit or loop for hours before the passphrase is even checked.
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 16;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyfileError {
    /// Decryption failed: the passphrase is wrong, or the file was altered.
    #[error(
        "cannot decrypt key {key_id} ({file}): wrong passphrase (or the key file was altered)"
    )]
    WrongPassphrase {
        /// The key's id, from the clear part of the file.
        key_id: KeyId,
        /// The file, or `<memory>`.
        file: String,
    },
    /// The file is not a key file of a format we read.
    #[error("malformed key file {file}: {reason}")]
    Malformed {
        /// The file, or `<memory>`.
        file: String,
        /// What was wrong.
        reason: String,
    },
    /// The KDF parameters are outside what we accept.
    #[error("key file {file}: KDF parameters refused: {reason}")]
    KdfParams {
        /// The file, or `<memory>`.
        file: String,
        /// What was wrong.
        reason: String,
    },
    /// The decrypted seed does not give the public key the file states.
    #[error("key file {file}: the decrypted key is not the key {key_id} the file names")]
    PublicKeyMismatch {
        /// The file.
        file: String,
        /// The id the file states.
        key_id: KeyId,
    },
    /// Encryption failed (should not happen with valid parameters).
    #[error("encrypting key {key_id}: {reason}")]
    Encrypt {
        /// The key.
        key_id: KeyId,
        /// What failed.
        reason: String,
    },
    /// Reading the file failed.
    #[error("read key file {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// Production defaults: 64 MiB, 3 passes, 1 lane (OWASP's Argon2id guidance range).
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// CAUTION: parameters that make guessing a passphrase cheap. Only for tests and for
    /// development repositories whose passphrase sits next to the keys anyway.
    pub fn dangerous_fast() -> Self {
        KdfParams {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
        }
    }

    fn argon2(&self, file: &str) -> Result<Argon2<'static>, KeyfileError> {
        let refuse = |reason: String| KeyfileError::KdfParams {
            file: file.into(),
            reason,
        };
        if self.m_cost_kib > MAX_M_COST_KIB || self.t_cost > MAX_T_COST || self.p_cost > MAX_P_COST
        {
            return Err(refuse(format!(
                "{self:?} exceeds m={MAX_M_COST_KIB} KiB, t={MAX_T_COST}, p={MAX_P_COST}"
            )));
        }
        let params = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(SEED_LEN))
            .map_err(|e| refuse(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct KdfSection {
    algorithm: String,
    argon2_version: u32,
    #[serde(flatten)]
    params: KdfParams,
    salt: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CipherSection {
    algorithm: String,
    nonce: String,
    ciphertext: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct FileForm {
    format: String,
    version: u32,
    label: String,
    keyid: KeyId,
    public: Key,
    kdf: KdfSection,
    cipher: CipherSection,
}

/// The part of the file the AEAD authenticates besides the ciphertext.
#[derive(Serialize)]
struct AssociatedData<'a> {
    format: &'a str,
    version: u32,
    label: &'a str,
    keyid: &'a KeyId,
    public: &'a Key,
}

/// An encrypted key, as stored in a key file.
#[derive(Clone, Debug)]
pub struct EncryptedKey {
    form: FileForm,
    origin: Option<PathBuf>,
}

impl EncryptedKey {
    /// Encrypts `key` under `passphrase`. `label` is a free-form note shown by `list-keys`
    /// (ota-keys uses the role the key was made for).
    pub fn encrypt(
        key: &SigningKey,
        label: &str,
        passphrase: &Passphrase,
        params: KdfParams,
    ) -> Result<Self, KeyfileError> {
        let key_id = key.key_id();
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut salt);
        OsRng.fill_bytes(&mut nonce);
        let mut form = FileForm {
            format: FORMAT.into(),
            version: FILE_VERSION,
            label: label.into(),
            keyid: key_id.clone(),
            public: key.public(),
            kdf: KdfSection {
                algorithm: "argon2id".into(),
                argon2_version: 0x13,
                params,
                salt: hex::encode(salt),
            },
            cipher: CipherSection {
                algorithm: "xchacha20poly1305".into(),
                nonce: hex::encode(nonce),
                ciphertext: String::new(),
            },
        };
        let file = "<new key>";
        let derived = derive(passphrase, &salt, &params, file)?;
        let aad = associated_data(&form, file)?;
        let seed = Zeroizing::new(key.seed());
        let ciphertext = XChaCha20Poly1305::new((&*derived).into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: seed.as_ref(),
                    aad: &aad,
                },
            )
            .map_err(|e| KeyfileError::Encrypt {
                key_id,
                reason: e.to_string(),
            })?;
        form.cipher.ciphertext = hex::encode(ciphertext);
        Ok(EncryptedKey { form, origin: None })
    }

    /// Decrypts the key. A wrong passphrase and an altered file both give
    /// [`KeyfileError::WrongPassphrase`]: the AEAD cannot tell them apart.
    pub fn decrypt(&self, passphrase: &Passphrase) -> Result<SigningKey, KeyfileError> {
        let file = self.file_name();
        let malformed = |reason: String| KeyfileError::Malformed {
            file: file.clone(),
            reason,
        };
        let salt = hex::decode(&self.form.kdf.salt).map_err(|e| malformed(format!("salt: {e}")))?;
        let nonce =
            hex::decode(&self.form.cipher.nonce).map_err(|e| malformed(format!("nonce: {e}")))?;
        let nonce: [u8; NONCE_LEN] = nonce
            .as_slice()
            .try_into()
            .map_err(|_| malformed(format!("nonce is {} bytes, want {NONCE_LEN}", nonce.len())))?;
        let ciphertext = hex::decode(&self.form.cipher.ciphertext)
            .map_err(|e| malformed(format!("ciphertext: {e}")))?;
        let derived = derive(passphrase, &salt, &self.form.kdf.params, &file)?;
        let aad = associated_data(&self.form, &file)?;
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new((&*derived).into())
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| KeyfileError::WrongPassphrase {
                    key_id: self.form.keyid.clone(),
                    file: file.clone(),
                })?,
        );
        let seed: Zeroizing<[u8; SEED_LEN]> =
            Zeroizing::new(plain.as_slice().try_into().map_err(|_| {
                malformed(format!("seed is {} bytes, want {SEED_LEN}", plain.len()))
            })?);
        let key = SigningKey::from_seed(&seed);
        if key.public() != self.form.public {
            return Err(KeyfileError::PublicKeyMismatch {
                file,
                key_id: self.form.keyid.clone(),
            });
        }
        Ok(key)
    }

    /// Parses a key file's bytes; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: Option<&Path>) -> Result<Self, KeyfileError> {
        let file = origin.map_or_else(|| "<memory>".to_string(), |p| p.display().to_string());
        let malformed = |reason: String| KeyfileError::Malformed {
            file: file.clone(),
            reason,
        };
        let form: FileForm =
            serde_json::from_slice(bytes).map_err(|e| malformed(format!("not a key file: {e}")))?;
        if form.format != FORMAT {
            return Err(malformed(format!(
                "format {:?}, expected {FORMAT:?}",
                form.format
            )));
        }
        if form.version != FILE_VERSION {
            return Err(malformed(format!(
                "unsupported file version {}",
                form.version
            )));
        }
        if form.kdf.algorithm != "argon2id" || form.kdf.argon2_version != 0x13 {
            return Err(malformed(format!(
                "unsupported KDF {} v{:#x}",
                form.kdf.algorithm, form.kdf.argon2_version
            )));
        }
        if form.cipher.algorithm != "xchacha20poly1305" {
            return Err(malformed(format!(
                "unsupported cipher {}",
                form.cipher.algorithm
            )));
        }
        let id = form
            .public
            .key_id()
            .map_err(|e| malformed(format!("public key: {e}")))?;
        if id != form.keyid {
            return Err(malformed(format!(
                "key id {} does not match its public key ({id})",
                form.keyid
            )));
        }
        Ok(EncryptedKey {
            form,
            origin: origin.map(Path::to_path_buf),
        })
    }

    /// Reads and parses a key file.
    pub fn read(path: &Path) -> Result<Self, KeyfileError> {
        let bytes = fs::read(path).map_err(|source| KeyfileError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, Some(path))
    }

    /// The file's JSON.
    pub fn to_bytes(&self) -> Result<Vec<u8>, KeyfileError> {
        let mut out =
            serde_json::to_vec_pretty(&self.form).map_err(|e| KeyfileError::Malformed {
                file: self.file_name(),
                reason: format!("cannot serialise: {e}"),
            })?;
        out.push(b'\n');
        Ok(out)
    }

    /// Writes the file 0600, durably, refusing to replace an existing file.
    pub fn write_new(&mut self, path: &Path) -> crate::error::Result<()> {
        durable::write(path, &self.to_bytes()?, durable::PRIVATE, Overwrite::Refuse)?;
        self.origin = Some(path.to_path_buf());
        Ok(())
    }

    /// The key id (clear part of the file).
    pub fn key_id(&self) -> &KeyId {
        &self.form.keyid
    }

    /// The public key (clear part of the file).
    pub fn public(&self) -> &Key {
        &self.form.public
    }

    /// The label.
    pub fn label(&self) -> &str {
        &self.form.label
    }

    /// The KDF parameters.
    pub fn kdf_params(&self) -> KdfParams {
        self.form.kdf.params
    }

    /// The file it was read from or written to.
    pub fn path(&self) -> Option<&Path> {
        self.origin.as_deref()
    }

    fn file_name(&self) -> String {
        self.origin
            .as_ref()
            .map_or_else(|| "<memory>".to_string(), |p| p.display().to_string())
    }
}

fn derive(
    passphrase: &Passphrase,
    salt: &[u8],
    params: &KdfParams,
    file: &str,
) -> Result<Zeroizing<[u8; SEED_LEN]>, KeyfileError> {
    let mut out = Zeroizing::new([0u8; SEED_LEN]);
    params
        .argon2(file)?
        .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
        .map_err(|e| KeyfileError::KdfParams {
            file: file.into(),
            reason: e.to_string(),
        })?;
    Ok(out)
}

fn associated_data(form: &FileForm, file: &str) -> Result<Vec<u8>, KeyfileError> {
    cjson::to_canonical_from(&AssociatedData {
        format: &form.format,
        version: form.version,
        label: &form.label,
        keyid: &form.keyid,
        public: &form.public,
    })
    .map_err(|e| KeyfileError::Malformed {
        file: file.into(),
        reason: format!("public part has no canonical form: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_string()).unwrap()
    }

    fn sealed(label: &str) -> (SigningKey, EncryptedKey) {
        let key = SigningKey::generate();
        let enc = EncryptedKey::encrypt(
            &key,
            label,
            &pass("correct horse"),
            KdfParams::dangerous_fast(),
        )
        .unwrap();
        (key, enc)
    }

    #[test]
    fn round_trip_through_a_file_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let (key, mut enc) = sealed("targets");
        enc.write_new(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let read = EncryptedKey::read(&path).unwrap();
        assert_eq!(read.key_id(), &key.key_id());
        assert_eq!(read.label(), "targets");
        assert_eq!(read.kdf_params(), KdfParams::dangerous_fast());
        let back = read.decrypt(&pass("correct horse")).unwrap();
        assert_eq!(back.seed(), key.seed());
        // The seed is not in the file in clear.
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&hex::encode(key.seed())));
        // Never clobbers an existing key file.
        assert!(enc.write_new(&path).is_err());
    }

    #[test]
    fn wrong_passphrase_is_named() {
        let (_, enc) = sealed("root");
        let err = enc.decrypt(&pass("battery staple")).unwrap_err();
        assert!(matches!(err, KeyfileError::WrongPassphrase { .. }));
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
    }

    #[test]
    fn tampered_ciphertext_or_public_part_does_not_decrypt() {
        let (_, enc) = sealed("root");
        let mut v: serde_json::Value = serde_json::from_slice(&enc.to_bytes().unwrap()).unwrap();
        let ct = v["cipher"]["ciphertext"].as_str().unwrap().to_string();
        let flipped = format!("{}{}", if &ct[..1] == "0" { "1" } else { "0" }, &ct[1..]);
        v["cipher"]["ciphertext"] = flipped.into();
        let bad = EncryptedKey::from_bytes(&serde_json::to_vec(&v).unwrap(), None).unwrap();
        assert!(matches!(
            bad.decrypt(&pass("correct horse")),
            Err(KeyfileError::WrongPassphrase { .. })
        ));

        // Swapping the clear public key (and its id) for another is caught by the AEAD.
        let other = SigningKey::generate();
        let mut v: serde_json::Value = serde_json::from_slice(&enc.to_bytes().unwrap()).unwrap();
        v["public"] = serde_json::to_value(other.public()).unwrap();
        v["keyid"] = other.key_id().0.into();
        let bad = EncryptedKey::from_bytes(&serde_json::to_vec(&v).unwrap(), None).unwrap();
        assert!(matches!(
            bad.decrypt(&pass("correct horse")),
            Err(KeyfileError::WrongPassphrase { .. })
        ));

        // A label change is caught too.
        let mut v: serde_json::Value = serde_json::from_slice(&enc.to_bytes().unwrap()).unwrap();
        v["label"] = "targets".into();
        let bad = EncryptedKey::from_bytes(&serde_json::to_vec(&v).unwrap(), None).unwrap();
        assert!(bad.decrypt(&pass("correct horse")).is_err());
    }

    #[test]
    fn malformed_files_and_hostile_params_are_refused() {
        assert!(matches!(
            EncryptedKey::from_bytes(b"{}", None),
            Err(KeyfileError::Malformed { .. })
        ));
        let (_, enc) = sealed("root");
        let mut v: serde_json::Value = serde_json::from_slice(&enc.to_bytes().unwrap()).unwrap();
        v["keyid"] = "00".into();
        assert!(matches!(
            EncryptedKey::from_bytes(&serde_json::to_vec(&v).unwrap(), None),
            Err(KeyfileError::Malformed { .. })
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&enc.to_bytes().unwrap()).unwrap();
        v["kdf"]["m_cost_kib"] = (MAX_M_COST_KIB + 1).into();
        let bad = EncryptedKey::from_bytes(&serde_json::to_vec(&v).unwrap(), None).unwrap();
        assert!(matches!(
            bad.decrypt(&pass("correct horse")),
            Err(KeyfileError::KdfParams { .. })
        ));
    }

    #[test]
    fn production_params_round_trip() {
        let key = SigningKey::generate();
        let enc = EncryptedKey::encrypt(&key, "root", &pass("pw"), KdfParams::default()).unwrap();
        assert_eq!(enc.kdf_params().m_cost_kib, 65536);
        assert_eq!(enc.decrypt(&pass("pw")).unwrap().key_id(), key.key_id());
    }

    #[test]
    fn default_params_are_the_production_ones() {
        assert_eq!(
            KdfParams::default(),
            KdfParams {
                m_cost_kib: 65536,
                t_cost: 3,
                p_cost: 1
            }
        );
    }
}
