//! Threshold attacks: metadata must carry valid signatures from at least `threshold`
//! *distinct* keys authorised for the role. A key signing twice, or listed under two ids,
//! counts once; a threshold of zero would accept unsigned metadata and is refused.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::ClientError;
use ota_common::metadata::RoleType;
use ota_common::verify::VerifyError;
use serde_json::json;
use support::repo::{expect_err, key, Repo, TIMESTAMP_SEED};

fn assert_threshold(err: &ClientError, want_file: &str, want_valid: u64, want_threshold: u64) {
    assert!(
        matches!(err, ClientError::Signature { file, source: VerifyError::ThresholdNotMet { valid, threshold, .. } }
            if file == want_file && *valid == want_valid && *threshold == want_threshold),
        "{err:?}"
    );
    assert_eq!(err.kind(), "bad_signature");
}

/// Timestamp role with keys TIMESTAMP_SEED+0..n and the given threshold, root republished.
fn timestamp_keys(n: u8, threshold: u64) -> Repo {
    let mut repo = Repo::new();
    let keys = (0..n).map(|i| key(TIMESTAMP_SEED + i)).collect();
    repo.set_keys(RoleType::Timestamp, keys, threshold);
    repo.publish_root();
    repo
}

#[test]
fn threshold_met_by_distinct_keys_is_accepted() {
    let mut repo = timestamp_keys(3, 2);
    repo.timestamp_keys = vec![key(TIMESTAMP_SEED), key(TIMESTAMP_SEED + 2)];
    repo.publish();
    repo.refresh(repo.local()).unwrap();
}

#[test]
fn threshold_not_met_is_refused() {
    let mut repo = timestamp_keys(3, 2);
    repo.timestamp_keys = vec![key(TIMESTAMP_SEED + 1)];
    repo.publish();
    assert_threshold(
        &expect_err(repo.refresh(repo.local())),
        "timestamp.json",
        1,
        2,
    );
}

#[test]
fn one_key_signing_twice_counts_once() {
    let mut repo = timestamp_keys(2, 2);
    repo.timestamp_keys = vec![key(TIMESTAMP_SEED), key(TIMESTAMP_SEED)];
    repo.publish();
    let raw: serde_json::Value = serde_json::from_slice(&repo.files["timestamp.json"]).unwrap();
    assert_eq!(raw["signatures"].as_array().unwrap().len(), 2);
    assert_threshold(
        &expect_err(repo.refresh(repo.local())),
        "timestamp.json",
        1,
        2,
    );
}

#[test]
fn one_key_listed_under_two_ids_counts_once() {
    // Root lists the timestamp key twice: under its id and under the id of a copy with an
    // extra field (so a different id for the same key material), threshold 2.
    let mut repo = timestamp_keys(1, 2);
    let mut alias = key(TIMESTAMP_SEED).public();
    alias.extra.insert("x-alias".into(), json!(true));
    let alias_id = alias.key_id().unwrap();
    repo.root.keys.insert(alias_id.clone(), alias);
    repo.root
        .roles
        .get_mut("timestamp")
        .unwrap()
        .keyids
        .push(alias_id.clone());
    repo.publish_root();
    repo.publish();
    // The one signature, listed under both ids.
    repo.edit_json("timestamp.json", |v| {
        let mut dup = v["signatures"][0].clone();
        dup["keyid"] = json!(alias_id.0);
        v["signatures"].as_array_mut().unwrap().push(dup);
    });
    assert_threshold(
        &expect_err(repo.refresh(repo.local())),
        "timestamp.json",
        1,
        2,
    );
}

#[test]
fn zero_threshold_is_refused() {
    let mut repo = timestamp_keys(1, 0);
    repo.publish();
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Signature { file, source: VerifyError::ZeroThreshold { role } }
            if file == "timestamp.json" && role == "timestamp"),
        "{err:?}"
    );
}

#[test]
fn zero_threshold_in_the_trusted_root_is_refused() {
    let mut repo = Repo::new();
    repo.set_keys(RoleType::Root, vec![key(1)], 0);
    repo.publish_root();
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(
            err,
            ClientError::InvalidTrustedRoot(VerifyError::ZeroThreshold { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), "invalid_trusted_root");
}

#[test]
fn zero_threshold_for_a_delegated_role_is_refused() {
    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    repo.targets.delegations.as_mut().unwrap().roles[0].threshold = 0;
    repo.delegated.get_mut("apps").unwrap().keys.clear(); // unsigned
    repo.publish();
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Signature { file, source: VerifyError::ZeroThreshold { .. } } if file == "1.apps.json"),
        "{err:?}"
    );
}

#[test]
fn delegated_threshold_not_met_is_refused() {
    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    let extra = key(77).public();
    let extra_id = extra.key_id().unwrap();
    let d = repo.targets.delegations.as_mut().unwrap();
    d.keys.insert(extra_id.clone(), extra);
    d.roles[0].keyids.push(extra_id);
    d.roles[0].threshold = 2;
    repo.publish();
    assert_threshold(&expect_err(repo.refresh(repo.local())), "1.apps.json", 1, 2);
}

#[test]
fn a_key_of_another_role_does_not_count() {
    // The snapshot key is in root.keys, but not authorised for timestamp.
    let mut repo = Repo::new();
    repo.timestamp_keys = vec![key(support::repo::SNAPSHOT_SEED)];
    repo.publish();
    assert_threshold(
        &expect_err(repo.refresh(repo.local())),
        "timestamp.json",
        0,
        1,
    );
}

#[test]
fn invalid_extra_signatures_do_not_hurt_a_met_threshold() {
    // Spec 5.3.4: signatures that do not verify are skipped, not fatal.
    let mut repo = Repo::new();
    repo.edit_json("timestamp.json", |v| {
        let good = v["signatures"][0].clone();
        let mut bad = good.clone();
        bad["sig"] = json!("00".repeat(64));
        let mut garbage = good.clone();
        garbage["sig"] = json!("not hex");
        let unknown = json!({"keyid": "ab".repeat(32), "sig": "00"});
        v["signatures"] = json!([bad, garbage, unknown, good]);
    });
    repo.refresh(repo.local()).unwrap();
}

#[test]
fn a_root_without_a_role_entry_authorises_nothing_for_it() {
    let mut repo = Repo::new();
    repo.root.version = 2;
    repo.root.roles.remove(RoleType::Timestamp.name());
    repo.publish_root();
    let err = expect_err(repo.refresh(repo.local()));
    assert_threshold(&err, "timestamp.json", 0, 1);
}
