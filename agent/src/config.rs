//! The agent's configuration: one TOML file naming the server, the device's identity, the
//! slots, the bootloader, the health gate and the polling schedule.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Unreadable file.
    #[error("reading config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Invalid TOML or schema.
    #[error("config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL of the server, e.g. `https://ota.example.com:8443`.
    pub server_url: String,
    /// The CA the server's certificate must chain to (pinned; the system store is not used).
    pub ca_file: PathBuf,
    /// This device's certificate (PEM).
    pub cert_file: PathBuf,
    /// This device's private key (PEM).
    pub key_file: PathBuf,
    /// The TUF root this device trusts initially (copied into the data directory once).
    pub trusted_root: PathBuf,
    /// The board type; images must list it.
    pub hardware_id: String,
    /// State, logs, metadata and queues.
    pub data_dir: PathBuf,
    /// The A/B pair.
    pub slots: SlotsConfig,
    /// The bootloader backend.
    pub bootloader: BootloaderConfig,
    /// The command that reboots the device (empty: do not reboot, report and wait).
    #[serde(default)]
    pub reboot_command: Vec<String>,
    /// The checks that must pass after booting a new image.
    #[serde(default)]
    pub health: HealthConfig,
    /// Polling schedule.
    #[serde(default)]
    pub poll: PollConfig,
    /// Downloads.
    #[serde(default)]
    pub download: DownloadConfig,
    /// Free-form attributes sent with each poll (for grouping).
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// The two slots: files or block devices.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsConfig {
    /// Slot A.
    pub a: PathBuf,
    /// Slot B.
    pub b: PathBuf,
}

/// Which bootloader the agent drives.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BootloaderConfig {
    /// A JSON file plus the boot simulator (tests, development).
    File {
        /// The environment file.
        path: PathBuf,
        /// Boots of a new slot before falling back.
        #[serde(default = "default_tries")]
        tries: u32,
    },
    /// GRUB's environment block through `grub-editenv`.
    Grub {
        /// The grubenv file (e.g. `/boot/grub/grubenv`).
        path: PathBuf,
        /// Boots of a new slot before falling back.
        #[serde(default = "default_tries")]
        tries: u32,
        /// Where the running slot is read (`ota.slot=` on the kernel command line).
        #[serde(default = "default_cmdline")]
        cmdline: PathBuf,
    },
    /// U-Boot's environment through `fw_printenv`/`fw_setenv`.
    Uboot {
        /// The `fw_env.config` file.
        config: PathBuf,
        /// Boots of a new slot before falling back.
        #[serde(default = "default_tries")]
        tries: u32,
        /// Where the running slot is read.
        #[serde(default = "default_cmdline")]
        cmdline: PathBuf,
    },
}

fn default_tries() -> u32 {
    3
}

fn default_cmdline() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}

/// The health gate.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Commands (argv) that must exit 0.
    pub commands: Vec<Vec<String>>,
    /// systemd units that must be active (`systemctl is-active`).
    pub units: Vec<String>,
    /// Whether the server must be reachable (a poll succeeds) before committing.
    pub require_server: bool,
    /// Time allowed for the whole gate, in seconds.
    pub timeout_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            commands: Vec::new(),
            units: Vec::new(),
            require_server: true,
            timeout_secs: 120,
        }
    }
}

/// Downloads.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownloadConfig {
    /// MiB between durable checkpoints (slot fsync + state write) of a download: at most
    /// this much is fetched again after a power cut. Smaller costs throughput on slow
    /// flash. Default 32.
    pub checkpoint_mib: u64,
    /// Seconds that must also have passed since the last checkpoint before the next:
    /// a checkpoint syncs the slot and the state file (several device cache flushes),
    /// which on a fast link costs more than re-fetching a second of data would. A power
    /// cut then loses at most `checkpoint_mib` MiB or this long a transfer, whichever is
    /// more. 0 checkpoints on bytes alone. Default 1.
    pub checkpoint_secs: u64,
    /// Write the slot with O_DIRECT: no copy of the image into the page cache, which is
    /// most of the agent's CPU on a fast link. Filesystems that refuse it (tmpfs) are
    /// written through the cache anyway. Default true.
    pub direct_io: bool,
    /// Download a release's zstd-compressed form when it has one (decoded on the way into
    /// the slot, resumable at frame boundaries); false always fetches the image itself.
    /// What is installed is checked against the signed image either way. Default true.
    pub compressed: bool,
}

impl DownloadConfig {
    /// Whether to checkpoint a download that has received `bytes` in `elapsed` since the
    /// last checkpoint (or its start): both thresholds must be reached.
    pub fn checkpoint_due(&self, bytes: u64, elapsed: std::time::Duration) -> bool {
        bytes >= self.checkpoint_mib.saturating_mul(1024 * 1024)
            && elapsed >= std::time::Duration::from_secs(self.checkpoint_secs)
    }
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            checkpoint_mib: 32,
            checkpoint_secs: 1,
            direct_io: true,
            compressed: true,
        }
    }
}

/// Polling schedule.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollConfig {
    /// Seconds between polls when the server does not say otherwise.
    pub interval_secs: u64,
    /// Random spread around the interval, in percent.
    pub jitter_percent: u8,
    /// Longest wait after repeated failures.
    pub max_backoff_secs: u64,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            interval_secs: 300,
            jitter_percent: 10,
            max_backoff_secs: 3600,
        }
    }
}

impl AgentConfig {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.server_url.starts_with("https://") {
            return Err(ConfigError::Invalid("server_url must be https://".into()));
        }
        if self.hardware_id.is_empty() {
            return Err(ConfigError::Invalid("hardware_id must not be empty".into()));
        }
        if self.slots.a == self.slots.b {
            return Err(ConfigError::Invalid(
                "slots.a and slots.b must differ".into(),
            ));
        }
        if self.download.checkpoint_mib == 0 {
            return Err(ConfigError::Invalid(
                "download.checkpoint_mib must be at least 1".into(),
            ));
        }
        if self.download.checkpoint_secs > 3600 {
            return Err(ConfigError::Invalid(
                "download.checkpoint_secs must be at most 3600 (an hour of transfer lost to a power cut)".into(),
            ));
        }
        if self.poll.interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "poll.interval_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
server_url = "https://127.0.0.1:8443"
ca_file = "ca.crt"
cert_file = "d.crt"
key_file = "d.key"
trusted_root = "root.json"
hardware_id = "board"
data_dir = "/tmp/x"
[slots]
a = "a.img"
b = "b.img"
[bootloader]
kind = "file"
path = "boot.json"
"#;

    fn cfg_direct_io(text: &str) -> bool {
        toml::from_str::<AgentConfig>(text)
            .unwrap()
            .download
            .direct_io
    }

    #[test]
    fn parses_and_validates() {
        let cfg: AgentConfig = toml::from_str(GOOD).unwrap();
        cfg.validate().unwrap();
        assert!(matches!(
            cfg.bootloader,
            BootloaderConfig::File { tries: 3, .. }
        ));
        let bad = GOOD.replace("https://", "http://");
        let cfg: AgentConfig = toml::from_str(&bad).unwrap();
        assert!(cfg.validate().is_err());
        assert!(toml::from_str::<AgentConfig>(&format!("{GOOD}\nunknown = 1")).is_err());
        assert!(cfg_direct_io(GOOD));
        assert!(!cfg_direct_io(&format!(
            "{GOOD}\n[download]\ndirect_io = false"
        )));
        let download = |extra: &str| {
            let cfg: AgentConfig = toml::from_str(&format!("{GOOD}\n[download]\n{extra}")).unwrap();
            cfg.validate().map(|()| cfg.download.checkpoint_secs)
        };
        assert_eq!(download("").unwrap(), 1);
        assert_eq!(download("checkpoint_secs = 0").unwrap(), 0);
        assert!(download("checkpoint_secs = 3601").is_err());
        assert!(download("checkpoint_mib = 0").is_err());
        let compressed = |extra: &str| {
            let cfg: AgentConfig = toml::from_str(&format!("{GOOD}\n{extra}")).unwrap();
            cfg.download.compressed
        };
        assert!(compressed(""));
        assert!(compressed("[download]\ndirect_io = false"));
        assert!(!compressed("[download]\ncompressed = false"));
    }

    #[test]
    fn a_checkpoint_waits_for_both_its_bytes_and_its_second() {
        use std::time::Duration;
        let d = DownloadConfig::default();
        let mib = 1024 * 1024;
        // Fast link: 32 MiB arrive long before a second has passed.
        assert!(!d.checkpoint_due(32 * mib, Duration::from_millis(40)));
        assert!(d.checkpoint_due(700 * mib, Duration::from_secs(1)));
        // Slow link: a second passes long before 32 MiB have arrived.
        assert!(!d.checkpoint_due(mib, Duration::from_secs(30)));
        assert!(d.checkpoint_due(32 * mib, Duration::from_secs(30)));
        // checkpoint_secs = 0: bytes alone decide (what the tests' harness uses).
        let bytes_only = DownloadConfig {
            checkpoint_secs: 0,
            ..DownloadConfig::default()
        };
        assert!(bytes_only.checkpoint_due(32 * mib, Duration::ZERO));
        assert!(!bytes_only.checkpoint_due(32 * mib - 1, Duration::ZERO));
    }
}
