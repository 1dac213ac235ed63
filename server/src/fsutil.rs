//! Durable file writes: the one place in `ota-server` that fsyncs.
//!
//! A rename is atomic but not durable by itself. After a power cut the file system may
//! show the new name pointing at a file whose data never reached the disk (a zero-length
//! or partly written file), or may not show the rename at all. The order below makes every
//! crash point safe:
//!
//! 1. write the data to a temporary file in the *same directory* (rename is atomic only
//!    within one file system);
//! 2. `fsync` the temporary file, so its data and size are on disk before it gets a name
//!    that readers trust;
//! 3. `rename` it over the final name (readers see the old or the new file, never a mix);
//! 4. `fsync` the directory, so the rename itself (a directory entry) is on disk before we
//!    tell anyone the write happened.
//!
//! A crash before step 3 leaves only a temporary file, which startup sweeps remove.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temporary file this crate creates; startup sweeps match on it.
pub const TEMP_PREFIX: &str = ".tmp-";

/// A failed file-system step, with the operation and the path it was applied to.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FsError {
    /// What was being done ("fsync file", "rename", ...).
    pub op: &'static str,
    /// The path the operation was applied to.
    pub path: PathBuf,
    /// The underlying I/O error.
    #[source]
    pub source: io::Error,
}

impl FsError {
    fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
///
/// After this returns `Ok`, a crash leaves `path` holding exactly `bytes`; before it
/// returns, a crash leaves `path` as it was (plus, at worst, a temporary file).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = parent_dir(path);
    let (mut file, tmp) = create_temp(dir)?;
    let written = file
        .write_all(bytes)
        .map_err(|e| FsError::new("write temp file", &tmp, e));
    let result = written.and_then(|()| persist(file, &tmp, path));
    if result.is_err() {
        // Best effort: the temp file is garbage now, and a sweep would remove it anyway.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a fully written temporary file durable under its final name: fsync the file,
/// rename `tmp` to `dest`, fsync the destination's directory. `tmp` and `dest` must be in
/// the same directory. The caller removes `tmp` if this fails.
pub fn persist(file: File, tmp: &Path, dest: &Path) -> Result<(), FsError> {
    file.sync_all()
        .map_err(|e| FsError::new("fsync file", tmp, e))?;
    drop(file);
    fs::rename(tmp, dest).map_err(|e| FsError::new("rename to", dest, e))?;
    fsync_dir(parent_dir(dest))
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    let handle = File::open(dir).map_err(|e| FsError::new("open directory", dir, e))?;
    handle
        .sync_all()
        .map_err(|e| FsError::new("fsync directory", dir, e))
}

/// Creates a new, empty temporary file in `dir` with a name no other writer uses
/// (`.tmp-<pid>-<counter>`); `create_new` guarantees we never reuse a stale one.
pub fn create_temp(dir: &Path) -> Result<(File, PathBuf), FsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((file, path)),
            // Left over from an earlier process with the same pid: take the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(FsError::new("create temp file", &path, e)),
        }
    }
}

/// Removes every temporary file (name starting with [`TEMP_PREFIX`]) directly in `dir`,
/// then fsyncs `dir`. Call at startup, before any writer runs: a writer in flight would
/// lose its temporary file. Returns how many files were removed.
pub fn sweep_temp(dir: &Path) -> Result<usize, FsError> {
    let entries = fs::read_dir(dir).map_err(|e| FsError::new("read directory", dir, e))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| FsError::new("read directory", dir, e))?;
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        if is_temp {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| FsError::new("remove temp file", &path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_creates_and_replaces_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"two, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two, longer");
        assert_eq!(names(dir.path()), vec!["state.json".to_string()]);
    }

    #[test]
    fn write_atomic_into_missing_dir_fails_with_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("f");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.op, "create temp file");
        assert!(err.path.starts_with(dir.path().join("missing")));
    }

    #[test]
    fn failed_rename_removes_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory at the destination makes rename fail.
        let dest = dir.path().join("occupied");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("inner"), b"x").unwrap();
        let err = write_atomic(&dest, b"data").unwrap_err();
        assert_eq!(err.op, "rename to");
        assert_eq!(names(dir.path()), vec!["occupied".to_string()]);
    }

    #[test]
    fn sweep_removes_only_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let (_f, tmp) = create_temp(dir.path()).unwrap();
        assert!(tmp
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(TEMP_PREFIX));
        fs::write(dir.path().join("keep"), b"k").unwrap();
        assert_eq!(sweep_temp(dir.path()).unwrap(), 1);
        assert_eq!(names(dir.path()), vec!["keep".to_string()]);
        assert_eq!(sweep_temp(dir.path()).unwrap(), 0);
    }

    #[test]
    fn temp_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let (_a, pa) = create_temp(dir.path()).unwrap();
        let (_b, pb) = create_temp(dir.path()).unwrap();
        assert_ne!(pa, pb);
    }

    #[test]
    fn fsync_dir_reports_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = fsync_dir(&dir.path().join("nope")).unwrap_err();
        assert_eq!(err.op, "open directory");
    }

    #[test]
    fn parent_of_bare_name_is_cwd() {
        assert_eq!(parent_dir(Path::new("f")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/f")), Path::new("a"));
    }
}
