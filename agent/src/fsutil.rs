//! Durable file writes: the one place in the agent that fsyncs.
//!
//! A device loses power at any moment. A file replaced with a plain `write` can be found
//! empty or half-written after a power cut, and a `rename` is only durable once the
//! directory holding it has been synced. [`write_atomic`] does the four steps in order:
//!
//! 1. write the new bytes to a temporary file next to the target (same directory, so the
//!    rename cannot cross filesystems);
//! 2. `fsync` the temporary file, so its data is on disk before its name is;
//! 3. `rename` it over the target, which POSIX makes atomic: a reader sees the old file or
//!    the new one, never a mix;
//! 4. `fsync` the directory, so the rename itself survives a power cut.
//!
//! After a crash the target holds either the old or the new content. A stale temporary
//! file (`.NAME.tmp`) may remain; the next write to the same target truncates and reuses
//! it, so they never accumulate. One writer per target is assumed (the agent is a single
//! process).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Permissions of files created by [`write_atomic`]: the agent's files (state, logs,
/// anomaly reports) are private to the agent.
const FILE_MODE: u32 = 0o600;

/// A failed durable write; each variant names the step and the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// The target path has no file name or no parent directory.
    #[error("cannot write atomically to {path}: it has no file name or parent directory")]
    BadPath {
        /// The target path.
        path: PathBuf,
    },
    /// Creating or writing the temporary file failed.
    #[error("writing temporary file {path}")]
    WriteTemp {
        /// The temporary file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// `fsync` of a file failed.
    #[error("syncing file {path}")]
    SyncFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Renaming the temporary file over the target failed.
    #[error("renaming {from} to {to}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The target.
        to: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Opening or syncing a directory failed.
    #[error("syncing directory {path}")]
    SyncDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Creating a directory failed.
    #[error("creating directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Replaces `path` with `bytes` so that after a crash it holds either the old or the new
/// content (see the module docs for the steps). New files get mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (dir, name),
        _ => {
            return Err(FsError::BadPath {
                path: path.to_path_buf(),
            })
        }
    };
    // An empty parent means "the current directory".
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);

    let write_err = |source| FsError::WriteTemp {
        path: tmp.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(|source| FsError::SyncFile {
        path: tmp.clone(),
        source,
    })?;
    drop(file);
    fs::rename(&tmp, path).map_err(|source| FsError::Rename {
        from: tmp.clone(),
        to: path.to_path_buf(),
        source,
    })?;
    fsync_dir(dir)
}

/// Syncs a directory so that entries created, renamed or removed in it survive a power
/// cut. Call it after creating a file whose existence matters, not only after renames.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    let err = |source| FsError::SyncDir {
        path: dir.to_path_buf(),
        source,
    };
    File::open(dir).map_err(err)?.sync_all().map_err(err)
}

/// Syncs an open file's data and metadata (length included), naming `path` on failure.
pub fn fsync_file(file: &File, path: &Path) -> Result<(), FsError> {
    file.sync_all().map_err(|source| FsError::SyncFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `dir` (and its missing parents) and syncs its parent so that the new directory
/// survives a power cut. Does nothing to an existing directory.
pub fn ensure_dir(dir: &Path) -> Result<(), FsError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|source| FsError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_creates_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"two, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two, longer");
        // No temporary file is left behind after a successful write.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn write_atomic_reuses_a_stale_temp_file() {
        // A crash between write and rename leaves `.NAME.tmp`; the next write must not be
        // confused by its longer, older content.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(dir.path().join(".x.tmp"), b"stale stale stale").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!dir.path().join(".x.tmp").exists());
    }

    #[test]
    fn write_atomic_reports_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("x");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(matches!(err, FsError::WriteTemp { .. }), "{err:?}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn write_atomic_rejects_a_path_without_file_name() {
        let err = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert!(matches!(err, FsError::BadPath { .. }), "{err:?}");
    }

    #[test]
    fn ensure_dir_creates_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b");
        ensure_dir(&nested).unwrap();
        assert!(nested.is_dir());
        ensure_dir(&nested).unwrap();
        fsync_dir(&nested).unwrap();
    }
}
