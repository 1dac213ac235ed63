//! Arbitrary software attack: an attacker serves bytes or metadata of their choosing.
//! Target bytes must match the signed length and hashes; metadata must be signed by keys
//! that the delegating role trusts, over exactly the content received.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::ClientError;
use ota_common::metadata::RoleType;
use ota_common::target::TargetError;
use ota_common::verify::VerifyError;
use serde_json::json;
use support::repo::{expect_err, key, verify_target, Repo, ATTACKER_SEED, FIRMWARE};

#[test]
fn untouched_target_bytes_verify() {
    let repo = Repo::new();
    let trusted = repo.refresh(repo.local()).unwrap();
    let (file, _) = trusted.find_target(FIRMWARE).unwrap();
    let image = verify_target(file, &repo.target_bytes[FIRMWARE]).unwrap();
    assert_eq!(image.length(), file.length);
    assert_eq!(image.sha256(), file.sha256());
}

#[test]
fn altered_target_bytes_are_refused() {
    let repo = Repo::new();
    let trusted = repo.refresh(repo.local()).unwrap();
    let (file, _) = trusted.find_target(FIRMWARE).unwrap();
    let good = &repo.target_bytes[FIRMWARE];
    // Every single-bit change anywhere in the image, same length.
    for i in 0..good.len() {
        let mut evil = good.clone();
        evil[i] ^= 0x80;
        let err = verify_target(file, &evil).unwrap_err();
        assert!(
            matches!(
                err,
                TargetError::HashMismatch {
                    algorithm: "sha256",
                    ..
                }
            ),
            "byte {i}: {err:?}"
        );
    }
    // Entirely different content of the same length.
    let evil = vec![b'A'; good.len()];
    assert!(matches!(
        verify_target(file, &evil),
        Err(TargetError::HashMismatch { .. })
    ));
}

#[test]
fn a_target_listing_only_unknown_hashes_is_refused() {
    let repo = Repo::new();
    let trusted = repo.refresh(repo.local()).unwrap();
    let mut file = trusted.find_target(FIRMWARE).unwrap().0.clone();
    file.hashes = [("md5".to_string(), "00".to_string())].into();
    assert!(matches!(
        verify_target(&file, &repo.target_bytes[FIRMWARE]),
        Err(TargetError::NoKnownHash)
    ));
}

#[test]
fn each_top_level_role_signed_by_an_unknown_key_is_refused() {
    for role in [RoleType::Timestamp, RoleType::Snapshot, RoleType::Targets] {
        let mut repo = Repo::new();
        // The attacker signs with their own key; root still lists the real one.
        *repo.keys_mut(role) = vec![key(ATTACKER_SEED)];
        repo.bump();
        repo.publish();
        let file = match role {
            RoleType::Timestamp => "timestamp.json".to_string(),
            r => format!("2.{r}.json"),
        };
        let err = expect_err(repo.refresh(repo.local()));
        assert!(
            matches!(
                &err,
                ClientError::Signature { file: f, source: VerifyError::ThresholdNotMet { valid: 0, threshold: 1, .. } }
                    if *f == file
            ),
            "{role}: {err:?}"
        );
        assert_eq!(err.kind(), "bad_signature");
    }
}

#[test]
fn a_new_root_signed_only_by_an_unknown_key_is_refused() {
    let mut repo = Repo::new();
    repo.root.version = 2;
    repo.set_keys(RoleType::Root, vec![key(ATTACKER_SEED)], 1);
    repo.set_keys(RoleType::Targets, vec![key(ATTACKER_SEED)], 1);
    repo.publish_root();
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Signature { file, source: VerifyError::ThresholdNotMet { valid: 0, .. } } if file == "2.root.json"),
        "{err:?}"
    );
}

#[test]
fn a_delegated_role_signed_by_a_key_its_delegator_did_not_name_is_refused() {
    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    repo.add_target("apps", "apps/app.bin", b"app", None);
    repo.delegated.get_mut("apps").unwrap().keys = vec![key(ATTACKER_SEED)];
    repo.publish();
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Signature { file, .. } if file == "1.apps.json"),
        "{err:?}"
    );
}

#[test]
fn a_delegated_role_cannot_sign_for_the_top_level_targets() {
    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    repo.publish();
    // targets.json signed by the delegated role's (authorised, but elsewhere) key.
    let apps_key = repo.delegated["apps"].keys[0].seed()[0];
    repo.targets_keys = vec![key(apps_key)];
    repo.bump();
    repo.publish();
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Signature { file, .. } if file == "2.targets.json"),
        "{err:?}"
    );
}

#[test]
fn signed_content_changed_after_signing_is_refused() {
    // Without hashes in snapshot meta, the signature is what catches the change.
    let mut repo = Repo::new();
    repo.edit_json("1.targets.json", |v| {
        v["signed"]["targets"][FIRMWARE]["length"] = json!(999_999);
    });
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Signature { file, source: VerifyError::ThresholdNotMet { valid: 0, .. } } if file == "1.targets.json"),
        "{err:?}"
    );

    // With hashes, the snapshot's hash catches it before the file is even parsed.
    // (Same number of digits, so the file keeps the length the snapshot states.)
    let mut repo = Repo::new();
    repo.meta_hashes = true;
    repo.publish();
    repo.edit_json("1.targets.json", |v| {
        v["signed"]["targets"][FIRMWARE]["length"] = json!(21);
    });
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::HashMismatch { file, algorithm } if file == "1.targets.json" && algorithm == "sha256"),
        "{err:?}"
    );
    assert_eq!(err.kind(), "metadata_hash_mismatch");
}

#[test]
fn an_unknown_field_added_after_signing_is_refused() {
    // Unknown fields are inside the signed bytes: adding one breaks the signature, which
    // proves the client verifies what it received, not a re-serialisation of what it models.
    let mut repo = Repo::new();
    repo.edit_json("timestamp.json", |v| {
        v["signed"]["x-extra"] = json!("injected")
    });
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Signature { file, .. } if file == "timestamp.json"),
        "{err:?}"
    );
}

#[test]
fn a_signature_copied_onto_other_content_is_refused() {
    // Take targets v2's signed part and v1's signature: the key id is right, the bytes not.
    let mut repo = Repo::new();
    let v1: serde_json::Value = serde_json::from_slice(&repo.files["1.targets.json"]).unwrap();
    repo.bump();
    repo.publish();
    repo.edit_json("2.targets.json", |v| {
        v["signatures"] = v1["signatures"].clone()
    });
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::Signature { file, .. } if file == "2.targets.json"),
        "{err:?}"
    );
}
