//! Counters over the fleet, kept up to date as device records change rather than computed
//! by scanning: the fleet summary, the member count of each group, and, for each running
//! deployment, how many members of its group each phase reaches and how many of them
//! still want its release.
//!
//! The index is the registry's [`RecordObserver`]: every change of a cached record comes
//! with its previous version, under the record's shard lock, so the counters move by
//! exact differences. The cache holds every registered device (loaded once at startup by
//! [`crate::devices::Devices::load_all`]), so the counters cover the fleet.
//!
//! A new group or deployment is counted by [`FleetIndex::count_and_add`] from copies of
//! the cache taken one shard at a time ([`crate::devices::Devices::snapshot_shards`]):
//! while it counts, a device's changes are applied to the count only if they came after
//! its shard was copied, so nothing is counted twice or missed, and no shard is locked for
//! longer than a pointer copy (polls are not stalled by the count).
//!
//! Cost: reading the summary is O(versions); a record change is O(groups + running
//! deployments) membership checks (one SHA-256 only when membership changes); counting a
//! new group or deployment is O(fleet) outside the locks, one SHA-256 per member.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use ota_common::api::UpdateState;
use serde::Serialize;

use super::groups::Group;
use super::model::ReleaseTarget;
use crate::devices::{shard_count, shard_of, DeviceRecord, DeviceStatus, Devices, RecordObserver};
use crate::rollout::{position, RolloutPolicy};

/// The key under which devices that report no version are counted.
pub const UNKNOWN_VERSION: &str = "unknown";

/// Devices by operator decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    /// Waiting for an operator.
    pub pending: u64,
    /// May poll and update.
    pub accepted: u64,
    /// Refused.
    pub rejected: u64,
    /// Revoked for good (tombstones).
    pub decommissioned: u64,
}

/// Accepted devices by where their updates stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpdateStateCounts {
    /// No update running, and the last one (if any) did not fail: running the version
    /// it last reported about, or idle.
    pub up_to_date: u64,
    /// Downloading, installed or booted a version it does not run yet.
    pub updating: u64,
    /// Its last update failed before switching.
    pub failed: u64,
    /// Its last update rolled back.
    pub rolled_back: u64,
    /// Not heard from for longer than the configured number of poll intervals (this
    /// overrides the other states: what it does now is unknown).
    pub silent: u64,
}

/// The fleet at a glance (`GET /api/v1/fleet/summary`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetSummary {
    /// Registered devices (every status but decommissioned).
    pub devices: u64,
    /// By operator decision.
    pub by_status: StatusCounts,
    /// Accepted devices by the version they run ([`UNKNOWN_VERSION`] if they report none).
    pub by_version: BTreeMap<String, u64>,
    /// Accepted devices by update state.
    pub by_update_state: UpdateStateCounts,
}

/// One device's place in the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UpdateClass {
    UpToDate,
    Updating,
    Failed,
    RolledBack,
    Silent,
}

/// Where an accepted device's updates stand, from its record.
fn update_class(rec: &DeviceRecord, silent: bool) -> UpdateClass {
    if silent {
        return UpdateClass::Silent;
    }
    let Some(last) = &rec.last_status else {
        return UpdateClass::UpToDate;
    };
    // Running the version it reported about: whatever happened on the way, it is there.
    if rec.current_version.as_deref() == Some(last.version.as_str()) {
        return UpdateClass::UpToDate;
    }
    match last.state {
        UpdateState::Committed => UpdateClass::UpToDate,
        UpdateState::Downloading | UpdateState::Installed | UpdateState::Booted => {
            UpdateClass::Updating
        }
        UpdateState::Failed => UpdateClass::Failed,
        UpdateState::RolledBack => UpdateClass::RolledBack,
    }
}

/// How many entries the index holds, for checking that its size does not grow with the
/// fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Distinct versions counted.
    pub versions: usize,
    /// Devices flagged silent (the only per-device entries).
    pub silent: usize,
    /// Groups counted.
    pub groups: usize,
    /// Running deployments counted.
    pub deployments: usize,
}

struct Targeting {
    group: Arc<Group>,
    policy: RolloutPolicy,
    target: ReleaseTarget,
    /// Group members first reached by each phase.
    first_reached: Vec<u64>,
    /// Group members that want the release ([`ReleaseTarget::wanted_by`]).
    outstanding: u64,
}

/// What a running deployment's audience looks like now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audience {
    /// Group members first reached by each phase.
    pub first_reached: Vec<u64>,
    /// Group members that want the release.
    pub outstanding: u64,
}

impl Audience {
    /// Counts the audience of a deployment among `records`.
    pub fn count<'a>(
        deployment: &str,
        group: &Group,
        policy: &RolloutPolicy,
        target: &ReleaseTarget,
        records: impl Iterator<Item = &'a DeviceRecord>,
    ) -> Self {
        let mut out = Audience {
            first_reached: vec![0u64; policy.phases.len()],
            outstanding: 0,
        };
        for rec in records.filter(|r| group.contains(r)) {
            if let Some(p) = first_phase(deployment, &rec.id, policy) {
                out.first_reached[p] += 1;
            }
            if target.wanted_by(rec) {
                out.outstanding += 1;
            }
        }
        out
    }
}

/// The phase index at which a device is first reached: [`crate::rollout::phase_of`] with
/// one hash instead of one per phase.
fn first_phase(deployment: &str, device: &str, policy: &RolloutPolicy) -> Option<usize> {
    let pos = u32::from(position(deployment, device));
    policy
        .phases
        .iter()
        .position(|p| pos < u32::from(p.percent) * 100)
}

/// What [`FleetIndex::count_and_add`] counts: a group's members, or a running
/// deployment's audience.
#[derive(Clone)]
pub enum Counted {
    /// A new group.
    Group(Arc<Group>),
    /// A new running deployment over `group`.
    Deployment {
        /// The deployment id.
        id: String,
        /// Its group.
        group: Arc<Group>,
        /// Its phases.
        policy: RolloutPolicy,
        /// Its release.
        target: ReleaseTarget,
    },
}

/// Signed counts of a [`Counted`] (changes may be negative before the copies are in).
#[derive(Clone, Debug, Default)]
struct Tally {
    members: i64,
    first_reached: Vec<i64>,
    outstanding: i64,
}

impl Counted {
    fn group(&self) -> &Group {
        match self {
            Counted::Group(g) | Counted::Deployment { group: g, .. } => g,
        }
    }

    fn zero(&self) -> Tally {
        Tally {
            first_reached: match self {
                Counted::Group(_) => Vec::new(),
                Counted::Deployment { policy, .. } => vec![0; policy.phases.len()],
            },
            ..Tally::default()
        }
    }

    /// Adds `sign` times `rec`'s contribution to `t`.
    fn tally(&self, rec: &DeviceRecord, sign: i64, t: &mut Tally) {
        if !self.group().contains(rec) {
            return;
        }
        t.members += sign;
        if let Counted::Deployment {
            id, policy, target, ..
        } = self
        {
            if let Some(c) =
                first_phase(id, &rec.id, policy).and_then(|p| t.first_reached.get_mut(p))
            {
                *c += sign;
            }
            if target.wanted_by(rec) {
                t.outstanding += sign;
            }
        }
    }
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.members += other.members;
        self.outstanding += other.outstanding;
        for (a, b) in self.first_reached.iter_mut().zip(&other.first_reached) {
            *a += b;
        }
    }
}

/// A group or deployment being counted: shards copied so far and the count.
struct Counting {
    what: Counted,
    copied: Vec<bool>,
    tally: Tally,
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[derive(Default)]
struct State {
    devices: u64,
    by_status: StatusCounts,
    by_version: HashMap<String, u64>,
    by_update_state: UpdateStateCounts,
    silent: HashSet<String>,
    groups: HashMap<String, (Arc<Group>, u64)>,
    deployments: HashMap<String, Targeting>,
    /// Groups and deployments being counted, by token.
    counting: HashMap<u64, Counting>,
    next_token: u64,
}

fn bump(c: &mut u64, up: bool) {
    *c = if up { *c + 1 } else { c.saturating_sub(1) };
}

impl State {
    /// Adds (`up`) or removes one record's contribution to the summary.
    fn summarize(&mut self, rec: &DeviceRecord, silent: bool, up: bool) {
        bump(&mut self.devices, up);
        let s = &mut self.by_status;
        bump(
            match rec.status {
                DeviceStatus::Pending => &mut s.pending,
                DeviceStatus::Accepted => &mut s.accepted,
                DeviceStatus::Rejected => &mut s.rejected,
                DeviceStatus::Decommissioned => &mut s.decommissioned,
            },
            up,
        );
        if rec.status != DeviceStatus::Accepted {
            return;
        }
        let version = rec.current_version.as_deref().unwrap_or(UNKNOWN_VERSION);
        if up {
            *self.by_version.entry(version.to_owned()).or_insert(0) += 1;
        } else if let Some(n) = self.by_version.get_mut(version) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_version.remove(version);
            }
        }
        let u = &mut self.by_update_state;
        bump(
            match update_class(rec, silent) {
                UpdateClass::UpToDate => &mut u.up_to_date,
                UpdateClass::Updating => &mut u.updating,
                UpdateClass::Failed => &mut u.failed,
                UpdateClass::RolledBack => &mut u.rolled_back,
                UpdateClass::Silent => &mut u.silent,
            },
            up,
        );
    }
}

/// The counters; share it behind an `Arc` (it is also the registry's observer).
#[derive(Default)]
pub struct FleetIndex {
    state: Mutex<State>,
}

impl std::fmt::Debug for FleetIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetIndex")
            .field("footprint", &self.footprint())
            .finish()
    }
}

impl FleetIndex {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the counters consistent between statements that matter.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The summary: O(versions), no device is looked at.
    pub fn summary(&self) -> FleetSummary {
        let s = self.lock();
        FleetSummary {
            devices: s.devices,
            by_status: s.by_status,
            by_version: s.by_version.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            by_update_state: s.by_update_state,
        }
    }

    /// The index's size.
    pub fn footprint(&self) -> Footprint {
        let s = self.lock();
        Footprint {
            versions: s.by_version.len(),
            silent: s.silent.len(),
            groups: s.groups.len(),
            deployments: s.deployments.len(),
        }
    }

    /// Marks `rec`'s device silent or not; returns whether that changed. Call it with the
    /// record's shard locked (from [`crate::devices::Devices::visit_cached`]) so that it
    /// is ordered with the record's changes.
    pub fn set_silent(&self, rec: &DeviceRecord, silent: bool) -> bool {
        let mut s = self.lock();
        if s.silent.contains(&rec.id) == silent {
            return false;
        }
        s.summarize(rec, !silent, false);
        if silent {
            s.silent.insert(rec.id.clone());
        } else {
            s.silent.remove(&rec.id);
        }
        s.summarize(rec, silent, true);
        true
    }

    /// Whether the device is flagged silent.
    pub fn is_silent(&self, id: &str) -> bool {
        self.lock().silent.contains(id)
    }

    /// Counts a new group's members, or a new deployment's audience, among the devices of
    /// `devices` (whose observer this index is), and starts keeping the count. Reads
    /// copies of the cache, one shard at a time: polls wait at most for a pointer copy of
    /// one shard. Changes made meanwhile are counted exactly once.
    pub fn count_and_add(&self, devices: &Devices, what: Counted) {
        self.count_and_add_with(devices, what, |_| {});
    }

    /// [`FleetIndex::count_and_add`], calling `after_shard(i)` once shard `i` has been
    /// copied and tallied, with no lock held: a test changes devices there, in shards
    /// copied and not yet copied, to check that each change is counted exactly once.
    pub(crate) fn count_and_add_with(
        &self,
        devices: &Devices,
        what: Counted,
        mut after_shard: impl FnMut(usize),
    ) {
        let token = {
            let mut s = self.lock();
            let token = s.next_token;
            s.next_token += 1;
            let tally = what.zero();
            s.counting.insert(
                token,
                Counting {
                    what: what.clone(),
                    copied: vec![false; shard_count()],
                    tally,
                },
            );
            token
        };
        devices.snapshot_shards(
            |shard| {
                if let Some(c) = self.lock().counting.get_mut(&token) {
                    if let Some(flag) = c.copied.get_mut(shard) {
                        *flag = true;
                    }
                }
            },
            |shard, records| {
                let mut part = what.zero();
                for rec in records {
                    what.tally(rec, 1, &mut part);
                }
                if let Some(c) = self.lock().counting.get_mut(&token) {
                    c.tally.add(&part);
                }
                after_shard(shard);
            },
        );
        let mut s = self.lock();
        let Some(done) = s.counting.remove(&token) else {
            return;
        };
        let t = done.tally;
        match done.what {
            Counted::Group(group) => {
                s.groups
                    .insert(group.name.clone(), (group, unsigned(t.members)));
            }
            Counted::Deployment {
                id,
                group,
                policy,
                target,
            } => {
                s.deployments.insert(
                    id,
                    Targeting {
                        group,
                        policy,
                        target,
                        first_reached: t.first_reached.into_iter().map(unsigned).collect(),
                        outstanding: unsigned(t.outstanding),
                    },
                );
            }
        }
    }

    /// Starts counting the members of `group`, `members` of them now (the registry must
    /// not change meanwhile: at startup, before its records are loaded).
    pub fn add_group(&self, group: Arc<Group>, members: u64) {
        self.lock()
            .groups
            .insert(group.name.clone(), (group, members));
    }

    /// Stops counting a group.
    pub fn remove_group(&self, name: &str) {
        self.lock().groups.remove(name);
    }

    /// The member count of a group.
    pub fn group_members(&self, name: &str) -> Option<u64> {
        self.lock().groups.get(name).map(|(_, n)| *n)
    }

    /// Starts counting the audience of a running deployment, from `now` (the registry
    /// must not change meanwhile: at startup, before its records are loaded).
    pub fn add_deployment(
        &self,
        id: &str,
        group: Arc<Group>,
        policy: RolloutPolicy,
        target: ReleaseTarget,
        mut now: Audience,
    ) {
        now.first_reached.resize(policy.phases.len(), 0);
        self.lock().deployments.insert(
            id.to_owned(),
            Targeting {
                group,
                policy,
                target,
                first_reached: now.first_reached,
                outstanding: now.outstanding,
            },
        );
    }

    /// Members of a running deployment's group that want its release.
    pub fn outstanding(&self, id: &str) -> Option<u64> {
        self.lock().deployments.get(id).map(|t| t.outstanding)
    }

    /// Stops counting a deployment; returns its final cumulative counts per phase.
    pub fn remove_deployment(&self, id: &str) -> Option<Vec<u64>> {
        self.lock()
            .deployments
            .remove(id)
            .map(|t| cumulative(&t.first_reached))
    }

    /// Group members reached by each phase of a running deployment (cumulative).
    pub fn targeted(&self, id: &str) -> Option<Vec<u64>> {
        self.lock()
            .deployments
            .get(id)
            .map(|t| cumulative(&t.first_reached))
    }
}

/// Members first reached by each phase → members reached by the end of each phase.
fn cumulative(first: &[u64]) -> Vec<u64> {
    first
        .iter()
        .scan(0u64, |acc, n| {
            *acc += n;
            Some(*acc)
        })
        .collect()
}

impl RecordObserver for FleetIndex {
    fn record_changed(&self, old: Option<&DeviceRecord>, new: Option<&DeviceRecord>) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(id) = new.or(old).map(|r| r.id.as_str()) else {
            return;
        };
        let silent = s.silent.contains(id);
        if let Some(old) = old {
            s.summarize(old, silent, false);
        }
        match new {
            Some(new) => s.summarize(new, silent, true),
            None => {
                s.silent.remove(id);
            }
        }
        let member = |g: &Group, r: Option<&DeviceRecord>| r.is_some_and(|r| g.contains(r));
        for (group, n) in s.groups.values_mut() {
            match (member(group, old), member(group, new)) {
                (false, true) => *n += 1,
                (true, false) => *n = n.saturating_sub(1),
                _ => {}
            }
        }
        for (dep, t) in &mut s.deployments {
            let (was, is) = (member(&t.group, old), member(&t.group, new));
            if was != is {
                if let Some(c) =
                    first_phase(dep, id, &t.policy).and_then(|p| t.first_reached.get_mut(p))
                {
                    bump(c, is);
                }
            }
            let wants = |r: Option<&DeviceRecord>| r.is_some_and(|r| t.target.wanted_by(r));
            let (wanted, wants_now) = (was && wants(old), is && wants(new));
            if wanted != wants_now {
                bump(&mut t.outstanding, wants_now);
            }
        }
        if !s.counting.is_empty() {
            let shard = shard_of(id);
            for c in s.counting.values_mut() {
                if c.copied.get(shard).copied().unwrap_or(false) {
                    if let Some(old) = old {
                        c.what.tally(old, -1, &mut c.tally);
                    }
                    if let Some(new) = new {
                        c.what.tally(new, 1, &mut c.tally);
                    }
                }
            }
        }
    }

    fn tombstoned(&self, _id: &str) {
        self.lock().by_status.decommissioned += 1;
    }
}

#[cfg(test)]
mod tests;
