//! Signed envelopes kept as the exact bytes received.
//!
//! A metadata file is `{"signed": {...}, "signatures": [...]}`. We verify signatures over the
//! canonical form of the `signed` value *as parsed from the received bytes* (a generic JSON
//! tree that keeps every field, known or not), never over a re-serialisation of our typed
//! structs, which would drop or reorder what we do not model.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cjson;
use crate::keys::Signature;
use crate::metadata::Role;

/// Why bytes are not a metadata file of the expected role.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// Not JSON, or not an object with `signed` and `signatures`.
    #[error("malformed metadata envelope: {0}")]
    Envelope(String),
    /// The `signed` part is not the expected role or misses a field.
    #[error("malformed {role} metadata: {reason}")]
    Role {
        /// The role expected.
        role: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The `signed` part has no canonical form (floats).
    #[error("metadata has no canonical form: {0}")]
    Canonical(#[from] cjson::CanonicalError),
}

#[derive(Deserialize)]
struct Envelope {
    signed: Value,
    signatures: Vec<Signature>,
}

/// A parsed metadata file that remembers its exact bytes.
#[derive(Clone, Debug)]
pub struct RawSigned {
    bytes: Arc<[u8]>,
    signed: Value,
    signatures: Vec<Signature>,
}

impl RawSigned {
    /// Parses an envelope. Nothing is trusted yet.
    pub fn parse(bytes: &[u8]) -> Result<Self, MetadataError> {
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| MetadataError::Envelope(e.to_string()))?;
        if !env.signed.is_object() {
            return Err(MetadataError::Envelope("`signed` is not an object".into()));
        }
        Ok(RawSigned {
            bytes: Arc::from(bytes),
            signed: env.signed,
            signatures: env.signatures,
        })
    }

    /// The exact bytes received.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A cheap shared handle on the bytes.
    pub fn shared_bytes(&self) -> Arc<[u8]> {
        Arc::clone(&self.bytes)
    }

    /// The signatures as listed.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The `_type` of the signed part, if it is a string.
    pub fn role_type(&self) -> Option<&str> {
        self.signed.get("_type").and_then(Value::as_str)
    }

    /// The bytes the signatures cover.
    pub fn canonical_signed(&self) -> Result<Vec<u8>, MetadataError> {
        Ok(cjson::to_canonical(&self.signed)?)
    }

    /// Decodes the signed part as role `T` (checks `_type` and required fields).
    pub fn decode<T: Role>(&self) -> Result<T, MetadataError> {
        T::deserialize(&self.signed).map_err(|e| MetadataError::Role {
            role: T::TYPE,
            reason: e.to_string(),
        })
    }
}

/// Builds a signed envelope: compact JSON `{"signatures": [...], "signed": ...}`, keys sorted
/// (canonical form, except that control characters are escaped so the file is valid JSON).
#[cfg(feature = "sign")]
pub fn sign_role<T: Role>(
    signed: &T,
    keys: &[&crate::keys::SigningKey],
) -> Result<Vec<u8>, MetadataError> {
    let value = serde_json::to_value(signed).map_err(|e| MetadataError::Role {
        role: T::TYPE,
        reason: e.to_string(),
    })?;
    let msg = cjson::to_canonical(&value)?;
    let signatures: Vec<Signature> = keys.iter().map(|k| k.sign(&msg)).collect();
    envelope_bytes(value, signatures)
}

/// Adds one signature (k-of-n signing: each holder adds theirs to the same file). A key that
/// already signed is replaced, so signing twice never counts twice.
#[cfg(feature = "sign")]
pub fn add_signature(
    raw: &RawSigned,
    key: &crate::keys::SigningKey,
) -> Result<Vec<u8>, MetadataError> {
    let msg = raw.canonical_signed()?;
    let sig = key.sign(&msg);
    let mut signatures: Vec<Signature> = raw
        .signatures
        .iter()
        .filter(|s| s.keyid != sig.keyid)
        .cloned()
        .collect();
    signatures.push(sig);
    envelope_bytes(raw.signed.clone(), signatures)
}

#[cfg(feature = "sign")]
fn envelope_bytes(signed: Value, signatures: Vec<Signature>) -> Result<Vec<u8>, MetadataError> {
    #[derive(Serialize)]
    struct Out {
        signatures: Vec<Signature>,
        signed: Value,
    }
    let out = serde_json::to_value(Out { signatures, signed })
        .map_err(|e| MetadataError::Envelope(e.to_string()))?;
    // The file must be valid JSON: canonical form writes control characters raw (a PEM
    // key's newlines, say), which JSON parsers, ours included, refuse. Only the signed
    // message needs canonical form; serde_json writes the same sorted, compact bytes but
    // escapes control characters.
    serde_json::to_vec(&out).map_err(|e| MetadataError::Envelope(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_envelopes_are_refused() {
        assert!(matches!(
            RawSigned::parse(b"not json"),
            Err(MetadataError::Envelope(_))
        ));
        assert!(matches!(
            RawSigned::parse(b"{}"),
            Err(MetadataError::Envelope(_))
        ));
        assert!(matches!(
            RawSigned::parse(br#"{"signed": 3, "signatures": []}"#),
            Err(MetadataError::Envelope(_))
        ));
    }

    #[cfg(feature = "sign")]
    #[test]
    fn signed_files_with_control_characters_parse_and_verify() {
        // A PEM key carries newlines; canonical form would write them raw (invalid JSON).
        let k = crate::keys::SigningKey::from_seed(&[5; 32]);
        let far = chrono::DateTime::from_timestamp(4_000_000_000, 0).unwrap();
        let mut t = crate::metadata::Targets::new(1, far);
        t.extra
            .insert("notes".into(), serde_json::json!("line1\nline2\t\u{1}"));
        let bytes = sign_role(&t, &[&k]).unwrap();
        let raw = RawSigned::parse(&bytes).unwrap();
        assert_eq!(raw.decode::<crate::metadata::Targets>().unwrap(), t);
        let msg = raw.canonical_signed().unwrap();
        k.public().verify(&msg, &raw.signatures()[0].sig).unwrap();
        // Re-signing keeps the file valid too.
        let k2 = crate::keys::SigningKey::from_seed(&[6; 32]);
        let raw = RawSigned::parse(&add_signature(&raw, &k2).unwrap()).unwrap();
        assert_eq!(raw.signatures().len(), 2);
        // Without control characters the file is exactly the canonical form.
        let plain = crate::metadata::Targets::new(1, far);
        let bytes = sign_role(&plain, &[&k]).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(cjson::to_canonical(&v).unwrap(), bytes);
    }

    #[test]
    fn canonical_form_keeps_unknown_fields() {
        let raw = RawSigned::parse(
            br#"{"signatures": [], "signed": {"_type": "x", "zz_unknown": {"b": 1, "a": 2}}}"#,
        )
        .unwrap();
        assert_eq!(
            raw.canonical_signed().unwrap(),
            br#"{"_type":"x","zz_unknown":{"a":2,"b":1}}"#
        );
    }
}
