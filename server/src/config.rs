//! The server's configuration: a TOML file for production, or defaults under a data
//! directory for development (`--dev`). Every path, address and limit is set here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::limits::Limits;
use crate::repo::RepoPolicy;
use crate::tls::{MinTlsVersion, TlsSettings};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
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
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the store, blobs and (in development) keys and PKI live.
    pub data_dir: PathBuf,
    /// Development mode: the server makes its own PKI and TUF keys and holds the targets
    /// key. CAUTION: never in production, where targets are signed offline with ota-keys.
    #[serde(default)]
    pub dev: bool,
    /// TLS material. Required unless `dev`.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// TUF keys and the initial repository. Required unless `dev`.
    #[serde(default)]
    pub tuf: Option<TufConfig>,
    /// Transport limits.
    #[serde(default)]
    pub limits: Limits,
    /// Expiry and re-signing of what the server signs.
    #[serde(default)]
    pub repo_policy: RepoPolicy,
    /// Device-facing behaviour.
    #[serde(default)]
    pub devices: DeviceSettings,
    /// Deployments and fleet detectors (`[fleet]`: tick interval, silence rule).
    #[serde(default)]
    pub fleet: crate::deployments::FleetConfig,
    /// Encryption at rest of device data (`[store]`: where the key lives).
    #[serde(default)]
    pub store: StoreSettings,
}

/// Encryption at rest of the device trees (see `store::sealed`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// The 32-byte store key (64 hex digits, mode 0600). Unset: `<data_dir>/store.key`,
    /// created on first start. Production: put it on another volume or a secrets mount.
    pub key_file: Option<PathBuf>,
}

/// TUF material for production.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TufConfig {
    /// A repository directory made by `ota-keys init` (its `metadata/` holds the root chain
    /// and the first targets); imported on first start.
    pub repository_dir: PathBuf,
    /// The snapshot key file (ota-keys format, encrypted).
    pub snapshot_key: PathBuf,
    /// The timestamp key file.
    pub timestamp_key: PathBuf,
    /// A file holding the passphrase of both online keys (mode 0600).
    pub passphrase_file: PathBuf,
}

/// How devices learn what to install.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutMode {
    /// Devices install only what a deployment sends them (phased rollouts, auto-pause).
    /// The default in production.
    Deployments,
    /// Devices install the newest release that fits them as soon as it is published. The
    /// default in development mode, so that one publish updates a test device.
    Latest,
}

/// Device-facing settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSettings {
    /// `deployments` or `latest`; unset: `latest` in development mode, `deployments`
    /// otherwise.
    pub rollout: Option<RolloutMode>,
    /// Seconds between polls the server asks for (jittered per device).
    pub poll_interval_secs: u64,
    /// How often last-seen times kept in memory are written to the store.
    pub last_seen_flush_secs: u64,
    /// Status reports kept per device (oldest deleted first).
    pub keep_status_reports: usize,
    /// Operation-log records kept per device (oldest deleted first).
    pub keep_oplog_records: u64,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings {
            rollout: None,
            poll_interval_secs: 300,
            last_seen_flush_secs: 30,
            keep_status_reports: 200,
            keep_oplog_records: 10_000,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

impl ServerConfig {
    /// Development defaults under `data_dir`.
    pub fn dev(data_dir: &Path) -> Self {
        ServerConfig {
            listen: default_listen(),
            data_dir: data_dir.to_path_buf(),
            dev: true,
            tls: None,
            tuf: None,
            limits: Limits::default(),
            repo_policy: RepoPolicy::default(),
            devices: DeviceSettings::default(),
            fleet: crate::deployments::FleetConfig::default(),
            store: StoreSettings::default(),
        }
    }

    /// Where the store encryption key is read from (and created on first start).
    pub fn store_key_file(&self) -> PathBuf {
        self.store
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::store::sealed::KEY_FILE_NAME))
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: ServerConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The rollout mode in force (see [`DeviceSettings::rollout`]).
    pub fn rollout_mode(&self) -> RolloutMode {
        self.devices.rollout.unwrap_or(if self.dev {
            RolloutMode::Latest
        } else {
            RolloutMode::Deployments
        })
    }

    /// Checks cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if !self.dev && (self.tls.is_none() || self.tuf.is_none()) {
            return Err(ConfigError::Invalid(
                "production mode needs [tls] and [tuf] sections (or set dev = true for a development server)".into(),
            ));
        }
        if self.repo_policy.timestamp_lifetime_secs < 2 {
            return Err(ConfigError::Invalid(
                "repo_policy.timestamp_lifetime_secs must be at least 2".into(),
            ));
        }
        if self.devices.poll_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "devices.poll_interval_secs must be at least 1".into(),
            ));
        }
        if self.devices.keep_status_reports == 0 || self.devices.keep_oplog_records == 0 {
            return Err(ConfigError::Invalid(
                "devices.keep_status_reports and devices.keep_oplog_records must be at least 1"
                    .into(),
            ));
        }
        self.fleet.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// TLS settings in development mode (from the development PKI).
    pub fn dev_tls(pki: &crate::pki::DevPki) -> TlsSettings {
        let mut s = pki.tls_settings();
        s.min_version = MinTlsVersion::Tls13;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_needs_tls_and_tuf() {
        let cfg: ServerConfig = toml::from_str("data_dir = \"/x\"").unwrap();
        assert!(cfg.validate().is_err());
        let cfg: ServerConfig = toml::from_str("data_dir = \"/x\"\ndev = true").unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn store_key_file_defaults_to_data_dir() {
        let cfg: ServerConfig = toml::from_str("data_dir = \"/x\"\ndev = true").unwrap();
        assert_eq!(cfg.store_key_file(), Path::new("/x/store.key"));
        let cfg: ServerConfig =
            toml::from_str("data_dir = \"/x\"\ndev = true\n[store]\nkey_file = \"/secrets/k\"")
                .unwrap();
        assert_eq!(cfg.store_key_file(), Path::new("/secrets/k"));
        assert!(toml::from_str::<ServerConfig>("data_dir = \"/x\"\n[store]\nkey = \"k\"").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            toml::from_str::<ServerConfig>("data_dir = \"/x\"\nlisten_addr = \"1.2.3.4:5\"")
                .is_err()
        );
    }
}
