//! The TUF client workflow (specification section 5) as a sans-I/O state machine.
//!
//! [`Refresh`] is fed bytes and the current time; it says which file to fetch next
//! ([`Refresh::next_request`]), checks each answer ([`Refresh::handle`]) and, once done,
//! yields a [`TrustedRepository`] made only of [`Verified`] metadata. One small loop in the
//! caller does the I/O ([`refresh_with`] is that loop for an in-memory or blocking fetcher).
//!
//! Steps and the checks of each, numbered as in the specification:
//! - 5.3 root: fetch `N+1.root.json` until 404, each signed by a threshold of the trusted
//!   root *and* of itself, version exactly N+1, at most `max_root_rotations` of them; then the
//!   final root must not be expired (freeze). Local metadata that no longer verifies under the
//!   new root is dropped (fast-forward attack recovery after a key rotation).
//! - 5.4 timestamp: signed by the timestamp role, version not below the trusted one (rollback),
//!   snapshot version not below the trusted one, not expired.
//! - 5.5 snapshot: length and hashes as the timestamp states, signed, version exactly as the
//!   timestamp states (mix-and-match), no targets role removed or gone back, not expired.
//! - 5.6 targets and delegations: length and hashes as the snapshot states, signed by the
//!   delegator's keys, version exactly as the snapshot states, not expired. Delegated roles
//!   are loaded pre-order, each once, at most `max_delegated_roles` of them.
//!
//! Every fetched file is bounded in size before it is parsed (endless data).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256, Sha512};

use crate::keys::{Key, KeyId};
use crate::metadata::{
    DelegatedRole, Hashes, MetaFile, Role, RoleType, Root, Snapshot, TargetFile, Targets, Timestamp,
};
use crate::signed::{MetadataError, RawSigned};
use crate::target::percent_encode;
use crate::verify::{verify_role, Verified, VerifyError};

/// Bounds on what a repository can make a client do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Root versions fetched in one refresh before stopping.
    pub max_root_rotations: u32,
    /// Delegated roles loaded in one refresh.
    pub max_delegated_roles: u32,
    /// Largest root file.
    pub root_max_length: u64,
    /// Largest timestamp file.
    pub timestamp_max_length: u64,
    /// Largest snapshot file when the timestamp gives no length.
    pub snapshot_max_length: u64,
    /// Largest targets file when the snapshot gives no length.
    pub targets_max_length: u64,
}

impl Default for ClientLimits {
    /// The bounds python-tuf's ngclient uses by default.
    fn default() -> Self {
        ClientLimits {
            max_root_rotations: 256,
            max_delegated_roles: 32,
            root_max_length: 512_000,
            timestamp_max_length: 16_384,
            snapshot_max_length: 2_000_000,
            targets_max_length: 5_000_000,
        }
    }
}

/// Why a refresh stopped. Each variant is one class of attack or fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The trusted root given to start from does not verify.
    #[error("the trusted root does not verify under itself: {0}")]
    InvalidTrustedRoot(VerifyError),
    /// A file is not valid metadata of its role.
    #[error("{file}: {source}")]
    Malformed {
        /// File name.
        file: String,
        /// What was wrong.
        source: MetadataError,
    },
    /// Signatures do not meet the threshold (arbitrary software, or threshold not met).
    #[error("{file}: {source}")]
    Signature {
        /// File name.
        file: String,
        /// Details.
        source: VerifyError,
    },
    /// A role's version went back (rollback attack).
    #[error("rollback: {role} version {new} is below trusted version {trusted}")]
    Rollback {
        /// Role.
        role: String,
        /// Trusted version.
        trusted: u64,
        /// Offered version.
        new: u64,
    },
    /// A snapshot dropped a targets role that the trusted snapshot listed.
    #[error("rollback: snapshot no longer lists {role}")]
    RoleRemoved {
        /// Role.
        role: String,
    },
    /// Metadata expired (freeze attack).
    #[error("freeze: {role} expired at {expires}, now is {now}")]
    Expired {
        /// Role.
        role: String,
        /// Its expiry.
        expires: DateTime<Utc>,
        /// The time given to the client.
        now: DateTime<Utc>,
    },
    /// A file's version is not the one the referring metadata names (mix-and-match).
    #[error("{file}: version {got}, expected {expected}")]
    VersionMismatch {
        /// File name.
        file: String,
        /// Version named by the referrer.
        expected: u64,
        /// Version found.
        got: u64,
    },
    /// A file is longer than allowed (endless data).
    #[error("{file}: {got} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// File name.
        file: String,
        /// Limit.
        limit: u64,
        /// Size received.
        got: u64,
    },
    /// A file's length differs from what the referring metadata states.
    #[error("{file}: length {got}, expected {expected}")]
    LengthMismatch {
        /// File name.
        file: String,
        /// Stated length.
        expected: u64,
        /// Length received.
        got: u64,
    },
    /// A file's hash differs from what the referring metadata states.
    #[error("{file}: {algorithm} hash mismatch")]
    HashMismatch {
        /// File name.
        file: String,
        /// Algorithm.
        algorithm: String,
    },
    /// Referring metadata lists only hash algorithms we do not know.
    #[error("{file}: no supported hash algorithm among {algorithms:?}")]
    NoKnownHash {
        /// File name.
        file: String,
        /// Algorithms listed.
        algorithms: Vec<String>,
    },
    /// Metadata refers to a role that the snapshot does not list.
    #[error("snapshot does not list {role}.json")]
    MissingMeta {
        /// Role.
        role: String,
    },
    /// The timestamp lists no snapshot.
    #[error("timestamp does not list snapshot.json")]
    NoSnapshotInTimestamp,
    /// A file other than the next root was not found.
    #[error("{file}: not found on the repository")]
    NotFound {
        /// File name.
        file: String,
    },
    /// The caller drove the state machine out of order.
    #[error("refresh driven out of order: {0}")]
    OutOfOrder(&'static str),
}

impl ClientError {
    /// A short, stable name for the class of failure, for anomaly reports and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::InvalidTrustedRoot(_) => "invalid_trusted_root",
            ClientError::Malformed { .. } => "malformed_metadata",
            ClientError::Signature { .. } => "bad_signature",
            ClientError::Rollback { .. } | ClientError::RoleRemoved { .. } => "rollback",
            ClientError::Expired { .. } => "expired_metadata",
            ClientError::VersionMismatch { .. } => "mix_and_match",
            ClientError::TooLarge { .. } | ClientError::LengthMismatch { .. } => "endless_data",
            ClientError::HashMismatch { .. } | ClientError::NoKnownHash { .. } => {
                "metadata_hash_mismatch"
            }
            ClientError::MissingMeta { .. } | ClientError::NoSnapshotInTimestamp => {
                "inconsistent_metadata"
            }
            ClientError::NotFound { .. } => "missing_file",
            ClientError::OutOfOrder(_) => "client_bug",
        }
    }
}

/// Metadata the client kept from its last refresh, as the exact bytes it verified then.
#[derive(Clone, Debug, Default)]
pub struct LocalMetadata {
    /// The trusted root (required: the trust anchor).
    pub root: Vec<u8>,
    /// Last timestamp.
    pub timestamp: Option<Vec<u8>>,
    /// Last snapshot.
    pub snapshot: Option<Vec<u8>>,
    /// Last top-level targets.
    pub targets: Option<Vec<u8>>,
    /// Last delegated targets, by role name.
    pub delegated: BTreeMap<String, Vec<u8>>,
}

/// The file the caller must fetch next, relative to the repository's metadata URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    /// Role whose file this is.
    pub role: String,
    /// File name below `metadata/`, URL-safe (for example `3.snapshot.json`).
    pub file: String,
    /// Read at most this many bytes; more is an endless-data attack (the caller may stop
    /// reading there and hand over what it has: the client will refuse it).
    pub max_length: u64,
    /// Whether "not found" is a normal answer (it is for the next root version).
    pub not_found_ends_step: bool,
}

/// The caller's answer to a [`FetchRequest`].
#[derive(Clone, Debug)]
pub enum FetchResponse {
    /// The bytes received (at most `max_length + 1` need be read).
    Found(Vec<u8>),
    /// The server said 404.
    NotFound,
}

#[derive(Clone, Debug)]
enum Step {
    Root,
    Timestamp,
    Snapshot,
    Targets,
    Delegated,
    Done,
}

struct PendingRole {
    role: DelegatedRole,
    keys: BTreeMap<KeyId, Key>,
}

/// One refresh of trusted metadata. See the module documentation.
pub struct Refresh {
    now: DateTime<Utc>,
    limits: ClientLimits,
    step: Step,
    root: Verified<Root>,
    rotations: u32,
    // Local metadata, verified under the current root, used for rollback checks and reuse.
    old_timestamp: Option<Verified<Timestamp>>,
    old_snapshot: Option<Verified<Snapshot>>,
    old_targets: Option<Verified<Targets>>,
    old_delegated: BTreeMap<String, RawSigned>,
    local_raw: LocalMetadata,
    timestamp: Option<Verified<Timestamp>>,
    snapshot: Option<Verified<Snapshot>>,
    targets: Option<Verified<Targets>>,
    delegated: BTreeMap<String, Verified<Targets>>,
    // Pre-order stack of delegations still to load.
    pending: Vec<PendingRole>,
    delegations_truncated: bool,
    request: Option<FetchRequest>,
}

impl Refresh {
    /// Starts a refresh from local metadata at time `now`.
    pub fn new(
        local: LocalMetadata,
        now: DateTime<Utc>,
        limits: ClientLimits,
    ) -> Result<Self, ClientError> {
        // 5.2: the trusted root verifies under itself. Its expiry does not matter yet: a newer
        // root may replace it.
        let raw = RawSigned::parse(&local.root)
            .map_err(|e| ClientError::InvalidTrustedRoot(VerifyError::Metadata(e)))?;
        let unverified: Root = raw
            .decode()
            .map_err(|e| ClientError::InvalidTrustedRoot(VerifyError::Metadata(e)))?;
        let root = verify_by_root_role(&raw, &unverified, RoleType::Root)
            .map_err(ClientError::InvalidTrustedRoot)?;
        let mut r = Refresh {
            now,
            limits,
            step: Step::Root,
            root,
            rotations: 0,
            old_timestamp: None,
            old_snapshot: None,
            old_targets: None,
            old_delegated: BTreeMap::new(),
            local_raw: local,
            timestamp: None,
            snapshot: None,
            targets: None,
            delegated: BTreeMap::new(),
            pending: Vec::new(),
            delegations_truncated: false,
            request: None,
        };
        r.request = Some(r.root_request());
        Ok(r)
    }

    /// The file to fetch next, or `None` when the refresh is complete.
    pub fn next_request(&self) -> Option<&FetchRequest> {
        self.request.as_ref()
    }

    /// Feeds the answer to the current request and advances.
    pub fn handle(&mut self, response: FetchResponse) -> Result<(), ClientError> {
        let req = self
            .request
            .take()
            .ok_or(ClientError::OutOfOrder("no request is outstanding"))?;
        let bytes = match response {
            FetchResponse::NotFound if req.not_found_ends_step => {
                self.finish_root()?;
                return self.advance();
            }
            FetchResponse::NotFound => return Err(ClientError::NotFound { file: req.file }),
            FetchResponse::Found(b) => b,
        };
        if bytes.len() as u64 > req.max_length {
            return Err(ClientError::TooLarge {
                file: req.file,
                limit: req.max_length,
                got: bytes.len() as u64,
            });
        }
        let file = req.file.clone();
        let parse = |b: &[u8]| {
            RawSigned::parse(b).map_err(|source| ClientError::Malformed {
                file: file.clone(),
                source,
            })
        };
        match self.step {
            Step::Root => {
                let raw = parse(&bytes)?;
                self.update_root(&raw, &req.file)?;
                self.request = Some(self.root_request());
                if self.rotations >= self.limits.max_root_rotations {
                    // Stop rotating, as python-tuf does: the root we have is checked below.
                    self.request = None;
                    self.finish_root()?;
                    return self.advance();
                }
                Ok(())
            }
            Step::Timestamp => {
                let raw = parse(&bytes)?;
                self.update_timestamp(&raw, &req.file)?;
                self.step = Step::Snapshot;
                self.advance()
            }
            Step::Snapshot => {
                let meta = self.snapshot_meta()?.clone();
                check_length_and_hashes(&req.file, &bytes, &meta)?;
                let raw = parse(&bytes)?;
                self.update_snapshot(&raw, &req.file, &meta)?;
                self.step = Step::Targets;
                self.advance()
            }
            Step::Targets => {
                let meta = self.role_meta("targets")?.clone();
                check_length_and_hashes(&req.file, &bytes, &meta)?;
                let raw = parse(&bytes)?;
                let targets = self.check_targets(&raw, &req.file, "targets", &meta, None)?;
                self.queue_delegations(&targets);
                self.targets = Some(targets);
                self.step = Step::Delegated;
                self.advance()
            }
            Step::Delegated => {
                let pending = self
                    .pending
                    .pop()
                    .ok_or(ClientError::OutOfOrder("no delegated role pending"))?;
                let meta = self.role_meta(&pending.role.name)?.clone();
                check_length_and_hashes(&req.file, &bytes, &meta)?;
                let raw = parse(&bytes)?;
                let targets =
                    self.check_targets(&raw, &req.file, &pending.role.name, &meta, Some(&pending))?;
                self.queue_delegations(&targets);
                self.delegated.insert(pending.role.name.clone(), targets);
                self.advance()
            }
            Step::Done => Err(ClientError::OutOfOrder("refresh already complete")),
        }
    }

    /// The result, once [`Refresh::next_request`] is `None`.
    pub fn finish(self) -> Result<TrustedRepository, ClientError> {
        match (self.step, self.timestamp, self.snapshot, self.targets) {
            (Step::Done, Some(timestamp), Some(snapshot), Some(targets)) => Ok(TrustedRepository {
                root: self.root,
                timestamp,
                snapshot,
                targets,
                delegated: self.delegated,
                delegations_truncated: self.delegations_truncated,
            }),
            _ => Err(ClientError::OutOfOrder("refresh is not complete")),
        }
    }

    fn root_request(&self) -> FetchRequest {
        let next = self.root.version.saturating_add(1);
        FetchRequest {
            role: "root".into(),
            file: format!("{next}.root.json"),
            max_length: self.limits.root_max_length,
            not_found_ends_step: true,
        }
    }

    // 5.3.3-5.3.7
    fn update_root(&mut self, raw: &RawSigned, file: &str) -> Result<(), ClientError> {
        let new: Root = raw.decode().map_err(|source| ClientError::Malformed {
            file: file.into(),
            source,
        })?;
        let sig_err = |source| ClientError::Signature {
            file: file.into(),
            source,
        };
        // Signed by a threshold of the *trusted* root's root keys...
        verify_by_root_role::<Root>(raw, &self.root, RoleType::Root).map_err(sig_err)?;
        // ...and of its own.
        let verified = verify_by_root_role::<Root>(raw, &new, RoleType::Root).map_err(sig_err)?;
        let expected = self.root.version.saturating_add(1);
        if verified.version != expected {
            return Err(ClientError::VersionMismatch {
                file: file.into(),
                expected,
                got: verified.version,
            });
        }
        self.root = verified;
        self.rotations += 1;
        Ok(())
    }

    // 5.3.10-5.3.11, then load local metadata under the final root.
    fn finish_root(&mut self) -> Result<(), ClientError> {
        check_expiry("root", &*self.root, self.now)?;
        let local = std::mem::take(&mut self.local_raw);
        // Local files that no longer verify under the (possibly rotated) root are dropped:
        // after a timestamp or snapshot key rotation this is how a client recovers from a
        // fast-forward attack that pushed their versions up.
        self.old_timestamp = local
            .timestamp
            .as_deref()
            .and_then(|b| RawSigned::parse(b).ok())
            .and_then(|raw| verify_by_root_role(&raw, &self.root, RoleType::Timestamp).ok());
        self.old_snapshot = local
            .snapshot
            .as_deref()
            .and_then(|b| RawSigned::parse(b).ok())
            .and_then(|raw| verify_by_root_role(&raw, &self.root, RoleType::Snapshot).ok());
        self.old_targets = local
            .targets
            .as_deref()
            .and_then(|b| RawSigned::parse(b).ok())
            .and_then(|raw| verify_by_root_role(&raw, &self.root, RoleType::Targets).ok());
        self.old_delegated = local
            .delegated
            .iter()
            .filter_map(|(k, b)| RawSigned::parse(b).ok().map(|r| (k.clone(), r)))
            .collect();
        self.step = Step::Timestamp;
        Ok(())
    }

    // 5.4
    fn update_timestamp(&mut self, raw: &RawSigned, file: &str) -> Result<(), ClientError> {
        let new = verify_by_root_role::<Timestamp>(raw, &self.root, RoleType::Timestamp)
            .map_err(|source| signature_or_malformed(file, source))?;
        let new_snap = new
            .snapshot_meta()
            .ok_or(ClientError::NoSnapshotInTimestamp)?
            .version;
        if let Some(old) = &self.old_timestamp {
            if new.version < old.version {
                return Err(ClientError::Rollback {
                    role: "timestamp".into(),
                    trusted: old.version,
                    new: new.version,
                });
            }
            let old_snap = old.snapshot_meta().map(|m| m.version).unwrap_or(0);
            if new_snap < old_snap {
                return Err(ClientError::Rollback {
                    role: "snapshot".into(),
                    trusted: old_snap,
                    new: new_snap,
                });
            }
        }
        check_expiry("timestamp", &*new, self.now)?;
        self.timestamp = Some(new);
        Ok(())
    }

    // 5.5
    fn update_snapshot(
        &mut self,
        raw: &RawSigned,
        file: &str,
        meta: &MetaFile,
    ) -> Result<(), ClientError> {
        let new = verify_by_root_role::<Snapshot>(raw, &self.root, RoleType::Snapshot)
            .map_err(|source| signature_or_malformed(file, source))?;
        self.accept_snapshot(new, file, meta)
    }

    fn accept_snapshot(
        &mut self,
        new: Verified<Snapshot>,
        file: &str,
        meta: &MetaFile,
    ) -> Result<(), ClientError> {
        if new.version != meta.version {
            return Err(ClientError::VersionMismatch {
                file: file.into(),
                expected: meta.version,
                got: new.version,
            });
        }
        if let Some(old) = &self.old_snapshot {
            for (name, old_meta) in &old.meta {
                let role = name.trim_end_matches(".json").to_string();
                match new.meta.get(name) {
                    None => return Err(ClientError::RoleRemoved { role }),
                    Some(m) if m.version < old_meta.version => {
                        return Err(ClientError::Rollback {
                            role,
                            trusted: old_meta.version,
                            new: m.version,
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        check_expiry("snapshot", &*new, self.now)?;
        self.snapshot = Some(new);
        Ok(())
    }

    // 5.6 (and 5.6 for delegated roles, verified with the delegator's keys)
    fn check_targets(
        &self,
        raw: &RawSigned,
        file: &str,
        role: &str,
        meta: &MetaFile,
        delegation: Option<&PendingRole>,
    ) -> Result<Verified<Targets>, ClientError> {
        let verified = match delegation {
            None => verify_by_root_role::<Targets>(raw, &self.root, RoleType::Targets),
            Some(d) => verify_role::<Targets>(raw, role, &d.keys, &d.role.keyids, d.role.threshold),
        }
        .map_err(|source| signature_or_malformed(file, source))?;
        if verified.version != meta.version {
            return Err(ClientError::VersionMismatch {
                file: file.into(),
                expected: meta.version,
                got: verified.version,
            });
        }
        check_expiry(role, &*verified, self.now)?;
        Ok(verified)
    }

    fn queue_delegations(&mut self, targets: &Targets) {
        if let Some(d) = &targets.delegations {
            // Push in reverse so that popping visits roles in listed (priority) order.
            for role in d.roles.iter().rev() {
                self.pending.push(PendingRole {
                    role: role.clone(),
                    keys: d.keys.clone(),
                });
            }
        }
    }

    fn snapshot_meta(&self) -> Result<&MetaFile, ClientError> {
        self.timestamp
            .as_ref()
            .and_then(|t| t.snapshot_meta())
            .ok_or(ClientError::NoSnapshotInTimestamp)
    }

    fn role_meta(&self, role: &str) -> Result<&MetaFile, ClientError> {
        self.snapshot
            .as_ref()
            .and_then(|s| s.role_meta(role))
            .ok_or_else(|| ClientError::MissingMeta { role: role.into() })
    }

    fn file_name(&self, role: &str, version: u64) -> String {
        let role = percent_encode(role);
        if self.root.consistent_snapshot {
            format!("{version}.{role}.json")
        } else {
            format!("{role}.json")
        }
    }

    /// Moves through steps that need no fetch (reuse of unchanged local files) until one
    /// does, or the refresh is done.
    fn advance(&mut self) -> Result<(), ClientError> {
        loop {
            match self.step {
                Step::Root => return Ok(()),
                Step::Timestamp => {
                    self.request = Some(FetchRequest {
                        role: "timestamp".into(),
                        file: "timestamp.json".into(),
                        max_length: self.limits.timestamp_max_length,
                        not_found_ends_step: false,
                    });
                    return Ok(());
                }
                Step::Snapshot => {
                    let meta = self.snapshot_meta()?.clone();
                    // Reuse the local snapshot when it is the version the timestamp names.
                    if let Some(old) = self.old_snapshot.clone() {
                        if old.version == meta.version
                            && check_length_and_hashes("snapshot", old.raw(), &meta).is_ok()
                        {
                            let file = self.file_name("snapshot", meta.version);
                            self.accept_snapshot(old, &file, &meta)?;
                            self.step = Step::Targets;
                            continue;
                        }
                    }
                    self.request = Some(FetchRequest {
                        role: "snapshot".into(),
                        file: self.file_name("snapshot", meta.version),
                        max_length: meta.length.unwrap_or(self.limits.snapshot_max_length),
                        not_found_ends_step: false,
                    });
                    return Ok(());
                }
                Step::Targets => {
                    let meta = self.role_meta("targets")?.clone();
                    let file = self.file_name("targets", meta.version);
                    if let Some(old) = self.old_targets.clone() {
                        if old.version == meta.version
                            && check_length_and_hashes(&file, old.raw(), &meta).is_ok()
                        {
                            check_expiry("targets", &*old, self.now)?;
                            self.queue_delegations(&old);
                            self.targets = Some(old);
                            self.step = Step::Delegated;
                            continue;
                        }
                    }
                    self.request = Some(FetchRequest {
                        role: "targets".into(),
                        file,
                        max_length: meta.length.unwrap_or(self.limits.targets_max_length),
                        not_found_ends_step: false,
                    });
                    return Ok(());
                }
                Step::Delegated => {
                    // Skip roles already loaded (cycles, or one role delegated twice).
                    while let Some(top) = self.pending.last() {
                        if self.delegated.contains_key(&top.role.name) || top.role.name == "targets"
                        {
                            self.pending.pop();
                        } else {
                            break;
                        }
                    }
                    let Some(top) = self.pending.last() else {
                        self.step = Step::Done;
                        continue;
                    };
                    if self.delegated.len() as u32 >= self.limits.max_delegated_roles {
                        // Bounded like python-tuf's max_delegations: stop loading, and say so.
                        self.delegations_truncated = true;
                        self.pending.clear();
                        self.step = Step::Done;
                        continue;
                    }
                    let name = top.role.name.clone();
                    let meta = self.role_meta(&name)?.clone();
                    let file = self.file_name(&name, meta.version);
                    if let Some(raw) = self.old_delegated.get(&name).cloned() {
                        if check_length_and_hashes(&file, raw.bytes(), &meta).is_ok() {
                            let pending = self
                                .pending
                                .pop()
                                .ok_or(ClientError::OutOfOrder("no delegated role pending"))?;
                            if let Ok(t) =
                                self.check_targets(&raw, &file, &name, &meta, Some(&pending))
                            {
                                self.queue_delegations(&t);
                                self.delegated.insert(name, t);
                                continue;
                            }
                            self.pending.push(pending);
                        }
                    }
                    self.request = Some(FetchRequest {
                        role: name,
                        file,
                        max_length: meta.length.unwrap_or(self.limits.targets_max_length),
                        not_found_ends_step: false,
                    });
                    return Ok(());
                }
                Step::Done => {
                    self.request = None;
                    return Ok(());
                }
            }
        }
    }
}

fn verify_by_root_role<T: Role>(
    raw: &RawSigned,
    root: &Root,
    role: RoleType,
) -> Result<Verified<T>, VerifyError> {
    let (keyids, threshold) = match root.role(role) {
        Some(r) => (r.keyids.as_slice(), r.threshold),
        // A root without the role cannot authorise anything for it.
        None => (&[][..], 1),
    };
    verify_role(raw, role.name(), &root.keys, keyids, threshold)
}

fn signature_or_malformed(file: &str, source: VerifyError) -> ClientError {
    match source {
        VerifyError::Metadata(source) => ClientError::Malformed {
            file: file.into(),
            source,
        },
        source => ClientError::Signature {
            file: file.into(),
            source,
        },
    }
}

fn check_expiry<T: Role>(role: &str, meta: &T, now: DateTime<Utc>) -> Result<(), ClientError> {
    // Expired at the instant of `expires` (python-tuf: `expires <= now`).
    if meta.expires() <= now {
        return Err(ClientError::Expired {
            role: role.into(),
            expires: meta.expires(),
            now,
        });
    }
    Ok(())
}

/// Checks a fetched file against the length and hashes its referrer states.
fn check_length_and_hashes(file: &str, bytes: &[u8], meta: &MetaFile) -> Result<(), ClientError> {
    if let Some(len) = meta.length {
        if bytes.len() as u64 != len {
            return Err(ClientError::LengthMismatch {
                file: file.into(),
                expected: len,
                got: bytes.len() as u64,
            });
        }
    }
    if let Some(hashes) = &meta.hashes {
        check_hashes(file, bytes, hashes)?;
    }
    Ok(())
}

fn check_hashes(file: &str, bytes: &[u8], hashes: &Hashes) -> Result<(), ClientError> {
    let mut checked = 0;
    for (alg, want) in hashes {
        let got = match alg.as_str() {
            "sha256" => hex::encode(Sha256::digest(bytes)),
            "sha512" => hex::encode(Sha512::digest(bytes)),
            _ => continue,
        };
        if !got.eq_ignore_ascii_case(want) {
            return Err(ClientError::HashMismatch {
                file: file.into(),
                algorithm: alg.clone(),
            });
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(ClientError::NoKnownHash {
            file: file.into(),
            algorithms: hashes.keys().cloned().collect(),
        });
    }
    Ok(())
}

/// Runs a whole refresh with a blocking fetcher (tests, tools, simple clients).
pub fn refresh_with<E>(
    local: LocalMetadata,
    now: DateTime<Utc>,
    limits: ClientLimits,
    mut fetch: impl FnMut(&FetchRequest) -> Result<FetchResponse, E>,
) -> Result<TrustedRepository, RefreshError<E>> {
    let mut refresh = Refresh::new(local, now, limits).map_err(RefreshError::Client)?;
    while let Some(req) = refresh.next_request() {
        let response = fetch(req).map_err(RefreshError::Fetch)?;
        refresh.handle(response).map_err(RefreshError::Client)?;
    }
    refresh.finish().map_err(RefreshError::Client)
}

/// A refresh failure: the repository's fault or the fetcher's.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError<E> {
    /// Verification refused something.
    #[error(transparent)]
    Client(ClientError),
    /// The fetcher failed.
    #[error("fetch failed: {0}")]
    Fetch(E),
}

/// The outcome of a refresh: metadata that passed every check.
#[derive(Clone, Debug)]
pub struct TrustedRepository {
    root: Verified<Root>,
    timestamp: Verified<Timestamp>,
    snapshot: Verified<Snapshot>,
    targets: Verified<Targets>,
    delegated: BTreeMap<String, Verified<Targets>>,
    delegations_truncated: bool,
}

impl TrustedRepository {
    /// The trusted root.
    pub fn root(&self) -> &Verified<Root> {
        &self.root
    }
    /// The trusted timestamp.
    pub fn timestamp(&self) -> &Verified<Timestamp> {
        &self.timestamp
    }
    /// The trusted snapshot.
    pub fn snapshot(&self) -> &Verified<Snapshot> {
        &self.snapshot
    }
    /// The trusted top-level targets.
    pub fn targets(&self) -> &Verified<Targets> {
        &self.targets
    }
    /// Delegated roles loaded.
    pub fn delegated(&self) -> &BTreeMap<String, Verified<Targets>> {
        &self.delegated
    }
    /// Whether the delegation bound stopped loading roles.
    pub fn delegations_truncated(&self) -> bool {
        self.delegations_truncated
    }

    /// The bytes to keep for the next refresh.
    pub fn to_local(&self) -> LocalMetadata {
        LocalMetadata {
            root: self.root.raw().to_vec(),
            timestamp: Some(self.timestamp.raw().to_vec()),
            snapshot: Some(self.snapshot.raw().to_vec()),
            targets: Some(self.targets.raw().to_vec()),
            delegated: self
                .delegated
                .iter()
                .map(|(k, v)| (k.clone(), v.raw().to_vec()))
                .collect(),
        }
    }

    /// Finds a target by pre-order search of the delegation tree (spec 5.6.7): the top-level
    /// targets first, then each delegated role trusted for the path, in order, descending
    /// before moving on; a terminating role that is trusted for the path ends the search.
    /// Returns the target and the role that listed it.
    pub fn find_target(&self, name: &str) -> Option<(&TargetFile, &str)> {
        if let Some(t) = self.targets.targets.get(name) {
            return Some((t, "targets"));
        }
        let mut visited = BTreeSet::new();
        match self.search(&self.targets, name, &mut visited) {
            ControlFlow::Break(found) => found,
            ControlFlow::Continue(()) => None,
        }
    }

    /// `Break` ends the whole search (found, or a terminating role reached at any depth:
    /// spec 5.6.7.2.1, python-tuf clears its entire stack); `Continue` tries the next role.
    fn search<'a>(
        &'a self,
        delegator: &'a Targets,
        name: &str,
        visited: &mut BTreeSet<&'a str>,
    ) -> ControlFlow<Option<(&'a TargetFile, &'a str)>> {
        let Some(delegations) = delegator.delegations.as_ref() else {
            return ControlFlow::Continue(());
        };
        for role in &delegations.roles {
            if !role.is_trusted_for(name) {
                continue;
            }
            if visited.insert(role.name.as_str()) {
                if let Some(meta) = self.delegated.get(&role.name) {
                    if let Some(t) = meta.targets.get(name) {
                        return ControlFlow::Break(Some((t, role.name.as_str())));
                    }
                    self.search(meta, name, visited)?;
                }
            }
            if role.terminating {
                return ControlFlow::Break(None);
            }
        }
        ControlFlow::Continue(())
    }

    /// Every target a client would accept, with the trust rules of [`Self::find_target`]
    /// (a delegated role's target counts only where the search would reach it).
    pub fn all_targets(&self) -> Vec<(&str, &TargetFile)> {
        let mut names: BTreeSet<&str> = self.targets.targets.keys().map(String::as_str).collect();
        for d in self.delegated.values() {
            names.extend(d.targets.keys().map(String::as_str));
        }
        names
            .into_iter()
            .filter_map(|n| self.find_target(n).map(|(t, _)| (n, t)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::signed::sign_role;
    use chrono::TimeZone;

    fn role(name: &str, key: &SigningKey, terminating: bool) -> DelegatedRole {
        DelegatedRole {
            name: name.into(),
            keyids: vec![key.key_id()],
            threshold: 1,
            terminating,
            paths: Some(vec!["fw/*".into()]),
            path_hash_prefixes: None,
            extra: BTreeMap::new(),
        }
    }

    fn delegating(children: &[(&str, &SigningKey, bool)]) -> Targets {
        let far = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
        let mut t = Targets::new(1, far);
        t.delegations = Some(crate::metadata::Delegations {
            keys: children
                .iter()
                .map(|(_, k, _)| (k.key_id(), k.public()))
                .collect(),
            roles: children
                .iter()
                .map(|(n, k, term)| role(n, k, *term))
                .collect(),
            extra: BTreeMap::new(),
        });
        t
    }

    #[test]
    fn a_nested_terminating_role_ends_the_whole_search() {
        // targets -> a -> a1 (terminating); targets -> b, which lists fw/x.bin. a1 covers
        // fw/x.bin, so the search stops there and b is never consulted.
        let far = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
        let k = SigningKey::from_seed(&[1; 32]);
        let (ka, ka1, kb) = (
            SigningKey::from_seed(&[2; 32]),
            SigningKey::from_seed(&[3; 32]),
            SigningKey::from_seed(&[4; 32]),
        );
        let mut root = Root::new(1, far);
        for r in [
            RoleType::Root,
            RoleType::Timestamp,
            RoleType::Snapshot,
            RoleType::Targets,
        ] {
            root.set_role(r, &[k.public()], 1).unwrap();
        }
        let top = delegating(&[("a", &ka, false), ("b", &kb, false)]);
        let a = delegating(&[("a1", &ka1, true)]);
        let a1 = Targets::new(1, far);
        let mut b = Targets::new(1, far);
        let file = TargetFile {
            length: 1,
            hashes: BTreeMap::from([("sha256".into(), "00".into())]),
            custom: None,
            extra: BTreeMap::new(),
        };
        b.targets.insert("fw/x.bin".into(), file);
        let mut snapshot = Snapshot::new(1, far);
        for name in ["targets", "a", "a1", "b"] {
            snapshot
                .meta
                .insert(format!("{name}.json"), MetaFile::version_only(1));
        }
        let timestamp = Timestamp::new(1, far, MetaFile::version_only(1));
        let files: BTreeMap<String, Vec<u8>> = BTreeMap::from([
            (
                "timestamp.json".into(),
                sign_role(&timestamp, &[&k]).unwrap(),
            ),
            (
                "1.snapshot.json".into(),
                sign_role(&snapshot, &[&k]).unwrap(),
            ),
            ("1.targets.json".into(), sign_role(&top, &[&k]).unwrap()),
            ("1.a.json".into(), sign_role(&a, &[&ka]).unwrap()),
            ("1.a1.json".into(), sign_role(&a1, &[&ka1]).unwrap()),
            ("1.b.json".into(), sign_role(&b, &[&kb]).unwrap()),
        ]);
        let local = LocalMetadata {
            root: sign_role(&root, &[&k]).unwrap(),
            ..LocalMetadata::default()
        };
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let trusted = refresh_with(local, now, ClientLimits::default(), |req| {
            Ok::<_, std::convert::Infallible>(match files.get(&req.file) {
                Some(b) => FetchResponse::Found(b.clone()),
                None => FetchResponse::NotFound,
            })
        })
        .unwrap();
        assert!(trusted.delegated()["b"].targets.contains_key("fw/x.bin"));
        assert_eq!(trusted.find_target("fw/x.bin"), None);
        assert!(trusted.all_targets().is_empty());
    }
}
