//! Property tests of what common's unit tests do not cover: every role's metadata survives
//! serde → canonical form → signed file → parse → decode unchanged, unknown fields included;
//! `sign_role` output always verifies; any single-byte change to the signed part that
//! changes its content makes verification fail; threshold arithmetic over random key sets;
//! target names that pass `TargetName` never yield a traversal path.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ota_common::cjson;
use ota_common::keys::{Key, KeyId, KeyVal, SigningKey};
use ota_common::metadata::{
    DelegatedRole, Delegations, MetaFile, Role, RoleKeys, Root, Snapshot, TargetFile, Targets,
    Timestamp,
};
use ota_common::signed::{add_signature, sign_role, RawSigned};
use ota_common::target::TargetName;
use ota_common::verify::{count_valid_signatures, verify_role, VerifyError};
use proptest::prelude::*;
use serde_json::Value;

/// Any string, control characters and non-ASCII included.
fn arb_string() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..10).prop_map(String::from_iter)
}

/// JSON without floats (canonical form has none).
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(arb_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Unknown fields: names no version of the format uses.
fn arb_extra() -> impl Strategy<Value = BTreeMap<String, Value>> {
    prop::collection::btree_map("x-[a-z_]{1,6}", arb_json(), 0..3)
}

/// Whole seconds between 1970 and 9999 (TUF's `expires` form).
fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..253_402_300_799).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap())
}

fn arb_hashes() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![
            Just("sha256".to_string()),
            Just("sha512".to_string()),
            "[a-z0-9-]{1,8}"
        ],
        "[0-9a-f]{0,64}",
        0..3,
    )
}

fn arb_meta_file() -> impl Strategy<Value = MetaFile> {
    (
        any::<u64>(),
        any::<Option<u64>>(),
        prop::option::of(arb_hashes()),
        arb_extra(),
    )
        .prop_map(|(version, length, hashes, extra)| MetaFile {
            version,
            length,
            hashes,
            extra,
        })
}

fn arb_key() -> impl Strategy<Value = Key> {
    (
        arb_string(),
        arb_string(),
        arb_string(),
        arb_extra(),
        arb_extra(),
    )
        .prop_map(|(keytype, scheme, public, kv_extra, extra)| Key {
            keytype,
            scheme,
            keyval: KeyVal {
                public,
                extra: kv_extra,
            },
            extra,
        })
}

fn arb_keys() -> impl Strategy<Value = BTreeMap<KeyId, Key>> {
    prop::collection::btree_map("[0-9a-f]{1,64}".prop_map(KeyId), arb_key(), 0..3)
}

fn arb_keyids() -> impl Strategy<Value = Vec<KeyId>> {
    prop::collection::vec("[0-9a-f]{1,64}".prop_map(KeyId), 0..3)
}

fn arb_root() -> impl Strategy<Value = Root> {
    let role_keys =
        (arb_keyids(), any::<u64>(), arb_extra()).prop_map(|(keyids, threshold, extra)| RoleKeys {
            keyids,
            threshold,
            extra,
        });
    (
        arb_string(),
        any::<bool>(),
        any::<u64>(),
        arb_time(),
        arb_keys(),
        prop::collection::btree_map(arb_string(), role_keys, 0..5),
        arb_extra(),
    )
        .prop_map(
            |(spec_version, consistent_snapshot, version, expires, keys, roles, extra)| {
                let mut r = Root::new(version, expires);
                r.spec_version = spec_version;
                r.consistent_snapshot = consistent_snapshot;
                r.keys = keys;
                r.roles = roles;
                r.extra = extra;
                r
            },
        )
}

fn arb_timestamp() -> impl Strategy<Value = Timestamp> {
    (
        any::<u64>(),
        arb_time(),
        prop::collection::btree_map(arb_string(), arb_meta_file(), 0..3),
        arb_extra(),
    )
        .prop_map(|(version, expires, meta, extra)| {
            let mut t = Timestamp::new(version, expires, MetaFile::version_only(0));
            t.meta = meta;
            t.extra = extra;
            t
        })
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    (
        any::<u64>(),
        arb_time(),
        prop::collection::btree_map(arb_string(), arb_meta_file(), 0..4),
        arb_extra(),
    )
        .prop_map(|(version, expires, meta, extra)| {
            let mut s = Snapshot::new(version, expires);
            s.meta = meta;
            s.extra = extra;
            s
        })
}

fn arb_target_file() -> impl Strategy<Value = TargetFile> {
    // `custom: null` reads back as no custom at all, so a present custom is never null.
    let custom = prop::option::of(arb_json().prop_filter("null is absent", |v| !v.is_null()));
    (any::<u64>(), arb_hashes(), custom, arb_extra()).prop_map(|(length, hashes, custom, extra)| {
        TargetFile {
            length,
            hashes,
            custom,
            extra,
        }
    })
}

fn arb_delegated_role() -> impl Strategy<Value = DelegatedRole> {
    (
        arb_string(),
        arb_keyids(),
        any::<u64>(),
        any::<bool>(),
        prop::option::of(prop::collection::vec(arb_string(), 0..3)),
        prop::option::of(prop::collection::vec("[0-9a-f]{0,8}", 0..3)),
        arb_extra(),
    )
        .prop_map(
            |(name, keyids, threshold, terminating, paths, path_hash_prefixes, extra)| {
                DelegatedRole {
                    name,
                    keyids,
                    threshold,
                    terminating,
                    paths,
                    path_hash_prefixes,
                    extra,
                }
            },
        )
}

fn arb_targets() -> impl Strategy<Value = Targets> {
    let delegations = (
        arb_keys(),
        prop::collection::vec(arb_delegated_role(), 0..3),
        arb_extra(),
    )
        .prop_map(|(keys, roles, extra)| Delegations { keys, roles, extra });
    (
        any::<u64>(),
        arb_time(),
        prop::collection::btree_map(arb_string(), arb_target_file(), 0..4),
        prop::option::of(delegations),
        arb_extra(),
    )
        .prop_map(|(version, expires, targets, delegations, extra)| {
            let mut t = Targets::new(version, expires);
            t.targets = targets;
            t.delegations = delegations;
            t.extra = extra;
            t
        })
}

fn arb_signers() -> impl Strategy<Value = Vec<SigningKey>> {
    prop::collection::vec(any::<[u8; 32]>(), 1..4)
        .prop_map(|seeds| seeds.iter().map(SigningKey::from_seed).collect())
}

/// The signed file parses and decodes back to the same value; the bytes its signatures
/// cover are the canonical form of that value; decoding and re-encoding is a fixed point.
fn round_trip<T: Role + PartialEq + std::fmt::Debug>(m: &T) -> Result<(), TestCaseError> {
    let canonical = cjson::to_canonical_from(m).unwrap();
    let key = SigningKey::from_seed(&[9; 32]);
    let file = sign_role(m, &[&key]).unwrap();
    let raw = RawSigned::parse(&file).unwrap();
    prop_assert_eq!(raw.role_type(), Some(T::TYPE));
    let back: T = raw.decode().unwrap();
    prop_assert_eq!(&back, m);
    prop_assert_eq!(raw.canonical_signed().unwrap(), canonical.clone());
    prop_assert_eq!(cjson::to_canonical_from(&back).unwrap(), canonical);
    // Unknown fields are in the signed part by name.
    let signed: Value = serde_json::from_slice::<Value>(&file).unwrap()["signed"].clone();
    let known = serde_json::to_value(m).unwrap();
    prop_assert_eq!(signed, known);
    Ok(())
}

/// `sign_role` output verifies under the signers' keys; a one-byte change inside the signed
/// part that changes its content fails, whether it breaks parsing or only the signature.
fn signed_and_flipped<T: Role>(
    m: &T,
    signers: &[SigningKey],
    pos: prop::sample::Index,
    mask: u8,
) -> Result<(), TestCaseError> {
    let refs: Vec<&SigningKey> = signers.iter().collect();
    let file = sign_role(m, &refs).unwrap();
    let keys: BTreeMap<KeyId, Key> = signers.iter().map(|k| (k.key_id(), k.public())).collect();
    let ids: Vec<KeyId> = keys.keys().cloned().collect();
    let threshold = ids.len() as u64; // distinct keys (seeds may repeat)
    let raw = RawSigned::parse(&file).unwrap();
    verify_role::<T>(&raw, T::TYPE, &keys, &ids, threshold).unwrap();

    let text = std::str::from_utf8(&file).unwrap();
    let start = text.find(",\"signed\":").unwrap() + ",\"signed\":".len();
    let end = file.len() - 1; // the envelope's closing brace
    let i = start + pos.index(end - start);
    let mut evil = file.clone();
    evil[i] ^= mask;
    let Ok(evil_raw) = RawSigned::parse(&evil) else {
        return Ok(()); // refused as malformed
    };
    let (Ok(before), Ok(after)) = (raw.canonical_signed(), evil_raw.canonical_signed()) else {
        return Ok(()); // no canonical form: nothing can verify
    };
    if before == after {
        // Same content, other spelling (e.g. the case of a hex digit in a \u escape).
        return Ok(());
    }
    prop_assert_eq!(count_valid_signatures(&evil_raw, &keys, &ids).unwrap(), 0);
    prop_assert!(verify_role::<T>(&evil_raw, T::TYPE, &keys, &ids, 1).is_err());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn root_round_trips(m in arb_root()) { round_trip(&m)?; }

    #[test]
    fn timestamp_round_trips(m in arb_timestamp()) { round_trip(&m)?; }

    #[test]
    fn snapshot_round_trips(m in arb_snapshot()) { round_trip(&m)?; }

    #[test]
    fn targets_round_trips(m in arb_targets()) { round_trip(&m)?; }

    #[test]
    fn signed_targets_verify_and_flips_fail(m in arb_targets(), signers in arb_signers(), pos in any::<prop::sample::Index>(), mask in 1u8..) {
        signed_and_flipped(&m, &signers, pos, mask)?;
    }

    #[test]
    fn signed_roots_verify_and_flips_fail(m in arb_root(), signers in arb_signers(), pos in any::<prop::sample::Index>(), mask in 1u8..) {
        signed_and_flipped(&m, &signers, pos, mask)?;
    }

    #[test]
    fn signed_timestamps_and_snapshots_verify_and_flips_fail(
        t in arb_timestamp(), s in arb_snapshot(), signers in arb_signers(),
        pos in any::<prop::sample::Index>(), mask in 1u8..,
    ) {
        signed_and_flipped(&t, &signers, pos, mask)?;
        signed_and_flipped(&s, &signers, pos, mask)?;
    }

    #[test]
    fn threshold_counts_distinct_authorised_signers(
        authorised in prop::collection::btree_set(0u8..6, 1..5),
        signing in prop::collection::vec(0u8..8, 0..8),
        threshold in 1u64..6,
        m in arb_snapshot(),
    ) {
        // Keys 0..8 exist; `authorised` may sign for the role; `signing` sign (repeats allowed).
        let key = |i: u8| SigningKey::from_seed(&[i + 100; 32]);
        let keys: BTreeMap<KeyId, Key> = (0..8).map(|i| (key(i).key_id(), key(i).public())).collect();
        let ids: Vec<KeyId> = authorised.iter().map(|i| key(*i).key_id()).collect();
        let signers: Vec<SigningKey> = signing.iter().map(|i| key(*i)).collect();
        let file = sign_role(&m, &signers.iter().collect::<Vec<_>>()).unwrap();
        let raw = RawSigned::parse(&file).unwrap();
        let distinct: BTreeSet<u8> = signing.iter().copied().filter(|i| authorised.contains(i)).collect();
        prop_assert_eq!(count_valid_signatures(&raw, &keys, &ids).unwrap(), distinct.len() as u64);
        let result = verify_role::<Snapshot>(&raw, "snapshot", &keys, &ids, threshold);
        if distinct.len() as u64 >= threshold {
            prop_assert!(result.is_ok());
        } else {
            let met = matches!(result, Err(VerifyError::ThresholdNotMet { .. }));
            prop_assert!(met);
        }
        // k-of-n signing: adding a signature of an authorised key raises the count by one,
        // adding one again changes nothing.
        if let Some(&extra) = authorised.iter().find(|i| !distinct.contains(i)) {
            let once = RawSigned::parse(&add_signature(&raw, &key(extra)).unwrap()).unwrap();
            let twice = RawSigned::parse(&add_signature(&once, &key(extra)).unwrap()).unwrap();
            prop_assert_eq!(count_valid_signatures(&once, &keys, &ids).unwrap(), distinct.len() as u64 + 1);
            prop_assert_eq!(count_valid_signatures(&twice, &keys, &ids).unwrap(), distinct.len() as u64 + 1);
        }
    }

    #[test]
    fn accepted_target_names_never_traverse(name in prop::collection::vec(prop_oneof![
        Just('.'), Just('/'), Just('\\'), Just('a'), Just('%'), Just('\n'), Just(' '), any::<char>()
    ], 0..16).prop_map(String::from_iter)) {
        if let Ok(n) = TargetName::new(&name) {
            prop_assert!(!name.starts_with('/') && !name.contains('\\'));
            prop_assert!(name.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
            prop_assert!(!name.chars().any(char::is_control));
            let path = n.consistent_path("00");
            prop_assert!(path.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
        }
    }
}
