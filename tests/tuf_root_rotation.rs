//! Root rotation (spec 5.3): the client walks N+1.root.json until 404; each new root must be
//! signed by a threshold of the trusted root's root keys *and* of its own, carry exactly
//! version N+1, and the walk is bounded. Only the final root's expiry matters.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::{ClientError, ClientLimits};
use ota_common::metadata::RoleType;
use ota_common::verify::VerifyError;
use support::repo::{expect_err, key, now, Repo, ROOT_SEED};

fn assert_signature(err: &ClientError, want_file: &str) {
    assert!(
        matches!(err, ClientError::Signature { file, source: VerifyError::ThresholdNotMet { .. } } if file == want_file),
        "{err:?}"
    );
}

#[test]
fn a_chain_of_rotations_is_followed_to_the_end() {
    let mut repo = Repo::new();
    repo.rotate_root_keys(vec![key(ROOT_SEED + 1)]);
    repo.rotate_root_keys(vec![key(ROOT_SEED + 2)]);
    let out = repo.refresh_logged(repo.local(), now(), ClientLimits::default());
    assert_eq!(
        &out.files()[..3],
        ["2.root.json", "3.root.json", "4.root.json"]
    );
    let trusted = out.result.unwrap();
    assert_eq!(trusted.root().version, 3);
    assert_eq!(trusted.root().raw(), &repo.files["3.root.json"][..]);
    // The next refresh starts from root 3 and asks for 4 only.
    let out = repo.refresh_logged(trusted.to_local(), now(), ClientLimits::default());
    assert_eq!(out.files()[0], "4.root.json");
    assert!(out.result.is_ok());
}

#[test]
fn the_number_of_rotations_per_refresh_is_bounded() {
    let mut repo = Repo::new();
    for i in 1..=5 {
        repo.rotate_root_keys(vec![key(ROOT_SEED + i)]);
    }
    let limits = ClientLimits {
        max_root_rotations: 2,
        ..ClientLimits::default()
    };
    let out = repo.refresh_logged(repo.local(), now(), limits);
    let roots: Vec<&str> = out
        .files()
        .into_iter()
        .filter(|f| f.ends_with("root.json"))
        .collect();
    assert_eq!(roots, ["2.root.json", "3.root.json"]);
    assert_eq!(out.result.unwrap().root().version, 3);
    // Without the bound, all the way to 6.
    assert_eq!(repo.refresh(repo.local()).unwrap().root().version, 6);
}

#[test]
fn a_new_root_not_signed_by_the_old_root_keys_is_refused() {
    let mut repo = Repo::new();
    repo.root.version = 2;
    repo.set_keys(RoleType::Root, vec![key(ROOT_SEED + 1)], 1);
    repo.publish_root(); // signed by the new key only
    assert_signature(&expect_err(repo.refresh(repo.local())), "2.root.json");
}

#[test]
fn a_new_root_must_meet_the_old_threshold_not_just_one_old_key() {
    // Root 1: root keys 1 and 2, threshold 2. Root 2 is signed by key 1 and the new key 3.
    let mut repo = Repo::new();
    repo.set_keys(RoleType::Root, vec![key(ROOT_SEED), key(ROOT_SEED + 1)], 2);
    repo.publish_root();
    repo.publish();
    repo.root.version = 2;
    repo.set_keys(RoleType::Root, vec![key(ROOT_SEED + 2)], 1);
    repo.publish_root_signed_by(&[&key(ROOT_SEED), &key(ROOT_SEED + 2)]);
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Signature { file, source: VerifyError::ThresholdNotMet { valid: 1, threshold: 2, .. } } if file == "2.root.json"),
        "{err:?}"
    );
    // Both old keys and the new one: accepted.
    repo.publish_root_signed_by(&[&key(ROOT_SEED), &key(ROOT_SEED + 1), &key(ROOT_SEED + 2)]);
    assert_eq!(repo.refresh(repo.local()).unwrap().root().version, 2);
}

#[test]
fn a_new_root_not_signed_by_its_own_keys_is_refused() {
    let mut repo = Repo::new();
    repo.root.version = 2;
    repo.set_keys(RoleType::Root, vec![key(ROOT_SEED + 1)], 1);
    repo.publish_root_signed_by(&[&key(ROOT_SEED)]); // old key only
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Signature { file, source: VerifyError::ThresholdNotMet { valid: 0, .. } } if file == "2.root.json"),
        "{err:?}"
    );
}

#[test]
fn retired_root_keys_cannot_sign_later_roots() {
    // 1 -> 2 moves to key 2; a root 3 signed with key 1 (retired) is refused.
    let mut repo = Repo::new();
    repo.rotate_root_keys(vec![key(ROOT_SEED + 1)]);
    repo.root.version = 3;
    repo.set_keys(RoleType::Root, vec![key(ROOT_SEED)], 1);
    repo.publish_root(); // signed by key 1, which root 3 lists but root 2 does not
    assert_signature(&expect_err(repo.refresh(repo.local())), "3.root.json");
}

#[test]
fn a_version_skip_is_refused() {
    // 2.root.json holds version 3, properly signed.
    let mut repo = Repo::new();
    repo.root.version = 3;
    repo.publish_root();
    repo.rename("3.root.json", "2.root.json");
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::VersionMismatch { file, expected: 2, got: 3 } if file == "2.root.json"),
        "{err:?}"
    );
    assert_eq!(err.kind(), "mix_and_match");
}

#[test]
fn a_replayed_root_is_refused() {
    // 2.root.json is a copy of root 1.
    let mut repo = Repo::new();
    repo.files
        .insert("2.root.json".into(), repo.files["1.root.json"].clone());
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(
            err,
            ClientError::VersionMismatch {
                expected: 2,
                got: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_malformed_next_root_is_refused() {
    let mut repo = Repo::new();
    repo.files.insert(
        "2.root.json".into(),
        b"{\"signed\": {\"_type\": \"timestamp\"}, \"signatures\": []}".to_vec(),
    );
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Malformed { file, .. } if file == "2.root.json"),
        "{err:?}"
    );
    assert_eq!(err.kind(), "malformed_metadata");
}

#[test]
fn a_tampered_trusted_root_is_refused_before_any_fetch() {
    let repo = Repo::new();
    let mut local = repo.local();
    let text =
        String::from_utf8(local.root)
            .unwrap()
            .replacen("\"threshold\":1", "\"threshold\":2", 1);
    local.root = text.into_bytes();
    let out = repo.refresh_logged(local, now(), ClientLimits::default());
    assert!(out.requests.is_empty());
    let err = expect_err(out.result);
    assert!(matches!(err, ClientError::InvalidTrustedRoot(_)), "{err:?}");
}

#[test]
fn a_rotation_that_replaces_the_timestamp_key_takes_effect() {
    let mut repo = Repo::new();
    let local = repo.refresh(repo.local()).unwrap().to_local();
    repo.root.version = 2;
    repo.set_keys(
        RoleType::Timestamp,
        vec![key(support::repo::TIMESTAMP_SEED + 1)],
        1,
    );
    repo.publish_root();
    // A timestamp still signed by the old key is now refused...
    let mut stale = repo.files.clone();
    repo.timestamp.version = 2;
    repo.publish();
    stale.insert("2.root.json".into(), repo.files["2.root.json"].clone());
    let out = support::repo::refresh_files(&stale, local.clone(), now(), ClientLimits::default());
    assert_signature(&expect_err(out.result), "timestamp.json");
    // ...and one signed by the new key accepted.
    assert_eq!(repo.refresh(local).unwrap().timestamp().version, 2);
}
