//! Wrong-hardware and downgrade attacks: validly signed images that must still not be
//! installed on this device: built for other boards, or older than what the device already
//! committed (anti-rollback floor). The choice runs on a refreshed repository's targets, as
//! the agent runs it.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use ota_common::client::TrustedRepository;
use ota_common::release::{choose, Choice, DeviceFacts, PolicyError, ReleaseVersion};
use support::repo::{release, Repo, FIRMWARE};

fn v(s: &str) -> ReleaseVersion {
    s.parse().unwrap()
}

/// Releases 1.0.0 (hw-a), 2.0.0 (hw-a, hw-b), 3.0.0 (hw-b only), 2.1.0-rc.1 (hw-a), and a
/// file with no release fields.
fn fleet_repo() -> (Repo, TrustedRepository) {
    let mut repo = Repo::new();
    repo.add_target(
        "targets",
        "fw-2.0.0.bin",
        b"two",
        Some(release("2.0.0", &["hw-a", "hw-b"])),
    );
    repo.add_target(
        "targets",
        "fw-3.0.0-b.bin",
        b"three",
        Some(release("3.0.0", &["hw-b"])),
    );
    repo.add_target(
        "targets",
        "fw-2.1.0-rc.1.bin",
        b"rc",
        Some(release("2.1.0-rc.1", &["hw-a"])),
    );
    repo.add_target("targets", "notes.txt", b"notes", None);
    repo.publish();
    let trusted = repo.refresh(repo.local()).unwrap();
    (repo, trusted)
}

fn pick(
    trusted: &TrustedRepository,
    hw: &str,
    floor: Option<&ReleaseVersion>,
    directive: Option<&str>,
) -> Result<Choice, PolicyError> {
    let device = DeviceFacts {
        hardware_id: hw,
        floor,
    };
    choose(trusted.all_targets(), &device, directive)
}

fn installs(choice: Result<Choice, PolicyError>) -> String {
    match choice {
        Ok(Choice::Install { name, .. }) => name,
        other => panic!("expected an install, got {other:?}"),
    }
}

#[test]
fn a_target_for_other_hardware_is_refused() {
    let (_, trusted) = fleet_repo();
    let err = pick(&trusted, "hw-a", None, Some("fw-3.0.0-b.bin")).unwrap_err();
    assert!(
        matches!(&err, PolicyError::WrongHardware { target, hardware_id, fits }
            if target == "fw-3.0.0-b.bin" && hardware_id == "hw-a" && fits == &["hw-b"]),
        "{err:?}"
    );
    // The same image is fine for the board it names.
    assert_eq!(
        installs(pick(&trusted, "hw-b", None, Some("fw-3.0.0-b.bin"))),
        "fw-3.0.0-b.bin"
    );
}

#[test]
fn without_a_directive_other_hardware_is_never_chosen() {
    // 3.0.0 is the newest release but only for hw-b; hw-a gets the newest of its own
    // (2.1.0-rc.1, above 2.0.0 in semver order).
    let (_, trusted) = fleet_repo();
    assert_eq!(
        installs(pick(&trusted, "hw-a", None, None)),
        "fw-2.1.0-rc.1.bin"
    );
    assert_eq!(
        installs(pick(&trusted, "hw-b", None, None)),
        "fw-3.0.0-b.bin"
    );
    assert_eq!(
        pick(&trusted, "hw-z", None, None).unwrap(),
        Choice::UpToDate
    );
}

#[test]
fn a_downgrade_below_the_floor_is_refused() {
    let (_, trusted) = fleet_repo();
    let floor = v("2.0.0");
    let err = pick(&trusted, "hw-a", Some(&floor), Some(FIRMWARE)).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Downgrade { target, offered, floor }
            if target == FIRMWARE && *offered == v("1.0.0") && *floor == v("2.0.0")),
        "{err:?}"
    );
    // A pre-release sorts below its release: 2.1.0-rc.1 is a downgrade from 2.1.0.
    let floor = v("2.1.0");
    let err = pick(&trusted, "hw-a", Some(&floor), Some("fw-2.1.0-rc.1.bin")).unwrap_err();
    assert!(matches!(err, PolicyError::Downgrade { .. }), "{err:?}");
}

#[test]
fn the_floor_itself_is_up_to_date_not_a_reinstall() {
    let (_, trusted) = fleet_repo();
    let floor = v("2.0.0");
    assert_eq!(
        pick(&trusted, "hw-a", Some(&floor), Some("fw-2.0.0.bin")).unwrap(),
        Choice::UpToDate
    );
}

#[test]
fn the_anti_rollback_floor_bounds_the_search() {
    let (_, trusted) = fleet_repo();
    // Floor 2.0.0: nothing newer for hw-a (the rc is 2.1.0-rc.1 > 2.0.0, so it qualifies).
    let floor = v("2.0.0");
    assert_eq!(
        installs(pick(&trusted, "hw-a", Some(&floor), None)),
        "fw-2.1.0-rc.1.bin"
    );
    // Floor 2.1.0: the rc is below it; nothing is chosen although images exist.
    let floor = v("2.1.0");
    assert_eq!(
        pick(&trusted, "hw-a", Some(&floor), None).unwrap(),
        Choice::UpToDate
    );
}

#[test]
fn a_target_without_release_fields_cannot_be_installed() {
    let (_, trusted) = fleet_repo();
    let err = pick(&trusted, "hw-a", None, Some("notes.txt")).unwrap_err();
    assert!(
        matches!(&err, PolicyError::BadReleaseFields { target, .. } if target == "notes.txt"),
        "{err:?}"
    );
}

#[test]
fn a_directive_naming_an_unsigned_target_is_refused() {
    let (_, trusted) = fleet_repo();
    let err = pick(&trusted, "hw-a", None, Some("fw-9.9.9.bin")).unwrap_err();
    assert_eq!(err, PolicyError::UnknownTarget("fw-9.9.9.bin".into()));
}

#[test]
fn a_target_from_a_role_not_trusted_for_its_path_cannot_be_chosen() {
    // `apps` may sign only apps/*; it lists a top-level firmware with a huge version.
    let mut repo = Repo::new();
    repo.delegate("targets", "apps", &["apps/*"], false);
    repo.add_target(
        "apps",
        "fw-99.0.0.bin",
        b"evil",
        Some(release("99.0.0", &["hw-a"])),
    );
    repo.publish();
    let trusted = repo.refresh(repo.local()).unwrap();
    assert!(trusted.delegated()["apps"]
        .targets
        .contains_key("fw-99.0.0.bin"));
    assert_eq!(installs(pick(&trusted, "hw-a", None, None)), FIRMWARE);
    let err = pick(&trusted, "hw-a", None, Some("fw-99.0.0.bin")).unwrap_err();
    assert_eq!(err, PolicyError::UnknownTarget("fw-99.0.0.bin".into()));
}
