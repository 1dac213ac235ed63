//! Rollback attack: the repository (or a mirror) serves metadata older than what the client
//! already trusts. Each role's version, and every version the snapshot lists, only goes up.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::{ClientError, ClientLimits, LocalMetadata};
use support::repo::{expect_err, meta_of, now, Repo};

/// A repository with a delegated role, published at version 1 then 2; returns it with the
/// files of version 1 and a client that trusts version 2.
fn at_version_two() -> (Repo, support::repo::Files, LocalMetadata) {
    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    repo.add_target("apps", "apps/app.bin", b"app v1", None);
    repo.publish();
    let v1 = repo.files.clone();
    repo.bump();
    repo.add_target("apps", "apps/app.bin", b"app v2", None);
    repo.publish();
    let local = repo.refresh(repo.local()).unwrap().to_local();
    (repo, v1, local)
}

#[test]
fn same_versions_again_are_accepted_and_reused() {
    let (repo, _, local) = at_version_two();
    let out = repo.refresh_logged(local, now(), ClientLimits::default());
    let trusted = out.result.as_ref().unwrap();
    assert_eq!(trusted.timestamp().version, 2);
    // Unchanged snapshot, targets and delegated role come from local storage: only the
    // root probe and the timestamp are fetched.
    assert_eq!(out.files(), ["2.root.json", "timestamp.json"]);
}

#[test]
fn timestamp_rollback_is_refused() {
    let (_, v1, local) = at_version_two();
    let out = support::repo::refresh_files(&v1, local, now(), ClientLimits::default());
    let err = expect_err(out.result);
    assert!(
        matches!(&err, ClientError::Rollback { role, trusted: 2, new: 1 } if role == "timestamp"),
        "{err:?}"
    );
    assert_eq!(err.kind(), "rollback");
}

#[test]
fn snapshot_rollback_through_a_newer_timestamp_is_refused() {
    // A fresh timestamp (v3) pointing back at snapshot v1.
    let (mut repo, _, local) = at_version_two();
    repo.timestamp.version = 3;
    let old = meta_of(1, &repo.files["1.snapshot.json"], false);
    repo.timestamp.meta.insert("snapshot.json".into(), old);
    repo.write_timestamp();
    let err = expect_err(repo.refresh(local));
    assert!(
        matches!(&err, ClientError::Rollback { role, trusted: 2, new: 1 } if role == "snapshot"),
        "{err:?}"
    );
}

#[test]
fn targets_rollback_through_a_newer_snapshot_is_refused() {
    let (mut repo, _, local) = at_version_two();
    repo.snapshot.version = 3;
    repo.timestamp.version = 3;
    repo.sync_snapshot_meta();
    let old = meta_of(1, &repo.files["1.targets.json"], false);
    repo.snapshot.meta.insert("targets.json".into(), old);
    repo.write_snapshot();
    repo.sync_timestamp_meta();
    repo.write_timestamp();
    let err = expect_err(repo.refresh(local));
    assert!(
        matches!(&err, ClientError::Rollback { role, trusted: 2, new: 1 } if role == "targets"),
        "{err:?}"
    );
}

#[test]
fn delegated_role_rollback_through_a_newer_snapshot_is_refused() {
    let (mut repo, _, local) = at_version_two();
    repo.snapshot.version = 3;
    repo.timestamp.version = 3;
    repo.sync_snapshot_meta();
    let old = meta_of(1, &repo.files["1.apps.json"], false);
    repo.snapshot.meta.insert("apps.json".into(), old);
    repo.write_snapshot();
    repo.sync_timestamp_meta();
    repo.write_timestamp();
    let err = expect_err(repo.refresh(local));
    assert!(
        matches!(&err, ClientError::Rollback { role, trusted: 2, new: 1 } if role == "apps"),
        "{err:?}"
    );
}

#[test]
fn a_snapshot_that_drops_a_role_is_refused() {
    let (mut repo, _, local) = at_version_two();
    repo.snapshot.version = 3;
    repo.timestamp.version = 3;
    repo.sync_snapshot_meta();
    repo.snapshot.meta.remove("apps.json");
    repo.write_snapshot();
    repo.sync_timestamp_meta();
    repo.write_timestamp();
    let err = expect_err(repo.refresh(local));
    assert!(
        matches!(&err, ClientError::RoleRemoved { role } if role == "apps"),
        "{err:?}"
    );
    assert_eq!(err.kind(), "rollback");
}

#[test]
fn an_expired_local_timestamp_still_guards_against_rollback() {
    // The client's last timestamp (v2) expired in 2030; in 2040 its version still counts
    // against a replayed v1 that does not expire.
    let mut repo = Repo::new();
    let v1 = repo.files.clone();
    repo.bump();
    repo.timestamp.expires = support::repo::at(2030, 1, 1);
    repo.publish();
    let local = repo.refresh(repo.local()).unwrap().to_local();
    let later = support::repo::at(2040, 1, 1);
    let out = support::repo::refresh_files(&v1, local, later, ClientLimits::default());
    let err = expect_err(out.result);
    assert!(
        matches!(&err, ClientError::Rollback { role, trusted: 2, new: 1 } if role == "timestamp"),
        "{err:?}"
    );
}

#[test]
fn forward_progress_after_a_refused_rollback() {
    // The refusal leaves the client's state usable: the next honest version is accepted.
    let (mut repo, v1, local) = at_version_two();
    let out = support::repo::refresh_files(&v1, local.clone(), now(), ClientLimits::default());
    assert!(out.result.is_err());
    repo.bump();
    repo.publish();
    let trusted = repo.refresh(local).unwrap();
    assert_eq!(
        (
            trusted.timestamp().version,
            trusted.snapshot().version,
            trusted.targets().version
        ),
        (3, 3, 3)
    );
    assert_eq!(trusted.delegated()["apps"].version, 3);
}
