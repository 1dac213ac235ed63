//! Fast-forward attack: an attacker holding an online key pushes a role's version so high
//! that the legitimate repository can never catch up, locking clients out through their
//! own rollback protection. Recovery (spec 5.3.11): rotate keys in a new root; local
//! metadata that no longer verifies under it is dropped. As in python-tuf, recovering a
//! role's version means rotating the key of the role that *records* that version:
//! timestamp for timestamp, timestamp for snapshot, snapshot for targets.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::{ClientError, LocalMetadata};
use ota_common::metadata::RoleType;
use support::repo::{expect_err, key, Repo, SNAPSHOT_SEED, TIMESTAMP_SEED};

const HUGE: u64 = 1_000_000;

/// Publishes what `attack` sets up, lets a client trust it, and returns that client.
fn client_after(repo: &mut Repo, attack: impl FnOnce(&mut Repo)) -> LocalMetadata {
    attack(repo);
    repo.publish();
    repo.refresh(repo.local()).unwrap().to_local()
}

fn rotate(repo: &mut Repo, role: RoleType, seed: u8) {
    repo.root.version += 1;
    repo.set_keys(role, vec![key(seed)], 1);
    repo.publish_root();
}

#[test]
fn timestamp_fast_forward_recovers_when_the_timestamp_key_rotates() {
    let mut repo = Repo::new();
    let local = client_after(&mut repo, |r| r.timestamp.version = HUGE);
    // The legitimate timestamp v2 is a rollback to this client...
    repo.timestamp.version = 2;
    repo.publish();
    let err = expect_err(repo.refresh(local.clone()));
    assert!(
        matches!(&err, ClientError::Rollback { role, trusted: HUGE, new: 2 } if role == "timestamp"),
        "{err:?}"
    );
    // ...until root v2 rotates the timestamp key and v2 is signed with the new one.
    rotate(&mut repo, RoleType::Timestamp, TIMESTAMP_SEED + 1);
    repo.publish();
    let trusted = repo.refresh(local).unwrap();
    assert_eq!(trusted.root().version, 2);
    assert_eq!(trusted.timestamp().version, 2);
}

#[test]
fn snapshot_fast_forward_recovers_when_the_timestamp_key_rotates() {
    let mut repo = Repo::new();
    let local = client_after(&mut repo, |r| {
        r.timestamp.version = 2;
        r.snapshot.version = HUGE;
    });
    repo.timestamp.version = 3;
    repo.snapshot.version = 2;
    repo.publish();
    let err = expect_err(repo.refresh(local.clone()));
    assert!(
        matches!(&err, ClientError::Rollback { role, trusted: HUGE, new: 2 } if role == "snapshot"),
        "{err:?}"
    );
    // Rotating only the snapshot key is not enough: the trusted timestamp still verifies
    // and still records snapshot v1000000.
    rotate(&mut repo, RoleType::Snapshot, SNAPSHOT_SEED + 1);
    repo.publish();
    let err = expect_err(repo.refresh(local.clone()));
    assert!(
        matches!(&err, ClientError::Rollback { role, .. } if role == "snapshot"),
        "{err:?}"
    );
    // Rotating the timestamp key drops the trusted timestamp: recovered.
    rotate(&mut repo, RoleType::Timestamp, TIMESTAMP_SEED + 1);
    repo.publish();
    let trusted = repo.refresh(local).unwrap();
    assert_eq!((trusted.root().version, trusted.snapshot().version), (3, 2));
}

#[test]
fn targets_fast_forward_recovers_when_the_snapshot_key_rotates() {
    // The attacker (holding the targets and snapshot keys) published targets v1000000.
    let mut repo = Repo::new();
    let local = client_after(&mut repo, |r| {
        r.timestamp.version = 2;
        r.snapshot.version = 2;
        r.targets.version = HUGE;
    });
    repo.timestamp.version = 3;
    repo.snapshot.version = 3;
    repo.targets.version = 2;
    repo.publish();
    let err = expect_err(repo.refresh(local.clone()));
    assert!(
        matches!(&err, ClientError::Rollback { role, trusted: HUGE, new: 2 } if role == "targets"),
        "{err:?}"
    );
    // A new snapshot key makes the trusted snapshot (which records v1000000) unverifiable.
    rotate(&mut repo, RoleType::Snapshot, SNAPSHOT_SEED + 1);
    repo.publish();
    let trusted = repo.refresh(local).unwrap();
    assert_eq!(
        (trusted.snapshot().version, trusted.targets().version),
        (3, 2)
    );
}

#[test]
fn a_rotation_that_leaves_the_key_in_place_does_not_drop_local_metadata() {
    // Control: a new root that keeps the timestamp key keeps the fast-forwarded timestamp
    // trusted, so the lock-out stays (recovery comes from the rotation, nothing else).
    let mut repo = Repo::new();
    let local = client_after(&mut repo, |r| r.timestamp.version = HUGE);
    repo.timestamp.version = 2;
    repo.root.version = 2;
    repo.publish_root();
    repo.publish();
    let err = expect_err(repo.refresh(local));
    assert!(
        matches!(err, ClientError::Rollback { trusted: HUGE, .. }),
        "{err:?}"
    );
}
