//! The TUF metadata a device keeps between refreshes, as the exact bytes it verified.
//! Each file is replaced atomically; a half-updated set is safe because the client
//! workflow uses local files only as the floor for rollback checks.

use std::path::{Path, PathBuf};

use ota_common::client::LocalMetadata;
use ota_common::target::percent_encode;

use crate::fsutil::{self, FsError};

/// Local metadata in a directory.
#[derive(Debug, Clone)]
pub struct MetadataStore {
    dir: PathBuf,
}

/// Why local metadata could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataStoreError {
    /// No trusted root: neither in the data directory nor at the configured path.
    #[error("no trusted root at {0} (set trusted_root in the configuration)")]
    NoRoot(PathBuf),
    /// Reading failed.
    #[error("reading {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] FsError),
}

impl MetadataStore {
    /// Metadata under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        MetadataStore { dir: dir.into() }
    }

    fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, MetadataStoreError> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(MetadataStoreError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// Loads what is kept; the root comes from `initial_root` the first time.
    pub fn load(&self, initial_root: &Path) -> Result<LocalMetadata, MetadataStoreError> {
        let root = match Self::read_opt(&self.dir.join("root.json"))? {
            Some(r) => r,
            None => Self::read_opt(initial_root)?
                .ok_or_else(|| MetadataStoreError::NoRoot(initial_root.to_path_buf()))?,
        };
        let mut local = LocalMetadata {
            root,
            timestamp: Self::read_opt(&self.dir.join("timestamp.json"))?,
            snapshot: Self::read_opt(&self.dir.join("snapshot.json"))?,
            targets: Self::read_opt(&self.dir.join("targets.json"))?,
            delegated: Default::default(),
        };
        let dir = self.dir.join("delegated");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if let Some(role) = name.strip_suffix(".json") {
                    if let Some(bytes) = Self::read_opt(&entry.path())? {
                        local.delegated.insert(role.to_string(), bytes);
                    }
                }
            }
        }
        Ok(local)
    }

    /// Keeps a verified set for the next refresh.
    pub fn save(&self, local: &LocalMetadata) -> Result<(), MetadataStoreError> {
        fsutil::ensure_dir(&self.dir)?;
        // Root first: it is what the next refresh starts from.
        fsutil::write_atomic(&self.dir.join("root.json"), &local.root)?;
        for (name, bytes) in [
            ("timestamp.json", &local.timestamp),
            ("snapshot.json", &local.snapshot),
            ("targets.json", &local.targets),
        ] {
            if let Some(b) = bytes {
                fsutil::write_atomic(&self.dir.join(name), b)?;
            }
        }
        if !local.delegated.is_empty() {
            let dir = self.dir.join("delegated");
            fsutil::ensure_dir(&dir)?;
            for (role, bytes) in &local.delegated {
                // Role names come from signed metadata but are still made path-safe.
                fsutil::write_atomic(&dir.join(format!("{}.json", percent_encode(role))), bytes)?;
            }
        }
        Ok(())
    }

    /// Deletes everything (wipe).
    pub fn remove_all(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
