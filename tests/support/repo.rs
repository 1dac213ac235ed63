//! A low-level, in-memory TUF repository for tests, with full control over every file.
//!
//! [`Repo`] holds the repository owner's view: signing keys per role (from fixed seeds, so
//! every run signs the same bytes), the unsigned metadata of each role, and the files it has
//! published as a map `file name below metadata/ -> bytes`. Tests change the metadata
//! structs (versions, expiry, keys, thresholds, delegations), publish some or all roles, then
//! tamper with the published bytes directly (flip bytes, rename, remove, edit JSON without
//! re-signing) to play the attacker. [`fetcher`] serves such a map to
//! [`ota_common::client::refresh_with`], answering 404 for missing files, reading at most
//! `max_length + 1` bytes as a careful client does, and logging every request.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::convert::Infallible;

use chrono::{DateTime, TimeZone, Utc};
use ota_common::client::{
    refresh_with, ClientError, ClientLimits, FetchRequest, FetchResponse, LocalMetadata,
    RefreshError, TrustedRepository,
};
use ota_common::keys::{Key, SigningKey};
use ota_common::metadata::{
    DelegatedRole, Delegations, MetaFile, Role, RoleType, Root, Snapshot, TargetFile, Targets,
    Timestamp,
};
use ota_common::signed::sign_role;
use ota_common::target::{percent_encode, TargetError, TargetVerifier, VerifiedImage};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};

/// Published metadata: file name below `metadata/` -> bytes.
pub type Files = BTreeMap<String, Vec<u8>>;

/// Key seeds of the top-level roles' first keys; a role's n-th key is `seed + n`.
pub const ROOT_SEED: u8 = 1;
/// See [`ROOT_SEED`].
pub const TIMESTAMP_SEED: u8 = 11;
/// See [`ROOT_SEED`].
pub const SNAPSHOT_SEED: u8 = 21;
/// See [`ROOT_SEED`].
pub const TARGETS_SEED: u8 = 31;
/// Delegated roles get `DELEGATED_SEED + <index of creation>`.
pub const DELEGATED_SEED: u8 = 41;
/// A key no role trusts.
pub const ATTACKER_SEED: u8 = 99;

/// The target every [`Repo::new`] repository lists.
pub const FIRMWARE: &str = "fw-1.0.0.bin";

/// A UTC midnight.
pub fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
}

/// The fixed "now" of every test (the same as the python-tuf fixtures').
pub fn now() -> DateTime<Utc> {
    at(2026, 1, 1)
}

/// An expiry that never matters.
pub fn far() -> DateTime<Utc> {
    at(2099, 1, 1)
}

/// An expiry long gone.
pub fn past() -> DateTime<Utc> {
    at(2000, 1, 1)
}

/// The ed25519 key with seed `[seed; 32]`.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32])
}

/// Signs a role with each key in order (a key listed twice signs twice).
pub fn sign<T: Role>(role: &T, keys: &[&SigningKey]) -> Vec<u8> {
    sign_role(role, keys).unwrap()
}

/// A `meta` entry for a file: its version and, if asked, its length and hashes.
pub fn meta_of(version: u64, bytes: &[u8], with_hashes: bool) -> MetaFile {
    let mut m = MetaFile::version_only(version);
    if with_hashes {
        m.length = Some(bytes.len() as u64);
        m.hashes = Some(BTreeMap::from([
            ("sha256".to_string(), hex::encode(Sha256::digest(bytes))),
            ("sha512".to_string(), hex::encode(Sha512::digest(bytes))),
        ]));
    }
    m
}

/// A target entry for `bytes` with sha256 and sha512.
pub fn target_file(bytes: &[u8], custom: Option<Value>) -> TargetFile {
    TargetFile {
        length: bytes.len() as u64,
        hashes: BTreeMap::from([
            ("sha256".to_string(), hex::encode(Sha256::digest(bytes))),
            ("sha512".to_string(), hex::encode(Sha512::digest(bytes))),
        ]),
        custom,
        extra: BTreeMap::new(),
    }
}

/// ota's release fields for a target's `custom`.
pub fn release(version: &str, hardware_ids: &[&str]) -> Value {
    json!({"version": version, "hardware_ids": hardware_ids})
}

/// Streams `bytes` through a [`TargetVerifier`] in small chunks, as a download would.
pub fn verify_target(file: &TargetFile, bytes: &[u8]) -> Result<VerifiedImage, TargetError> {
    let mut v = TargetVerifier::new(file)?;
    for chunk in bytes.chunks(7) {
        v.update(chunk)?;
    }
    v.finish()
}

/// A delegated role's metadata and the keys that sign it.
pub struct Delegated {
    /// Its metadata.
    pub targets: Targets,
    /// Its signers.
    pub keys: Vec<SigningKey>,
}

/// The repository owner's state; see the module documentation.
pub struct Repo {
    /// Signers of root (and of the next root during a rotation).
    pub root_keys: Vec<SigningKey>,
    /// Signers of timestamp.
    pub timestamp_keys: Vec<SigningKey>,
    /// Signers of snapshot.
    pub snapshot_keys: Vec<SigningKey>,
    /// Signers of top-level targets.
    pub targets_keys: Vec<SigningKey>,
    /// The current root (the latest published, or the next one being prepared).
    pub root: Root,
    /// Timestamp to publish.
    pub timestamp: Timestamp,
    /// Snapshot to publish.
    pub snapshot: Snapshot,
    /// Top-level targets to publish.
    pub targets: Targets,
    /// Delegated roles by name.
    pub delegated: BTreeMap<String, Delegated>,
    /// Put length and hashes into timestamp and snapshot `meta` entries.
    pub meta_hashes: bool,
    /// Published metadata.
    pub files: Files,
    /// Target contents by target name.
    pub target_bytes: BTreeMap<String, Vec<u8>>,
}

impl Default for Repo {
    fn default() -> Self {
        Self::new()
    }
}

impl Repo {
    /// Root v1 (one key per role, threshold 1, consistent snapshots) and version 1 of every
    /// other role listing [`FIRMWARE`], all published.
    pub fn new() -> Self {
        let mut repo = Self::unpublished();
        repo.publish_root();
        repo.publish();
        repo
    }

    /// Like [`Repo::new`] with nothing published yet.
    pub fn unpublished() -> Self {
        let mut repo = Repo {
            root_keys: vec![key(ROOT_SEED)],
            timestamp_keys: vec![key(TIMESTAMP_SEED)],
            snapshot_keys: vec![key(SNAPSHOT_SEED)],
            targets_keys: vec![key(TARGETS_SEED)],
            root: Root::new(1, far()),
            timestamp: Timestamp::new(1, far(), MetaFile::version_only(1)),
            snapshot: Snapshot::new(1, far()),
            targets: Targets::new(1, far()),
            delegated: BTreeMap::new(),
            meta_hashes: false,
            files: Files::new(),
            target_bytes: BTreeMap::new(),
        };
        for role in [
            RoleType::Root,
            RoleType::Timestamp,
            RoleType::Snapshot,
            RoleType::Targets,
        ] {
            repo.sync_root_role(role, 1);
        }
        repo.add_target(
            "targets",
            FIRMWARE,
            b"firmware image 1.0.0",
            Some(release("1.0.0", &["hw-a"])),
        );
        repo
    }

    /// The signers of a top-level role.
    pub fn keys_mut(&mut self, role: RoleType) -> &mut Vec<SigningKey> {
        match role {
            RoleType::Root => &mut self.root_keys,
            RoleType::Timestamp => &mut self.timestamp_keys,
            RoleType::Snapshot => &mut self.snapshot_keys,
            RoleType::Targets => &mut self.targets_keys,
        }
    }

    /// Replaces a top-level role's signers and lists them in `self.root` (not published).
    /// Returns the previous signers, which a root rotation needs.
    pub fn set_keys(
        &mut self,
        role: RoleType,
        keys: Vec<SigningKey>,
        threshold: u64,
    ) -> Vec<SigningKey> {
        let old = std::mem::replace(self.keys_mut(role), keys);
        self.sync_root_role(role, threshold);
        old
    }

    fn sync_root_role(&mut self, role: RoleType, threshold: u64) {
        let publics: Vec<Key> = self.keys_mut(role).iter().map(SigningKey::public).collect();
        self.root.set_role(role, &publics, threshold).unwrap();
    }

    /// The file name a client asks for (mirrors the client's rule).
    pub fn file_name(&self, role: &str, version: u64) -> String {
        let role = percent_encode(role);
        if self.root.consistent_snapshot {
            format!("{version}.{role}.json")
        } else {
            format!("{role}.json")
        }
    }

    /// Publishes `self.root` as `<version>.root.json`, signed by the current root keys.
    pub fn publish_root(&mut self) -> Vec<u8> {
        let bytes = sign(&self.root, &self.root_keys.iter().collect::<Vec<_>>());
        self.files
            .insert(format!("{}.root.json", self.root.version), bytes.clone());
        bytes
    }

    /// Publishes `self.root` signed by exactly `signers`.
    pub fn publish_root_signed_by(&mut self, signers: &[&SigningKey]) -> Vec<u8> {
        let bytes = sign(&self.root, signers);
        self.files
            .insert(format!("{}.root.json", self.root.version), bytes.clone());
        bytes
    }

    /// The next root version with new root keys, signed by the old and the new ones (as a
    /// rotation must be), published.
    pub fn rotate_root_keys(&mut self, new_keys: Vec<SigningKey>) {
        self.root.version += 1;
        let old = self.set_keys(RoleType::Root, new_keys, 1);
        let signers: Vec<&SigningKey> = old.iter().chain(self.root_keys.iter()).collect();
        let bytes = sign(&self.root, &signers);
        self.files
            .insert(format!("{}.root.json", self.root.version), bytes);
    }

    /// Publishes `self.targets` signed by `targets_keys`.
    pub fn write_targets(&mut self) -> Vec<u8> {
        let bytes = sign(&self.targets, &self.targets_keys.iter().collect::<Vec<_>>());
        let name = self.file_name("targets", self.targets.version);
        self.files.insert(name, bytes.clone());
        bytes
    }

    /// Publishes a delegated role signed by its keys.
    pub fn write_delegated(&mut self, role: &str) -> Vec<u8> {
        let d = &self.delegated[role];
        let bytes = sign(&d.targets, &d.keys.iter().collect::<Vec<_>>());
        let name = self.file_name(role, d.targets.version);
        self.files.insert(name, bytes.clone());
        bytes
    }

    /// Publishes `self.snapshot` (its `meta` as it is; see [`Repo::sync_snapshot_meta`]).
    pub fn write_snapshot(&mut self) -> Vec<u8> {
        let bytes = sign(
            &self.snapshot,
            &self.snapshot_keys.iter().collect::<Vec<_>>(),
        );
        let name = self.file_name("snapshot", self.snapshot.version);
        self.files.insert(name, bytes.clone());
        bytes
    }

    /// Publishes `self.timestamp` as `timestamp.json`.
    pub fn write_timestamp(&mut self) -> Vec<u8> {
        let bytes = sign(
            &self.timestamp,
            &self.timestamp_keys.iter().collect::<Vec<_>>(),
        );
        self.files.insert("timestamp.json".into(), bytes.clone());
        bytes
    }

    /// The `meta` entry for a role's published file (version only if not published).
    pub fn meta_for(&self, role: &str, version: u64) -> MetaFile {
        match self.files.get(&self.file_name(role, version)) {
            Some(bytes) => meta_of(version, bytes, self.meta_hashes),
            None => MetaFile::version_only(version),
        }
    }

    /// Sets snapshot `meta` to the current targets and delegated roles' versions.
    pub fn sync_snapshot_meta(&mut self) {
        let mut meta = BTreeMap::new();
        meta.insert(
            "targets.json".to_string(),
            self.meta_for("targets", self.targets.version),
        );
        for (name, d) in &self.delegated {
            meta.insert(
                format!("{name}.json"),
                self.meta_for(name, d.targets.version),
            );
        }
        self.snapshot.meta = meta;
    }

    /// Sets timestamp `meta` to the current snapshot.
    pub fn sync_timestamp_meta(&mut self) {
        let m = self.meta_for("snapshot", self.snapshot.version);
        self.timestamp.meta = BTreeMap::from([("snapshot.json".to_string(), m)]);
    }

    /// Publishes every delegated role, targets, snapshot and timestamp, in that order, with
    /// consistent `meta` entries.
    pub fn publish(&mut self) {
        let names: Vec<String> = self.delegated.keys().cloned().collect();
        for name in names {
            self.write_delegated(&name);
        }
        self.write_targets();
        self.sync_snapshot_meta();
        self.write_snapshot();
        self.sync_timestamp_meta();
        self.write_timestamp();
    }

    /// Raises the version of every non-root role by one (not published).
    pub fn bump(&mut self) {
        self.timestamp.version += 1;
        self.snapshot.version += 1;
        self.targets.version += 1;
        for d in self.delegated.values_mut() {
            d.targets.version += 1;
        }
    }

    /// The targets metadata of `role` (`targets` or a delegated role).
    pub fn targets_mut(&mut self, role: &str) -> &mut Targets {
        if role == "targets" {
            &mut self.targets
        } else {
            &mut self.delegated.get_mut(role).unwrap().targets
        }
    }

    /// Lists a target in `role` and keeps its bytes.
    pub fn add_target(&mut self, role: &str, name: &str, bytes: &[u8], custom: Option<Value>) {
        self.targets_mut(role)
            .targets
            .insert(name.into(), target_file(bytes, custom));
        self.target_bytes.insert(name.into(), bytes.to_vec());
    }

    /// `parent` delegates `paths` to `child` (threshold 1). A new child gets a fresh key
    /// (seed [`DELEGATED_SEED`] + index); an existing one (a cycle, a second parent) keeps
    /// its keys.
    pub fn delegate(&mut self, parent: &str, child: &str, paths: &[&str], terminating: bool) {
        if !self.delegated.contains_key(child) {
            let seed = DELEGATED_SEED + self.delegated.len() as u8;
            self.delegated.insert(
                child.into(),
                Delegated {
                    targets: Targets::new(1, far()),
                    keys: vec![key(seed)],
                },
            );
        }
        let publics: Vec<Key> = self.delegated[child]
            .keys
            .iter()
            .map(SigningKey::public)
            .collect();
        let role = DelegatedRole {
            name: child.into(),
            keyids: publics.iter().map(|k| k.key_id().unwrap()).collect(),
            threshold: 1,
            terminating,
            paths: Some(paths.iter().map(|p| p.to_string()).collect()),
            path_hash_prefixes: None,
            extra: BTreeMap::new(),
        };
        let d = self
            .targets_mut(parent)
            .delegations
            .get_or_insert_with(|| Delegations {
                keys: BTreeMap::new(),
                roles: Vec::new(),
                extra: BTreeMap::new(),
            });
        for k in publics {
            d.keys.insert(k.key_id().unwrap(), k);
        }
        d.roles.push(role);
    }

    /// Changes a published file's bytes in place (no re-signing).
    pub fn tamper(&mut self, file: &str, change: impl FnOnce(&mut Vec<u8>)) {
        change(
            self.files
                .get_mut(file)
                .unwrap_or_else(|| panic!("{file} not published")),
        );
    }

    /// Edits a published file as JSON and writes it back (no re-signing).
    pub fn edit_json(&mut self, file: &str, change: impl FnOnce(&mut Value)) {
        self.tamper(file, |bytes| {
            let mut v: Value = serde_json::from_slice(bytes).unwrap();
            change(&mut v);
            *bytes = serde_json::to_vec(&v).unwrap();
        });
    }

    /// Serves a file under another name (and no longer under its own).
    pub fn rename(&mut self, from: &str, to: &str) {
        let bytes = self
            .files
            .remove(from)
            .unwrap_or_else(|| panic!("{from} not published"));
        self.files.insert(to.into(), bytes);
    }

    /// A client that trusts only `1.root.json`.
    pub fn local(&self) -> LocalMetadata {
        LocalMetadata {
            root: self.files["1.root.json"].clone(),
            ..LocalMetadata::default()
        }
    }

    /// Refreshes at [`now`] with default limits.
    pub fn refresh(&self, local: LocalMetadata) -> Result<TrustedRepository, ClientError> {
        refresh_files(&self.files, local, now(), ClientLimits::default()).result
    }

    /// Refreshes with every parameter given, keeping the request log.
    pub fn refresh_logged(
        &self,
        local: LocalMetadata,
        at: DateTime<Utc>,
        limits: ClientLimits,
    ) -> Outcome {
        refresh_files(&self.files, local, at, limits)
    }
}

/// A refresh's result and the requests it made, in order.
pub struct Outcome {
    /// What the client concluded.
    pub result: Result<TrustedRepository, ClientError>,
    /// Every request, in order.
    pub requests: Vec<FetchRequest>,
}

impl Outcome {
    /// The requested file names, in order.
    pub fn files(&self) -> Vec<&str> {
        self.requests.iter().map(|r| r.file.as_str()).collect()
    }
}

/// A fetch closure for `refresh_with` serving `files`: 404 for a missing name, at most
/// `max_length + 1` bytes of a present one (enough for the client to see it is too long).
/// Every request is appended to `log`.
pub fn fetcher<'a>(
    files: &'a Files,
    log: &'a RefCell<Vec<FetchRequest>>,
) -> impl FnMut(&FetchRequest) -> Result<FetchResponse, Infallible> + 'a {
    move |req| {
        log.borrow_mut().push(req.clone());
        Ok(match files.get(&req.file) {
            Some(bytes) => {
                let keep = usize::try_from(req.max_length.saturating_add(1))
                    .map_or(bytes.len(), |max| bytes.len().min(max));
                FetchResponse::Found(bytes[..keep].to_vec())
            }
            None => FetchResponse::NotFound,
        })
    }
}

/// The client error inside a refresh error whose fetcher cannot fail.
pub fn client_error(e: RefreshError<Infallible>) -> ClientError {
    match e {
        RefreshError::Client(c) => c,
        RefreshError::Fetch(never) => match never {},
    }
}

/// Runs a whole refresh over `files`.
pub fn refresh_files(
    files: &Files,
    local: LocalMetadata,
    at: DateTime<Utc>,
    limits: ClientLimits,
) -> Outcome {
    let log = RefCell::new(Vec::new());
    let result = refresh_with(local, at, limits, fetcher(files, &log)).map_err(client_error);
    Outcome {
        result,
        requests: log.into_inner(),
    }
}

/// The error of a refresh that must fail.
pub fn expect_err(result: Result<TrustedRepository, ClientError>) -> ClientError {
    match result {
        Ok(repo) => panic!(
            "refresh succeeded (timestamp v{}, snapshot v{}, targets v{}); expected a refusal",
            repo.timestamp().version,
            repo.snapshot().version,
            repo.targets().version
        ),
        Err(e) => e,
    }
}
