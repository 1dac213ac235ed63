//! Fleet operations: device groups, deployments with phased rollout and automatic pause,
//! the fleet summary, and the server-side detectors (silent devices, failure spikes).
//!
//! # Layout
//! - [`groups`]: static (listed ids) and dynamic (hardware id / attribute filter) groups.
//! - [`model`]: the stored deployment, a device's progress in it and the pure counting
//!   rules; the phase logic itself is [`crate::rollout`].
//! - [`index`]: counters kept as device records change (summary, group members, devices
//!   each phase reaches): reading them never scans the fleet.
//! - [`live`]: the running deployments as the poll path reads them.
//! - `engine`: operator changes (groups; create, pause, resume, abort deployments).
//! - `progress`: status reports, the automatic pause, and the phase tick.
//! - `detect`: the silent-device detector and the background task.
//!
//! # Where state lives
//! Groups and deployments are few: all of them are kept in memory (the "book") and in
//! the store, written under one lock, each operator change in one atomic batch with its
//! audit entry. A device's progress in a deployment is stored per device
//! (`deployment_devices/{deployment}/{device}`); the deployment's per-phase counters are
//! updated from it as reports arrive and stored with the deployment, never recomputed by
//! scanning. The poll path ([`Fleet::directive_for`]) reads an immutable snapshot of the
//! running deployments and two small per-deployment sets (running, failed): no store,
//! no lock held beyond a lookup.
//!
//! # Read API (for the HTTP routes and the dashboard)
//! Every read is in memory and cheap enough for a page view; none blocks on disk:
//! - [`Fleet::summary`] → [`FleetSummary`] (O(versions));
//! - [`Fleet::groups`] → `Vec<GroupView>` (no static member lists);
//!   [`Fleet::group`] → `Option<GroupView>` (with the static member list);
//! - [`Fleet::deployments`] → `Vec<DeploymentView>` (newest first);
//!   [`Fleet::deployment`] → `Option<DeploymentView>`.
//!
//! # Rules
//! - A device is sent a deployment's release when it is accepted, a member of the group,
//!   reached by the current phase ([`crate::rollout::reached`]), on hardware the release
//!   fits, running an older (or unparseable) version, has not failed or rolled back in
//!   this deployment, and the deployment is active (paused: only devices whose update is
//!   running continue). Among several running deployments the highest version wins.
//! - A device's first report with a deployment id counts only if the deployment could
//!   have sent it the release (member, reached, same target): a device cannot skew
//!   another rollout's counters.
//! - After each counted report the failure rule of [`crate::rollout::next_step`] runs:
//!   a pause is audited (actor `server`) and raises the anomaly `rollout_paused` on the
//!   reporting device. An operator's resume sets a baseline: only failures after it
//!   count toward the next pause.
//! - The tick ([`FleetConfig::tick_millis`]) advances a phase once its minimum wait is
//!   over and its running installs have mostly finished
//!   ([`crate::rollout::next_step`]). The last phase completes the deployment only when,
//!   in addition, no accepted member of the group that the release fits still waits
//!   for it (failed devices aside): devices offline for a while keep it active and are
//!   served when they return. A completed or aborted deployment sends nothing more.
//! - Withdrawing a release aborts every running deployment of it.

pub mod groups;
pub mod index;
pub mod live;
pub mod model;

mod detect;
mod engine;
mod progress;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use chrono::{DateTime, Utc};
use ota_common::api::UpdateDirective;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditError, AuditLog};
use crate::devices::{DeviceError, DeviceRecord, Devices};
use crate::rollout::{DeploymentState, PhaseCounts};
use crate::store::{Store, StoreError, StoreExt};
pub use groups::{Group, GroupFilter, GroupSpec, Membership};
pub use index::{FleetIndex, FleetSummary, StatusCounts, UpdateStateCounts};
use live::{DeviceSets, LiveDeployment, LiveSet};
pub use model::{Deployment, DeploymentSpec, DeviceProgress, Progress};

/// Entries read per store scan when loading.
const LOAD_PAGE: usize = 512;

/// The `[fleet]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// How often running deployments are checked to advance or complete, in
    /// milliseconds. Default 5000.
    pub tick_millis: u64,
    /// A device is silent after this many of its poll intervals without contact.
    /// Default 3.
    pub silent_after_polls: u32,
    /// How often the silent-device detector looks at the fleet (one pass over the
    /// in-memory registry), in seconds. Default 30.
    pub silent_check_secs: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            tick_millis: 5000,
            silent_after_polls: 3,
            silent_check_secs: 30,
        }
    }
}

impl FleetConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), String> {
        if self.tick_millis < 10 {
            return Err("fleet.tick_millis must be at least 10".into());
        }
        if self.silent_after_polls == 0 {
            return Err("fleet.silent_after_polls must be at least 1".into());
        }
        if self.silent_check_secs == 0 {
            return Err("fleet.silent_check_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// Errors of fleet operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The store failed.
    #[error("fleet storage: {0}")]
    Store(#[from] StoreError),
    /// The audit log failed (the change it recorded was not applied).
    #[error("fleet audit: {0}")]
    Audit(#[from] AuditError),
    /// Recording a server-side anomaly failed.
    #[error("fleet anomaly: {0}")]
    Device(#[from] DeviceError),
    /// A request field is not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was checked.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// No group of that name (looked up by path).
    #[error("no group named {0:?}")]
    NoGroup(String),
    /// A deployment names a group that does not exist.
    #[error("group {0:?} does not exist: create it first")]
    UnknownGroup(String),
    /// A group of that name exists.
    #[error("group {0:?} already exists (groups cannot be changed: create another)")]
    GroupExists(String),
    /// The group is used by running deployments.
    #[error("group {name:?} is used by running deployments {deployments:?}: abort them first")]
    GroupInUse {
        /// The group.
        name: String,
        /// The deployments using it.
        deployments: Vec<String>,
    },
    /// No deployment of that id.
    #[error("no deployment {0:?}")]
    NoDeployment(String),
    /// The release is not in the current signed targets.
    #[error("release {0:?} is not in the current signed targets metadata")]
    UnknownRelease(String),
    /// The release was withdrawn.
    #[error("release {name:?} was withdrawn at {at}")]
    ReleaseWithdrawn {
        /// The release.
        name: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The release's signed target has no usable release fields.
    #[error(transparent)]
    ReleaseFields(#[from] ota_common::release::ReleaseFieldsError),
    /// The deployment's state does not allow the action.
    #[error("deployment {id} is {state}: cannot {action} it")]
    Transition {
        /// The deployment.
        id: String,
        /// Its state.
        state: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// Another observer is installed on the registry.
    #[error("the device registry already has an observer: open one Fleet per registry")]
    ObserverTaken,
}

/// A group as listed.
#[derive(Clone, Debug, Serialize)]
pub struct GroupView {
    /// Name.
    pub name: String,
    /// `static` or `dynamic`.
    pub kind: &'static str,
    /// The rule of a dynamic group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<GroupFilter>,
    /// How many ids a static group lists (registered or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listed: Option<usize>,
    /// The ids of a static group (in [`Fleet::group`] only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// Registered devices that belong now.
    pub member_count: u64,
    /// Running deployments that use it.
    pub used_by: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// By whom.
    pub created_by: String,
}

/// One phase's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PhaseProgress {
    /// Cumulative share of the group reached by the end of this phase.
    pub percent: u8,
    /// Minimum time in this phase.
    pub min_wait_secs: u64,
    /// Group members reached by this phase (cumulative).
    pub targeted: u64,
    /// Devices that started in this phase (first report).
    pub started: u64,
    /// Of those, committed.
    pub succeeded: u64,
    /// Of those, failed or rolled back.
    pub failed: u64,
}

/// A deployment as shown.
#[derive(Clone, Debug, Serialize)]
pub struct DeploymentView {
    /// Id.
    pub id: String,
    /// Target name.
    pub release: String,
    /// Its version.
    pub version: String,
    /// Boards it fits.
    pub hardware_ids: Vec<String>,
    /// Group name.
    pub group: String,
    /// `active`, `paused`, `aborted` or `completed`.
    pub state: &'static str,
    /// The state with its reason (`{"state": "paused", "reason": ..., "automatic": ...}`).
    pub status: DeploymentState,
    /// Index of the current phase (0-based).
    pub phase: usize,
    /// When it began.
    pub phase_started_at: DateTime<Utc>,
    /// Each phase's progress.
    pub phases: Vec<PhaseProgress>,
    /// Pause rule: threshold in percent.
    pub failure_threshold_percent: u8,
    /// Pause rule: minimum finished devices.
    pub min_devices: u64,
    /// Current phase counts acknowledged by the last resume.
    pub baseline: PhaseCounts,
    /// Members of the group now (running deployments only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_members: Option<u64>,
    /// Accepted members of the group that the release fits and that do not run it yet,
    /// failed ones included (running deployments only). The last phase completes only
    /// when all of them have failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outstanding: Option<u64>,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// By whom.
    pub created_by: String,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When aborted or completed.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Groups and deployments, in memory, changed only under [`Fleet::book`].
#[derive(Default)]
struct Book {
    groups: BTreeMap<String, Arc<Group>>,
    deployments: BTreeMap<String, Deployment>,
    /// Running and failed devices of each running deployment.
    sets: HashMap<String, Arc<DeviceSets>>,
    /// The last device that failed in each running deployment (an automatic pause raises
    /// its anomaly on it).
    last_failed: HashMap<String, String>,
}

/// Fleet operations over the registry. Share it behind an `Arc`.
pub struct Fleet {
    config: FleetConfig,
    store: Arc<dyn Store>,
    audit: Arc<AuditLog>,
    devices: Arc<Devices>,
    index: Arc<FleetIndex>,
    book: Mutex<Book>,
    live: RwLock<Arc<LiveSet>>,
    /// Devices are not called silent for time before this (the server was not listening).
    opened_at: DateTime<Utc>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("config", &self.config)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

fn scan_all<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    tree: &str,
    prefix: &[u8],
) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page: Vec<(Vec<u8>, T)> = store.scan_json(tree, prefix, after.as_deref(), LOAD_PAGE)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        out.extend(page);
    }
    Ok(out)
}

impl Fleet {
    /// Loads groups and deployments, installs the fleet index on the registry and reads
    /// every device record into the registry's cache (once, at startup: O(devices)).
    /// Blocking (disk I/O). One `Fleet` per registry.
    pub fn open(
        store: Arc<dyn Store>,
        audit: Arc<AuditLog>,
        devices: Arc<Devices>,
        config: FleetConfig,
        now: DateTime<Utc>,
    ) -> Result<Self, FleetError> {
        let mut book = Book::default();
        for (_, g) in scan_all::<Group>(store.as_ref(), groups::GROUPS_TREE, b"")? {
            book.groups.insert(g.name.clone(), Arc::new(g));
        }
        for (_, d) in scan_all::<Deployment>(store.as_ref(), model::DEPLOYMENTS_TREE, b"")? {
            book.deployments.insert(d.id.clone(), d);
        }
        let index = Arc::new(FleetIndex::default());
        for g in book.groups.values() {
            index.add_group(Arc::clone(g), 0);
        }
        for d in book.deployments.values().filter(|d| d.is_live()) {
            let Some(group) = book.groups.get(&d.group) else {
                // Groups in use cannot be deleted; a missing one means a damaged store.
                tracing::error!(deployment = %d.id, group = %d.group, "running deployment without its group; it sends nothing");
                continue;
            };
            // Counted from zero as the registry replays and loads every record below.
            index.add_deployment(
                &d.id,
                Arc::clone(group),
                d.policy.clone(),
                model::ReleaseTarget::of(d),
                index::Audience {
                    first_reached: vec![0; d.policy.phases.len()],
                    outstanding: 0,
                },
            );
            let sets = Arc::new(DeviceSets::default());
            let prefix = model::deployment_prefix(&d.id);
            for (key, p) in
                scan_all::<DeviceProgress>(store.as_ref(), model::DEPLOYMENT_DEVICES_TREE, &prefix)?
            {
                if let Ok(device) = std::str::from_utf8(&key[prefix.len()..]) {
                    sets.set(device, p.progress);
                }
            }
            book.sets.insert(d.id.clone(), sets);
        }
        if !devices.set_observer(Arc::clone(&index) as Arc<dyn crate::devices::RecordObserver>) {
            return Err(FleetError::ObserverTaken);
        }
        let loaded = devices.load_all()?;
        tracing::info!(
            devices = loaded,
            groups = book.groups.len(),
            deployments = book.deployments.len(),
            "fleet loaded"
        );
        let fleet = Fleet {
            config,
            store,
            audit,
            devices,
            index,
            book: Mutex::new(Book::default()),
            live: RwLock::new(Arc::default()),
            opened_at: now,
        };
        fleet.install_live(&book);
        *fleet.book() = book;
        Ok(fleet)
    }

    /// The settings.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // Every change of the book is made after its store write succeeded, in a few
        // plain assignments: a panic between them cannot leave it half-updated.
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rebuilds the poll path's snapshot from the book.
    fn install_live(&self, book: &Book) {
        let list = book
            .deployments
            .values()
            .filter(|d| d.is_live())
            .filter_map(|d| {
                let group = book.groups.get(&d.group)?;
                let sets = book.sets.get(&d.id)?;
                Some(LiveDeployment::new(d, Arc::clone(group), Arc::clone(sets)))
            })
            .collect();
        let set = Arc::new(LiveSet::new(list));
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
    }

    /// The update `device` should install now, if any. Memory only (the poll path).
    pub fn directive_for(&self, device: &DeviceRecord) -> Option<UpdateDirective> {
        let live = Arc::clone(
            &self
                .live
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        live.directive_for(device)
    }

    /// The fleet summary: O(versions), no device is looked at.
    pub fn summary(&self) -> FleetSummary {
        self.index.summary()
    }

    /// The counters behind the summary (for tests and diagnostics).
    pub fn index(&self) -> &FleetIndex {
        &self.index
    }

    /// Every group, by name, without static member lists.
    pub fn groups(&self) -> Vec<GroupView> {
        let book = self.book();
        book.groups
            .values()
            .map(|g| self.group_view(&book, g, false))
            .collect()
    }

    /// One group with its static member list.
    pub fn group(&self, name: &str) -> Option<GroupView> {
        let book = self.book();
        book.groups
            .get(name)
            .map(|g| self.group_view(&book, g, true))
    }

    fn group_view(&self, book: &Book, g: &Group, with_devices: bool) -> GroupView {
        let (filter, listed, devices) = match &g.members {
            Membership::Dynamic { filter } => (Some(filter.clone()), None, None),
            Membership::Static { devices } => (
                None,
                Some(devices.len()),
                with_devices.then(|| devices.iter().cloned().collect()),
            ),
        };
        GroupView {
            name: g.name.clone(),
            kind: g.kind(),
            filter,
            listed,
            devices,
            member_count: self.index.group_members(&g.name).unwrap_or(0),
            used_by: book
                .deployments
                .values()
                .filter(|d| d.is_live() && d.group == g.name)
                .map(|d| d.id.clone())
                .collect(),
            created_at: g.created_at,
            created_by: g.created_by.clone(),
        }
    }

    /// Every deployment, newest first.
    pub fn deployments(&self) -> Vec<DeploymentView> {
        let book = self.book();
        let mut list: Vec<DeploymentView> = book
            .deployments
            .values()
            .map(|d| self.deployment_view(d))
            .collect();
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        list
    }

    /// One deployment.
    pub fn deployment(&self, id: &str) -> Option<DeploymentView> {
        let book = self.book();
        book.deployments.get(id).map(|d| self.deployment_view(d))
    }

    fn deployment_view(&self, d: &Deployment) -> DeploymentView {
        let live = d.is_live();
        let targeted = if live {
            self.index.targeted(&d.id)
        } else {
            d.targeted.clone()
        }
        .unwrap_or_default();
        let phases = d
            .policy
            .phases
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let c = d.counts.get(i).copied().unwrap_or_default();
                PhaseProgress {
                    percent: spec.percent,
                    min_wait_secs: spec.min_wait_secs,
                    targeted: targeted.get(i).copied().unwrap_or(0),
                    started: c.started,
                    succeeded: c.succeeded,
                    failed: c.failed,
                }
            })
            .collect();
        DeploymentView {
            id: d.id.clone(),
            release: d.release.clone(),
            version: d.version.clone(),
            hardware_ids: d.hardware_ids.clone(),
            group: d.group.clone(),
            state: d.state_name(),
            status: d.status.clone(),
            phase: d.phase,
            phase_started_at: d.phase_started_at,
            phases,
            failure_threshold_percent: d.policy.failure_threshold_percent,
            min_devices: d.policy.min_devices,
            baseline: d.baseline,
            group_members: live.then(|| self.index.group_members(&d.group)).flatten(),
            outstanding: live.then(|| self.index.outstanding(&d.id)).flatten(),
            created_at: d.created_at,
            created_by: d.created_by.clone(),
            updated_at: d.updated_at,
            finished_at: d.finished_at,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::config::ServerConfig;

    #[test]
    fn the_fleet_section_is_read_and_checked() {
        let base = "data_dir = \"/x\"\ndev = true\n";
        let cfg: ServerConfig = toml::from_str(base).unwrap();
        assert_eq!(cfg.fleet, FleetConfig::default());
        let cfg: ServerConfig = toml::from_str(&format!(
            "{base}[fleet]\ntick_millis = 200\nsilent_after_polls = 5\n"
        ))
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            (cfg.fleet.tick_millis, cfg.fleet.silent_after_polls),
            (200, 5)
        );
        assert_eq!(cfg.fleet.silent_check_secs, 30);
        for bad in [
            "tick_millis = 1",
            "silent_after_polls = 0",
            "silent_check_secs = 0",
        ] {
            let cfg: ServerConfig = toml::from_str(&format!("{base}[fleet]\n{bad}\n")).unwrap();
            assert!(cfg.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<ServerConfig>(&format!("{base}[fleet]\ntick = 1\n")).is_err());
    }
}
