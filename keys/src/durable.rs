//! Durable file writes, the one place this crate creates files.
//!
//! Every file is written to a temporary file in the destination directory, fsynced, moved
//! into place, and then the directory is fsynced, so that after a crash or power cut the
//! destination holds either the old content or the new content, never a torn mix, and the
//! rename itself is on disk (a rename is a directory change: without the directory fsync it
//! can be lost even though the file's data was synced).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

use crate::error::{Error, Result};

/// Mode of private files: key files and passphrase files.
pub const PRIVATE: u32 = 0o600;
/// Mode of public files: metadata and images.
pub const PUBLIC: u32 = 0o644;

/// What to do when the destination already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    /// Replace it atomically (`timestamp.json`, `root.json`, a file gaining a signature).
    Replace,
    /// Fail with `AlreadyExists`: versioned metadata and key files are never clobbered.
    Refuse,
}

/// A temporary file that becomes its destination only on [`AtomicFile::commit`]; dropped
/// without a commit, it is removed.
pub struct AtomicFile {
    tmp: PathBuf,
    file: Option<File>,
    dir: PathBuf,
    // Set once the temporary file is no longer ours to remove (renamed or removed).
    placed: bool,
}

impl AtomicFile {
    /// Creates a temporary file in `dir` (created if missing) with permissions `mode`.
    pub fn create_in(dir: &Path, mode: u32) -> Result<Self> {
        create_dir_all(dir)?;
        let tmp = dir.join(format!(".tmp-ota-keys-{:016x}", OsRng.next_u64()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("create temporary file", &tmp, e))?;
        // The umask may have cleared bits we want (never added any): set the mode exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("set permissions of", &tmp, e))?;
        Ok(AtomicFile {
            tmp,
            file: Some(file),
            dir: dir.to_path_buf(),
            placed: false,
        })
    }

    /// Appends bytes.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        match self.file.as_mut() {
            Some(f) => f
                .write_all(bytes)
                .map_err(|e| Error::io("write", &self.tmp, e)),
            None => Err(Error::Invalid("write to a committed file".into())),
        }
    }

    /// Makes the content durable under `dest` (which must be in the same directory).
    pub fn commit(mut self, dest: &Path, overwrite: Overwrite) -> Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::Invalid("file committed twice".into()))?;
        file.sync_all()
            .map_err(|e| Error::io("fsync", &self.tmp, e))?;
        drop(file);
        match overwrite {
            Overwrite::Replace => {
                fs::rename(&self.tmp, dest).map_err(|e| Error::io("rename into", dest, e))?;
                self.placed = true;
            }
            Overwrite::Refuse => {
                // A hard link fails if `dest` exists, atomically; `rename` would replace it.
                fs::hard_link(&self.tmp, dest).map_err(|e| Error::io("create", dest, e))?;
                self.placed = true;
                fs::remove_file(&self.tmp)
                    .map_err(|e| Error::io("remove temporary file", &self.tmp, e))?;
            }
        }
        sync_dir(&self.dir)
    }
}

/// Writing through [`io::Write`] (e.g. a compressor's output). Errors carry the OS error
/// only; callers name the file.
impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("write to a committed file")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.placed {
            // Not committed: leave nothing behind. Failure here only leaves a stray temp file.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` durably with permissions `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: u32, overwrite: Overwrite) -> Result<()> {
    let dir = parent_dir(path);
    let mut f = AtomicFile::create_in(&dir, mode)?;
    f.write_all(bytes)?;
    f.commit(path, overwrite)
}

/// Creates a directory and its parents, fsyncing each parent that gained an entry.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(Error::io("create directory", dir, e)),
    }
    sync_dir(&parent_dir(dir))
}

/// Creates a private directory (0700) for key material.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("set permissions of", dir, e))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_sets_mode_and_refuses_or_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.json");
        write(&p, b"one", PRIVATE, Overwrite::Refuse).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = write(&p, b"two", PRIVATE, Overwrite::Refuse).unwrap_err();
        assert!(
            matches!(err, Error::Io { ref source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
        );
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write(&p, b"two", PUBLIC, Overwrite::Replace).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn uncommitted_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut f = AtomicFile::create_in(dir.path(), PUBLIC).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
