//! The agent's durable state: what is installed where, the update in progress, and the
//! anti-rollback floor.
//!
//! [`AgentState`] is plain data: its methods change it in memory and never touch the disk
//! (as signpost's `State` does); [`StateStore::save`] commits it. Callers order their steps
//! so that a crash between any two is safe: e.g. checkpoint the slot writer, *then* save
//! the resume offset.
//!
//! # Two copies, and what happens when they break
//!
//! The state is saved to `state.json` and then to `state.json.bak`, each replaced
//! atomically ([`crate::fsutil::write_atomic`]), and each save bumps
//! [`AgentState::generation`]. An atomic rename cannot tear a file, so a corrupt copy
//! means storage damage or a hand edit. On load:
//!
//! - both valid: the higher generation wins (they differ only after a crash between the two
//!   writes), and the anti-rollback floor is the higher of the two;
//! - one valid: it is used, and [`Loaded::recovery`] says what was wrong with the other,
//!   for the operation log and an anomaly report; the next save rewrites both;
//! - none present: a fresh state (first start);
//! - none valid: [`StateError::Corrupt`]. The agent must not guess, because a guessed
//!   state could lower the floor and let a downgrade in. It stops updating until an
//!   operator calls [`StateStore::reinitialize`] with a floor (at least the version that
//!   is running), which keeps the damaged files as `*.corrupt` for inspection.
//!
//! The floor never goes down through this module: [`AgentState::raise_floor`] only raises
//! it and [`AgentState::begin_update`] refuses versions that are not newer.
//!
//! Unknown fields are ignored on load, so that after an A/B fallback an older agent can
//! still read the file a newer one wrote.

use std::path::{Path, PathBuf};

use ota_common::release::CompressedForm;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::boot::Slot;
use crate::fsutil::{self, FsError};
use crate::pipeline::ResumePoint;

/// The state file format written by this agent.
pub const STATE_FORMAT: u32 = 1;

/// The agent's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// File format ([`STATE_FORMAT`]).
    pub format: u32,
    /// Bumped by every [`StateStore::save`]; picks the newer copy on load.
    #[serde(default)]
    pub generation: u64,
    /// The anti-rollback floor: the highest version ever committed.
    #[serde(default)]
    highest_committed: Option<Version>,
    /// What each slot holds, as far as the agent installed it.
    #[serde(default)]
    pub slots: SlotImages,
    /// The update in progress.
    #[serde(default)]
    pub pending: Option<PendingUpdate>,
    /// Boots into the pending update's slot so far (the agent's own count, next to the
    /// bootloader's try counter).
    #[serde(default)]
    pub boot_attempts: u32,
    /// Agent starts in a row that ended in a crash rather than a clean stop.
    #[serde(default)]
    pub consecutive_crashes: u32,
    /// Images (SHA-256, hex) that failed their health gate or never booted here: not
    /// installed again, so a bad release cannot loop install → reboot → rollback. A fixed
    /// release has another hash. Bounded to the last [`MAX_FAILED_IMAGES`].
    #[serde(default)]
    pub failed_images: Vec<String>,
}

/// How many failed images [`AgentState::failed_images`] remembers.
pub const MAX_FAILED_IMAGES: usize = 16;

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            format: STATE_FORMAT,
            generation: 0,
            highest_committed: None,
            slots: SlotImages::default(),
            pending: None,
            boot_attempts: 0,
            consecutive_crashes: 0,
            failed_images: Vec::new(),
        }
    }
}

/// The images installed in slots A and B.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotImages {
    /// Slot A.
    pub a: Option<InstalledImage>,
    /// Slot B.
    pub b: Option<InstalledImage>,
}

/// One image written to a slot and committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledImage {
    /// The TUF target name.
    pub target_name: String,
    /// Its release version.
    pub version: Version,
    /// SHA-256 of the image.
    #[serde(with = "hex32")]
    pub sha256: [u8; 32],
    /// Length in bytes.
    pub length: u64,
}

/// An update between "chosen" and "committed or rolled back".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpdate {
    /// The TUF target name.
    pub target_name: String,
    /// Its release version.
    pub version: Version,
    /// SHA-256 of the image, from the signed targets metadata.
    #[serde(with = "hex32")]
    pub sha256: [u8; 32],
    /// Length of the image, from the signed targets metadata.
    pub length: u64,
    /// The slot being written (the inactive one when the update began).
    pub slot: Slot,
    /// How far it got.
    pub phase: Phase,
    /// The server deployment that asked for this update, echoed in reports.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Bytes of the image durably in the slot (a [`crate::slots::SlotWriter::checkpoint`]
    /// result): where a download resumes, with an HTTP Range request on the image, or on
    /// the compressed form at [`CompressedDownload::resume_offset`]. Always an image offset,
    /// re-hashed from the slot on resume (so an agent that knows nothing of compressed
    /// forms resumes correctly from it with the image).
    #[serde(default)]
    pub resume_offset: u64,
    /// Set while the download fetches the release's compressed form rather than the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed: Option<CompressedDownload>,
}

/// A download of a release's zstd-compressed form ([`CompressedForm`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressedDownload {
    /// The form, as signed: the file the offset below refers to.
    pub form: CompressedForm,
    /// Offset in the compressed file of the frame boundary where the image's
    /// [`PendingUpdate::resume_offset`] bytes end: where a new decoder resumes.
    #[serde(default)]
    pub resume_offset: u64,
}

impl PendingUpdate {
    /// Settles which file the download fetches, given the compressed form on offer now
    /// (`None`: the release has none, or the configuration declines it), so that offsets
    /// into one file are never used on another. An update keeps the file it began with
    /// while it is on offer. A compressed download whose form is gone or changed goes on
    /// with the image from its image offset (durable in the slot, so no progress is lost);
    /// a download of the image switches to the compressed form only while it has nothing
    /// yet. Returns whether anything changed (the state needs saving).
    pub fn select_source(&mut self, offered: Option<&CompressedForm>) -> bool {
        let keep = match (&self.compressed, offered) {
            (Some(c), Some(f)) => c.form == *f,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let mut changed = false;
        if !keep {
            self.compressed = None;
            changed = true;
        }
        if let (None, Some(f), 0) = (&self.compressed, offered, self.resume_offset) {
            self.compressed = Some(CompressedDownload {
                form: f.clone(),
                resume_offset: 0,
            });
            changed = true;
        }
        changed
    }

    /// Where the download resumes. A compressed record that cannot be right (an offset
    /// past the file, image bytes from no compressed bytes, or the whole file for part of
    /// the image, where a Range request would only fail) starts over.
    pub fn resume_point(&self) -> ResumePoint {
        let image = self.resume_offset;
        let Some(c) = &self.compressed else {
            return ResumePoint {
                image,
                source: image,
            };
        };
        let source = c.resume_offset;
        let consistent = (source > 0 || image == 0)
            && (source < c.form.length || (source == c.form.length && image == self.length));
        if consistent {
            ResumePoint { image, source }
        } else {
            ResumePoint::ZERO
        }
    }

    /// Records a durable resume point (after the slot checkpoint that made it so).
    pub fn set_resume_point(&mut self, at: ResumePoint) {
        self.resume_offset = at.image;
        if let Some(c) = self.compressed.as_mut() {
            c.resume_offset = at.source;
        }
    }
}

/// The steps of an update after a target was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Streaming into the slot; `resume_offset` bytes are durable.
    Downloading,
    /// All bytes in the slot, length and hash verified.
    Downloaded,
    /// The bootloader tries the slot at the next boot.
    InstalledAwaitingReboot,
    /// Running from the new slot, before the health check commits it.
    BootedAwaitingHealth,
}

impl AgentState {
    /// The anti-rollback floor.
    pub fn highest_committed(&self) -> Option<&Version> {
        self.highest_committed.as_ref()
    }

    /// Whether `version` is newer than everything ever committed.
    pub fn accepts(&self, version: &Version) -> bool {
        self.highest_committed
            .as_ref()
            .is_none_or(|floor| version > floor)
    }

    /// Raises the floor to `version` if that is higher; never lowers it. Returns whether it
    /// changed. Does not write to the disk.
    pub fn raise_floor(&mut self, version: &Version) -> bool {
        if self
            .highest_committed
            .as_ref()
            .is_some_and(|f| f >= version)
        {
            return false;
        }
        self.highest_committed = Some(version.clone());
        true
    }

    /// Starts an update, replacing any pending one. Refuses a version that is not newer
    /// than the floor. Does not write to the disk.
    pub fn begin_update(&mut self, pending: PendingUpdate) -> Result<(), StateError> {
        if let Some(floor) = &self.highest_committed {
            if pending.version <= *floor {
                return Err(StateError::Downgrade {
                    offered: pending.version,
                    floor: floor.clone(),
                });
            }
        }
        self.pending = Some(pending);
        self.boot_attempts = 0;
        Ok(())
    }

    /// Commits the pending update: records its image in its slot, raises the floor to its
    /// version, clears the pending update and the counters. Does not write to the disk.
    pub fn commit_pending(&mut self) -> Result<InstalledImage, StateError> {
        let pending = self.pending.take().ok_or(StateError::NoPendingUpdate)?;
        let image = InstalledImage {
            target_name: pending.target_name,
            version: pending.version,
            sha256: pending.sha256,
            length: pending.length,
        };
        self.raise_floor(&image.version);
        *self.slot_mut(pending.slot) = Some(image.clone());
        self.boot_attempts = 0;
        self.consecutive_crashes = 0;
        Ok(image)
    }

    /// Remembers that the pending image failed on this device (health gate or boot), then
    /// abandons it (does not write to the disk).
    pub fn fail_pending(&mut self) -> Option<PendingUpdate> {
        let p = self.abandon_pending()?;
        let sha = hex::encode(p.sha256);
        if !self.failed_images.contains(&sha) {
            self.failed_images.push(sha);
            let excess = self.failed_images.len().saturating_sub(MAX_FAILED_IMAGES);
            self.failed_images.drain(..excess);
        }
        Some(p)
    }

    /// Whether an image (SHA-256, hex) failed here before.
    pub fn has_failed(&self, sha256_hex: &str) -> bool {
        self.failed_images
            .iter()
            .any(|s| s.eq_ignore_ascii_case(sha256_hex))
    }

    /// Drops the pending update (rollback or abandoned download) and returns it. The slot
    /// record is cleared too: the slot holds a partial or rejected image now. Does not
    /// write to the disk.
    pub fn abandon_pending(&mut self) -> Option<PendingUpdate> {
        let pending = self.pending.take()?;
        *self.slot_mut(pending.slot) = None;
        self.boot_attempts = 0;
        Some(pending)
    }

    /// What `slot` holds.
    pub fn slot(&self, slot: Slot) -> Option<&InstalledImage> {
        match slot {
            Slot::A => self.slots.a.as_ref(),
            Slot::B => self.slots.b.as_ref(),
        }
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Option<InstalledImage> {
        match slot {
            Slot::A => &mut self.slots.a,
            Slot::B => &mut self.slots.b,
        }
    }
}

/// A [`StateStore::write`] running on a thread of its own (a download checkpoint: the
/// download goes on while the state file and its backup are synced).
pub struct SaveInFlight {
    done: std::sync::mpsc::Receiver<Result<(), StateError>>,
}

impl SaveInFlight {
    /// Writes `bytes` (from [`StateStore::prepare`]) with `store` on a new thread.
    pub fn start(store: StateStore, bytes: Vec<u8>) -> Self {
        let (tx, done) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let _ = tx.send(store.write(&bytes));
        });
        SaveInFlight { done }
    }

    /// The result, if the write has finished.
    pub fn try_wait(&self) -> Option<Result<(), StateError>> {
        match self.done.try_recv() {
            Ok(r) => Some(r),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(Err(Self::lost())),
        }
    }

    /// Waits for the write.
    pub fn wait(self) -> Result<(), StateError> {
        self.done.recv().unwrap_or_else(|_| Err(Self::lost()))
    }

    fn lost() -> StateError {
        StateError::Io {
            op: "saving state on its thread",
            path: PathBuf::new(),
            source: std::io::Error::other("the state save thread stopped unexpectedly"),
        }
    }
}

/// Reads and writes the state file and its backup. See the module docs.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
    backup: PathBuf,
}

/// The result of [`StateStore::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The state to use.
    pub state: AgentState,
    /// Set when a copy was missing or unreadable: worth an operation-log record and an
    /// anomaly report.
    pub recovery: Option<Recovery>,
}

/// What [`StateStore::load`] had to repair.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// The main file was missing or unreadable; the backup was used.
    RestoredFromBackup {
        /// The main file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The backup was unreadable (the main file was fine); the next save rewrites it.
    BackupUnreadable {
        /// The backup file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
}

/// One of the two state files, as read.
enum StateCopy {
    Missing,
    Valid(Box<AgentState>),
    Corrupt(String),
}

impl StateStore {
    /// The state at `path`, with its backup at `path` + `.bak`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut backup = path.clone().into_os_string();
        backup.push(".bak");
        StateStore {
            path,
            backup: backup.into(),
        }
    }

    /// The main state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backup copy.
    pub fn backup_path(&self) -> &Path {
        &self.backup
    }

    /// Loads the state (see the module docs for the recovery rules).
    pub fn load(&self) -> Result<Loaded, StateError> {
        let main = read_copy(&self.path)?;
        let backup = read_copy(&self.backup)?;
        let loaded = |state: Box<AgentState>, recovery| {
            Ok(Loaded {
                state: *state,
                recovery,
            })
        };
        match (main, backup) {
            (StateCopy::Missing, StateCopy::Missing) => loaded(Box::default(), None),
            (StateCopy::Valid(main), StateCopy::Valid(backup)) => {
                let (mut newer, older) = if backup.generation > main.generation {
                    (backup, main)
                } else {
                    (main, backup)
                };
                if let Some(floor) = older.highest_committed {
                    newer.raise_floor(&floor);
                }
                loaded(newer, None)
            }
            (StateCopy::Valid(main), StateCopy::Missing) => loaded(main, None),
            (StateCopy::Valid(main), StateCopy::Corrupt(reason)) => loaded(
                main,
                Some(Recovery::BackupUnreadable {
                    path: self.backup.clone(),
                    reason,
                }),
            ),
            (main, StateCopy::Valid(backup)) => loaded(
                backup,
                Some(Recovery::RestoredFromBackup {
                    path: self.path.clone(),
                    reason: match main {
                        StateCopy::Corrupt(reason) => reason,
                        _ => "missing".into(),
                    },
                }),
            ),
            (StateCopy::Corrupt(reason), backup) => Err(StateError::Corrupt {
                path: self.path.clone(),
                reason,
                backup: self.backup.clone(),
                backup_reason: match backup {
                    StateCopy::Corrupt(reason) => reason,
                    _ => "missing".into(),
                },
            }),
            (StateCopy::Missing, StateCopy::Corrupt(backup_reason)) => Err(StateError::Corrupt {
                path: self.path.clone(),
                reason: "missing".into(),
                backup: self.backup.clone(),
                backup_reason,
            }),
        }
    }

    /// Bumps the generation and writes the main file, then the backup, each atomically.
    pub fn save(&self, state: &mut AgentState) -> Result<(), StateError> {
        let bytes = Self::prepare(state)?;
        self.write(&bytes)
    }

    /// The first half of [`StateStore::save`]: bumps the generation and returns the bytes
    /// to [`StateStore::write`] (on another thread, for a save that must not stall the
    /// caller). Writes must happen in the order of their preparation.
    pub fn prepare(state: &mut AgentState) -> Result<Vec<u8>, StateError> {
        state.generation += 1;
        let mut bytes =
            serde_json::to_vec_pretty(state).map_err(|source| StateError::Serialize { source })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// The second half of [`StateStore::save`]: the main file, then the backup, each
    /// atomically.
    pub fn write(&self, bytes: &[u8]) -> Result<(), StateError> {
        fsutil::write_atomic(&self.path, bytes)?;
        fsutil::write_atomic(&self.backup, bytes)?;
        Ok(())
    }

    /// Operator recovery after [`StateError::Corrupt`]: moves both copies aside (as
    /// `*.corrupt`) and saves a fresh state with `floor` as the anti-rollback floor. Pick
    /// the floor from outside the device (the fleet's records, or at least the version
    /// running now): `None` accepts any version.
    pub fn reinitialize(&self, floor: Option<&Version>) -> Result<AgentState, StateError> {
        for path in [&self.path, &self.backup] {
            let mut aside = path.clone().into_os_string();
            aside.push(".corrupt");
            match std::fs::rename(path, &aside) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Io {
                        op: "moving aside damaged state file",
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        let mut state = AgentState::default();
        if let Some(floor) = floor {
            state.raise_floor(floor);
        }
        self.save(&mut state)?;
        Ok(state)
    }
}

fn read_copy(path: &Path) -> Result<StateCopy, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateCopy::Missing),
        Err(source) => {
            return Err(StateError::Io {
                op: "reading state file",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    Ok(match serde_json::from_slice::<AgentState>(&bytes) {
        Ok(state) => StateCopy::Valid(Box::new(state)),
        Err(e) => StateCopy::Corrupt(e.to_string()),
    })
}

/// Serializes a SHA-256 digest as 64 lowercase hex characters.
mod hex32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|e| D::Error::custom(format!("invalid sha256 {text:?}: {e}")))?;
        Ok(out)
    }
}

/// A failed state operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Reading or moving a state file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing a state file failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Serializing the state failed.
    #[error("serializing agent state")]
    Serialize {
        /// The serde error.
        source: serde_json::Error,
    },
    /// Neither copy of the state is usable: updates stop until an operator calls
    /// [`StateStore::reinitialize`].
    #[error(
        "agent state unreadable: {path}: {reason}; backup {backup}: {backup_reason} \
         (updates are stopped; reinitialize the state with a known anti-rollback floor)"
    )]
    Corrupt {
        /// The main file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// The backup file.
        backup: PathBuf,
        /// What is wrong with it.
        backup_reason: String,
    },
    /// An update to a version that is not newer than the floor.
    #[error("refusing version {offered}: not newer than the committed version {floor}")]
    Downgrade {
        /// The version offered.
        offered: Version,
        /// The anti-rollback floor.
        floor: Version,
    },
    /// A commit without a pending update.
    #[error("no pending update to commit")]
    NoPendingUpdate,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    fn pending(version: &str) -> PendingUpdate {
        PendingUpdate {
            target_name: "rootfs.img".into(),
            version: v(version),
            sha256: [0xab; 32],
            length: 4096,
            slot: Slot::B,
            phase: Phase::Downloading,
            deployment: None,
            resume_offset: 0,
            compressed: None,
        }
    }

    fn form(byte: char) -> CompressedForm {
        CompressedForm {
            length: 1000,
            sha256: byte.to_string().repeat(64),
        }
    }

    fn store() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state.json"));
        (dir, store)
    }

    #[test]
    fn fresh_state_then_round_trip() {
        let (_dir, store) = store();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.state, AgentState::default());
        assert_eq!(loaded.recovery, None);

        let mut state = loaded.state;
        state.begin_update(pending("1.2.0")).unwrap();
        state.pending.as_mut().unwrap().resume_offset = 2048;
        state.consecutive_crashes = 2;
        store.save(&mut state).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.state, state);
        assert_eq!(loaded.state.generation, 1);
        assert!(store.backup_path().ends_with("state.json.bak"));
        assert_eq!(
            std::fs::read(store.path()).unwrap(),
            std::fs::read(store.backup_path()).unwrap()
        );
    }

    #[test]
    fn a_save_on_its_own_thread_lands_as_a_save_would() {
        let (dir, store) = store();
        let mut state = AgentState::default();
        state.begin_update(pending("1.2.0")).unwrap();
        state.pending.as_mut().unwrap().resume_offset = 4096;
        let bytes = StateStore::prepare(&mut state).unwrap();
        assert_eq!(state.generation, 1);
        SaveInFlight::start(store.clone(), bytes).wait().unwrap();
        assert_eq!(store.load().unwrap().state, state);
        // A write that fails (its directory is gone) reports the error, not a hang.
        let gone = StateStore::new(dir.path().join("missing/state.json"));
        let bytes = StateStore::prepare(&mut state).unwrap();
        let save = SaveInFlight::start(gone, bytes);
        let err = loop {
            if let Some(r) = save.try_wait() {
                break r.unwrap_err();
            }
            std::thread::yield_now();
        };
        assert!(matches!(err, StateError::Fs(_)), "{err:?}");
    }

    #[test]
    fn file_format() {
        let mut state = AgentState::default();
        state.begin_update(pending("1.2.0")).unwrap();
        state.pending.as_mut().unwrap().phase = Phase::InstalledAwaitingReboot;
        let json = serde_json::to_value(&state).unwrap();
        let p = &json["pending"];
        assert_eq!(p["version"], "1.2.0");
        assert_eq!(p["phase"], "installed_awaiting_reboot");
        assert_eq!(p["slot"], "B");
        assert_eq!(p["sha256"], "ab".repeat(32));
        assert_eq!(json["highest_committed"], serde_json::Value::Null);
        // Unknown fields (from a newer agent) are tolerated; missing ones default.
        let old: AgentState =
            serde_json::from_str(r#"{"format":1,"future_field":true,"highest_committed":"2.0.0"}"#)
                .unwrap();
        assert_eq!(old.highest_committed(), Some(&v("2.0.0")));
        // A pending download of the image carries no `compressed` field.
        assert!(p.get("compressed").is_none(), "{p}");
    }

    #[test]
    fn a_state_file_from_before_compressed_forms_loads() {
        let text = r#"{"format":1,"generation":3,"pending":{"target_name":"rootfs.img",
            "version":"1.2.0","sha256":"abababababababababababababababababababababababababababababababab",
            "length":4096,"slot":"B","phase":"downloading","resume_offset":2048}}"#;
        let state: AgentState = serde_json::from_str(text).unwrap();
        let p = state.pending.unwrap();
        assert_eq!(p.compressed, None);
        assert_eq!(
            p.resume_point(),
            ResumePoint {
                image: 2048,
                source: 2048
            }
        );
    }

    #[test]
    fn a_compressed_download_round_trips_and_resumes_from_its_boundary() {
        let (_dir, store) = store();
        let mut state = AgentState::default();
        let mut p = pending("1.2.0");
        assert!(p.select_source(Some(&form('a'))));
        p.set_resume_point(ResumePoint {
            image: 3000,
            source: 700,
        });
        state.begin_update(p).unwrap();
        store.save(&mut state).unwrap();
        let loaded = store.load().unwrap().state;
        assert_eq!(loaded, state);
        let p = loaded.pending.unwrap();
        assert_eq!(p.resume_offset, 3000);
        assert_eq!(
            p.resume_point(),
            ResumePoint {
                image: 3000,
                source: 700
            }
        );
        // A malformed compressed hash in the file is refused, like the signed one.
        let json = serde_json::to_string(&p)
            .unwrap()
            .replace(&"a".repeat(64), "../x");
        assert!(serde_json::from_str::<PendingUpdate>(&json).is_err());
    }

    #[test]
    fn the_source_never_mixes_offsets() {
        let at = ResumePoint {
            image: 3000,
            source: 700,
        };
        // Same form on offer: kept.
        let mut p = pending("1.2.0");
        p.select_source(Some(&form('a')));
        p.set_resume_point(at);
        assert!(!p.select_source(Some(&form('a'))));
        assert_eq!(p.resume_point(), at);
        // Form gone (config or release): the image, from the image offset.
        let mut gone = p.clone();
        assert!(gone.select_source(None));
        assert_eq!(gone.compressed, None);
        assert_eq!(
            gone.resume_point(),
            ResumePoint {
                image: 3000,
                source: 3000
            }
        );
        // Form changed: the old offset means nothing in the new file.
        let mut changed = p.clone();
        assert!(changed.select_source(Some(&form('b'))));
        assert_eq!(changed.compressed, None);
        assert_eq!(changed.resume_point().source, 3000);
        // A started download of the image stays one; an unstarted one takes the form.
        assert!(!gone.select_source(Some(&form('b'))));
        assert_eq!(gone.compressed, None);
        let mut fresh = pending("1.2.0");
        assert!(fresh.select_source(Some(&form('b'))));
        assert_eq!(fresh.compressed.as_ref().unwrap().form, form('b'));
        assert_eq!(fresh.resume_point(), ResumePoint::ZERO);
        // Records that cannot be right start over.
        let mut bad = p.clone();
        bad.compressed.as_mut().unwrap().resume_offset = 1001;
        assert_eq!(bad.resume_point(), ResumePoint::ZERO);
        bad.compressed.as_mut().unwrap().resume_offset = 0;
        assert_eq!(bad.resume_point(), ResumePoint::ZERO);
        bad.compressed.as_mut().unwrap().resume_offset = 1000;
        assert_eq!(bad.resume_point(), ResumePoint::ZERO);
        // ... unless the whole image is there too (downloaded, not yet installed).
        bad.resume_offset = bad.length;
        assert_eq!(
            bad.resume_point(),
            ResumePoint {
                image: 4096,
                source: 1000
            }
        );
    }

    #[test]
    fn floor_only_goes_up() {
        let mut state = AgentState::default();
        assert!(state.accepts(&v("0.0.1")));
        state.begin_update(pending("1.2.0")).unwrap();
        let image = state.commit_pending().unwrap();
        assert_eq!(image.version, v("1.2.0"));
        assert_eq!(state.slot(Slot::B), Some(&image));
        assert_eq!(state.highest_committed(), Some(&v("1.2.0")));
        assert!(state.pending.is_none());

        assert!(!state.raise_floor(&v("1.1.0")));
        assert!(!state.raise_floor(&v("1.2.0")));
        assert_eq!(state.highest_committed(), Some(&v("1.2.0")));
        assert!(!state.accepts(&v("1.2.0")));
        assert!(!state.accepts(&v("1.2.0-rc.1")));
        assert!(state.accepts(&v("1.2.1")));
        for old in ["1.2.0", "1.0.0", "1.2.0-rc.9"] {
            assert!(matches!(
                state.begin_update(pending(old)),
                Err(StateError::Downgrade { .. })
            ));
        }
        assert!(state.pending.is_none());
        assert!(matches!(
            state.commit_pending(),
            Err(StateError::NoPendingUpdate)
        ));
    }

    #[test]
    fn failed_images_are_remembered_and_bounded() {
        let mut state = AgentState::default();
        state.begin_update(pending("2.0.0")).unwrap();
        let failed = state.fail_pending().unwrap();
        assert!(state.pending.is_none());
        assert!(state.has_failed(&hex::encode(failed.sha256)));
        assert!(!state.has_failed(&hex::encode([0x01; 32])));
        for i in 0..(MAX_FAILED_IMAGES as u8 + 4) {
            let mut p = pending("3.0.0");
            p.sha256 = [i; 32];
            state.begin_update(p).unwrap();
            state.fail_pending().unwrap();
        }
        assert_eq!(state.failed_images.len(), MAX_FAILED_IMAGES);
        assert!(state.has_failed(&hex::encode([MAX_FAILED_IMAGES as u8 + 3; 32])));
    }

    #[test]
    fn abandon_clears_pending_and_slot_record() {
        let mut state = AgentState::default();
        state.begin_update(pending("1.0.0")).unwrap();
        state.commit_pending().unwrap();
        state.begin_update(pending("2.0.0")).unwrap();
        state.boot_attempts = 2;
        let abandoned = state.abandon_pending().unwrap();
        assert_eq!(abandoned.version, v("2.0.0"));
        assert_eq!(state.slot(Slot::B), None);
        assert_eq!(state.boot_attempts, 0);
        // Rolling back never lowers the floor.
        assert_eq!(state.highest_committed(), Some(&v("1.0.0")));
        assert_eq!(state.abandon_pending(), None);
    }

    #[test]
    fn corrupt_main_is_restored_from_backup() {
        let (_dir, store) = store();
        let mut state = AgentState::default();
        state.raise_floor(&v("3.0.0"));
        store.save(&mut state).unwrap();
        std::fs::write(store.path(), b"{\"format\":1,\"highest_com").unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.state, state);
        assert!(matches!(
            loaded.recovery,
            Some(Recovery::RestoredFromBackup { ref reason, .. }) if reason.contains("EOF")
        ));
        // A deleted main file is restored the same way.
        std::fs::remove_file(store.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.state.highest_committed(), Some(&v("3.0.0")));
        assert!(loaded.recovery.is_some());
    }

    #[test]
    fn corrupt_backup_is_reported() {
        let (_dir, store) = store();
        let mut state = AgentState::default();
        store.save(&mut state).unwrap();
        std::fs::write(store.backup_path(), b"garbage").unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.state, state);
        assert!(matches!(
            loaded.recovery,
            Some(Recovery::BackupUnreadable { .. })
        ));
        // The next save repairs it.
        let mut state = loaded.state;
        store.save(&mut state).unwrap();
        assert_eq!(store.load().unwrap().recovery, None);
    }

    #[test]
    fn newer_generation_wins_and_floor_is_the_max() {
        let (_dir, store) = store();
        let mut state = AgentState::default();
        state.raise_floor(&v("1.0.0"));
        store.save(&mut state).unwrap();
        // Crash between the two writes of the next save: main is newer than the backup.
        let mut newer = state.clone();
        newer.raise_floor(&v("2.0.0"));
        newer.generation += 1;
        fsutil::write_atomic(store.path(), &serde_json::to_vec(&newer).unwrap()).unwrap();
        assert_eq!(store.load().unwrap().state, newer);

        // A backup with a higher floor but older generation still lifts the floor.
        let mut odd = state.clone();
        odd.raise_floor(&v("9.0.0"));
        fsutil::write_atomic(store.backup_path(), &serde_json::to_vec(&odd).unwrap()).unwrap();
        let loaded = store.load().unwrap().state;
        assert_eq!(loaded.generation, newer.generation);
        assert_eq!(loaded.highest_committed(), Some(&v("9.0.0")));
    }

    #[test]
    fn both_copies_corrupt_is_a_clear_error_and_reinitialize_recovers() {
        let (dir, store) = store();
        let mut state = AgentState::default();
        state.raise_floor(&v("5.0.0"));
        store.save(&mut state).unwrap();
        std::fs::write(store.path(), b"{}").unwrap();
        std::fs::write(store.backup_path(), b"\0\0\0").unwrap();
        let err = store.load().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        assert!(
            text.contains("state.json") && text.contains("state.json.bak"),
            "{text}"
        );
        assert!(text.contains("missing field `format`"), "{text}");

        let fresh = store.reinitialize(Some(&v("5.0.0"))).unwrap();
        assert_eq!(fresh.highest_committed(), Some(&v("5.0.0")));
        assert_eq!(store.load().unwrap().state, fresh);
        assert_eq!(
            std::fs::read(dir.path().join("state.json.corrupt")).unwrap(),
            b"{}"
        );
        assert!(dir.path().join("state.json.bak.corrupt").exists());
    }

    #[test]
    fn invalid_sha256_is_corruption() {
        let (_dir, store) = store();
        let mut state = AgentState::default();
        state.begin_update(pending("1.0.0")).unwrap();
        let json = serde_json::to_string(&state)
            .unwrap()
            .replace(&"ab".repeat(32), "abc");
        std::fs::write(store.path(), json).unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("invalid sha256"), "{err}");
    }
}
