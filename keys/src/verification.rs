//! Offline verification of a repository directory with the real client workflow.
//!
//! [`verify_repository`] runs `ota_common::client::refresh_with` over the directory, starting
//! from a trusted root and a given time, exactly as a device would over HTTPS; then it checks
//! every image in `targets/` against the signed length and hashes, and notes metadata that
//! was signed but is not yet reachable from the timestamp.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use ota_common::client::{refresh_with, ClientError, ClientLimits, LocalMetadata, RefreshError};
use ota_common::metadata::{expiry, Role, RoleType};
use ota_common::signed::RawSigned;
use ota_common::target::{TargetName, TargetVerifier};
use ota_common::verify::{count_valid_signatures, Verified, VerifyError};

use crate::error::{Error, Result};
use crate::repo::RepoLayout;

/// Whether to check the images in `targets/` too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetFiles {
    /// Hash every image listed (the default: a release must ship its images).
    Check,
    /// Metadata only (images kept elsewhere, such as a server's blob store).
    Skip,
}

/// One role as the client accepted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleReport {
    /// The role.
    pub role: RoleType,
    /// Its version.
    pub version: u64,
    /// Its expiry.
    pub expires: DateTime<Utc>,
    /// Distinct authorised keys with a valid signature (under the final root).
    pub valid: u64,
    /// The role's threshold.
    pub threshold: u64,
}

/// What verification found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// The repository directory.
    pub dir: PathBuf,
    /// The time used.
    pub now: DateTime<Utc>,
    /// The version of the root verification started from.
    pub trusted_root_version: u64,
    /// Root, timestamp, snapshot, targets.
    pub roles: Vec<RoleReport>,
    /// Targets the client accepts.
    pub targets: usize,
    /// Images checked against their signed length and hashes (None when skipped).
    pub images_checked: Option<usize>,
    /// Signed metadata not yet reachable from the timestamp, and similar remarks.
    pub notes: Vec<String>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "repository {} verifies at {} (starting from trusted root v{})",
            self.dir.display(),
            expiry::format(&self.now),
            self.trusted_root_version
        )?;
        for r in &self.roles {
            write!(
                f,
                "  {:<9}  v{:<4}  expires {}  signatures {}/{}",
                r.role.name(),
                r.version,
                expiry::format(&r.expires),
                r.valid,
                r.threshold
            )?;
            if r.role == RoleType::Targets {
                write!(f, "  {} target(s)", self.targets)?;
            }
            writeln!(f)?;
        }
        match self.images_checked {
            Some(n) => writeln!(f, "  images: {n} checked (length, sha256, sha512)")?,
            None => writeln!(f, "  images: not checked")?,
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// Runs the client workflow over `layout` from `trusted_root` at `now`, then checks images.
pub fn verify_repository(
    layout: &RepoLayout,
    trusted_root: &[u8],
    now: DateTime<Utc>,
    images: TargetFiles,
) -> Result<VerifyReport> {
    let trusted_root_version = RawSigned::parse(trusted_root)
        .ok()
        .and_then(|r| r.decode::<ota_common::metadata::Root>().ok())
        .map_or(0, |r| r.version);
    let local = LocalMetadata {
        root: trusted_root.to_vec(),
        ..Default::default()
    };
    let trusted = refresh_with(local, now, ClientLimits::default(), |req| layout.fetch(req))
        .map_err(|e| match e {
            RefreshError::Fetch(e) => e,
            RefreshError::Client(c) => client_error(layout, c),
        })?;
    let root = trusted.root();
    let mut roles = vec![role_report(root, RoleType::Root, root)?];
    roles.push(role_report(trusted.timestamp(), RoleType::Timestamp, root)?);
    roles.push(role_report(trusted.snapshot(), RoleType::Snapshot, root)?);
    roles.push(role_report(trusted.targets(), RoleType::Targets, root)?);
    let all = trusted.all_targets();
    let images_checked = match images {
        TargetFiles::Skip => None,
        TargetFiles::Check => {
            for (name, file) in &all {
                check_image(layout, name, file)?;
            }
            Some(all.len())
        }
    };
    let mut notes = Vec::new();
    for (role, published) in [
        (RoleType::Root, root.version),
        (RoleType::Snapshot, trusted.snapshot().version),
        (RoleType::Targets, trusted.targets().version),
    ] {
        if let Some(latest) = layout.latest_version(role)? {
            if latest > published {
                notes.push(format!(
                    "metadata/{latest}.{role}.json is newer than the {role} v{published} that clients reach: \
                     not yet published (sign the snapshot and timestamp over it, or finish its signatures)"
                ));
            }
        }
    }
    if std::fs::read(layout.latest_root_file()).ok().as_deref() != Some(root.raw()) {
        notes.push(format!("metadata/root.json is not root v{}", root.version));
    }
    Ok(VerifyReport {
        dir: layout.dir().to_path_buf(),
        now,
        trusted_root_version,
        roles,
        targets: all.len(),
        images_checked,
        notes,
    })
}

fn role_report<T: Role>(
    meta: &Verified<T>,
    role: RoleType,
    root: &ota_common::metadata::Root,
) -> Result<RoleReport> {
    let raw = RawSigned::parse(meta.raw()).map_err(|e| Error::Invalid(e.to_string()))?;
    let (ids, threshold) = root
        .role(role)
        .map(|r| (r.keyids.clone(), r.threshold))
        .unwrap_or_default();
    let valid = count_valid_signatures(&raw, &root.keys, &ids)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(RoleReport {
        role,
        version: meta.version(),
        expires: meta.expires(),
        valid,
        threshold,
    })
}

fn check_image(
    layout: &RepoLayout,
    name: &str,
    file: &ota_common::metadata::TargetFile,
) -> Result<()> {
    let err = |reason: String| Error::Target {
        name: name.into(),
        reason,
    };
    let target = TargetName::new(name).map_err(|e| err(e.to_string()))?;
    let sha256 = file
        .sha256()
        .ok_or_else(|| err("no sha256: cannot locate its image".into()))?;
    let path = layout.target_path(&target, sha256);
    let mut f =
        File::open(&path).map_err(|e| err(format!("image {}: {e}", layout.display(&path))))?;
    let mut v = TargetVerifier::new(file).map_err(|e| err(e.to_string()))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| err(format!("read {}: {e}", layout.display(&path))))?;
        if n == 0 {
            break;
        }
        v.update(&buf[..n])
            .map_err(|e| err(format!("image {}: {e}", layout.display(&path))))?;
    }
    v.finish()
        .map_err(|e| err(format!("image {}: {e}", layout.display(&path))))?;
    Ok(())
}

/// The client's verdict in this crate's terms (threshold, expiry, malformed file).
fn client_error(layout: &RepoLayout, e: ClientError) -> Error {
    let in_metadata = |file: &str| format!("metadata/{file}");
    match e {
        ClientError::Signature {
            file,
            source:
                VerifyError::ThresholdNotMet {
                    role,
                    valid,
                    threshold,
                },
        } => Error::ThresholdNotMet {
            role,
            file: in_metadata(&file),
            have: valid,
            need: threshold,
        },
        ClientError::InvalidTrustedRoot(VerifyError::ThresholdNotMet {
            role,
            valid,
            threshold,
        }) => Error::ThresholdNotMet {
            role,
            file: "the trusted root".into(),
            have: valid,
            need: threshold,
        },
        ClientError::Expired { role, expires, now } => Error::Expired { role, expires, now },
        ClientError::Malformed { file, source } => {
            Error::malformed(layout.metadata_dir().join(file), source)
        }
        other => Error::Verify(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::editor::{RepoEditor, RoleSpec, TargetCustom};
    use chrono::{TimeDelta, TimeZone};
    use ota_common::keys::SigningKey;
    use ota_common::release::ReleaseInfo;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 6, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn report_errors_and_pending_notes() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        let specs: Vec<RoleSpec> = crate::editor::ROLES
            .iter()
            .map(|&role| RoleSpec {
                role,
                keys: vec![key.public()],
                threshold: 1,
            })
            .collect();
        let mut ed = RepoEditor::create(dir.path(), now(), &specs).unwrap();
        ed.sign_root(&[&key]).unwrap();
        ed.sign_targets(&[&key]).unwrap();
        ed.sign_snapshot(&[&key]).unwrap();
        ed.sign_timestamp(&[&key]).unwrap();
        ed.commit().unwrap();
        let layout = RepoLayout::new(dir.path());
        let root = std::fs::read(layout.role_file(RoleType::Root, 1)).unwrap();

        let image = dir.path().join("a.img");
        std::fs::write(&image, b"abc").unwrap();
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        let release = ReleaseInfo::from_custom(
            "a",
            &serde_json::json!({"version": "1.0.0", "hardware_ids": ["hw"]}),
        )
        .unwrap();
        ed.add_target_from_file(
            "a.img",
            &image,
            &TargetCustom {
                release,
                extra: Default::default(),
            },
        )
        .unwrap();
        ed.sign_targets(&[&key]).unwrap();
        ed.sign_snapshot(&[&key]).unwrap();
        ed.sign_timestamp(&[&key]).unwrap();
        ed.commit().unwrap();

        let report = verify_repository(&layout, &root, now(), TargetFiles::Check).unwrap();
        assert_eq!(report.roles.len(), 4);
        assert!(report
            .roles
            .iter()
            .all(|r| r.valid == 1 && r.threshold == 1));
        assert_eq!((report.targets, report.images_checked), (1, Some(1)));
        assert!(report.notes.is_empty(), "{:?}", report.notes);
        let text = report.to_string();
        assert!(
            text.contains("targets") && text.contains("1 target(s)"),
            "{text}"
        );

        // A targets version signed but not snapshotted is noted.
        let mut ed = RepoEditor::load(dir.path(), now()).unwrap();
        ed.remove_target("a.img").unwrap();
        ed.sign_targets(&[&key]).unwrap();
        ed.commit().unwrap();
        let report = verify_repository(&layout, &root, now(), TargetFiles::Check).unwrap();
        assert_eq!(report.notes.len(), 1, "{:?}", report.notes);

        // Expiry and altered images are errors with clear variants.
        let later = now() + TimeDelta::days(3);
        assert!(matches!(
            verify_repository(&layout, &root, later, TargetFiles::Skip),
            Err(Error::Expired { ref role, .. }) if role == "timestamp"
        ));
        let name = TargetName::new("a.img").unwrap();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"abc"));
        std::fs::write(layout.target_path(&name, &sha), b"abd").unwrap();
        assert!(matches!(
            verify_repository(&layout, &root, now(), TargetFiles::Check),
            Err(Error::Target { .. })
        ));
        assert!(verify_repository(&layout, &root, now(), TargetFiles::Skip).is_ok());
    }
}
