//! Development mode: everything a newcomer needs, made on first start under the data
//! directory and reused afterwards.
//!
//! CAUTION: development only. The TUF keys are encrypted at rest, but their passphrase is
//! a file beside them, and the server holds the targets key so that one command publishes.
//! In production the root and targets keys never touch the server (see `ota-keys`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use ota_common::keys::SigningKey;
use ota_common::metadata::{RoleType, Root};
use ota_common::signed::sign_role;
use ota_keys::keyfile::{EncryptedKey, KdfParams};
use ota_keys::passphrase::Passphrase;

use crate::fsutil;
use crate::repo::OnlineKeys;

/// Why development material could not be made or read.
#[derive(Debug, thiserror::Error)]
#[error("development setup in {dir}: {message}")]
pub struct DevSetupError {
    dir: PathBuf,
    message: String,
}

fn err(dir: &Path, message: impl std::fmt::Display) -> DevSetupError {
    DevSetupError {
        dir: dir.to_path_buf(),
        message: message.to_string(),
    }
}

/// The development TUF keys, loaded or made.
pub struct DevKeys {
    /// Root key (signs the development root).
    pub root: SigningKey,
    /// Online keys, targets included.
    pub online: OnlineKeys,
}

/// Writes a secret file: 0600 from its first byte, then fsync, rename, fsync directory.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), DevSetupError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (mut file, tmp) = fsutil::create_temp(dir).map_err(|e| err(dir, e))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(dir, e))?;
    file.write_all(bytes).map_err(|e| err(dir, e))?;
    fsutil::persist(file, &tmp, path).map_err(|e| err(dir, e))
}

/// Loads the development keys from `dir`, making them on first use.
pub fn load_or_create_keys(dir: &Path) -> Result<DevKeys, DevSetupError> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let pass_path = dir.join("passphrase");
    if !pass_path.exists() {
        let p = Passphrase::generate();
        write_secret(&pass_path, p.as_bytes())?;
    }
    let pass = Passphrase::from_file(&pass_path).map_err(|e| err(dir, e))?;
    let load = |role: &str| -> Result<SigningKey, DevSetupError> {
        let path = dir.join(format!("{role}.key"));
        if path.exists() {
            return EncryptedKey::read(&path)
                .and_then(|k| k.decrypt(&pass))
                .map_err(|e| err(dir, format!("{role} key: {e}")));
        }
        let key = SigningKey::generate();
        // Fast KDF parameters: the passphrase sits next to the key in development anyway.
        let mut enc = EncryptedKey::encrypt(&key, role, &pass, KdfParams::dangerous_fast())
            .map_err(|e| err(dir, e))?;
        enc.write_new(&path).map_err(|e| err(dir, e))?;
        Ok(key)
    };
    Ok(DevKeys {
        root: load("root")?,
        online: OnlineKeys {
            targets: Some(load("targets")?),
            snapshot: load("snapshot")?,
            timestamp: load("timestamp")?,
        },
    })
}

/// The first root of a development repository: one key per role, threshold 1.
pub fn dev_root(keys: &DevKeys, now: DateTime<Utc>) -> Result<Vec<u8>, DevSetupError> {
    let mut root = Root::new(1, now + Duration::days(365));
    let targets = keys.online.targets.as_ref().map(SigningKey::public);
    let roles = [
        (RoleType::Root, Some(keys.root.public())),
        (RoleType::Targets, targets),
        (RoleType::Snapshot, Some(keys.online.snapshot.public())),
        (RoleType::Timestamp, Some(keys.online.timestamp.public())),
    ];
    for (role, key) in roles {
        let key = key.ok_or_else(|| err(Path::new("."), "no targets key"))?;
        root.set_role(role, &[key], 1)
            .map_err(|e| err(Path::new("."), e))?;
    }
    sign_role(&root, &[&keys.root]).map_err(|e| err(Path::new("."), e))
}
