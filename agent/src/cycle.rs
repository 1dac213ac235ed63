//! The update cycle (DESIGN.md, "The agent's update cycle"):
//!
//! ```text
//! [after boot] health gate -> commit | roll back     (when a try of a new slot is running)
//! poll -> refresh metadata -> choose target -> download+verify into inactive slot
//!      -> mark slot "try once" in the bootloader -> reboot
//! ```
//!
//! Every step writes the state first and acts second, so a power cut at any point resumes
//! or rolls back on the next start and the device always boots a verified slot:
//! - the bootloader is asked to try a slot only after its bytes were verified
//!   ([`crate::slots::VerifiedImage`] is required to get there);
//! - a download resumes from the last durable checkpoint with an HTTP Range request;
//! - a slot being tried is committed only after the health gate passes on it, and the
//!   bootloader's try counter brings back the old slot if the new one never comes up.
//!
//! Failed checks are anomalies: queued on disk, logged in the operation log, delivered when
//! the server is reachable, and nothing is installed.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use ota_common::api::{
    AnomalyBatch, AnomalyReport, OplogAck, OplogBatch, PollRequest, PollResponse, StatusReport,
    UpdateState,
};
use ota_common::client::{ClientLimits, Refresh, TrustedRepository};
use ota_common::release::{choose, Choice, DeviceFacts, PolicyError, ReleaseVersion};
use ota_common::target::TargetName;
use serde_json::{json, Value};

use crate::anomaly_queue::AnomalyQueue;
use crate::boot::{AbBootloader, BootError, BootedSlotSource, Bootloader, Slot};
use crate::config::{AgentConfig, BootloaderConfig};
use crate::decode::{DecodeError, ZstdSink};
use crate::health;
use crate::metadata_store::MetadataStore;
use crate::oplog::{OpKind, OpLog};
use crate::pipeline::{PipedWriter, ResumePoint, Sink, SinkError};
use crate::progress::Progress;
use crate::slots::{ImageSpec, SlotError, SlotOptions, SlotSet, SlotWriter, VerifiedImage};
use crate::state::{AgentState, PendingUpdate, Phase, SaveInFlight, StateError, StateStore};
use crate::transport::{Transport, TransportError};

/// Consecutive crashed runs that make an `agent_crash_loop` anomaly.
const CRASH_LOOP: u32 = 3;

/// What one cycle did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing newer fits this device.
    UpToDate,
    /// The server refused this device (pending approval, rejected, decommissioned).
    Refused {
        /// Stable code.
        code: String,
        /// Message.
        message: String,
    },
    /// A verified image is in the inactive slot and the bootloader will try it: reboot.
    RebootRequested {
        /// The slot to be tried.
        slot: Slot,
        /// Target name.
        target: String,
    },
    /// The running new image passed the health gate and was committed.
    Committed {
        /// Version committed.
        version: String,
    },
    /// The new image failed (health gate or boot) and the old slot is back.
    RolledBack {
        /// Why.
        reason: String,
        /// Whether a reboot into the old slot is needed now.
        reboot: bool,
    },
    /// Something failed; nothing was installed. `retry_soon` when resuming makes sense
    /// (a cut download), as opposed to waiting for the next poll.
    Failed {
        /// Stable kind.
        kind: String,
        /// Message.
        message: String,
        /// Retry without waiting a full interval.
        retry_soon: bool,
    },
}

/// Why the agent cannot run at all (as opposed to a failed cycle).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Configuration or local material.
    #[error("setup: {0}")]
    Setup(String),
    /// The bootloader could not be read or written.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// State could not be read or written.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The operation log could not be written.
    #[error(transparent)]
    Oplog(#[from] crate::oplog::OpLogError),
    /// The anomaly or report queue could not be written.
    #[error(transparent)]
    Queue(#[from] crate::anomaly_queue::AnomalyQueueError),
    /// Local metadata could not be read or written.
    #[error(transparent)]
    Metadata(#[from] crate::metadata_store::MetadataStoreError),
    /// A slot could not be read or written.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The zstd decoder could not be set up.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The agent: configuration plus everything it owns on disk.
pub struct Agent {
    cfg: AgentConfig,
    transport: Transport,
    boot: Box<dyn Bootloader + Send>,
    slots: SlotSet,
    states: StateStore,
    state: AgentState,
    oplog: OpLog,
    anomalies: AnomalyQueue<AnomalyReport>,
    outbox: AnomalyQueue<StatusReport>,
    metadata: MetadataStore,
    progress: Progress,
    /// A download checkpoint's state save still being written (at most one).
    saving: Option<SaveInFlight>,
}

/// Paths of what the agent keeps under its data directory.
pub struct DataPaths {
    /// State file.
    pub state: PathBuf,
    /// Operation log.
    pub oplog: PathBuf,
    /// Anomaly queue.
    pub anomalies: PathBuf,
    /// Status report queue.
    pub outbox: PathBuf,
    /// TUF metadata.
    pub metadata: PathBuf,
    /// Highest oplog seq the server stored.
    pub oplog_uploaded: PathBuf,
    /// Present while a cycle runs: found at start, the last run crashed.
    pub running: PathBuf,
}

impl DataPaths {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        DataPaths {
            state: data_dir.join("state.json"),
            oplog: data_dir.join("oplog.jsonl"),
            anomalies: data_dir.join("anomalies"),
            outbox: data_dir.join("outbox"),
            metadata: data_dir.join("metadata"),
            oplog_uploaded: data_dir.join("oplog.uploaded"),
            running: data_dir.join("running"),
        }
    }
}

/// Builds the bootloader backend the configuration names.
pub fn bootloader(cfg: &BootloaderConfig) -> Result<Box<dyn Bootloader + Send>, AgentError> {
    Ok(match cfg {
        BootloaderConfig::File { path, tries } => {
            let env = crate::boot::file::FileEnv::new(path.clone());
            env.init(Slot::A)?;
            Box::new(
                AbBootloader::new(env)
                    .with_tries(*tries)?
                    .with_booted_slot_source(BootedSlotSource::Recorded),
            )
        }
        BootloaderConfig::Grub {
            path,
            tries,
            cmdline,
        } => {
            let env = crate::boot::grub::GrubEnv::new(path.clone());
            env.init(Slot::A)?;
            Box::new(
                AbBootloader::new(env)
                    .with_tries(*tries)?
                    .with_booted_slot_source(BootedSlotSource::KernelCmdline(cmdline.clone())),
            )
        }
        BootloaderConfig::Uboot {
            config,
            tries,
            cmdline,
        } => {
            let env = crate::boot::uboot::UBootEnv::new(config.clone());
            Box::new(
                AbBootloader::new(env)
                    .with_tries(*tries)?
                    .with_booted_slot_source(BootedSlotSource::KernelCmdline(cmdline.clone())),
            )
        }
    })
}

/// Test hook: with the `test-hooks` feature, `OTA_AGENT_CRASH_AT=<name>` aborts the
/// process at that step boundary, as a power cut would (no cleanup, no flush).
fn crash_point(name: &str) {
    #[cfg(feature = "test-hooks")]
    if std::env::var("OTA_AGENT_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("crash point {name}: aborting");
        std::process::abort();
    }
    let _ = name;
}

/// A download checkpoint's state save has finished with `result`.
fn checkpoint_recorded(result: Result<(), StateError>) -> Result<(), AgentError> {
    result?;
    crash_point("mid_download");
    Ok(())
}

/// The names of the crash points, in cycle order (for the crash-matrix tests).
pub const CRASH_POINTS: &[&str] = &[
    "after_poll",
    "after_refresh",
    "after_begin",
    "mid_download",
    "after_download",
    "after_try_once",
    "before_reboot",
    "after_boot_seen",
    "after_health",
    "after_commit",
];

impl Agent {
    /// Opens everything under the data directory (creating it on first use).
    pub fn open(cfg: AgentConfig, now: DateTime<Utc>) -> Result<Self, AgentError> {
        crate::fsutil::ensure_dir(&cfg.data_dir).map_err(|e| AgentError::Setup(e.to_string()))?;
        let paths = DataPaths::new(&cfg.data_dir);
        let transport = Transport::new(&cfg).map_err(|e| AgentError::Setup(e.to_string()))?;
        let boot = bootloader(&cfg.bootloader)?;
        let states = StateStore::new(paths.state.clone());
        let loaded = states.load()?;
        let mut oplog = OpLog::open(&paths.oplog, now)?;
        let mut anomalies = AnomalyQueue::open(paths.anomalies.clone())?;
        if let Some(rec) = &loaded.recovery {
            let report = anomaly_report(now, "state_recovered", &format!("{rec:?}"), json!({}));
            anomalies.push(&report)?;
            oplog.append(
                now,
                OpKind::Anomaly,
                json!({"kind": "state_recovered", "detail": format!("{rec:?}")}),
            )?;
        }
        Ok(Agent {
            slots: SlotSet::new(cfg.slots.a.clone(), cfg.slots.b.clone()),
            metadata: MetadataStore::new(paths.metadata.clone()),
            outbox: AnomalyQueue::open(paths.outbox.clone())?,
            progress: Progress::new(),
            saving: None,
            state: loaded.state,
            transport,
            boot,
            states,
            oplog,
            anomalies,
            cfg,
        })
    }

    /// The state (for `status`).
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// The bootloader (for `status`).
    pub fn boot(&self) -> &dyn Bootloader {
        self.boot.as_ref()
    }

    /// Anomalies not yet delivered.
    pub fn pending_anomalies(&self) -> Result<Vec<AnomalyReport>, AgentError> {
        Ok(self
            .anomalies
            .pending()?
            .into_iter()
            .map(|q| q.report)
            .collect())
    }

    fn save(&mut self) -> Result<(), AgentError> {
        self.settle_checkpoint()?;
        self.states.save(&mut self.state)?;
        Ok(())
    }

    fn log(&mut self, now: DateTime<Utc>, kind: OpKind, detail: Value) -> Result<(), AgentError> {
        self.oplog.append(now, kind, detail)?;
        Ok(())
    }

    /// Records an anomaly: operation log, on-disk queue (delivered later), log line.
    fn anomaly(
        &mut self,
        now: DateTime<Utc>,
        kind: &str,
        message: &str,
        detail: Value,
    ) -> Result<(), AgentError> {
        tracing::warn!(kind, message, "anomaly");
        self.oplog.append(
            now,
            OpKind::Anomaly,
            json!({"kind": kind, "message": message, "detail": detail.clone()}),
        )?;
        self.anomalies
            .push(&anomaly_report(now, kind, message, detail))?;
        Ok(())
    }

    fn report_status(
        &mut self,
        now: DateTime<Utc>,
        p: &PendingUpdate,
        state: UpdateState,
        detail: Option<String>,
    ) -> Result<(), AgentError> {
        let report = StatusReport {
            id: format!(
                "{}-{}-{}",
                p.target_name,
                state_name(state),
                now.timestamp_nanos_opt().unwrap_or_default()
            ),
            target: p.target_name.clone(),
            version: p.version.to_string(),
            state,
            progress_bytes: None,
            total_bytes: Some(p.length),
            detail,
            deployment: p.deployment.clone(),
            at: now,
        };
        self.outbox.push(&report)?;
        Ok(())
    }

    /// One full cycle. `now` is read by the caller once per cycle.
    pub async fn run_once(&mut self, now: DateTime<Utc>) -> Result<Outcome, AgentError> {
        let paths = DataPaths::new(&self.cfg.data_dir);
        if paths.running.exists() {
            self.state.consecutive_crashes += 1;
            self.save()?;
            if self.state.consecutive_crashes >= CRASH_LOOP {
                let n = self.state.consecutive_crashes;
                self.anomaly(
                    now,
                    "agent_crash_loop",
                    &format!("the agent stopped abnormally {n} times in a row"),
                    json!({"count": n}),
                )?;
            }
        }
        crate::fsutil::write_atomic(&paths.running, b"")
            .map_err(|e| AgentError::Setup(e.to_string()))?;

        let outcome = self.cycle(now).await;

        // Deliver what is queued whatever happened (best effort: it stays queued otherwise).
        self.deliver(now).await;
        if outcome.is_ok() {
            let _ = std::fs::remove_file(&paths.running);
            if self.state.consecutive_crashes != 0 {
                self.state.consecutive_crashes = 0;
                self.save()?;
            }
        }
        outcome
    }

    async fn cycle(&mut self, now: DateTime<Utc>) -> Result<Outcome, AgentError> {
        // 1. After a boot: a try in progress is committed or rolled back first.
        if let Some(outcome) = self.after_boot(now).await? {
            return Ok(outcome);
        }
        // A verified image waiting for its reboot: the reboot did not happen (crash, power
        // cut, failed command). Ask again rather than downloading anything.
        if let Some(p) = self.state.pending.clone() {
            if p.phase == Phase::InstalledAwaitingReboot {
                let boot = self.boot.state()?;
                if boot.trying == Some(p.slot) && boot.tries_left > 0 {
                    return Ok(Outcome::RebootRequested {
                        slot: p.slot,
                        target: p.target_name,
                    });
                }
                // The bootloader no longer tries it (reset by hand?): start over.
                self.state.abandon_pending();
                self.save()?;
            }
        }
        // Still running a slot that was abandoned (health gate failed, reboot not done
        // yet): the "inactive" slot is the confirmed one the next boot falls back to, and
        // must never be overwritten. Ask for the reboot again instead.
        let boot = self.boot.state()?;
        if boot.booted_slot != boot.default_slot {
            return Ok(Outcome::RolledBack {
                reason: format!(
                    "running abandoned slot {}; waiting for the reboot into {}",
                    boot.booted_slot, boot.default_slot
                ),
                reboot: true,
            });
        }

        // 2. Poll.
        let poll = match self.poll(now).await {
            Ok(p) => p,
            Err(outcome) => return Ok(outcome),
        };
        crash_point("after_poll");
        if poll.hold && poll.update.is_none() {
            // Updates come through deployments and this device's turn has not come.
            self.log(now, OpKind::Poll, json!({"result": "held_by_server"}))?;
            return Ok(Outcome::UpToDate);
        }

        // 3. Refresh metadata (TUF workflow).
        let repo = match self.refresh(now).await? {
            Ok(r) => r,
            Err(outcome) => return Ok(outcome),
        };
        crash_point("after_refresh");

        // 4. Choose.
        let floor: Option<ReleaseVersion> = self
            .state
            .highest_committed()
            .and_then(|v| v.to_string().parse().ok());
        let directive = poll.update.as_ref().map(|d| d.target.as_str());
        let facts = DeviceFacts {
            hardware_id: &self.cfg.hardware_id,
            floor: floor.as_ref(),
        };
        // An image that already failed here (health gate, boot) is not tried again.
        if let Some(d) = directive {
            let failed_before = repo
                .find_target(d)
                .and_then(|(f, _)| f.sha256())
                .is_some_and(|sha| self.state.has_failed(sha));
            if failed_before {
                self.log(
                    now,
                    OpKind::Poll,
                    json!({"result": "directive_failed_before", "target": d}),
                )?;
                return Ok(Outcome::UpToDate);
            }
        }
        let candidates: Vec<_> = repo
            .all_targets()
            .into_iter()
            .filter(|(_, f)| !f.sha256().is_some_and(|sha| self.state.has_failed(sha)))
            .collect();
        let choice = choose(candidates, &facts, directive);
        let (name, info) = match choice {
            Ok(Choice::UpToDate) => {
                self.log(now, OpKind::Poll, json!({"result": "up_to_date"}))?;
                return Ok(Outcome::UpToDate);
            }
            Ok(Choice::Install { name, info }) => (name, info),
            Err(e) => {
                let kind = match &e {
                    PolicyError::Downgrade { .. } => "downgrade_offered",
                    PolicyError::WrongHardware { .. } => "wrong_hardware",
                    _ => "bad_directive",
                };
                self.anomaly(now, kind, &e.to_string(), json!({"directive": directive}))?;
                return Ok(Outcome::Failed {
                    kind: kind.into(),
                    message: e.to_string(),
                    retry_soon: false,
                });
            }
        };
        let Some((file, _role)) = repo.find_target(&name) else {
            return Ok(Outcome::Failed {
                kind: "client_bug".into(),
                message: format!("chosen target {name} vanished"),
                retry_soon: false,
            });
        };
        let file = file.clone();

        // 5. Download and verify into the inactive slot.
        let target_name = match TargetName::new(&name) {
            Ok(t) => t,
            Err(e) => {
                self.anomaly(
                    now,
                    "unsafe_target_name",
                    &e.to_string(),
                    json!({"target": name}),
                )?;
                return Ok(Outcome::Failed {
                    kind: "unsafe_target_name".into(),
                    message: e.to_string(),
                    retry_soon: false,
                });
            }
        };
        let Some(sha_hex) = file.sha256() else {
            self.anomaly(
                now,
                "no_sha256",
                "target lists no sha256",
                json!({"target": name}),
            )?;
            return Ok(Outcome::Failed {
                kind: "no_sha256".into(),
                message: format!("{name} lists no sha256"),
                retry_soon: false,
            });
        };
        let sha: [u8; 32] = match hex::decode(sha_hex).ok().and_then(|v| v.try_into().ok()) {
            Some(s) => s,
            None => {
                self.anomaly(
                    now,
                    "malformed_metadata",
                    "target sha256 is not 32 bytes of hex",
                    json!({"target": name}),
                )?;
                return Ok(Outcome::Failed {
                    kind: "malformed_metadata".into(),
                    message: "bad sha256".into(),
                    retry_soon: false,
                });
            }
        };
        let version: semver::Version = info.version.semver().clone();
        let booted = self.boot.active_slot()?;
        let (slot, _) = self.slots.inactive(booted);
        // The compressed form, when the release has one and the configuration takes it.
        let offered = info.zstd.clone().filter(|_| self.cfg.download.compressed);
        let resume = match &mut self.state.pending {
            Some(p) if p.target_name == name && p.sha256 == sha && p.slot == slot => {
                if p.select_source(offered.as_ref()) {
                    let p = p.clone();
                    self.save()?;
                    p
                } else {
                    p.clone()
                }
            }
            _ => {
                let mut p = PendingUpdate {
                    target_name: name.clone(),
                    version: version.clone(),
                    sha256: sha,
                    length: file.length,
                    slot,
                    phase: Phase::Downloading,
                    deployment: poll
                        .update
                        .as_ref()
                        .filter(|d| d.target == name)
                        .and_then(|d| d.deployment.clone()),
                    resume_offset: 0,
                    compressed: None,
                };
                p.select_source(offered.as_ref());
                self.state.abandon_pending();
                self.state.begin_update(p.clone())?;
                self.save()?;
                p
            }
        };
        crash_point("after_begin");
        let verified = match self.download(now, &target_name, sha_hex, &resume).await? {
            Ok(v) => v,
            Err(outcome) => return Ok(outcome),
        };
        crash_point("after_download");
        // 6. Switch: only with a verified image.
        self.install(now, &verified).await
    }

    async fn poll(&mut self, now: DateTime<Utc>) -> Result<PollResponse, Outcome> {
        let req = PollRequest {
            hardware_id: self.cfg.hardware_id.clone(),
            current_version: self.current_version(),
            active_slot: self
                .boot
                .active_slot()
                .ok()
                .map(|s| s.as_str().to_lowercase()),
            agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            attributes: self.cfg.attributes.clone(),
        };
        match self
            .transport
            .post_json::<_, PollResponse>("api/v1/device/poll", &req)
            .await
        {
            Ok(r) => {
                let _ = self.log(now, OpKind::Poll, json!({"update": r.update}));
                Ok(r)
            }
            Err(e) => Err(self.transport_failure(now, "poll", e)),
        }
    }

    fn transport_failure(&mut self, now: DateTime<Utc>, what: &str, e: TransportError) -> Outcome {
        let (kind, retry) = match &e {
            TransportError::CertificateMismatch(_) => {
                let _ = self.anomaly(
                    now,
                    "certificate_mismatch",
                    &e.to_string(),
                    json!({"during": what}),
                );
                ("certificate_mismatch", false)
            }
            TransportError::Refused { code, message, .. } => {
                let _ = self.log(now, OpKind::Poll, json!({"refused": code}));
                return Outcome::Refused {
                    code: code.clone(),
                    message: message.clone(),
                };
            }
            TransportError::Network(_) => ("network", true),
            _ => ("protocol", false),
        };
        tracing::warn!(what, error = %e, "server request failed");
        Outcome::Failed {
            kind: kind.into(),
            message: format!("{what}: {e}"),
            retry_soon: retry,
        }
    }

    fn current_version(&self) -> Option<String> {
        let booted = self.boot.active_slot().ok()?;
        self.state.slot(booted).map(|i| i.version.to_string())
    }

    async fn refresh(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<Result<TrustedRepository, Outcome>, AgentError> {
        let local = self.metadata.load(&self.cfg.trusted_root)?;
        let mut refresh = match Refresh::new(local, now, ClientLimits::default()) {
            Ok(r) => r,
            Err(e) => {
                self.anomaly(now, e.kind(), &e.to_string(), json!({}))?;
                return Ok(Err(Outcome::Failed {
                    kind: e.kind().into(),
                    message: e.to_string(),
                    retry_soon: false,
                }));
            }
        };
        while let Some(req) = refresh.next_request().cloned() {
            let resp = match self.transport.fetch_metadata(&req).await {
                Ok(r) => r,
                Err(e) => return Ok(Err(self.transport_failure(now, "metadata", e))),
            };
            if let Err(e) = refresh.handle(resp) {
                // Every refusal of the workflow is an attack class or a broken repository.
                self.anomaly(now, e.kind(), &e.to_string(), json!({"file": req.file}))?;
                return Ok(Err(Outcome::Failed {
                    kind: e.kind().into(),
                    message: e.to_string(),
                    retry_soon: false,
                }));
            }
        }
        let repo = match refresh.finish() {
            Ok(r) => r,
            Err(e) => {
                return Ok(Err(Outcome::Failed {
                    kind: e.kind().into(),
                    message: e.to_string(),
                    retry_soon: false,
                }))
            }
        };
        self.metadata.save(&repo.to_local())?;
        self.log(
            now,
            OpKind::Metadata,
            json!({
                "root": repo.root().version,
                "timestamp": repo.timestamp().version,
                "snapshot": repo.snapshot().version,
                "targets": repo.targets().version,
            }),
        )?;
        Ok(Ok(repo))
    }

    async fn download(
        &mut self,
        now: DateTime<Utc>,
        name: &TargetName,
        sha_hex: &str,
        pending: &PendingUpdate,
    ) -> Result<Result<VerifiedImage, Outcome>, AgentError> {
        let spec = ImageSpec {
            length: pending.length,
            sha256: pending.sha256,
        };
        let slot_path = self.slots.path(pending.slot).to_path_buf();
        let options = SlotOptions::direct_io(self.cfg.download.direct_io);
        let mut at = pending.resume_point();
        let writer = match SlotWriter::open_with(&slot_path, spec, at.image, options) {
            Ok(w) => w,
            Err(SlotError::ResumePastEnd { .. }) => {
                at = ResumePoint::ZERO;
                SlotWriter::open_with(&slot_path, spec, 0, options)?
            }
            Err(e) => return Err(e.into()),
        };
        let compressed = pending.compressed.as_ref();
        let kind = if at.image > 0 || at.source > 0 {
            OpKind::DownloadResume
        } else {
            OpKind::DownloadStart
        };
        self.log(
            now,
            kind,
            json!({
                "target": name.as_str(),
                "slot": pending.slot,
                "offset": at.image,
                "length": pending.length,
                "compressed": compressed.is_some(),
                "source_offset": at.source,
                "source_length": compressed.map(|c| c.form.length),
            }),
        )?;
        if at.image >= pending.length {
            // Everything is in the slot already (a crash before the verified state was
            // saved): only the check remains.
            return self.finish_download(
                now,
                name,
                sha_hex,
                pending,
                writer.finish().map_err(SinkError::from),
            );
        }
        // The image itself, or its compressed form decoded on the worker thread.
        let (path, total, sink) = match compressed {
            Some(c) => {
                let path = c.form.consistent_path(name);
                let sink = ZstdSink::new(writer, path.clone(), c.form.length, at.source)?;
                (path, c.form.length, Sink::Zstd(sink))
            }
            None => (
                name.consistent_path(sha_hex),
                pending.length,
                Sink::Plain(writer),
            ),
        };
        let mut resp = match self.transport.download(&path, at.source).await {
            Ok(r) => r,
            Err(TransportError::RangeIgnored) => {
                // Start over rather than stay stuck: the hash check covers the restart.
                self.set_resume_point(ResumePoint::ZERO)?;
                return Ok(Err(Outcome::Failed {
                    kind: "range_ignored".into(),
                    message: TransportError::RangeIgnored.to_string(),
                    retry_soon: true,
                }));
            }
            Err(e) => return Ok(Err(self.transport_failure(now, "download", e))),
        };
        // Progress counts the bytes fetched (compressed ones for a compressed form).
        self.progress.start(name.as_str(), total, at.source);
        let mut since_checkpoint = 0u64;
        let mut last_checkpoint = std::time::Instant::now();
        // Hash and write on a second thread while the next chunk arrives; checkpoints
        // sync there too, while the download goes on, and are recorded once durable.
        let mut pipe = PipedWriter::start(sink);
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    // Keep what arrived: the next attempt resumes from here.
                    let at = match pipe.checkpoint() {
                        Ok(at) => at,
                        Err(err) => {
                            self.progress.finish();
                            return self.refuse_download(now, pending, err);
                        }
                    };
                    self.set_resume_point(at)?;
                    self.progress.finish();
                    let offset = at.image;
                    tracing::warn!(offset, source_offset = at.source, error = %e, "download interrupted; will resume");
                    return Ok(Err(Outcome::Failed {
                        kind: "network".into(),
                        message: format!("download interrupted at {offset}: {e}"),
                        retry_soon: true,
                    }));
                }
            };
            let len = chunk.len() as u64;
            if let Err(e) = pipe.write(chunk) {
                self.progress.finish();
                return self.refuse_download(now, pending, e);
            }
            since_checkpoint += len;
            self.progress.update(pipe.position());
            let mut durable = pipe.poll_checkpoint();
            if self
                .cfg
                .download
                .checkpoint_due(since_checkpoint, last_checkpoint.elapsed())
            {
                since_checkpoint = 0;
                last_checkpoint = std::time::Instant::now();
                match pipe.begin_checkpoint() {
                    Ok(previous) => durable = durable.or(previous.map(Ok)),
                    Err(e) => {
                        self.progress.finish();
                        return self.refuse_download(now, pending, e);
                    }
                }
            }
            self.poll_checkpoint_record()?;
            if let Some(result) = durable {
                let at = match result {
                    Ok(at) => at,
                    Err(e) => {
                        self.progress.finish();
                        return self.refuse_download(now, pending, e);
                    }
                };
                self.begin_record_checkpoint(at)?;
            }
        }
        if let Some(result) = pipe.wait_checkpoint() {
            match result {
                Ok(at) => self.record_checkpoint(at)?,
                Err(e) => {
                    self.progress.finish();
                    return self.refuse_download(now, pending, e);
                }
            }
        }
        self.progress.finish();
        let finished = match pipe.into_inner() {
            Ok(sink) => sink.finish(),
            Err(e) => return self.refuse_download(now, pending, e),
        };
        self.finish_download(now, name, sha_hex, pending, finished)
    }

    /// The end of a download: a verified image, a cut one kept for later, or a refusal.
    fn finish_download(
        &mut self,
        now: DateTime<Utc>,
        name: &TargetName,
        sha_hex: &str,
        pending: &PendingUpdate,
        finished: Result<VerifiedImage, SinkError>,
    ) -> Result<Result<VerifiedImage, Outcome>, AgentError> {
        let short = |e: &dyn std::fmt::Display| {
            // The server sent less than signed: keep what we have and retry later.
            let offset = pending.resume_offset;
            tracing::warn!(offset, error = %e, "download ended early; will resume");
            Ok(Err(Outcome::Failed {
                kind: "truncated_download".into(),
                message: e.to_string(),
                retry_soon: true,
            }))
        };
        match finished {
            Ok(v) => {
                self.log(now, OpKind::Verify, json!({"target": name.as_str(), "sha256": sha_hex, "length": v.length(), "ok": true}))?;
                if let Some(p) = self.state.pending.as_mut() {
                    p.phase = Phase::Downloaded;
                    p.resume_offset = v.length();
                    if let Some(c) = p.compressed.as_mut() {
                        c.resume_offset = c.form.length;
                    }
                }
                self.save()?;
                Ok(Ok(v))
            }
            Err(SinkError::Slot(e @ SlotError::Short { .. })) => short(&e),
            Err(SinkError::Decode(e @ DecodeError::Short { .. })) => short(&e),
            Err(e) => self.refuse_download(now, pending, e),
        }
    }

    /// The download stopped: bytes past a signed length are an oversized download, a
    /// compressed form that does not decode is corrupt, an image with another SHA-256 a
    /// hash mismatch (all refused, anomaly); anything else is a local failure.
    fn refuse_download(
        &mut self,
        now: DateTime<Utc>,
        pending: &PendingUpdate,
        e: SinkError,
    ) -> Result<Result<VerifiedImage, Outcome>, AgentError> {
        let kind = match &e {
            SinkError::Slot(SlotError::TooLong { .. })
            | SinkError::Decode(DecodeError::TooLong { .. }) => "oversized_download",
            SinkError::Decode(DecodeError::Corrupt { .. }) => "corrupt_compressed_image",
            SinkError::Slot(SlotError::HashMismatch { .. }) => "hash_mismatch",
            _ => {
                return Err(match e {
                    SinkError::Slot(e) => e.into(),
                    SinkError::Decode(e) => e.into(),
                })
            }
        };
        self.refuse_image(now, pending, kind, e).map(Err)
    }

    /// Records a durable checkpoint of the download (the slot is synced up to `at.image`).
    fn record_checkpoint(&mut self, at: ResumePoint) -> Result<(), AgentError> {
        self.begin_record_checkpoint(at)?;
        self.settle_checkpoint()
    }

    /// [`Agent::record_checkpoint`] without stopping the download: the state (two files,
    /// each synced and renamed) is written on a thread of its own, while chunks keep
    /// arriving. It counts as recorded once written (the crash point is there); any other
    /// save waits for it first, so saves land in order.
    fn begin_record_checkpoint(&mut self, at: ResumePoint) -> Result<(), AgentError> {
        self.settle_checkpoint()?;
        if let Some(p) = self.state.pending.as_mut() {
            p.set_resume_point(at);
        }
        let bytes = StateStore::prepare(&mut self.state)?;
        self.saving = Some(SaveInFlight::start(self.states.clone(), bytes));
        Ok(())
    }

    /// Notes a checkpoint record that has been written, without waiting for one.
    fn poll_checkpoint_record(&mut self) -> Result<(), AgentError> {
        match self.saving.as_ref().and_then(SaveInFlight::try_wait) {
            Some(result) => {
                self.saving = None;
                checkpoint_recorded(result)
            }
            None => Ok(()),
        }
    }

    /// Waits for the checkpoint record being written, if any.
    fn settle_checkpoint(&mut self) -> Result<(), AgentError> {
        match self.saving.take() {
            Some(save) => checkpoint_recorded(save.wait()),
            None => Ok(()),
        }
    }

    fn set_resume_point(&mut self, at: ResumePoint) -> Result<(), AgentError> {
        if let Some(p) = self.state.pending.as_mut() {
            p.set_resume_point(at);
        }
        self.save()
    }

    /// The image bytes are not the signed ones: forget the download, raise an anomaly.
    fn refuse_image(
        &mut self,
        now: DateTime<Utc>,
        pending: &PendingUpdate,
        kind: &str,
        e: impl std::fmt::Display,
    ) -> Result<Outcome, AgentError> {
        self.state.abandon_pending();
        self.save()?;
        self.log(
            now,
            OpKind::Verify,
            json!({"target": pending.target_name, "ok": false, "error": e.to_string()}),
        )?;
        self.anomaly(
            now,
            kind,
            &e.to_string(),
            json!({"target": pending.target_name, "compressed": pending.compressed.is_some()}),
        )?;
        self.report_status(now, pending, UpdateState::Failed, Some(e.to_string()))?;
        Ok(Outcome::Failed {
            kind: kind.into(),
            message: e.to_string(),
            retry_soon: false,
        })
    }

    /// Tells the bootloader to try the verified slot once, then asks for a reboot.
    async fn install(
        &mut self,
        now: DateTime<Utc>,
        verified: &VerifiedImage,
    ) -> Result<Outcome, AgentError> {
        let Some(p) = self.state.pending.clone() else {
            return Ok(Outcome::Failed {
                kind: "client_bug".into(),
                message: "no pending update to install".into(),
                retry_soon: false,
            });
        };
        if verified.path() != self.slots.path(p.slot) || verified.sha256() != p.sha256 {
            return Ok(Outcome::Failed {
                kind: "client_bug".into(),
                message: "verified image does not match the pending update".into(),
                retry_soon: false,
            });
        }
        self.boot.set_try_once(p.slot)?;
        crash_point("after_try_once");
        if let Some(q) = self.state.pending.as_mut() {
            q.phase = Phase::InstalledAwaitingReboot;
        }
        self.state.boot_attempts = 0;
        self.save()?;
        self.log(
            now,
            OpKind::Install,
            json!({"target": p.target_name, "version": p.version.to_string(), "slot": p.slot}),
        )?;
        self.report_status(now, &p, UpdateState::Installed, None)?;
        self.log(now, OpKind::Reboot, json!({"into": p.slot}))?;
        crash_point("before_reboot");
        Ok(Outcome::RebootRequested {
            slot: p.slot,
            target: p.target_name,
        })
    }

    /// After a boot: commit or roll back a try, and notice a try that never came up.
    async fn after_boot(&mut self, now: DateTime<Utc>) -> Result<Option<Outcome>, AgentError> {
        let boot = self.boot.state()?;
        let pending = self.state.pending.clone();
        // The bootloader ran out of tries for a slot and fell back: the image did not boot.
        if boot.try_exhausted() {
            let slot = boot.trying;
            self.boot
                .mark_bad_and_fallback(boot.trying.unwrap_or(boot.booted_slot.other()))?;
            let reason = format!(
                "slot {} did not come up within its boot tries; running {} again",
                slot.map(|s| s.as_str()).unwrap_or("?"),
                boot.booted_slot
            );
            if let Some(p) = &pending {
                self.report_status(now, p, UpdateState::RolledBack, Some(reason.clone()))?;
            }
            self.state.fail_pending();
            self.save()?;
            self.log(
                now,
                OpKind::Rollback,
                json!({"reason": "boot_failure", "slot": slot}),
            )?;
            self.anomaly(
                now,
                "boot_failure",
                &reason,
                json!({"target": pending.as_ref().map(|p| p.target_name.clone())}),
            )?;
            return Ok(Some(Outcome::RolledBack {
                reason,
                reboot: false,
            }));
        }
        if !boot.booted_on_trial() {
            return Ok(None);
        }
        let slot = boot.booted_slot;
        let Some(p) = pending.filter(|p| p.slot == slot) else {
            // Trying a slot we know nothing about (state lost): never commit the unknown.
            self.boot.mark_bad_and_fallback(slot)?;
            let reason = format!("running slot {slot} on trial with no record of what it holds");
            self.anomaly(now, "unknown_trial_slot", &reason, json!({}))?;
            return Ok(Some(Outcome::RolledBack {
                reason,
                reboot: true,
            }));
        };
        if p.phase != Phase::BootedAwaitingHealth {
            if let Some(q) = self.state.pending.as_mut() {
                q.phase = Phase::BootedAwaitingHealth;
            }
            self.state.boot_attempts += 1;
            self.save()?;
            self.log(
                now,
                OpKind::Boot,
                json!({"slot": slot, "target": p.target_name}),
            )?;
            self.report_status(now, &p, UpdateState::Booted, None)?;
        }
        crash_point("after_boot_seen");
        // The health gate.
        let mut result = health::run_checks(&self.cfg.health).await;
        if result.is_ok() && self.cfg.health.require_server {
            if let Err(outcome) = self.poll(now).await {
                if !matches!(outcome, Outcome::Refused { .. }) {
                    result = Err(health::HealthFailure {
                        check: "server reachable".into(),
                        detail: format!("{outcome:?}"),
                    });
                }
            }
        }
        crash_point("after_health");
        match result {
            Ok(()) => {
                self.boot.mark_good(slot)?;
                let installed = self.state.commit_pending()?;
                self.save()?;
                self.log(now, OpKind::Health, json!({"ok": true}))?;
                self.log(now, OpKind::Commit, json!({"target": installed.target_name, "version": installed.version.to_string(), "slot": slot}))?;
                self.report_status(now, &p, UpdateState::Committed, None)?;
                crash_point("after_commit");
                tracing::info!(version = %installed.version, %slot, "update committed");
                Ok(Some(Outcome::Committed {
                    version: installed.version.to_string(),
                }))
            }
            Err(failure) => {
                self.boot.mark_bad_and_fallback(slot)?;
                self.state.fail_pending();
                self.save()?;
                self.log(
                    now,
                    OpKind::Health,
                    json!({"ok": false, "check": failure.check, "detail": failure.detail}),
                )?;
                self.log(
                    now,
                    OpKind::Rollback,
                    json!({"reason": "health_failure", "slot": slot}),
                )?;
                self.anomaly(
                    now,
                    "health_failure",
                    &failure.to_string(),
                    json!({"target": p.target_name}),
                )?;
                self.report_status(now, &p, UpdateState::RolledBack, Some(failure.to_string()))?;
                Ok(Some(Outcome::RolledBack {
                    reason: failure.to_string(),
                    reboot: true,
                }))
            }
        }
    }

    /// Sends queued anomalies, status reports and new operation-log records.
    async fn deliver(&mut self, _now: DateTime<Utc>) {
        if let Ok(pending) = self.anomalies.pending() {
            if !pending.is_empty() {
                let batch = AnomalyBatch {
                    anomalies: pending.iter().map(|q| q.report.clone()).collect(),
                };
                if self
                    .transport
                    .post_json::<_, Value>("api/v1/device/anomalies", &batch)
                    .await
                    .is_ok()
                {
                    for q in pending {
                        let _ = self.anomalies.ack(q.seq);
                    }
                }
            }
        }
        if let Ok(pending) = self.outbox.pending() {
            for q in pending {
                if self
                    .transport
                    .post_json::<_, Value>("api/v1/device/status", &q.report)
                    .await
                    .is_err()
                {
                    break;
                }
                let _ = self.outbox.ack(q.seq);
            }
        }
        let paths = DataPaths::new(&self.cfg.data_dir);
        let uploaded: u64 = std::fs::read_to_string(&paths.oplog_uploaded)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if let Ok(records) = self.oplog.records_after(uploaded, 500) {
            if !records.is_empty() {
                if let Ok(ack) = self
                    .transport
                    .post_json::<_, OplogAck>("api/v1/device/oplog", &OplogBatch { records })
                    .await
                {
                    let _ = crate::fsutil::write_atomic(
                        &paths.oplog_uploaded,
                        ack.stored_through.to_string().as_bytes(),
                    );
                }
            }
        }
    }

    /// Runs the configured reboot command.
    pub fn reboot(&self) -> std::io::Result<bool> {
        let Some((prog, args)) = self.cfg.reboot_command.split_first() else {
            return Ok(false);
        };
        let status = std::process::Command::new(prog).args(args).status()?;
        Ok(status.success())
    }

    /// Erases the device's identity, state, logs, queues and cached metadata (DESIGN.md,
    /// "Data protection and deletion"). The slots keep their images: the device still boots.
    pub fn wipe(cfg: &AgentConfig) -> std::io::Result<Vec<PathBuf>> {
        let paths = DataPaths::new(&cfg.data_dir);
        let mut removed = Vec::new();
        for p in [
            &cfg.key_file,
            &cfg.cert_file,
            &paths.state,
            &paths.oplog,
            &paths.oplog_uploaded,
            &paths.running,
        ] {
            if p.exists() {
                overwrite_and_remove(p)?;
                removed.push(p.clone());
            }
        }
        let backup = paths.state.with_extension("json.bak");
        if backup.exists() {
            overwrite_and_remove(&backup)?;
            removed.push(backup);
        }
        for d in [&paths.anomalies, &paths.outbox, &paths.metadata] {
            if d.exists() {
                std::fs::remove_dir_all(d)?;
                removed.push(d.clone());
            }
        }
        Ok(removed)
    }
}

/// Overwrites a file with zeros before unlinking it, so a casual look at the disk does not
/// find the key (flash translation layers may keep old blocks: full-disk encryption is the
/// real answer, noted in SECURITY.md).
fn overwrite_and_remove(p: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let len = std::fs::metadata(p)?.len();
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(p) {
        let zeros = vec![0u8; 4096];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
    }
    std::fs::remove_file(p)
}

fn state_name(s: UpdateState) -> &'static str {
    match s {
        UpdateState::Downloading => "downloading",
        UpdateState::Installed => "installed",
        UpdateState::Booted => "booted",
        UpdateState::Committed => "committed",
        UpdateState::RolledBack => "rolled_back",
        UpdateState::Failed => "failed",
    }
}

fn anomaly_report(now: DateTime<Utc>, kind: &str, message: &str, detail: Value) -> AnomalyReport {
    AnomalyReport {
        id: format!("{kind}-{}", now.timestamp_nanos_opt().unwrap_or_default()),
        kind: kind.into(),
        message: message.into(),
        detail,
        at: now,
    }
}
