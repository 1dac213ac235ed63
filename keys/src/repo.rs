//! A repository directory in the layout of DESIGN.md, and reading its metadata.
//!
//! ```text
//! <dir>/metadata/{N}.root.json      every root version (clients walk them one by one)
//! <dir>/metadata/root.json          the latest fully signed root (convenience copy)
//! <dir>/metadata/timestamp.json     the only file without a version in its name
//! <dir>/metadata/{N}.snapshot.json
//! <dir>/metadata/{N}.targets.json
//! <dir>/targets/{dir/}{sha256}.{basename}   images (TargetName::consistent_path)
//! <dir>/targets/{dir/}{zsha256}.{basename}.zst   compressed forms (CompressedForm::consistent_path)
//! ```
//!
//! Nothing here writes: editing is [`crate::editor::RepoEditor`]'s job.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use ota_common::client::{FetchRequest, FetchResponse};
use ota_common::metadata::{Role, RoleType, Root, Snapshot, Targets, Timestamp};
use ota_common::release::CompressedForm;
use ota_common::signed::RawSigned;
use ota_common::target::TargetName;

use crate::error::{Error, Result};

/// The metadata directory's name.
pub const METADATA_DIR: &str = "metadata";
/// The images directory's name.
pub const TARGETS_DIR: &str = "targets";

/// Default lifetimes of each role's metadata (DESIGN.md: root 1 year, targets 90 days,
/// snapshot 7 days, timestamp 1 day).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiryPolicy {
    /// Root lifetime.
    pub root: TimeDelta,
    /// Targets lifetime.
    pub targets: TimeDelta,
    /// Snapshot lifetime.
    pub snapshot: TimeDelta,
    /// Timestamp lifetime.
    pub timestamp: TimeDelta,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        ExpiryPolicy {
            root: TimeDelta::days(365),
            targets: TimeDelta::days(90),
            snapshot: TimeDelta::days(7),
            timestamp: TimeDelta::days(1),
        }
    }
}

impl ExpiryPolicy {
    /// The lifetime of `role`.
    pub fn lifetime(&self, role: RoleType) -> TimeDelta {
        match role {
            RoleType::Root => self.root,
            RoleType::Targets => self.targets,
            RoleType::Snapshot => self.snapshot,
            RoleType::Timestamp => self.timestamp,
        }
    }

    /// When metadata of `role` signed at `now` expires, in whole seconds (TUF's form).
    pub fn expires(&self, role: RoleType, now: DateTime<Utc>) -> DateTime<Utc> {
        let at = now + self.lifetime(role);
        DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
    }
}

/// Paths of a repository directory.
#[derive(Clone, Debug)]
pub struct RepoLayout {
    dir: PathBuf,
}

impl RepoLayout {
    /// The repository rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RepoLayout { dir: dir.into() }
    }

    /// The repository directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/metadata`.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join(METADATA_DIR)
    }

    /// `<dir>/targets`.
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join(TARGETS_DIR)
    }

    /// `metadata/{N}.root.json`, `metadata/{N}.snapshot.json`, `metadata/{N}.targets.json`,
    /// or `metadata/timestamp.json` (the version is ignored for the timestamp).
    pub fn role_file(&self, role: RoleType, version: u64) -> PathBuf {
        match role {
            RoleType::Timestamp => self.timestamp_file(),
            _ => self
                .metadata_dir()
                .join(format!("{version}.{}.json", role.name())),
        }
    }

    /// `metadata/root.json`, the latest fully signed root.
    pub fn latest_root_file(&self) -> PathBuf {
        self.metadata_dir().join("root.json")
    }

    /// `metadata/timestamp.json`.
    pub fn timestamp_file(&self) -> PathBuf {
        self.metadata_dir().join("timestamp.json")
    }

    /// Where a target's image lives: `targets/` + [`TargetName::consistent_path`].
    pub fn target_path(&self, name: &TargetName, sha256_hex: &str) -> PathBuf {
        let mut p = self.targets_dir();
        // consistent_path percent-encodes every component, so none is `.`, `..` or has `/`.
        for part in name.consistent_path(sha256_hex).split('/') {
            p.push(part);
        }
        p
    }

    /// Where a target's compressed form lives: `targets/` +
    /// [`CompressedForm::consistent_path`] (`<dir>/<sha256>.<base>.zst`).
    pub fn compressed_path(&self, name: &TargetName, form: &CompressedForm) -> PathBuf {
        let mut p = self.targets_dir();
        for part in form.consistent_path(name).split('/') {
            p.push(part);
        }
        p
    }

    /// The versions of `{N}.{role}.json` files present, ascending.
    pub fn versions(&self, role: RoleType) -> Result<Vec<u64>> {
        let dir = self.metadata_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list metadata directory", &dir, e)),
        };
        let suffix = format!(".{}.json", role.name());
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list metadata directory", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name.strip_suffix(&suffix) {
                if let Ok(v) = n.parse::<u64>() {
                    out.push(v);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The highest version of `{N}.{role}.json` present.
    pub fn latest_version(&self, role: RoleType) -> Result<Option<u64>> {
        Ok(self.versions(role)?.last().copied())
    }

    /// Whether the metadata directory already holds metadata.
    pub fn has_metadata(&self) -> Result<bool> {
        Ok(self.latest_version(RoleType::Root)?.is_some() || self.timestamp_file().exists())
    }

    /// A path relative to the repository, for messages (`metadata/2.root.json`).
    pub fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// Answers a client fetch from the metadata directory: the transport of offline
    /// verification. Reads at most `max_length + 1` bytes, so that an oversized file is
    /// refused by the client without being read whole.
    pub fn fetch(&self, req: &FetchRequest) -> Result<FetchResponse> {
        // Client file names are percent-encoded and flat; anything else is not ours.
        if req.file.contains('/') || req.file.starts_with('.') {
            return Err(Error::Invalid(format!("refusing to fetch {:?}", req.file)));
        }
        let path = self.metadata_dir().join(&req.file);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FetchResponse::NotFound),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let mut bytes = Vec::new();
        file.take(req.max_length.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", &path, e))?;
        Ok(FetchResponse::Found(bytes))
    }

    /// Reads the latest metadata of every role (for editing; not verification).
    pub fn load_latest(&self) -> Result<LatestMetadata> {
        let root_v = self.latest_version(RoleType::Root)?.ok_or_else(|| {
            Error::Invalid(format!(
                "{} holds no root metadata: not a repository (run `ota-keys init`)",
                self.metadata_dir().display()
            ))
        })?;
        let root = read_role::<Root>(&self.role_file(RoleType::Root, root_v))?;
        let prev_root = match root_v {
            0 | 1 => None,
            v => Some(read_role::<Root>(&self.role_file(RoleType::Root, v - 1))?),
        };
        let latest = |role: RoleType| -> Result<u64> {
            self.latest_version(role)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "{} holds no {role} metadata",
                    self.metadata_dir().display()
                ))
            })
        };
        let targets =
            read_role::<Targets>(&self.role_file(RoleType::Targets, latest(RoleType::Targets)?))?;
        let snapshot = read_role::<Snapshot>(
            &self.role_file(RoleType::Snapshot, latest(RoleType::Snapshot)?),
        )?;
        let timestamp = read_role::<Timestamp>(&self.timestamp_file())?;
        Ok(LatestMetadata {
            root,
            prev_root,
            targets,
            snapshot,
            timestamp,
        })
    }
}

/// A metadata file as read: its path, exact bytes and decoded `signed` part.
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    /// Where it was read.
    pub path: PathBuf,
    /// The exact bytes, parsed as an envelope.
    pub raw: RawSigned,
    /// The decoded `signed` part (not verified).
    pub signed: T,
}

/// The latest metadata of each role in a repository directory.
#[derive(Clone, Debug)]
pub struct LatestMetadata {
    /// Highest `{N}.root.json`.
    pub root: Loaded<Root>,
    /// `{N-1}.root.json`, whose root keys must also have signed the latest root.
    pub prev_root: Option<Loaded<Root>>,
    /// Highest `{N}.targets.json`.
    pub targets: Loaded<Targets>,
    /// Highest `{N}.snapshot.json`.
    pub snapshot: Loaded<Snapshot>,
    /// `timestamp.json`.
    pub timestamp: Loaded<Timestamp>,
}

/// Reads a metadata file and decodes it as role `T`.
pub fn read_role<T: Role>(path: &Path) -> Result<Loaded<T>> {
    let bytes = fs::read(path).map_err(|e| Error::io("read metadata", path, e))?;
    let raw = RawSigned::parse(&bytes).map_err(|e| Error::malformed(path, e))?;
    let signed = raw.decode::<T>().map_err(|e| Error::malformed(path, e))?;
    Ok(Loaded {
        path: path.to_path_buf(),
        raw,
        signed,
    })
}

/// Which top-level role a metadata file's `_type` names.
pub fn role_of(raw: &RawSigned, path: &Path) -> Result<RoleType> {
    match raw.role_type() {
        Some("root") => Ok(RoleType::Root),
        Some("targets") => Ok(RoleType::Targets),
        Some("snapshot") => Ok(RoleType::Snapshot),
        Some("timestamp") => Ok(RoleType::Timestamp),
        other => Err(Error::malformed(
            path,
            format!("_type {other:?} is not a top-level role"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn paths_follow_the_design_layout() {
        let l = RepoLayout::new("/r");
        assert_eq!(
            l.role_file(RoleType::Root, 3),
            Path::new("/r/metadata/3.root.json")
        );
        assert_eq!(
            l.role_file(RoleType::Targets, 2),
            Path::new("/r/metadata/2.targets.json")
        );
        assert_eq!(
            l.role_file(RoleType::Timestamp, 9),
            Path::new("/r/metadata/timestamp.json")
        );
        let name = TargetName::new("fw/board a/img.bin").unwrap();
        assert_eq!(
            l.target_path(&name, "ab12"),
            Path::new("/r/targets/fw/board%20a/ab12.img.bin")
        );
        assert_eq!(
            l.display(Path::new("/r/metadata/1.root.json")),
            "metadata/1.root.json"
        );
    }

    #[test]
    fn versions_are_scanned_numerically() {
        let dir = tempfile::tempdir().unwrap();
        let l = RepoLayout::new(dir.path());
        assert_eq!(l.latest_version(RoleType::Root).unwrap(), None);
        fs::create_dir_all(l.metadata_dir()).unwrap();
        for f in [
            "1.root.json",
            "10.root.json",
            "2.root.json",
            "root.json",
            "x.root.json",
            "3.targets.json",
        ] {
            fs::write(l.metadata_dir().join(f), "{}").unwrap();
        }
        assert_eq!(l.versions(RoleType::Root).unwrap(), vec![1, 2, 10]);
        assert_eq!(l.latest_version(RoleType::Targets).unwrap(), Some(3));
        assert!(l.has_metadata().unwrap());
    }

    #[test]
    fn expiry_defaults_and_whole_seconds() {
        let p = ExpiryPolicy::default();
        let now =
            Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap() + TimeDelta::milliseconds(1500);
        assert_eq!(
            p.expires(RoleType::Timestamp, now),
            Utc.with_ymd_and_hms(2030, 1, 2, 0, 0, 1).unwrap()
        );
        assert_eq!(p.lifetime(RoleType::Root), TimeDelta::days(365));
        assert_eq!(p.lifetime(RoleType::Targets), TimeDelta::days(90));
        assert_eq!(p.lifetime(RoleType::Snapshot), TimeDelta::days(7));
    }

    #[test]
    fn fetch_reads_bounded_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let l = RepoLayout::new(dir.path());
        fs::create_dir_all(l.metadata_dir()).unwrap();
        fs::write(l.timestamp_file(), vec![b'x'; 100]).unwrap();
        let req = |file: &str| FetchRequest {
            role: "timestamp".into(),
            file: file.into(),
            max_length: 10,
            not_found_ends_step: false,
        };
        match l.fetch(&req("timestamp.json")).unwrap() {
            FetchResponse::Found(b) => assert_eq!(b.len(), 11),
            FetchResponse::NotFound => panic!("found expected"),
        }
        assert!(matches!(
            l.fetch(&req("2.root.json")).unwrap(),
            FetchResponse::NotFound
        ));
        assert!(l.fetch(&req("../secret")).is_err());
    }
}
