//! Threshold signature verification, returning a proof that nothing else can build.
//!
//! Code that trusts metadata takes a [`Verified<T>`]; the only way to get one is through
//! [`verify_role`], so "forgot to check the signatures" cannot compile.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::Arc;

use crate::keys::{Key, KeyId};
use crate::metadata::Role;
use crate::signed::{MetadataError, RawSigned};

/// Why a role's signatures are not enough.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Fewer distinct authorised keys signed than the threshold asks.
    #[error("{role}: {valid} valid signature(s) from distinct authorised keys, threshold is {threshold}")]
    ThresholdNotMet {
        /// The role.
        role: String,
        /// Distinct keys with a valid signature.
        valid: u64,
        /// Keys needed.
        threshold: u64,
    },
    /// A threshold of zero would accept unsigned metadata.
    #[error("{role}: threshold must be at least 1")]
    ZeroThreshold {
        /// The role.
        role: String,
    },
    /// The metadata could not be decoded or canonicalised.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// Metadata whose signatures met its role's threshold. Built only by [`verify_role`].
#[derive(Clone, Debug)]
pub struct Verified<T> {
    value: T,
    raw: Arc<[u8]>,
}

impl<T> Verified<T> {
    /// The exact bytes that were verified, for storing and serving unchanged.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// A shared handle on the verified bytes.
    pub fn shared_raw(&self) -> Arc<[u8]> {
        Arc::clone(&self.raw)
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Counts distinct authorised keys with a valid signature over the canonical `signed` bytes.
///
/// Unknown key ids and invalid signatures are skipped rather than failing, so that a file
/// with one stale signature still verifies when enough good ones remain (spec 5.3.4). A key
/// counts once even if it signed twice or root lists it under two ids.
pub fn count_valid_signatures(
    raw: &RawSigned,
    keys: &BTreeMap<KeyId, Key>,
    authorised: &[KeyId],
) -> Result<u64, VerifyError> {
    let msg = raw.canonical_signed()?;
    let authorised: BTreeSet<&KeyId> = authorised.iter().collect();
    let mut counted: BTreeSet<String> = BTreeSet::new();
    for sig in raw.signatures() {
        if !authorised.contains(&sig.keyid) {
            continue;
        }
        let Some(key) = keys.get(&sig.keyid) else {
            continue;
        };
        let identity = key.identity();
        if counted.contains(&identity) {
            continue;
        }
        if key.verify(&msg, &sig.sig).is_ok() {
            counted.insert(identity);
        }
    }
    Ok(counted.len() as u64)
}

/// Verifies `raw` as role `T` under `keys`/`authorised`/`threshold`, and decodes it.
///
/// Only signatures are checked here; versions and expiry are the client workflow's
/// business ([`crate::client`]), since what they are compared with depends on the step.
pub fn verify_role<T: Role>(
    raw: &RawSigned,
    role: &str,
    keys: &BTreeMap<KeyId, Key>,
    authorised: &[KeyId],
    threshold: u64,
) -> Result<Verified<T>, VerifyError> {
    if threshold == 0 {
        return Err(VerifyError::ZeroThreshold { role: role.into() });
    }
    // Decode first: a file of the wrong `_type` is refused whatever its signatures.
    let value = raw.decode::<T>()?;
    let valid = count_valid_signatures(raw, keys, authorised)?;
    if valid < threshold {
        return Err(VerifyError::ThresholdNotMet {
            role: role.into(),
            valid,
            threshold,
        });
    }
    Ok(Verified {
        value,
        raw: raw.shared_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::metadata::{RoleType, Root};
    use crate::signed::sign_role;
    use chrono::{TimeZone, Utc};

    fn root_with(keys: &[&SigningKey], threshold: u64) -> Root {
        let mut root = Root::new(1, Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap());
        let pubs: Vec<Key> = keys.iter().map(|k| k.public()).collect();
        root.set_role(RoleType::Root, &pubs, threshold).unwrap();
        root
    }

    #[test]
    fn threshold_counts_distinct_keys_once() {
        let a = SigningKey::from_seed(&[1; 32]);
        let b = SigningKey::from_seed(&[2; 32]);
        let root = root_with(&[&a, &b], 2);
        let ids = root.roles["root"].keyids.clone();
        // Signed twice by a: still one key.
        let bytes = sign_role(&root, &[&a, &a]).unwrap();
        let raw = RawSigned::parse(&bytes).unwrap();
        let err = verify_role::<Root>(&raw, "root", &root.keys, &ids, 2).unwrap_err();
        assert!(matches!(
            err,
            VerifyError::ThresholdNotMet {
                valid: 1,
                threshold: 2,
                ..
            }
        ));
        let bytes = sign_role(&root, &[&a, &b]).unwrap();
        let raw = RawSigned::parse(&bytes).unwrap();
        let v = verify_role::<Root>(&raw, "root", &root.keys, &ids, 2).unwrap();
        assert_eq!(v.version, 1);
        assert_eq!(v.raw(), &bytes[..]);
    }

    #[test]
    fn same_key_under_two_ids_counts_once() {
        let a = SigningKey::from_seed(&[1; 32]);
        let mut root = root_with(&[&a], 1);
        let mut alias = a.public();
        alias.extra.insert("alias".into(), serde_json::json!(true));
        let alias_id = alias.key_id().unwrap();
        root.keys.insert(alias_id.clone(), alias);
        let mut ids = root.roles["root"].keyids.clone();
        ids.push(alias_id.clone());
        let bytes = sign_role(&root, &[&a]).unwrap();
        let mut env: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut dup = env["signatures"][0].clone();
        dup["keyid"] = serde_json::json!(alias_id.0);
        env["signatures"].as_array_mut().unwrap().push(dup);
        let raw = RawSigned::parse(&serde_json::to_vec(&env).unwrap()).unwrap();
        assert_eq!(count_valid_signatures(&raw, &root.keys, &ids).unwrap(), 1);
    }

    #[test]
    fn zero_threshold_and_wrong_type_are_refused() {
        let a = SigningKey::from_seed(&[1; 32]);
        let root = root_with(&[&a], 1);
        let raw = RawSigned::parse(&sign_role(&root, &[&a]).unwrap()).unwrap();
        let ids = root.roles["root"].keyids.clone();
        assert!(matches!(
            verify_role::<Root>(&raw, "root", &root.keys, &ids, 0),
            Err(VerifyError::ZeroThreshold { .. })
        ));
        assert!(matches!(
            verify_role::<crate::metadata::Targets>(&raw, "targets", &root.keys, &ids, 1),
            Err(VerifyError::Metadata(MetadataError::Role { .. }))
        ));
    }
}
