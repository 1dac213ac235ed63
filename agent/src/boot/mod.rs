//! A/B bootloader control with a try counter.
//!
//! Every backend keeps the same four values, which the boot script (GRUB or U-Boot, see
//! `agent/contrib/`) and the agent share:
//!
//! | value        | meaning                                                         |
//! |--------------|-----------------------------------------------------------------|
//! | `default`    | the confirmed slot, booted whenever no try is pending           |
//! | `try`        | a slot to try (empty: none)                                     |
//! | `tries_left` | boots of `try` still allowed before falling back to `default`   |
//! | `booted`     | the slot the boot script chose last (written only on change)    |
//!
//! The boot decision ([`decide_boot`]) is: if `try` is set and `tries_left > 0`, decrement
//! `tries_left` and boot `try`; otherwise boot `default`. The bootloader never clears `try`
//! itself, so after a fallback the agent sees `trying = Some(B)`, `tries_left = 0` and
//! `booted = A` ([`BootState::try_exhausted`]) and reports the rollback. An image that
//! cannot even start the agent therefore falls back by itself after `tries` boots.
//!
//! The agent's side is the [`Bootloader`] trait, implemented once over a [`BootEnv`] (the
//! storage of the four values) by [`AbBootloader`]. Backends: [`grub::GrubEnv`]
//! (`grub-editenv`), [`uboot::UBootEnv`] (`fw_printenv`/`fw_setenv`) and
//! [`file::FileEnv`] (a JSON file). [`BootSimulator`] replays the boot script's decision on
//! any of them, so tests (and `ota-agent simulate-boot`) exercise the real variables.

pub mod file;
pub mod grub;
mod tool;
pub mod uboot;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::fsutil::FsError;
pub(crate) use tool::{parse_listing, run_tool, VarNames};

/// Largest try count: the boot scripts count down without arithmetic (GRUB has none, and
/// U-Boot's `setexpr` works in hex), which is exact for single digits only.
pub const MAX_TRIES: u32 = 9;

/// Try count used by [`AbBootloader::new`].
pub const DEFAULT_TRIES: u32 = 3;

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot of the pair.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `"A"` or `"B"`, as stored in bootloader variables.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not `A` or `B`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid slot {0:?}: expected \"A\" or \"B\"")]
pub struct InvalidSlot(pub String);

impl FromStr for Slot {
    type Err = InvalidSlot;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            other => Err(InvalidSlot(other.to_string())),
        }
    }
}

/// The bootloader's view, as the agent needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// The confirmed slot.
    pub default_slot: Slot,
    /// The slot running now.
    pub booted_slot: Slot,
    /// A slot being tried, not yet confirmed or abandoned.
    pub trying: Option<Slot>,
    /// Boots of `trying` still allowed.
    pub tries_left: u32,
}

impl BootState {
    /// A try was pending, its boots ran out and the bootloader fell back: the tried slot
    /// never got confirmed. The agent reports this as a rollback and calls
    /// [`Bootloader::mark_bad_and_fallback`].
    pub fn try_exhausted(&self) -> bool {
        matches!(self.trying, Some(t) if t != self.booted_slot && self.tries_left == 0)
    }

    /// The running slot is the one being tried: the agent should run its health check,
    /// then [`Bootloader::mark_good`] or [`Bootloader::mark_bad_and_fallback`].
    pub fn booted_on_trial(&self) -> bool {
        self.trying == Some(self.booted_slot)
    }
}

/// The agent's control of an A/B bootloader with a try counter. See the module docs.
pub trait Bootloader {
    /// The slot booted now.
    fn active_slot(&self) -> Result<Slot, BootError>;

    /// Boot `slot` at the next boots, at most the configured number of tries, then fall
    /// back to the default slot unless [`Bootloader::mark_good`] confirms it. Refuses the
    /// default slot (nothing to try).
    fn set_try_once(&self, slot: Slot) -> Result<(), BootError>;

    /// Confirms `current`, which must be the booted slot: clears the try state and makes it
    /// the default. Writes nothing if it already is the confirmed default.
    fn mark_good(&self, current: Slot) -> Result<(), BootError>;

    /// Abandons `slot`: a pending try of it is cleared, and if it is the default the other
    /// slot becomes the default. The next boot runs the other slot.
    fn mark_bad_and_fallback(&self, slot: Slot) -> Result<(), BootError>;

    /// The whole state.
    fn state(&self) -> Result<BootState, BootError>;
}

/// The four shared values (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootVars {
    /// The confirmed slot.
    pub default: Slot,
    /// The slot to try, if any.
    #[serde(rename = "try")]
    pub try_slot: Option<Slot>,
    /// Boots of `try_slot` left.
    pub tries_left: u32,
    /// The slot the boot script chose last; `None` before the first recorded boot.
    pub booted: Option<Slot>,
}

impl BootVars {
    /// A fresh environment: `default` confirmed and booted, no try.
    pub fn initial(default: Slot) -> Self {
        BootVars {
            default,
            try_slot: None,
            tries_left: 0,
            booted: Some(default),
        }
    }
}

/// Storage of the [`BootVars`]: a bootloader environment.
pub trait BootEnv {
    /// Reads the values.
    fn load(&self) -> Result<BootVars, BootError>;
    /// Writes all values in one update of the environment.
    fn store(&self, vars: &BootVars) -> Result<(), BootError>;
}

/// The boot script's decision, as a pure function: returns the slot to boot and the values
/// after the boot (tries decremented, `booted` recorded). The contrib scripts implement
/// exactly this.
pub fn decide_boot(vars: &BootVars) -> (Slot, BootVars) {
    let mut next = *vars;
    let slot = match vars.try_slot {
        Some(try_slot) if vars.tries_left > 0 => {
            next.tries_left = vars.tries_left - 1;
            try_slot
        }
        _ => vars.default,
    };
    next.booted = Some(slot);
    (slot, next)
}

/// Plays the bootloader: reads the values through a [`BootEnv`], makes the boot script's
/// decision and writes back what the script would save (only when something changed, as
/// the scripts avoid needless flash writes).
pub struct BootSimulator<'a> {
    env: &'a dyn BootEnv,
}

impl<'a> BootSimulator<'a> {
    /// A simulator over `env`.
    pub fn new(env: &'a dyn BootEnv) -> Self {
        BootSimulator { env }
    }

    /// One simulated boot: returns the slot booted.
    pub fn simulate_boot(&self) -> Result<Slot, BootError> {
        let vars = self.env.load()?;
        let (slot, next) = decide_boot(&vars);
        if next != vars {
            self.env.store(&next)?;
        }
        tracing::debug!(slot = %slot, tries_left = next.tries_left, "simulated boot");
        Ok(slot)
    }
}

/// Where the agent learns which slot is running.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootedSlotSource {
    /// The `booted` value the boot script records in the environment (a missing value
    /// means the default slot). Used by the simulator.
    Recorded,
    /// A `ota.slot=A|B` argument on the kernel command line (normally `/proc/cmdline`),
    /// which the boot script passes to the kernel. Needs no environment write at boot.
    KernelCmdline(PathBuf),
}

/// [`Bootloader`] over any [`BootEnv`].
#[derive(Debug, Clone)]
pub struct AbBootloader<E> {
    env: E,
    tries: u32,
    booted_from: BootedSlotSource,
}

impl<E: BootEnv> AbBootloader<E> {
    /// A bootloader over `env` with [`DEFAULT_TRIES`] tries and the booted slot read from
    /// the environment.
    pub fn new(env: E) -> Self {
        AbBootloader {
            env,
            tries: DEFAULT_TRIES,
            booted_from: BootedSlotSource::Recorded,
        }
    }

    /// Sets the number of boots a tried slot gets (1..=[`MAX_TRIES`]).
    pub fn with_tries(mut self, tries: u32) -> Result<Self, BootError> {
        if tries == 0 || tries > MAX_TRIES {
            return Err(BootError::BadTryCount { tries });
        }
        self.tries = tries;
        Ok(self)
    }

    /// Sets where the booted slot is read from.
    pub fn with_booted_slot_source(mut self, source: BootedSlotSource) -> Self {
        self.booted_from = source;
        self
    }

    /// The environment underneath (for a [`BootSimulator`]).
    pub fn env(&self) -> &E {
        &self.env
    }

    fn booted(&self, vars: &BootVars) -> Result<Slot, BootError> {
        match &self.booted_from {
            BootedSlotSource::Recorded => Ok(vars.booted.unwrap_or(vars.default)),
            BootedSlotSource::KernelCmdline(path) => {
                let cmdline = std::fs::read_to_string(path).map_err(|source| BootError::Io {
                    op: "reading the kernel command line",
                    path: path.clone(),
                    source,
                })?;
                slot_from_cmdline(&cmdline)
                    .ok_or_else(|| BootError::BootedSlotUnknown { path: path.clone() })?
            }
        }
    }

    fn update(&self, change: impl FnOnce(&mut BootVars)) -> Result<(), BootError> {
        let vars = self.env.load()?;
        let mut next = vars;
        change(&mut next);
        if next != vars {
            self.env.store(&next)?;
        }
        Ok(())
    }
}

impl<E: BootEnv> Bootloader for AbBootloader<E> {
    fn active_slot(&self) -> Result<Slot, BootError> {
        let vars = self.env.load()?;
        self.booted(&vars)
    }

    fn set_try_once(&self, slot: Slot) -> Result<(), BootError> {
        let vars = self.env.load()?;
        if vars.default == slot {
            return Err(BootError::TryDefault { slot });
        }
        let tries = self.tries;
        self.update(|v| {
            v.try_slot = Some(slot);
            v.tries_left = tries;
        })
    }

    fn mark_good(&self, current: Slot) -> Result<(), BootError> {
        let booted = self.active_slot()?;
        if booted != current {
            return Err(BootError::NotBooted {
                slot: current,
                booted,
            });
        }
        self.update(|v| {
            v.default = current;
            v.try_slot = None;
            v.tries_left = 0;
        })
    }

    fn mark_bad_and_fallback(&self, slot: Slot) -> Result<(), BootError> {
        self.update(|v| {
            if v.try_slot == Some(slot) {
                v.try_slot = None;
                v.tries_left = 0;
            }
            if v.default == slot {
                v.default = slot.other();
            }
        })
    }

    fn state(&self) -> Result<BootState, BootError> {
        let vars = self.env.load()?;
        Ok(BootState {
            default_slot: vars.default,
            booted_slot: self.booted(&vars)?,
            trying: vars.try_slot,
            tries_left: vars.tries_left,
        })
    }
}

/// Finds `ota.slot=A|B` on a kernel command line (the last one wins, as for the kernel).
/// `None` if absent; an invalid value is an error rather than a guess.
fn slot_from_cmdline(cmdline: &str) -> Option<Result<Slot, BootError>> {
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix("ota.slot="))
        .next_back()
        .map(|value| {
            value.parse().map_err(|_| BootError::InvalidVar {
                name: "ota.slot".into(),
                value: value.into(),
            })
        })
}

/// A failed bootloader operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// The bootloader tool is not installed.
    #[error("bootloader tool {tool} not found: install the `{package}` package (Debian: apt-get install {package})")]
    ToolMissing {
        /// The tool.
        tool: PathBuf,
        /// The Debian package that ships it.
        package: &'static str,
    },
    /// The tool could not be started or talked to.
    #[error("running {tool}")]
    ToolSpawn {
        /// The tool.
        tool: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The tool ran and failed.
    #[error("{tool} {args} failed ({status}): {stderr}")]
    ToolFailed {
        /// The tool.
        tool: PathBuf,
        /// Its arguments, space-separated.
        args: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A variable holds a value the agent does not understand.
    #[error("bootloader variable {name} has invalid value {value:?}")]
    InvalidVar {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
    },
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A durable write failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The file backend's JSON is invalid.
    #[error("parsing boot state file {path}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// `set_try_once` was asked to try the default slot.
    #[error("cannot try slot {slot}: it is already the default slot")]
    TryDefault {
        /// The slot.
        slot: Slot,
    },
    /// `mark_good` was asked to confirm a slot that is not running.
    #[error("cannot mark slot {slot} good: slot {booted} is booted")]
    NotBooted {
        /// The slot to confirm.
        slot: Slot,
        /// The slot actually booted.
        booted: Slot,
    },
    /// The kernel command line does not name the booted slot.
    #[error("no ota.slot=A|B argument in {path}")]
    BootedSlotUnknown {
        /// The command line file.
        path: PathBuf,
    },
    /// A path the bootloader configuration cannot express.
    #[error("unsupported path {path}: {reason}")]
    UnsupportedPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A try count outside 1..=MAX_TRIES.
    #[error("try count {tries} out of range 1..={MAX_TRIES}")]
    BadTryCount {
        /// The requested count.
        tries: u32,
    },
}

/// Full update sequences run against every backend's real variables.
#[cfg(test)]
pub(crate) mod sequences {
    use super::*;

    /// Try B, boot into it, confirm it.
    pub(crate) fn try_boot_confirm<E: BootEnv>(boot: &AbBootloader<E>) {
        let sim = BootSimulator::new(boot.env());
        assert_eq!(sim.simulate_boot().unwrap(), Slot::A);
        let s = boot.state().unwrap();
        assert_eq!(
            s,
            BootState {
                default_slot: Slot::A,
                booted_slot: Slot::A,
                trying: None,
                tries_left: 0
            }
        );
        assert!(matches!(
            boot.set_try_once(Slot::A),
            Err(BootError::TryDefault { slot: Slot::A })
        ));

        boot.set_try_once(Slot::B).unwrap();
        let s = boot.state().unwrap();
        assert_eq!(
            (s.trying, s.tries_left, s.booted_slot),
            (Some(Slot::B), 2, Slot::A)
        );
        assert!(!s.try_exhausted() && !s.booted_on_trial());

        assert_eq!(sim.simulate_boot().unwrap(), Slot::B);
        assert_eq!(boot.active_slot().unwrap(), Slot::B);
        let s = boot.state().unwrap();
        assert_eq!((s.trying, s.tries_left), (Some(Slot::B), 1));
        assert!(s.booted_on_trial());
        // Confirming a slot that is not running is refused.
        assert!(matches!(
            boot.mark_good(Slot::A),
            Err(BootError::NotBooted {
                slot: Slot::A,
                booted: Slot::B
            })
        ));

        boot.mark_good(Slot::B).unwrap();
        let s = boot.state().unwrap();
        assert_eq!(
            s,
            BootState {
                default_slot: Slot::B,
                booted_slot: Slot::B,
                trying: None,
                tries_left: 0
            }
        );
        // B is now booted for good, without a counter.
        for _ in 0..4 {
            assert_eq!(sim.simulate_boot().unwrap(), Slot::B);
        }
        assert_eq!(boot.state().unwrap(), s);
    }

    /// Try B, which never gets confirmed: two boots into B, then back to A.
    pub(crate) fn try_boot_fails_falls_back<E: BootEnv>(boot: &AbBootloader<E>) {
        let sim = BootSimulator::new(boot.env());
        boot.set_try_once(Slot::B).unwrap();
        assert_eq!(sim.simulate_boot().unwrap(), Slot::B);
        assert_eq!(sim.simulate_boot().unwrap(), Slot::B);
        assert_eq!(sim.simulate_boot().unwrap(), Slot::A);
        let s = boot.state().unwrap();
        assert_eq!(
            s,
            BootState {
                default_slot: Slot::A,
                booted_slot: Slot::A,
                trying: Some(Slot::B),
                tries_left: 0
            }
        );
        assert!(s.try_exhausted());
        assert!(boot.mark_good(Slot::B).is_err());

        boot.mark_bad_and_fallback(Slot::B).unwrap();
        let s = boot.state().unwrap();
        assert_eq!((s.trying, s.default_slot), (None, Slot::A));
        assert!(!s.try_exhausted());
        assert_eq!(sim.simulate_boot().unwrap(), Slot::A);

        // A health-check failure after booting into B: the agent abandons B itself.
        boot.set_try_once(Slot::B).unwrap();
        assert_eq!(sim.simulate_boot().unwrap(), Slot::B);
        boot.mark_bad_and_fallback(Slot::B).unwrap();
        assert_eq!(sim.simulate_boot().unwrap(), Slot::A);
        assert_eq!(boot.state().unwrap().trying, None);
    }

    /// Panics with an install hint if `tool` is not on PATH: these tests never skip.
    pub(crate) fn require_tool(tool: &str, package: &str) {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is not installed: these tests run the real tool. \
             Install it with `apt-get install {package}` (Debian/Ubuntu)."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// An in-memory environment, to test the logic apart from any tool.
    #[derive(Default)]
    struct MemEnv(RefCell<Option<BootVars>>, RefCell<usize>);

    impl BootEnv for MemEnv {
        fn load(&self) -> Result<BootVars, BootError> {
            Ok(self.0.borrow().unwrap_or(BootVars::initial(Slot::A)))
        }
        fn store(&self, vars: &BootVars) -> Result<(), BootError> {
            *self.0.borrow_mut() = Some(*vars);
            *self.1.borrow_mut() += 1;
            Ok(())
        }
    }

    #[test]
    fn slot_text_round_trips() {
        for slot in [Slot::A, Slot::B] {
            assert_eq!(slot.as_str().parse::<Slot>().unwrap(), slot);
            assert_eq!(slot.other().other(), slot);
            assert_ne!(slot.other(), slot);
        }
        assert!("C".parse::<Slot>().is_err());
        assert!("".parse::<Slot>().is_err());
        assert_eq!(serde_json::to_string(&Slot::B).unwrap(), "\"B\"");
    }

    #[test]
    fn decide_boot_counts_down_then_falls_back() {
        let mut vars = BootVars {
            default: Slot::A,
            try_slot: Some(Slot::B),
            tries_left: 2,
            booted: Some(Slot::A),
        };
        let mut booted = vec![];
        for _ in 0..4 {
            let (slot, next) = decide_boot(&vars);
            booted.push(slot);
            vars = next;
        }
        assert_eq!(booted, [Slot::B, Slot::B, Slot::A, Slot::A]);
        assert_eq!(vars.tries_left, 0);
        assert_eq!(vars.try_slot, Some(Slot::B));
        assert_eq!(vars.booted, Some(Slot::A));
    }

    #[test]
    fn sequences_on_memory_env() {
        let boot = AbBootloader::new(MemEnv::default()).with_tries(2).unwrap();
        sequences::try_boot_confirm(&boot);
        let boot = AbBootloader::new(MemEnv::default()).with_tries(2).unwrap();
        sequences::try_boot_fails_falls_back(&boot);
    }

    #[test]
    fn confirmed_boots_write_nothing() {
        let boot = AbBootloader::new(MemEnv::default());
        let sim = BootSimulator::new(boot.env());
        for _ in 0..3 {
            sim.simulate_boot().unwrap();
            boot.mark_good(Slot::A).unwrap();
        }
        assert_eq!(*boot.env().1.borrow(), 0);
    }

    #[test]
    fn try_count_is_bounded() {
        assert!(AbBootloader::new(MemEnv::default()).with_tries(0).is_err());
        assert!(AbBootloader::new(MemEnv::default())
            .with_tries(MAX_TRIES + 1)
            .is_err());
        assert!(AbBootloader::new(MemEnv::default())
            .with_tries(MAX_TRIES)
            .is_ok());
    }

    #[test]
    fn mark_bad_on_default_switches_default() {
        let boot = AbBootloader::new(MemEnv::default());
        boot.mark_bad_and_fallback(Slot::A).unwrap();
        assert_eq!(boot.state().unwrap().default_slot, Slot::B);
    }

    #[test]
    fn booted_slot_from_kernel_cmdline() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(&cmdline, "root=/dev/sda2 ota.slot=B quiet\n").unwrap();
        let boot = AbBootloader::new(MemEnv::default())
            .with_booted_slot_source(BootedSlotSource::KernelCmdline(cmdline.clone()));
        assert_eq!(boot.active_slot().unwrap(), Slot::B);

        std::fs::write(&cmdline, "root=/dev/sda2 quiet\n").unwrap();
        assert!(matches!(
            boot.active_slot(),
            Err(BootError::BootedSlotUnknown { .. })
        ));
        std::fs::write(&cmdline, "ota.slot=Z\n").unwrap();
        assert!(matches!(
            boot.active_slot(),
            Err(BootError::InvalidVar { .. })
        ));
    }
}
