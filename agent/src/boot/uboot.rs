//! U-Boot backend: the [`BootVars`] in a U-Boot environment, through `fw_printenv` and
//! `fw_setenv` from libubootenv (Debian package `libubootenv-tool`), always with
//! `-c CONFIG` so the agent never depends on `/etc/fw_env.config` by accident.
//!
//! Variables: `OTA_DEFAULT`, `OTA_TRY` (absent: none), `OTA_TRIES_LEFT`, `OTA_BOOTED`.
//! `agent/contrib/uboot-ota.cmd` is the boot script that consumes them. This is our own
//! scheme rather than RAUC's `BOOT_ORDER` + `BOOT_x_LEFT`: in RAUC's, the running slot's
//! counter runs down at every boot and must be refilled by a mark-good at every boot; here
//! a confirmed default boots without any counter or environment write, and the same four
//! values (and the same [`super::decide_boot`]) serve GRUB, U-Boot and the file backend.
//!
//! All four values are written with one `fw_setenv -s -` call, which is one environment
//! write. With a redundant environment (two copies, U-Boot's `CONFIG_ENV_OFFSET_REDUND`)
//! libubootenv writes the older copy and bumps its flag, so a power cut mid-write leaves the
//! previous copy valid: [`FileEnvLayout::redundant`] is on by default.
//!
//! On a device the config usually exists already (pointing at flash or an eMMC area):
//! use [`UBootEnv::new`]. For tests and simulations [`UBootEnv::init_file_backed`] writes
//! a config pointing at a plain file and creates that file with a valid CRC.
//!
//! libubootenv takes a lock on `/var/lock/fw_printenv.lock`, which must be writable.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{parse_listing, run_tool, AbBootloader, BootEnv, BootError, BootVars, Slot, VarNames};
use crate::fsutil;

/// The Debian package that ships `fw_printenv` and `fw_setenv`.
const PACKAGE: &str = "libubootenv-tool";

/// Variable names in the U-Boot environment.
const NAMES: VarNames = VarNames {
    default: "OTA_DEFAULT",
    try_slot: "OTA_TRY",
    tries_left: "OTA_TRIES_LEFT",
    booted: "OTA_BOOTED",
};

/// Size of one environment copy used by [`FileEnvLayout::new`] (U-Boot's common 16 KiB).
pub const DEFAULT_ENV_SIZE: u64 = 0x4000;

/// Where a file-backed environment lives and how it is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEnvLayout {
    /// The environment file.
    pub env_file: PathBuf,
    /// Size of one copy in bytes (U-Boot's `CONFIG_ENV_SIZE`); the CRC covers all of it.
    pub size: u64,
    /// Two copies back to back, so that a torn write leaves the previous one valid.
    pub redundant: bool,
}

impl FileEnvLayout {
    /// A redundant environment of [`DEFAULT_ENV_SIZE`] per copy in `env_file`.
    pub fn new(env_file: impl Into<PathBuf>) -> Self {
        FileEnvLayout {
            env_file: env_file.into(),
            size: DEFAULT_ENV_SIZE,
            redundant: true,
        }
    }

    fn copies(&self) -> u64 {
        if self.redundant {
            2
        } else {
            1
        }
    }

    /// The `fw_env.config` text: `device offset size` per copy.
    fn config_text(&self) -> Result<String, BootError> {
        let path = self
            .env_file
            .to_str()
            .filter(|p| !p.contains(char::is_whitespace));
        let Some(path) = path else {
            // The config format is whitespace-separated, without quoting.
            return Err(BootError::UnsupportedPath {
                path: self.env_file.clone(),
                reason: "fw_env.config needs a UTF-8 path without whitespace",
            });
        };
        let mut text = String::from("# Written by ota-agent: file-backed U-Boot environment.\n");
        text.push_str("# device offset size\n");
        for copy in 0..self.copies() {
            text.push_str(&format!(
                "{path} {:#x} {:#x}\n",
                copy * self.size,
                self.size
            ));
        }
        Ok(text)
    }
}

/// Boot variables in a U-Boot environment.
#[derive(Debug, Clone)]
pub struct UBootEnv {
    printenv: PathBuf,
    setenv: PathBuf,
    config: PathBuf,
}

impl UBootEnv {
    /// The environment described by the `fw_env.config` at `config`, with `fw_printenv`
    /// and `fw_setenv` from `PATH`.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        UBootEnv {
            printenv: PathBuf::from("fw_printenv"),
            setenv: PathBuf::from("fw_setenv"),
            config: config.into(),
        }
    }

    /// Uses other `fw_printenv` / `fw_setenv` binaries.
    pub fn with_tools(mut self, printenv: impl Into<PathBuf>, setenv: impl Into<PathBuf>) -> Self {
        self.printenv = printenv.into();
        self.setenv = setenv.into();
        self
    }

    /// The `fw_env.config` in use.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Writes `config` for `layout` and makes the environment file valid: a missing file is
    /// created zero-filled at its fixed size, and a blank (all-zero) one gets `default`
    /// confirmed and booted, written by `fw_setenv` itself so the CRC and the redundancy
    /// flag are U-Boot's. A file holding anything else is left alone, even if invalid.
    /// Returns the environment and whether it was initialized.
    pub fn init_file_backed(
        config: impl Into<PathBuf>,
        layout: &FileEnvLayout,
        default: Slot,
    ) -> Result<(Self, bool), BootError> {
        let env = UBootEnv::new(config);
        env.write_layout(layout, default)
            .map(|initialized| (env, initialized))
    }

    /// [`UBootEnv::init_file_backed`] for an environment built with [`UBootEnv::with_tools`].
    pub fn write_layout(&self, layout: &FileEnvLayout, default: Slot) -> Result<bool, BootError> {
        fsutil::write_atomic(&self.config, layout.config_text()?.as_bytes())?;
        let total = layout.size * layout.copies();
        let path = &layout.env_file;
        let io_err = |op, source| BootError::Io {
            op,
            path: path.clone(),
            source,
        };
        if !path.exists() {
            let file = std::fs::File::create(path)
                .map_err(|e| io_err("creating U-Boot environment file", e))?;
            file.set_len(total)
                .map_err(|e| io_err("sizing U-Boot environment file", e))?;
            fsutil::fsync_file(&file, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fsutil::fsync_dir(dir)?;
            }
        }
        let len = std::fs::metadata(path)
            .map_err(|e| io_err("reading U-Boot environment file metadata", e))?
            .len();
        if len < total {
            return Err(BootError::Io {
                op: "checking U-Boot environment file size",
                path: path.clone(),
                source: std::io::Error::other(format!(
                    "file is {len} bytes, the layout needs {total}"
                )),
            });
        }
        if !is_blank(path, total).map_err(|e| io_err("reading U-Boot environment file", e))? {
            return Ok(false);
        }
        // An all-zero file has no valid CRC: fw_setenv then starts from the default
        // environment given with -f (empty here) and writes a valid copy.
        self.set(&BootVars::initial(default), Some(Path::new("/dev/null")))?;
        Ok(true)
    }

    fn set(&self, vars: &BootVars, defaults: Option<&Path>) -> Result<(), BootError> {
        let mut args: Vec<OsString> = vec!["-c".into(), self.config.clone().into()];
        if let Some(defaults) = defaults {
            args.extend(["-f".into(), defaults.into()]);
        }
        args.extend(["-s".into(), "-".into()]);
        let mut script = NAMES.assignments(vars).join("\n");
        script.push('\n');
        run_tool(&self.setenv, PACKAGE, &args, Some(script.as_bytes()))?;
        Ok(())
    }
}

impl BootEnv for UBootEnv {
    fn load(&self) -> Result<BootVars, BootError> {
        let args: Vec<OsString> = vec!["-c".into(), self.config.clone().into()];
        let listing = run_tool(&self.printenv, PACKAGE, &args, None)?;
        NAMES.parse(&parse_listing(&listing))
    }

    fn store(&self, vars: &BootVars) -> Result<(), BootError> {
        // No -f: if no copy is valid, fw_setenv fails instead of writing over it.
        self.set(vars, None)
    }
}

/// Whether the first `len` bytes of `path` are all zero (read in small chunks).
fn is_blank(path: &Path, len: u64) -> std::io::Result<bool> {
    let mut file = std::fs::File::open(path)?.take(len);
    let mut buf = [0u8; 4096];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// The [`super::Bootloader`] over a U-Boot environment.
pub type UBootBootloader = AbBootloader<UBootEnv>;

#[cfg(test)]
mod tests {
    use super::super::{sequences, Bootloader};
    use super::*;

    fn require_tools() {
        sequences::require_tool("fw_printenv", PACKAGE);
        sequences::require_tool("fw_setenv", PACKAGE);
    }

    fn setup(dir: &Path, redundant: bool) -> UBootBootloader {
        require_tools();
        let layout = FileEnvLayout {
            redundant,
            ..FileEnvLayout::new(dir.join("uboot.env"))
        };
        let (env, created) =
            UBootEnv::init_file_backed(dir.join("fw_env.config"), &layout, Slot::A).unwrap();
        assert!(created);
        let (env, created) = UBootEnv::init_file_backed(env.config(), &layout, Slot::B).unwrap();
        assert!(!created, "init must not clobber a valid environment");
        AbBootloader::new(env).with_tries(2).unwrap()
    }

    fn printenv(config: &Path) -> std::collections::BTreeMap<String, String> {
        let out = run_tool(
            Path::new("fw_printenv"),
            PACKAGE,
            &["-c".into(), config.into()],
            None,
        )
        .unwrap();
        parse_listing(&out)
    }

    #[test]
    fn try_boot_confirm() {
        for redundant in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            sequences::try_boot_confirm(&setup(dir.path(), redundant));
        }
    }

    #[test]
    fn try_boot_fails_falls_back() {
        for redundant in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            sequences::try_boot_fails_falls_back(&setup(dir.path(), redundant));
        }
    }

    #[test]
    fn variables_are_plain_uboot_variables() {
        let dir = tempfile::tempdir().unwrap();
        let boot = setup(dir.path(), true);
        boot.set_try_once(Slot::B).unwrap();
        let vars = printenv(boot.env().config());
        assert_eq!(vars["OTA_DEFAULT"], "A");
        assert_eq!(vars["OTA_TRY"], "B");
        assert_eq!(vars["OTA_TRIES_LEFT"], "2");
        assert_eq!(vars["OTA_BOOTED"], "A");
        boot.mark_bad_and_fallback(Slot::B).unwrap();
        // An empty value deletes the variable in U-Boot.
        assert!(!printenv(boot.env().config()).contains_key("OTA_TRY"));
        assert_eq!(
            std::fs::metadata(dir.path().join("uboot.env"))
                .unwrap()
                .len(),
            2 * DEFAULT_ENV_SIZE
        );
    }

    /// Offset of the copy libubootenv considers current (highest flag byte; the flag sits
    /// after the 4-byte CRC in a redundant environment).
    fn newest_copy(bytes: &[u8]) -> usize {
        let size = DEFAULT_ENV_SIZE as usize;
        if bytes[size + 4] > bytes[4] {
            size
        } else {
            0
        }
    }

    #[test]
    fn torn_write_of_redundant_copy_keeps_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let boot = setup(dir.path(), true);
        let before = boot.state().unwrap();
        boot.set_try_once(Slot::B).unwrap();
        assert_eq!(boot.state().unwrap().trying, Some(Slot::B));

        // Simulate a power cut in the middle of writing the newest copy.
        let file = dir.path().join("uboot.env");
        let mut bytes = std::fs::read(&file).unwrap();
        let newest = newest_copy(&bytes);
        for b in &mut bytes[newest + 5..newest + 40] {
            *b = 0xff;
        }
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(boot.state().unwrap(), before);

        // With both copies destroyed the tools fail and nothing is written.
        let other = DEFAULT_ENV_SIZE as usize - newest;
        for b in &mut bytes[other + 5..other + 40] {
            *b = 0xff;
        }
        std::fs::write(&file, &bytes).unwrap();
        assert!(matches!(boot.state(), Err(BootError::ToolFailed { .. })));
        assert!(boot.set_try_once(Slot::B).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), bytes);
    }

    #[test]
    fn init_leaves_a_non_blank_invalid_environment_alone() {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let layout = FileEnvLayout::new(dir.path().join("uboot.env"));
        let garbage = vec![0x5a; 2 * DEFAULT_ENV_SIZE as usize];
        std::fs::write(&layout.env_file, &garbage).unwrap();
        let (env, created) =
            UBootEnv::init_file_backed(dir.path().join("fw_env.config"), &layout, Slot::A).unwrap();
        assert!(!created);
        assert_eq!(std::fs::read(&layout.env_file).unwrap(), garbage);
        let err = AbBootloader::new(env).state().unwrap_err();
        assert!(err.to_string().contains("fw_printenv"), "{err}");
    }

    #[test]
    fn init_rejects_a_short_file_and_an_unquotable_path() {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let layout = FileEnvLayout::new(dir.path().join("uboot.env"));
        std::fs::write(&layout.env_file, [0u8; 100]).unwrap();
        let err = UBootEnv::init_file_backed(dir.path().join("c"), &layout, Slot::A).unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");

        let layout = FileEnvLayout::new(dir.path().join("with space.env"));
        let err = UBootEnv::init_file_backed(dir.path().join("c"), &layout, Slot::A).unwrap_err();
        assert!(matches!(err, BootError::UnsupportedPath { .. }), "{err:?}");
    }

    #[test]
    fn contrib_script_uses_our_names() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/uboot-ota.cmd");
        let text = std::fs::read_to_string(&script).unwrap();
        for name in [
            NAMES.default,
            NAMES.try_slot,
            NAMES.tries_left,
            NAMES.booted,
        ] {
            assert!(
                text.contains(&format!("${{{name}}}")),
                "{name} unused in {script:?}"
            );
        }
    }

    #[test]
    fn missing_tools_fail_with_install_hint() {
        let dir = tempfile::tempdir().unwrap();
        let env = UBootEnv::new(dir.path().join("fw_env.config"))
            .with_tools("/nonexistent/fw_printenv", "/nonexistent/fw_setenv");
        let err = env.load().unwrap_err();
        assert!(err.to_string().contains("libubootenv-tool"), "{err}");
    }
}
