//! GRUB backend: the [`BootVars`] in a GRUB environment block, through `grub-editenv`
//! (Debian package `grub-common`).
//!
//! Variables: `ota_default`, `ota_try` (empty: none), `ota_tries_left`, `ota_booted`.
//! `agent/contrib/grub-ota.cfg` is the grub.cfg snippet that consumes them: it
//! `load_env`s them, makes the [`super::decide_boot`] decision, `save_env`s the counter and
//! passes `ota.slot=A|B` on the kernel command line.
//!
//! `grub-editenv set` rewrites the block in place, so a power cut during it could leave a
//! truncated block. This backend never edits the live file: it copies it to a scratch
//! file, runs `grub-editenv` there, and installs the result with
//! [`crate::fsutil::write_atomic`]. GRUB finds the file by name at each boot, so the
//! rename is safe for its `save_env` too. Variables other than ours (`saved_entry`, ...)
//! are kept.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{parse_listing, run_tool, AbBootloader, BootEnv, BootError, BootVars, Slot, VarNames};
use crate::fsutil;

/// The Debian package that ships `grub-editenv`.
const PACKAGE: &str = "grub-common";

/// Variable names in the GRUB environment block.
const NAMES: VarNames = VarNames {
    default: "ota_default",
    try_slot: "ota_try",
    tries_left: "ota_tries_left",
    booted: "ota_booted",
};

/// Boot variables in a GRUB environment block.
#[derive(Debug, Clone)]
pub struct GrubEnv {
    tool: PathBuf,
    env_file: PathBuf,
}

impl GrubEnv {
    /// The environment block at `env_file` (on a device usually `/boot/grub/grubenv`),
    /// edited with `grub-editenv` from `PATH`.
    pub fn new(env_file: impl Into<PathBuf>) -> Self {
        GrubEnv {
            tool: PathBuf::from("grub-editenv"),
            env_file: env_file.into(),
        }
    }

    /// Uses another `grub-editenv` (for example `grub2-editenv` on Fedora).
    pub fn with_tool(mut self, tool: impl Into<PathBuf>) -> Self {
        self.tool = tool.into();
        self
    }

    /// The environment block file.
    pub fn env_file(&self) -> &Path {
        &self.env_file
    }

    /// Creates the block with `default` confirmed and booted, unless it exists (then its
    /// variables are left alone). Returns whether it was created.
    pub fn init(&self, default: Slot) -> Result<bool, BootError> {
        if self.env_file.exists() {
            return Ok(false);
        }
        self.store(&BootVars::initial(default))?;
        Ok(true)
    }

    fn editenv(&self, file: &Path, args: &[&str]) -> Result<String, BootError> {
        let mut argv: Vec<OsString> = vec![file.into()];
        argv.extend(args.iter().map(OsString::from));
        run_tool(&self.tool, PACKAGE, &argv, None)
    }

    fn scratch_file(&self) -> PathBuf {
        let mut name = OsString::from(".");
        name.push(self.env_file.file_name().unwrap_or_default());
        name.push(".edit");
        self.env_file.with_file_name(name)
    }
}

impl BootEnv for GrubEnv {
    fn load(&self) -> Result<BootVars, BootError> {
        // `grub-editenv FILE list` creates a missing FILE: check first, so that a wrong
        // path is an error rather than a fresh environment.
        if !self.env_file.is_file() {
            return Err(BootError::Io {
                op: "reading GRUB environment block",
                path: self.env_file.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let listing = self.editenv(&self.env_file, &["list"])?;
        NAMES.parse(&parse_listing(&listing))
    }

    fn store(&self, vars: &BootVars) -> Result<(), BootError> {
        let scratch = self.scratch_file();
        let io_err = |op, source| BootError::Io {
            op,
            path: scratch.clone(),
            source,
        };
        if self.env_file.exists() {
            std::fs::copy(&self.env_file, &scratch)
                .map_err(|e| io_err("copying GRUB environment block to", e))?;
        } else {
            // A leftover scratch file from a crash would make `create` keep old content.
            match std::fs::remove_file(&scratch) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing stale scratch file", e)),
            }
            self.editenv(&scratch, &["create"])?;
        }
        let assignments = NAMES.assignments(vars);
        let mut args = vec!["set"];
        args.extend(assignments.iter().map(String::as_str));
        self.editenv(&scratch, &args)?;
        let block =
            std::fs::read(&scratch).map_err(|e| io_err("reading edited GRUB environment", e))?;
        fsutil::write_atomic(&self.env_file, &block)?;
        std::fs::remove_file(&scratch).map_err(|e| io_err("removing scratch file", e))?;
        Ok(())
    }
}

/// The [`super::Bootloader`] over a GRUB environment block.
pub type GrubBootloader = AbBootloader<GrubEnv>;

#[cfg(test)]
mod tests {
    use super::super::{sequences, Bootloader};
    use super::*;

    fn setup(dir: &Path) -> GrubBootloader {
        sequences::require_tool("grub-editenv", PACKAGE);
        let env = GrubEnv::new(dir.join("grubenv"));
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
    fn block_is_a_valid_grub_environment() {
        let dir = tempfile::tempdir().unwrap();
        let boot = setup(dir.path());
        let file = boot.env().env_file().to_path_buf();
        // Someone else's variable, set with the real tool, survives our edits.
        run_tool(
            Path::new("grub-editenv"),
            PACKAGE,
            &[
                file.clone().into(),
                "set".into(),
                "saved_entry=rescue".into(),
            ],
            None,
        )
        .unwrap();
        boot.set_try_once(Slot::B).unwrap();

        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(bytes.len(), 1024, "GRUB needs a 1024-byte block");
        assert!(bytes.starts_with(b"# GRUB Environment Block\n"));
        let listing = run_tool(
            Path::new("grub-editenv"),
            PACKAGE,
            &[file.clone().into(), "list".into()],
            None,
        )
        .unwrap();
        let vars = parse_listing(&listing);
        assert_eq!(vars["saved_entry"], "rescue");
        assert_eq!(vars["ota_default"], "A");
        assert_eq!(vars["ota_try"], "B");
        assert_eq!(vars["ota_tries_left"], "2");
        assert_eq!(vars["ota_booted"], "A");
        assert!(!boot.env().scratch_file().exists());
    }

    #[test]
    fn corrupt_block_is_reported_by_the_tool() {
        sequences::require_tool("grub-editenv", PACKAGE);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grubenv");
        std::fs::write(&file, "not an environment block\n").unwrap();
        let boot = AbBootloader::new(GrubEnv::new(&file));
        let err = boot.state().unwrap_err();
        assert!(
            matches!(&err, BootError::ToolFailed { stderr, .. } if stderr.contains("invalid environment block")),
            "{err:?}"
        );
        // A write is refused as well, and leaves the file as it was.
        assert!(boot.set_try_once(Slot::B).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"not an environment block\n");
    }

    #[test]
    fn missing_block_is_not_silently_created() {
        sequences::require_tool("grub-editenv", PACKAGE);
        let dir = tempfile::tempdir().unwrap();
        let boot = AbBootloader::new(GrubEnv::new(dir.path().join("grubenv")));
        assert!(matches!(boot.state(), Err(BootError::Io { .. })));
        assert!(!dir.path().join("grubenv").exists());
    }

    #[test]
    fn invalid_value_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let boot = setup(dir.path());
        let file = boot.env().env_file().to_path_buf();
        run_tool(
            Path::new("grub-editenv"),
            PACKAGE,
            &[file.into(), "set".into(), "ota_tries_left=lots".into()],
            None,
        )
        .unwrap();
        let err = boot.state().unwrap_err();
        assert!(
            matches!(&err, BootError::InvalidVar { name, value } if name == "ota_tries_left" && value == "lots"),
            "{err:?}"
        );
    }

    #[test]
    fn contrib_script_is_valid_grub_and_uses_our_names() {
        sequences::require_tool("grub-script-check", PACKAGE);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grub-ota.cfg");
        run_tool(
            Path::new("grub-script-check"),
            PACKAGE,
            &[script.clone().into()],
            None,
        )
        .unwrap();
        let text = std::fs::read_to_string(&script).unwrap();
        for name in [
            NAMES.default,
            NAMES.try_slot,
            NAMES.tries_left,
            NAMES.booted,
        ] {
            assert!(
                text.contains(&format!("${name}")),
                "{name} unused in {script:?}"
            );
        }
        // The countdown is spelled out for every count the agent may set.
        for n in 1..=super::super::MAX_TRIES {
            assert!(
                text.contains(&format!("\"$ota_tries_left\" = \"{n}\"")),
                "{n}"
            );
        }
    }

    #[test]
    fn missing_tool_fails_with_install_hint() {
        let dir = tempfile::tempdir().unwrap();
        let env = GrubEnv::new(dir.path().join("grubenv")).with_tool("/nonexistent/grub-editenv");
        let err = env.init(Slot::A).unwrap_err();
        assert!(err.to_string().contains("grub-common"), "{err}");
    }
}
