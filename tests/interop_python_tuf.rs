//! Interop with python-tuf, the reference TUF implementation: repositories written by its
//! Metadata API (`tests/interop/make_repos.py`) must lead our client to the conclusion in
//! each scenario's `expect.json` (see `tests/interop/README.md`).
//!
//! Python is `$OTA_PYTHON`, else `<workspace>/.venv/bin/python`. With neither, this test
//! fails (it does not skip): run `bash .ci/run`, or
//! `python3 -m venv .venv && .venv/bin/pip install -r .ci/python-requirements.txt`.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};
use ota_common::client::{
    refresh_with, ClientError, ClientLimits, FetchRequest, FetchResponse, LocalMetadata,
    TrustedRepository,
};
use ota_common::target::{TargetError, TargetName};
use serde_json::Value;
use support::repo::{client_error, verify_target};

/// expect.json's `error` names → the kind we report. Metadata failures are
/// `ClientError::kind()`; target download failures have no `ClientError` (the bytes are
/// checked by `TargetVerifier` after the refresh) and are named by [`target_kind`].
const ERROR_KINDS: &[(&str, &str)] = &[
    // TUF does not tell a bad signature from a missing one: fewer valid signatures than the
    // threshold. We report both as `ClientError::Signature`, kind "bad_signature".
    ("threshold_not_met", "bad_signature"),
    // `ClientError::Expired`.
    ("expired", "expired_metadata"),
    // A file's version differs from what its referrer names: `ClientError::VersionMismatch`,
    // kind "mix_and_match" (the attack it stops).
    ("version_mismatch", "mix_and_match"),
    // At the download stage: `TargetError::HashMismatch`. (A metadata file's hash mismatch
    // would be `ClientError::HashMismatch`, kind "metadata_hash_mismatch".)
    ("hash_mismatch", "target_hash_mismatch"),
];

/// Scenarios the fixtures must contain, so that key-type coverage cannot vanish silently.
const REQUIRED_SCENARIOS: &[&str] = &[
    "ed25519_basic",
    "ecdsa_keys",
    "rsa_keys",
    "mixed_threshold",
    "delegations",
    "root_rotation",
    "bad_signature",
    "expired_timestamp",
    "threshold_not_met",
    "snapshot_version_mismatch",
    "target_hash_mismatch",
];

fn target_kind(e: &TargetError) -> &'static str {
    match e {
        TargetError::HashMismatch { .. } => "target_hash_mismatch",
        TargetError::TooLong { .. } | TargetError::TooShort { .. } => "target_length_mismatch",
        TargetError::NoKnownHash => "target_no_known_hash",
        _ => "target_other",
    }
}

fn our_kind(expected: &str) -> &'static str {
    ERROR_KINDS
        .iter()
        .find(|(theirs, _)| *theirs == expected)
        .map(|(_, ours)| *ours)
        .unwrap_or_else(|| panic!("expect.json error {expected:?} is not in ERROR_KINDS: add it"))
}

/// The role a failure is about: named in the error, or derived from the file name.
fn error_role(e: &ClientError) -> Option<String> {
    let of_file = |file: &str| {
        let stem = file.strip_suffix(".json").unwrap_or(file);
        match stem.split_once('.') {
            Some((v, rest)) if v.chars().all(|c| c.is_ascii_digit()) => rest.to_string(),
            _ => stem.to_string(),
        }
    };
    match e {
        ClientError::Malformed { file, .. }
        | ClientError::Signature { file, .. }
        | ClientError::VersionMismatch { file, .. }
        | ClientError::TooLarge { file, .. }
        | ClientError::LengthMismatch { file, .. }
        | ClientError::HashMismatch { file, .. }
        | ClientError::NoKnownHash { file, .. }
        | ClientError::NotFound { file } => Some(of_file(file)),
        ClientError::Rollback { role, .. }
        | ClientError::RoleRemoved { role }
        | ClientError::Expired { role, .. }
        | ClientError::MissingMeta { role } => Some(role.clone()),
        ClientError::NoSnapshotInTimestamp => Some("timestamp".into()),
        _ => None,
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("OTA_PYTHON") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "OTA_PYTHON={} does not exist", p.display());
        return p;
    }
    let venv = workspace().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "python-tuf interop needs Python with tuf installed: set OTA_PYTHON, or run `bash .ci/run`, \
         or create the venv: `python3 -m venv .venv && .venv/bin/pip install -r .ci/python-requirements.txt` \
         (looked for {})",
        venv.display()
    );
    venv
}

/// Serves `<scenario>/metadata/<file>`, reading at most `max_length + 1` bytes.
fn fetch_from(dir: &Path) -> impl FnMut(&FetchRequest) -> Result<FetchResponse, Infallible> + '_ {
    move |req| {
        assert!(
            !req.file.contains('/') && !req.file.contains(".."),
            "unsafe request {:?}",
            req.file
        );
        let path = dir.join("metadata").join(&req.file);
        let Ok(f) = std::fs::File::open(&path) else {
            return Ok(FetchResponse::NotFound);
        };
        let mut bytes = Vec::new();
        f.take(req.max_length.saturating_add(1))
            .read_to_end(&mut bytes)
            .unwrap();
        Ok(FetchResponse::Found(bytes))
    }
}

fn refresh(dir: &Path, expect: &Value) -> Result<TrustedRepository, ClientError> {
    let root = std::fs::read(dir.join(expect["trusted_root"].as_str().unwrap())).unwrap();
    let now: DateTime<Utc> = expect["now"].as_str().unwrap().parse().unwrap();
    let local = LocalMetadata {
        root,
        ..LocalMetadata::default()
    };
    refresh_with(local, now, ClientLimits::default(), fetch_from(dir)).map_err(client_error)
}

/// Downloads and verifies every expected target; `Err` names the first failure.
fn check_targets(dir: &Path, expect: &Value, trusted: &TrustedRepository) -> Result<(), String> {
    for (name, want) in expect["targets"].as_object().unwrap() {
        let (file, role) = trusted
            .find_target(name)
            .ok_or_else(|| format!("target {name} not found"))?;
        let checks = [
            ("role", Value::from(role), want["role"].clone()),
            ("length", Value::from(file.length), want["length"].clone()),
            ("sha256", Value::from(file.sha256()), want["sha256"].clone()),
            (
                "custom",
                file.custom.clone().unwrap_or(Value::Null),
                want.get("custom").cloned().unwrap_or(Value::Null),
            ),
        ];
        for (what, got, expected) in checks {
            if got != expected {
                return Err(format!(
                    "target {name}: {what} is {got}, expected {expected}"
                ));
            }
        }
        // The served path is where our naming rule says it is.
        let safe = TargetName::new(name).map_err(|e| e.to_string())?;
        let path = format!("targets/{}", safe.consistent_path(file.sha256().unwrap()));
        if want["path"] != path.as_str() {
            return Err(format!(
                "target {name}: we would fetch {path}, served at {}",
                want["path"]
            ));
        }
        let bytes = std::fs::read(dir.join(&path)).map_err(|e| format!("{path}: {e}"))?;
        verify_target(file, &bytes).map_err(|e| target_kind(&e).to_string())?;
    }
    Ok(())
}

/// Checks one scenario against its expect.json; `Err` says how it differs.
fn check_scenario(dir: &Path) -> Result<(), String> {
    let expect: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expect.json")).unwrap()).unwrap();
    let result = refresh(dir, &expect);
    let error = expect["error"].as_str();
    match (error, expect["error_stage"].as_str(), result) {
        (None, _, Ok(trusted)) => {
            let root_version = trusted.root().version;
            if expect["root_version"] != root_version {
                return Err(format!(
                    "root v{root_version}, expected {}",
                    expect["root_version"]
                ));
            }
            check_targets(dir, &expect, &trusted)?;
            for absent in expect["absent_targets"].as_array().unwrap() {
                let name = absent.as_str().unwrap();
                if let Some((_, role)) = trusted.find_target(name) {
                    return Err(format!("{name} must be absent, found in {role}"));
                }
            }
            Ok(())
        }
        (None, _, Err(e)) => Err(format!("refused ({}): {e}", e.kind())),
        (Some(kind), Some("refresh"), Err(e)) => {
            let want = our_kind(kind);
            let want_role = expect["error_role"].as_str().map(String::from);
            if e.kind() != want || error_role(&e) != want_role {
                return Err(format!(
                    "refused as {} (role {:?}): {e}; expected {want} (role {want_role:?})",
                    e.kind(),
                    error_role(&e)
                ));
            }
            Ok(())
        }
        (Some(kind), Some("download"), Ok(trusted)) => {
            match check_targets(dir, &expect, &trusted) {
                Err(got) if got == our_kind(kind) => Ok(()),
                Err(other) => Err(format!(
                    "download failed with {other}, expected {}",
                    our_kind(kind)
                )),
                Ok(()) => Err(format!(
                    "every download verified, expected {}",
                    our_kind(kind)
                )),
            }
        }
        (Some(kind), stage, Ok(_)) => Err(format!("accepted, expected {kind} at {stage:?}")),
        (Some(kind), stage, Err(e)) => Err(format!(
            "refused at refresh with {e}, expected {kind} at {stage:?}"
        )),
    }
}

#[test]
fn python_tuf_repositories_verify_as_expected() {
    let out_dir = tempfile::tempdir().unwrap();
    let script = workspace().join("tests/interop/make_repos.py");
    let output = Command::new(python())
        .arg(&script)
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "make_repos.py failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let listing: Value = serde_json::from_slice(&output.stdout).unwrap();
    let scenarios: Vec<&str> = listing["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let have: BTreeSet<&str> = scenarios.iter().copied().collect();
    for required in REQUIRED_SCENARIOS {
        assert!(
            have.contains(required),
            "scenario {required} missing from {scenarios:?}"
        );
    }
    let failures: Vec<String> = scenarios
        .iter()
        .filter_map(|s| {
            check_scenario(&out_dir.path().join(s))
                .err()
                .map(|e| format!("{s}: {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "python-tuf scenarios that differ:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_expected_error_name_maps_to_a_kind() {
    // The table is the contract with the fixtures' vocabulary (README: expect.json).
    for theirs in [
        "threshold_not_met",
        "expired",
        "version_mismatch",
        "hash_mismatch",
    ] {
        assert!(!our_kind(theirs).is_empty());
    }
}
