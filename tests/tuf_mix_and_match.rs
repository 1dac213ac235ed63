//! Mix-and-match attack: files from different repository states are served together.
//! Every file must be exactly the version (and, where stated, the length and hashes) that
//! the metadata referring to it names.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::ClientError;
use ota_common::metadata::MetaFile;
use support::repo::{expect_err, release, Repo, FIRMWARE};

fn assert_mismatch(err: ClientError, want_file: &str, want_expected: u64, want_got: u64) {
    assert!(
        matches!(&err, ClientError::VersionMismatch { file, expected, got }
            if file == want_file && *expected == want_expected && *got == want_got),
        "{err:?}"
    );
    assert_eq!(err.kind(), "mix_and_match");
}

#[test]
fn snapshot_of_another_version_than_the_timestamp_names_is_refused() {
    // The timestamp names snapshot v2; the file served as 2.snapshot.json says v3.
    let mut repo = Repo::new();
    repo.snapshot.version = 3;
    repo.sync_snapshot_meta();
    repo.write_snapshot();
    repo.rename("3.snapshot.json", "2.snapshot.json");
    repo.timestamp.version = 2;
    repo.timestamp
        .meta
        .insert("snapshot.json".into(), MetaFile::version_only(2));
    repo.write_timestamp();
    assert_mismatch(
        expect_err(repo.refresh(repo.local())),
        "2.snapshot.json",
        2,
        3,
    );
}

#[test]
fn old_targets_served_under_the_new_name_is_refused() {
    let mut repo = Repo::new();
    let v1 = repo.files["1.targets.json"].clone();
    repo.bump();
    repo.publish();
    repo.files.insert("2.targets.json".into(), v1);
    assert_mismatch(
        expect_err(repo.refresh(repo.local())),
        "2.targets.json",
        2,
        1,
    );
}

#[test]
fn old_delegated_role_served_under_the_new_name_is_refused() {
    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    repo.publish();
    let v1 = repo.files["1.apps.json"].clone();
    repo.bump();
    repo.publish();
    repo.files.insert("2.apps.json".into(), v1);
    assert_mismatch(expect_err(repo.refresh(repo.local())), "2.apps.json", 2, 1);
}

#[test]
fn without_consistent_snapshots_an_old_file_is_caught_by_its_version() {
    // Plain names (snapshot.json, targets.json): a mirror can serve any old copy under the
    // same name, and only the version inside tells.
    let mut repo = Repo::unpublished();
    repo.root.consistent_snapshot = false;
    repo.publish_root();
    repo.publish();
    let v1_targets = repo.files["targets.json"].clone();
    let v1_snapshot = repo.files["snapshot.json"].clone();
    repo.bump();
    repo.publish();
    let mut stale_targets = repo.files.clone();
    stale_targets.insert("targets.json".into(), v1_targets);
    let out = support::repo::refresh_files(
        &stale_targets,
        repo.local(),
        support::repo::now(),
        Default::default(),
    );
    assert_mismatch(expect_err(out.result), "targets.json", 2, 1);

    repo.files.insert("snapshot.json".into(), v1_snapshot);
    assert_mismatch(
        expect_err(repo.refresh(repo.local())),
        "snapshot.json",
        2,
        1,
    );
}

#[test]
fn same_version_with_other_content_is_caught_by_stated_hashes() {
    // Two different targets v2 exist (say, from a compromised targets key on one mirror);
    // the snapshot's hash names one of them.
    let mut repo = Repo::new();
    repo.meta_hashes = true;
    repo.bump();
    repo.publish();
    // Same target name and image length, other image: the file keeps its length.
    let evil = vec![b'e'; repo.target_bytes[FIRMWARE].len()];
    repo.add_target(
        "targets",
        FIRMWARE,
        &evil,
        Some(release("1.0.0", &["hw-a"])),
    );
    repo.write_targets(); // same name 2.targets.json, other content, legitimately signed
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::HashMismatch { file, .. } if file == "2.targets.json"),
        "{err:?}"
    );
}

#[test]
fn same_length_other_content_is_caught_by_the_hash() {
    let mut repo = Repo::new();
    repo.meta_hashes = true;
    repo.bump();
    repo.publish();
    // Swap one digit of the signed expiry: same length, signature now wrong, hash first.
    repo.tamper("2.snapshot.json", |b| {
        let text = String::from_utf8(b.clone())
            .unwrap()
            .replacen("2099", "2098", 1);
        *b = text.into_bytes();
    });
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::HashMismatch { file, algorithm } if file == "2.snapshot.json" && algorithm == "sha256"),
        "{err:?}"
    );
}

#[test]
fn a_file_shorter_than_stated_is_refused() {
    let mut repo = Repo::new();
    repo.meta_hashes = true;
    repo.publish();
    repo.tamper("1.snapshot.json", |b| b.truncate(b.len() - 1));
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::LengthMismatch { file, got, expected } if file == "1.snapshot.json" && *got + 1 == *expected),
        "{err:?}"
    );
}

#[test]
fn a_snapshot_that_does_not_list_targets_is_refused() {
    let mut repo = Repo::new();
    repo.snapshot.meta.clear();
    repo.write_snapshot();
    repo.sync_timestamp_meta();
    repo.write_timestamp();
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(&err, ClientError::MissingMeta { role } if role == "targets"),
        "{err:?}"
    );
}

#[test]
fn a_timestamp_that_names_no_snapshot_is_refused() {
    let mut repo = Repo::new();
    repo.timestamp.meta.clear();
    repo.write_timestamp();
    let err = expect_err(repo.refresh(repo.local()));
    assert!(matches!(err, ClientError::NoSnapshotInTimestamp), "{err:?}");
}
