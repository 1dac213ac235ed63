//! Endless data attack: a repository or mirror sends more bytes than it should, to exhaust
//! memory, disk or time. Every file is bounded before it is parsed: by its stated length
//! where metadata states one, else by the client's limits; target downloads stop at the
//! signed length. The test fetcher reads at most `max_length + 1` bytes, as a real one must,
//! so the refusals below also show that a client never has to read more than that.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::{ClientError, ClientLimits};
use ota_common::target::{TargetError, TargetVerifier};
use support::repo::{expect_err, now, Repo, FIRMWARE};

fn assert_too_large(err: &ClientError, want_file: &str, want_limit: u64) {
    // `got` is what the bounded reader returned: one byte past the limit, never more.
    assert!(
        matches!(err, ClientError::TooLarge { file, limit, got }
            if file == want_file && *limit == want_limit && *got == want_limit + 1),
        "{err:?}"
    );
    assert_eq!(err.kind(), "endless_data");
}

/// Pads a metadata file with white space after the JSON (still valid JSON, still signed).
fn pad(bytes: &mut Vec<u8>, n: usize) {
    bytes.extend(std::iter::repeat_n(b' ', n));
}

#[test]
fn a_timestamp_over_the_limit_is_refused() {
    let mut repo = Repo::new();
    let limits = ClientLimits::default();
    repo.tamper("timestamp.json", |b| {
        pad(b, limits.timestamp_max_length as usize)
    });
    let out = repo.refresh_logged(repo.local(), now(), limits.clone());
    assert_too_large(
        &expect_err(out.result),
        "timestamp.json",
        limits.timestamp_max_length,
    );
}

#[test]
fn a_root_over_the_limit_is_refused() {
    let mut repo = Repo::new();
    repo.root.version = 2;
    repo.publish_root();
    let limits = ClientLimits {
        root_max_length: 2_000,
        ..ClientLimits::default()
    };
    repo.tamper("2.root.json", |b| pad(b, 2_000));
    let out = repo.refresh_logged(repo.local(), now(), limits);
    assert_too_large(&expect_err(out.result), "2.root.json", 2_000);
}

#[test]
fn a_snapshot_over_the_limit_is_refused_when_no_length_is_stated() {
    let mut repo = Repo::new();
    let limits = ClientLimits {
        snapshot_max_length: 1_000,
        ..ClientLimits::default()
    };
    repo.tamper("1.snapshot.json", |b| pad(b, 1_000));
    let out = repo.refresh_logged(repo.local(), now(), limits);
    assert_too_large(&expect_err(out.result), "1.snapshot.json", 1_000);
}

#[test]
fn targets_and_delegated_roles_over_the_limit_are_refused_when_no_length_is_stated() {
    let limits = ClientLimits {
        targets_max_length: 3_000,
        ..ClientLimits::default()
    };
    let mut repo = Repo::new();
    repo.tamper("1.targets.json", |b| pad(b, 3_000));
    let out = repo.refresh_logged(repo.local(), now(), limits.clone());
    assert_too_large(&expect_err(out.result), "1.targets.json", 3_000);

    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    repo.publish();
    repo.tamper("1.apps.json", |b| pad(b, 3_000));
    let out = repo.refresh_logged(repo.local(), now(), limits);
    assert_too_large(&expect_err(out.result), "1.apps.json", 3_000);
}

#[test]
fn a_file_longer_than_its_stated_length_is_refused_at_that_length() {
    // The stated length, not the (much larger) default limit, bounds the read.
    let mut repo = Repo::new();
    repo.meta_hashes = true;
    repo.publish();
    let stated = repo.files["1.snapshot.json"].len() as u64;
    repo.tamper("1.snapshot.json", |b| pad(b, 1_000_000));
    let out = repo.refresh_logged(repo.local(), now(), ClientLimits::default());
    assert_eq!(out.requests.last().unwrap().max_length, stated);
    assert_too_large(&expect_err(out.result), "1.snapshot.json", stated);

    let mut repo = Repo::new();
    repo.meta_hashes = true;
    repo.publish();
    let stated = repo.files["1.targets.json"].len() as u64;
    repo.tamper("1.targets.json", |b| pad(b, 10));
    assert_too_large(
        &expect_err(repo.refresh(repo.local())),
        "1.targets.json",
        stated,
    );
}

#[test]
fn the_timestamp_limit_is_the_clients_own() {
    // Nothing states the timestamp's length: the limit is fixed by the client.
    let repo = Repo::new();
    let limits = ClientLimits {
        timestamp_max_length: 100,
        ..ClientLimits::default()
    };
    let out = repo.refresh_logged(repo.local(), now(), limits);
    assert_too_large(&expect_err(out.result), "timestamp.json", 100);
}

#[test]
fn a_huge_signed_version_number_is_only_a_number() {
    // Versions near u64::MAX must neither overflow nor make the client ask for more files.
    let mut repo = Repo::new();
    repo.timestamp.version = u64::MAX;
    repo.publish();
    let trusted = repo.refresh(repo.local()).unwrap();
    assert_eq!(trusted.timestamp().version, u64::MAX);
    repo.root.version = u64::MAX;
    repo.publish_root();
    repo.files.insert(
        "2.root.json".into(),
        repo.files[&format!("{}.root.json", u64::MAX)].clone(),
    );
    let err = expect_err(repo.refresh(repo.local()));
    assert!(
        matches!(
            err,
            ClientError::VersionMismatch {
                expected: 2,
                got: u64::MAX,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn target_bytes_past_the_signed_length_are_refused() {
    let repo = Repo::new();
    let trusted = repo.refresh(repo.local()).unwrap();
    let (file, _) = trusted.find_target(FIRMWARE).unwrap();
    let good = &repo.target_bytes[FIRMWARE];
    let mut v = TargetVerifier::new(file).unwrap();
    v.update(good).unwrap();
    // One more byte is refused, and the verifier never counted it.
    assert_eq!(
        v.update(b"x"),
        Err(TargetError::TooLong {
            expected: file.length
        })
    );
    assert_eq!(v.position(), file.length);
    // An endless stream: refused at the first chunk that passes the length.
    let mut v = TargetVerifier::new(file).unwrap();
    let chunk = [0u8; 8];
    let mut fed = 0u64;
    let refused = loop {
        match v.update(&chunk) {
            Ok(()) => fed += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(
            fed <= file.length,
            "verifier accepted more than the signed length"
        );
    };
    assert!(matches!(refused, TargetError::TooLong { .. }));
}

#[test]
fn target_bytes_short_of_the_signed_length_are_refused() {
    let repo = Repo::new();
    let trusted = repo.refresh(repo.local()).unwrap();
    let (file, _) = trusted.find_target(FIRMWARE).unwrap();
    let good = &repo.target_bytes[FIRMWARE];
    let mut v = TargetVerifier::new(file).unwrap();
    v.update(&good[..good.len() - 1]).unwrap();
    assert!(matches!(v.finish(), Err(TargetError::TooShort { .. })));
}

#[test]
fn a_signed_length_is_exact_not_a_bound() {
    // A target claiming a huge length is not satisfied by fewer bytes.
    let repo = Repo::new();
    let trusted = repo.refresh(repo.local()).unwrap();
    let mut file = trusted.find_target(FIRMWARE).unwrap().0.clone();
    file.length = u64::MAX;
    let mut v = TargetVerifier::new(&file).unwrap();
    v.update(&repo.target_bytes[FIRMWARE]).unwrap();
    assert!(matches!(v.finish(), Err(TargetError::TooShort { .. })));
}
