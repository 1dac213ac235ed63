//! Public keys as TUF metadata lists them, key ids, and signature verification.
//!
//! We generate ed25519 keys. To read repositories made by other tools we also verify
//! `ecdsa-sha2-nistp256` (DER signatures over SHA-256) and `rsassa-pss-sha256` keys, whose
//! public halves TUF carries as PEM (securesystemslib's encoding).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cjson;

/// A key id: the hex SHA-256 of the key's canonical JSON (TUF spec section 4.2).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The public part of a key as it appears in root or delegation metadata.
///
/// Unknown fields (for example `keyid_hash_algorithms`, written by older tools) are kept, so
/// that the key id computed here matches the one its author computed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// `ed25519`, `ecdsa`, `ecdsa-sha2-nistp256` or `rsa`.
    pub keytype: String,
    /// `ed25519`, `ecdsa-sha2-nistp256` or `rsassa-pss-sha256`.
    pub scheme: String,
    /// Holds `public`: hex for ed25519, PEM for ECDSA and RSA.
    pub keyval: KeyVal,
    /// Fields this version does not know, kept for key ids and re-signing.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The `keyval` object of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// The public key.
    pub public: String,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// A signature in a metadata file's `signatures` list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Which key made it.
    pub keyid: KeyId,
    /// The signature bytes, hex.
    pub sig: String,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Why a key could not be used or a signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The key type and scheme are not one we verify.
    #[error("unsupported key type/scheme {keytype}/{scheme}")]
    Unsupported {
        /// Key type found.
        keytype: String,
        /// Scheme found.
        scheme: String,
    },
    /// The public key could not be decoded.
    #[error("malformed {scheme} public key: {reason}")]
    MalformedKey {
        /// Scheme of the key.
        scheme: String,
        /// What was wrong.
        reason: String,
    },
    /// The signature bytes are not valid hex or not of the scheme's form.
    #[error("malformed signature: {0}")]
    MalformedSignature(String),
    /// The signature does not match the message.
    #[error("signature does not verify")]
    BadSignature,
    /// The key could not be encoded canonically.
    #[error("key has no canonical form: {0}")]
    Canonical(#[from] cjson::CanonicalError),
}

impl Key {
    /// An ed25519 key in TUF form.
    pub fn ed25519(public: &[u8; 32]) -> Self {
        Key {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: KeyVal {
                public: hex::encode(public),
                extra: BTreeMap::new(),
            },
            extra: BTreeMap::new(),
        }
    }

    /// The key id as the specification defines it: SHA-256 of the canonical JSON of the key.
    pub fn key_id(&self) -> Result<KeyId, KeyError> {
        let bytes = cjson::to_canonical_from(self)?;
        Ok(KeyId(hex::encode(Sha256::digest(bytes))))
    }

    /// A byte string that is equal for two entries holding the same key material, whatever
    /// their ids say. Threshold counting uses it so that one key listed under two ids still
    /// counts once.
    pub fn identity(&self) -> String {
        format!("{}\0{}", self.scheme, self.keyval.public.trim())
    }

    /// Checks that the key decodes, so that a malformed key is reported where it is listed.
    pub fn validate(&self) -> Result<(), KeyError> {
        self.verifier().map(|_| ())
    }

    /// Verifies `sig_hex` over `msg`.
    pub fn verify(&self, msg: &[u8], sig_hex: &str) -> Result<(), KeyError> {
        let sig = hex::decode(sig_hex.trim())
            .map_err(|e| KeyError::MalformedSignature(format!("not hex: {e}")))?;
        self.verifier()?.verify(msg, &sig)
    }

    fn verifier(&self) -> Result<Verifier, KeyError> {
        let malformed = |reason: String| KeyError::MalformedKey {
            scheme: self.scheme.clone(),
            reason,
        };
        match (self.keytype.as_str(), self.scheme.as_str()) {
            ("ed25519", "ed25519") => {
                let raw = hex::decode(self.keyval.public.trim())
                    .map_err(|e| malformed(format!("not hex: {e}")))?;
                let arr: [u8; 32] = raw
                    .as_slice()
                    .try_into()
                    .map_err(|_| malformed(format!("{} bytes, want 32", raw.len())))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&arr)
                    .map_err(|e| malformed(e.to_string()))?;
                Ok(Verifier::Ed25519(key))
            }
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                use p256::pkcs8::DecodePublicKey;
                let key = p256::ecdsa::VerifyingKey::from_public_key_pem(self.keyval.public.trim())
                    .map_err(|e| malformed(e.to_string()))?;
                Ok(Verifier::EcdsaP256(key))
            }
            ("rsa", "rsassa-pss-sha256") => {
                use rsa::pkcs8::DecodePublicKey;
                let key = rsa::RsaPublicKey::from_public_key_pem(self.keyval.public.trim())
                    .map_err(|e| malformed(e.to_string()))?;
                Ok(Verifier::RsaPss(Box::new(key)))
            }
            (keytype, scheme) => Err(KeyError::Unsupported {
                keytype: keytype.to_string(),
                scheme: scheme.to_string(),
            }),
        }
    }
}

enum Verifier {
    Ed25519(ed25519_dalek::VerifyingKey),
    EcdsaP256(p256::ecdsa::VerifyingKey),
    RsaPss(Box<rsa::RsaPublicKey>),
}

impl Verifier {
    fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        match self {
            Verifier::Ed25519(key) => {
                let sig = ed25519_dalek::Signature::from_slice(sig)
                    .map_err(|e| KeyError::MalformedSignature(e.to_string()))?;
                // Strict verification refuses the malleable and small-order forms.
                key.verify_strict(msg, &sig)
                    .map_err(|_| KeyError::BadSignature)
            }
            Verifier::EcdsaP256(key) => {
                use p256::ecdsa::signature::Verifier as _;
                let sig = p256::ecdsa::Signature::from_der(sig)
                    .map_err(|e| KeyError::MalformedSignature(e.to_string()))?;
                key.verify(msg, &sig).map_err(|_| KeyError::BadSignature)
            }
            Verifier::RsaPss(key) => {
                // Salt length = digest length (32 bytes), which is what securesystemslib
                // and other TUF signers use for rsassa-pss-sha256.
                let hashed = Sha256::digest(msg);
                key.verify(rsa::Pss::new::<Sha256>(), &hashed, sig)
                    .map_err(|_| KeyError::BadSignature)
            }
        }
    }
}

/// An ed25519 signing key, for the tools that sign (ota-keys, and the server's online roles).
#[cfg(feature = "sign")]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
}

#[cfg(feature = "sign")]
impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        SigningKey {
            inner: ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// The key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SigningKey {
            inner: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte seed; handle with care (it is the private key).
    pub fn seed(&self) -> [u8; 32] {
        self.inner.to_bytes()
    }

    /// The public half in TUF form.
    pub fn public(&self) -> Key {
        Key::ed25519(&self.inner.verifying_key().to_bytes())
    }

    /// The key id of the public half.
    pub fn key_id(&self) -> KeyId {
        // An ed25519 key built by `Key::ed25519` has no floats: its canonical form exists.
        match self.public().key_id() {
            Ok(id) => id,
            Err(_) => unreachable!("ed25519 keys always have a canonical form"),
        }
    }

    /// Signs `msg`, giving a TUF signature entry.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        use ed25519_dalek::Signer as _;
        Signature {
            keyid: self.key_id(),
            sig: hex::encode(self.inner.sign(msg).to_bytes()),
            extra: BTreeMap::new(),
        }
    }
}

#[cfg(feature = "sign")]
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "SigningKey({})", self.key_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_sign_verify_and_tamper() {
        let k = SigningKey::from_seed(&[7u8; 32]);
        let sig = k.sign(b"hello");
        k.public().verify(b"hello", &sig.sig).unwrap();
        assert_eq!(
            k.public().verify(b"hellO", &sig.sig),
            Err(KeyError::BadSignature)
        );
        assert!(matches!(
            k.public().verify(b"hello", "zz"),
            Err(KeyError::MalformedSignature(_))
        ));
    }

    #[test]
    fn key_id_is_sha256_of_canonical_form() {
        let k = Key::ed25519(&[1u8; 32]);
        let canon = format!(
            r#"{{"keytype":"ed25519","keyval":{{"public":"{}"}},"scheme":"ed25519"}}"#,
            hex::encode([1u8; 32])
        );
        assert_eq!(
            k.key_id().unwrap().0,
            hex::encode(Sha256::digest(canon.as_bytes()))
        );
    }

    #[test]
    fn unsupported_and_malformed_keys_are_named() {
        let mut k = Key::ed25519(&[1u8; 32]);
        k.scheme = "dsa".into();
        assert!(matches!(k.validate(), Err(KeyError::Unsupported { .. })));
        let mut k = Key::ed25519(&[1u8; 32]);
        k.keyval.public = "abcd".into();
        assert!(matches!(k.validate(), Err(KeyError::MalformedKey { .. })));
    }
}
