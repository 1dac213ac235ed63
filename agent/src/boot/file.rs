//! File backend: the [`BootVars`] in a JSON file, for tests and for devices whose boot
//! decision is made elsewhere (`ota-agent simulate-boot` plays the bootloader on it).
//!
//! The file looks like `{"default":"A","try":"B","tries_left":2,"booted":"A"}` and is
//! replaced atomically ([`crate::fsutil::write_atomic`]).

use std::path::{Path, PathBuf};

use super::{AbBootloader, BootEnv, BootError, BootVars, Slot};
use crate::fsutil;

/// Boot variables in a JSON file.
#[derive(Debug, Clone)]
pub struct FileEnv {
    path: PathBuf,
}

impl FileEnv {
    /// An environment stored at `path` (which [`FileEnv::init`] creates).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileEnv { path: path.into() }
    }

    /// Creates the file with `default` confirmed and booted, unless it exists. Returns
    /// whether it was created.
    pub fn init(&self, default: Slot) -> Result<bool, BootError> {
        if self.path.exists() {
            return Ok(false);
        }
        self.store(&BootVars::initial(default))?;
        Ok(true)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BootEnv for FileEnv {
    fn load(&self) -> Result<BootVars, BootError> {
        let bytes = std::fs::read(&self.path).map_err(|source| BootError::Io {
            op: "reading boot state file",
            path: self.path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| BootError::Json {
            path: self.path.clone(),
            source,
        })
    }

    fn store(&self, vars: &BootVars) -> Result<(), BootError> {
        let mut bytes = serde_json::to_vec_pretty(vars).map_err(|source| BootError::Json {
            path: self.path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        fsutil::write_atomic(&self.path, &bytes)?;
        Ok(())
    }
}

/// The [`super::Bootloader`] over a JSON file.
pub type FileBootloader = AbBootloader<FileEnv>;

#[cfg(test)]
mod tests {
    use super::super::{sequences, BootSimulator, Bootloader};
    use super::*;

    fn setup(dir: &Path) -> FileBootloader {
        let env = FileEnv::new(dir.join("boot.json"));
        assert!(env.init(Slot::A).unwrap());
        assert!(!env.init(Slot::B).unwrap(), "init must not clobber");
        AbBootloader::new(env).with_tries(2).unwrap()
    }

    #[test]
    fn try_boot_confirm() {
        let dir = tempfile::tempdir().unwrap();
        sequences::try_boot_confirm(&setup(dir.path()));
    }

    #[test]
    fn try_boot_fails_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        sequences::try_boot_fails_falls_back(&setup(dir.path()));
    }

    #[test]
    fn file_format_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let boot = setup(dir.path());
        boot.set_try_once(Slot::B).unwrap();
        let text = std::fs::read_to_string(boot.env().path()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"default":"A","try":"B","tries_left":2,"booted":"A"})
        );
        // A file written by hand (or by another tool) is read back.
        std::fs::write(
            boot.env().path(),
            r#"{"default":"B","try":null,"tries_left":0,"booted":null}"#,
        )
        .unwrap();
        assert_eq!(
            BootSimulator::new(boot.env()).simulate_boot().unwrap(),
            Slot::B
        );
    }

    #[test]
    fn corrupt_or_missing_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let env = FileEnv::new(dir.path().join("boot.json"));
        let boot = AbBootloader::new(env);
        let err = boot.state().unwrap_err();
        assert!(matches!(err, BootError::Io { .. }), "{err:?}");
        std::fs::write(boot.env().path(), "{\"default\":\"C\"}").unwrap();
        let err = boot.state().unwrap_err();
        assert!(matches!(err, BootError::Json { .. }), "{err:?}");
        assert!(err.to_string().contains("boot.json"), "{err}");
    }
}
