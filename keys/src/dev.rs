//! Development repositories for the server's `--dev` mode.
//!
//! DEVELOPMENT ONLY. [`create_dev_repository`] makes a complete repository with one key per
//! role, threshold 1. The keys are encrypted at rest like any other, but under a random
//! passphrase written next to them (`<dir>/passphrase`, mode 0600): anyone who can read the
//! directory holds every key, root included. Because the passphrase sits beside the keys,
//! a memory-hard KDF would add start-up time and no protection, so these keys use
//! [`KdfParams::dangerous_fast`]. Never publish a development root to real devices.
//!
//! ```text
//! <dir>/passphrase   random passphrase (0600)
//! <dir>/keys/        encrypted key files (0700 directory, 0600 files)
//! <dir>/repo/        the repository (metadata/, targets/)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ota_common::keys::SigningKey;
use ota_common::metadata::RoleType;

use crate::durable::{self, Overwrite};
use crate::editor::{RepoEditor, RoleSpec, ROLES};
use crate::error::{Error, Result};
use crate::keyfile::KdfParams;
use crate::keystore::{self, KeyStore};
use crate::passphrase::Passphrase;
use crate::repo::RepoLayout;

/// A development repository's paths and unlocked keys.
#[derive(Debug)]
pub struct DevKeys {
    /// The repository directory (`<dir>/repo`).
    pub repo_dir: PathBuf,
    /// The key directory (`<dir>/keys`).
    pub keys_dir: PathBuf,
    /// The passphrase file (`<dir>/passphrase`).
    pub passphrase_file: PathBuf,
    /// The root key.
    pub root: SigningKey,
    /// The targets key (the server signs targets itself in development mode).
    pub targets: SigningKey,
    /// The snapshot key.
    pub snapshot: SigningKey,
    /// The timestamp key.
    pub timestamp: SigningKey,
    /// `metadata/1.root.json`, the root a development device must trust.
    pub trusted_root: Vec<u8>,
}

impl DevKeys {
    /// The key of a role.
    pub fn key(&self, role: RoleType) -> &SigningKey {
        match role {
            RoleType::Root => &self.root,
            RoleType::Targets => &self.targets,
            RoleType::Snapshot => &self.snapshot,
            RoleType::Timestamp => &self.timestamp,
        }
    }
}

/// Creates a development repository in `dir` (refused if `dir/repo` already holds
/// metadata). DEVELOPMENT ONLY: see the module documentation.
pub fn create_dev_repository(dir: &Path, now: DateTime<Utc>) -> Result<DevKeys> {
    let repo_dir = dir.join("repo");
    if RepoLayout::new(&repo_dir).has_metadata()? {
        return Err(Error::Invalid(format!(
            "{} already holds a repository: use open_dev_repository",
            repo_dir.display()
        )));
    }
    let store = KeyStore::new(dir.join("keys"));
    if !store.list()?.is_empty() {
        // Keys of an earlier attempt would be under another passphrase.
        return Err(Error::Invalid(format!(
            "{} already holds keys: remove {} to start over",
            store.dir().display(),
            dir.display()
        )));
    }
    durable::create_private_dir(dir)?;
    let passphrase = Passphrase::generate();
    let passphrase_file = dir.join("passphrase");
    durable::write(
        &passphrase_file,
        passphrase.as_bytes(),
        durable::PRIVATE,
        Overwrite::Replace,
    )?;
    let mut keys = Vec::with_capacity(ROLES.len());
    for role in ROLES {
        let (key, _) = store.generate(role.name(), &passphrase, KdfParams::dangerous_fast())?;
        keys.push(key);
    }
    let specs: Vec<RoleSpec> = ROLES
        .iter()
        .zip(&keys)
        .map(|(&role, k)| RoleSpec {
            role,
            keys: vec![k.public()],
            threshold: 1,
        })
        .collect();
    let mut editor = RepoEditor::create(&repo_dir, now, &specs)?;
    editor.sign_root(&[&keys[0]])?;
    editor.sign_targets(&[&keys[1]])?;
    editor.sign_snapshot(&[&keys[2]])?;
    editor.sign_timestamp(&[&keys[3]])?;
    editor.commit()?;
    open_dev_repository(dir)
}

/// Opens a development repository made by [`create_dev_repository`] and unlocks its keys.
pub fn open_dev_repository(dir: &Path) -> Result<DevKeys> {
    let passphrase_file = dir.join("passphrase");
    let passphrase = Passphrase::from_file(&passphrase_file)?;
    let store = KeyStore::new(dir.join("keys"));
    let stored = store.list()?;
    let mut by_role = Vec::with_capacity(ROLES.len());
    for role in ROLES {
        let enc = stored
            .iter()
            .find(|k| k.label() == role.name())
            .ok_or_else(|| {
                Error::Invalid(format!("{} has no {role} key", store.dir().display()))
            })?;
        let mut unlocked = keystore::unlock(std::slice::from_ref(enc), &passphrase, true)?;
        let key = unlocked
            .keys
            .pop()
            .ok_or_else(|| Error::Invalid(format!("{role} key did not unlock")))?;
        by_role.push(key);
    }
    let repo_dir = dir.join("repo");
    let root_path = RepoLayout::new(&repo_dir).role_file(RoleType::Root, 1);
    let trusted_root =
        fs::read(&root_path).map_err(|e| Error::io("read trusted root", &root_path, e))?;
    let mut it = by_role.into_iter();
    let mut next = || {
        it.next()
            .ok_or_else(|| Error::Invalid("missing role key".into()))
    };
    Ok(DevKeys {
        root: next()?,
        targets: next()?,
        snapshot: next()?,
        timestamp: next()?,
        repo_dir,
        keys_dir: store.dir().to_path_buf(),
        passphrase_file,
        trusted_root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verification::{verify_repository, TargetFiles};
    use chrono::TimeZone;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn dev_repository_verifies_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let dev = create_dev_repository(&dir.path().join("dev"), now).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dev.passphrase_file), 0o600);
        assert_eq!(mode(&dev.keys_dir), 0o700);
        for entry in fs::read_dir(&dev.keys_dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600);
            // Encrypted: the seed is not in the file.
            let text = fs::read_to_string(&path).unwrap();
            assert!(!text.contains(&hex::encode(dev.root.seed())));
        }
        let layout = RepoLayout::new(&dev.repo_dir);
        let report =
            verify_repository(&layout, &dev.trusted_root, now, TargetFiles::Check).unwrap();
        assert_eq!(report.roles[0].version, 1);

        let again = open_dev_repository(&dir.path().join("dev")).unwrap();
        assert_eq!(again.key(RoleType::Targets).key_id(), dev.targets.key_id());
        assert!(create_dev_repository(&dir.path().join("dev"), now).is_err());
        // The server's online signing works with the editor and these keys.
        let mut ed = RepoEditor::load(&dev.repo_dir, now).unwrap();
        ed.sign_snapshot(&[&dev.snapshot]).unwrap();
        ed.sign_timestamp(&[&dev.timestamp]).unwrap();
        ed.commit().unwrap();
        verify_repository(&layout, &dev.trusted_root, now, TargetFiles::Check).unwrap();
    }
}
