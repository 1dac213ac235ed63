//! Freeze attack: the repository (or a mirror) keeps serving metadata that has expired, so
//! the client never learns of newer releases. Every role's expiry is checked against the
//! time given to the client; only the final root's expiry counts during a rotation.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::{ClientError, ClientLimits};
use ota_common::metadata::Root;
use ota_common::signed::RawSigned;
use support::repo::{at, expect_err, far, key, now, past, Repo, ROOT_SEED};

fn assert_expired(err: ClientError, want: &str) {
    assert!(
        matches!(&err, ClientError::Expired { role, .. } if role == want),
        "{want}: {err:?}"
    );
    assert_eq!(err.kind(), "expired_metadata");
}

#[test]
fn expired_timestamp_is_refused() {
    let mut repo = Repo::new();
    repo.timestamp.expires = past();
    repo.publish();
    assert_expired(expect_err(repo.refresh(repo.local())), "timestamp");
}

#[test]
fn expired_snapshot_is_refused() {
    let mut repo = Repo::new();
    repo.snapshot.expires = past();
    repo.publish();
    assert_expired(expect_err(repo.refresh(repo.local())), "snapshot");
}

#[test]
fn expired_targets_is_refused() {
    let mut repo = Repo::new();
    repo.targets.expires = past();
    repo.publish();
    assert_expired(expect_err(repo.refresh(repo.local())), "targets");
}

#[test]
fn expired_delegated_role_is_refused() {
    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    repo.delegated.get_mut("apps").unwrap().targets.expires = past();
    repo.publish();
    assert_expired(expect_err(repo.refresh(repo.local())), "apps");
}

#[test]
fn expired_trusted_root_without_a_newer_one_is_refused() {
    let mut repo = Repo::new();
    repo.root.expires = past();
    repo.publish_root();
    assert_expired(expect_err(repo.refresh(repo.local())), "root");
}

#[test]
fn expired_final_root_after_a_rotation_is_refused() {
    let mut repo = Repo::new();
    repo.root.version = 2;
    repo.root.expires = past();
    repo.publish_root();
    assert_expired(expect_err(repo.refresh(repo.local())), "root");
}

#[test]
fn expired_intermediate_roots_during_a_rotation_are_allowed() {
    // Roots 1 and 2 expired long ago; 3 is current (spec 5.3.10: only the final root).
    let mut repo = Repo::unpublished();
    repo.root.expires = past();
    repo.publish_root();
    repo.rotate_root_keys(vec![key(ROOT_SEED + 1)]);
    repo.root.expires = far();
    repo.rotate_root_keys(vec![key(ROOT_SEED + 2)]);
    repo.publish();
    for (file, expires) in [
        ("1.root.json", past()),
        ("2.root.json", past()),
        ("3.root.json", far()),
    ] {
        let root: Root = RawSigned::parse(&repo.files[file])
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(root.expires, expires, "{file}");
    }
    let trusted = repo.refresh(repo.local()).unwrap();
    assert_eq!(trusted.root().version, 3);
}

#[test]
fn expiry_is_reached_at_the_instant_itself() {
    let mut repo = Repo::new();
    repo.timestamp.expires = now();
    repo.publish();
    assert_expired(expect_err(repo.refresh(repo.local())), "timestamp");
    // One second earlier it is still valid.
    let earlier = now() - chrono::Duration::seconds(1);
    let out = repo.refresh_logged(repo.local(), earlier, ClientLimits::default());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
}

#[test]
fn a_reused_local_targets_file_is_still_checked_for_expiry() {
    // The client keeps targets v1 (expiring 2027) and skips fetching it while the snapshot
    // names that version; the timestamp and snapshot keep being re-signed. In 2028 the
    // frozen targets must be refused although no new file was fetched for it.
    let mut repo = Repo::new();
    repo.targets.expires = at(2027, 1, 1);
    repo.publish();
    let local = repo.refresh(repo.local()).unwrap().to_local();
    repo.timestamp.version += 1;
    repo.snapshot.version += 1;
    repo.publish();
    let out = repo.refresh_logged(local, at(2028, 1, 1), ClientLimits::default());
    assert!(
        !out.files().iter().any(|f| f.ends_with("targets.json")),
        "{:?}",
        out.files()
    );
    assert_expired(expect_err(out.result), "targets");
}

#[test]
fn a_reused_local_snapshot_is_still_checked_for_expiry() {
    let mut repo = Repo::new();
    repo.snapshot.expires = at(2027, 1, 1);
    repo.publish();
    let local = repo.refresh(repo.local()).unwrap().to_local();
    repo.timestamp.version += 1;
    repo.publish();
    let out = repo.refresh_logged(local, at(2028, 1, 1), ClientLimits::default());
    assert!(
        !out.files().iter().any(|f| f.ends_with("snapshot.json")),
        "{:?}",
        out.files()
    );
    assert_expired(expect_err(out.result), "snapshot");
}
