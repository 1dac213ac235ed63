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
            |records| {
                let mut part = what.zero();
                for rec in records {
                    what.tally(rec, 1, &mut part);
                }
                if let Some(c) = self.lock().counting.get_mut(&token) {
                    c.tally.add(&part);
                }
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
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::deployments::groups::{GroupFilter, Membership};
    use crate::devices::LastStatus;
    use crate::rollout::PhaseSpec;
    use chrono::Utc;
    use std::collections::BTreeMap;

    fn rec(id: &str, status: DeviceStatus, version: Option<&str>) -> DeviceRecord {
        let mut r = DeviceRecord::new(id, status, "t", Utc::now());
        r.hardware_id = Some("hw".into());
        r.current_version = version.map(Into::into);
        r
    }

    fn with_status(mut r: DeviceRecord, state: UpdateState, version: &str) -> DeviceRecord {
        r.revision += 1;
        r.last_status = Some(LastStatus {
            state,
            target: "fw".into(),
            version: version.into(),
            at: Utc::now(),
        });
        r
    }

    /// The 1,000,000-device requirement, at 100,000: the summary's cost does not depend
    /// on the number of devices, only on the number of versions.
    #[test]
    fn summary_of_100k_devices_is_kept_in_o_versions() {
        let index = FleetIndex::default();
        let versions = ["1.0.0", "1.1.0", "2.0.0"];
        let mut recs = Vec::with_capacity(100_000);
        for i in 0..100_000 {
            let status = match i % 10 {
                0 => DeviceStatus::Pending,
                1 => DeviceStatus::Rejected,
                _ => DeviceStatus::Accepted,
            };
            let r = rec(&format!("dev-{i:06}"), status, Some(versions[i % 3]));
            index.record_changed(None, Some(&r));
            recs.push(r);
        }
        // 20,000 of them start updating to 2.0.0; 1,000 roll back.
        for r in recs.iter_mut().take(20_000) {
            let next = with_status(r.clone(), UpdateState::Downloading, "2.0.0");
            index.record_changed(Some(r), Some(&next));
            *r = next;
        }
        for r in recs.iter_mut().take(1_000) {
            let next = with_status(r.clone(), UpdateState::RolledBack, "2.0.0");
            index.record_changed(Some(r), Some(&next));
            *r = next;
        }
        let fp = index.footprint();
        assert_eq!(
            fp,
            Footprint {
                versions: 3,
                silent: 0,
                groups: 0,
                deployments: 0
            }
        );
        let s = index.summary();
        assert_eq!(s.devices, 100_000);
        assert_eq!(s.by_status.accepted, 80_000);
        assert_eq!(s.by_status.pending, 10_000);
        assert_eq!(s.by_status.rejected, 10_000);
        assert_eq!(s.by_version.len(), 3);
        assert_eq!(s.by_version.values().sum::<u64>(), 80_000);
        // Of the first 20,000, 16,000 are accepted; a third of those already run 2.0.0.
        let u = s.by_update_state;
        assert_eq!(
            u.up_to_date + u.updating + u.failed + u.rolled_back + u.silent,
            80_000
        );
        let accepted_first = |n: usize| {
            (0..n)
                .filter(|i| i % 10 >= 2 && versions[i % 3] != "2.0.0")
                .count() as u64
        };
        assert_eq!(u.rolled_back, accepted_first(1_000));
        assert_eq!(u.updating, accepted_first(20_000) - accepted_first(1_000));
        // Silence moves a device between states and back.
        let r = &recs[2];
        assert!(index.set_silent(r, true));
        assert!(!index.set_silent(r, true));
        assert_eq!(index.summary().by_update_state.silent, 1);
        assert_eq!(index.footprint().silent, 1);
        assert!(index.set_silent(r, false));
        assert_eq!(index.summary().by_update_state, u);
        // A decommission removes the record and counts the tombstone.
        index.record_changed(Some(&recs[2]), None);
        index.tombstoned(&recs[2].id);
        let s = index.summary();
        assert_eq!((s.devices, s.by_status.decommissioned), (99_999, 1));
    }

    #[test]
    fn group_and_phase_counts_follow_membership() {
        let index = FleetIndex::default();
        let group = Arc::new(Group {
            name: "eu".into(),
            members: Membership::Dynamic {
                filter: GroupFilter {
                    hardware_id: None,
                    attributes: [("site".to_string(), "eu".to_string())].into(),
                },
            },
            created_at: Utc::now(),
            created_by: "op".into(),
        });
        let policy = RolloutPolicy {
            phases: vec![
                PhaseSpec {
                    percent: 50,
                    min_wait_secs: 0,
                },
                PhaseSpec {
                    percent: 100,
                    min_wait_secs: 0,
                },
            ],
            failure_threshold_percent: 50,
            min_devices: 1,
        };
        let target = ReleaseTarget {
            version_text: "2.0.0".into(),
            version: "2.0.0".parse().ok(),
            hardware_ids: vec!["hw".into()],
        };
        index.add_group(Arc::clone(&group), 0);
        index.add_deployment(
            "dep-x",
            Arc::clone(&group),
            policy.clone(),
            target.clone(),
            Audience::default(),
        );
        let zero = Audience::count("dep-x", &group, &policy, &target, std::iter::empty());
        assert_eq!(zero.first_reached, [0, 0]);
        let mut recs: Vec<DeviceRecord> = (0..200)
            .map(|i| rec(&format!("d{i}"), DeviceStatus::Accepted, Some("1.0.0")))
            .collect();
        for r in &recs {
            index.record_changed(None, Some(r));
        }
        assert_eq!(index.group_members("eu"), Some(0));
        for r in recs.iter_mut().take(120) {
            let mut next = r.clone();
            next.revision += 1;
            next.attributes.insert("site".into(), "eu".into());
            index.record_changed(Some(r), Some(&next));
            *r = next;
        }
        assert_eq!(index.group_members("eu"), Some(120));
        let expected = Audience::count("dep-x", &group, &policy, &target, recs.iter());
        let targeted = index.targeted("dep-x").unwrap();
        assert_eq!(targeted, cumulative(&expected.first_reached));
        assert_eq!(
            (expected.outstanding, index.outstanding("dep-x")),
            (120, Some(120))
        );
        // Updating takes a member out of the audience still waiting.
        let mut updated = recs[5].clone();
        updated.revision += 1;
        updated.current_version = Some("2.0.0".into());
        index.record_changed(Some(&recs[5]), Some(&updated));
        recs[5] = updated;
        assert_eq!(index.outstanding("dep-x"), Some(119));
        assert_eq!(targeted[1], 120);
        assert!(targeted[0] > 30 && targeted[0] < 90, "{targeted:?}");
        // Leaving the group, and decommissioning, take members away.
        index.record_changed(Some(&recs[0]), None);
        let mut moved = recs[1].clone();
        moved.attributes.clear();
        index.record_changed(Some(&recs[1]), Some(&moved));
        assert_eq!(index.group_members("eu"), Some(118));
        assert_eq!(index.outstanding("dep-x"), Some(117));
        assert_eq!(index.remove_deployment("dep-x").unwrap()[1], 118);
        assert!(index.targeted("dep-x").is_none());
    }

    /// Counting a new group and deployment from shard copies while devices change
    /// concurrently ends with the counts a full recount gives.
    #[test]
    fn counts_from_shard_copies_are_exact_under_concurrent_changes() {
        use crate::devices::testing::{ident, peer, registry, req};
        let (_s, d, audit) = registry();
        let index = Arc::new(FleetIndex::default());
        assert!(d.set_observer(Arc::clone(&index) as Arc<dyn RecordObserver>));
        let now = Utc::now();
        for i in 0..1500 {
            let id = format!("d{i:04}");
            d.poll(
                &ident(&id, "F"),
                &req(if i % 2 == 0 { "hw" } else { "other" }),
                peer(),
                now,
            )
            .unwrap();
            if i % 3 != 0 {
                d.decide(&id, DeviceStatus::Accepted, &audit, "op", now)
                    .unwrap();
            }
        }
        let group = Arc::new(Group {
            name: "hw".into(),
            members: Membership::Dynamic {
                filter: GroupFilter {
                    hardware_id: Some("hw".into()),
                    attributes: BTreeMap::new(),
                },
            },
            created_at: now,
            created_by: "op".into(),
        });
        let policy = RolloutPolicy {
            phases: vec![
                PhaseSpec {
                    percent: 30,
                    min_wait_secs: 0,
                },
                PhaseSpec {
                    percent: 100,
                    min_wait_secs: 0,
                },
            ],
            failure_threshold_percent: 50,
            min_devices: 1,
        };
        let target = ReleaseTarget {
            version_text: "2.0.0".into(),
            version: "2.0.0".parse().ok(),
            hardware_ids: vec!["hw".into()],
        };
        std::thread::scope(|scope| {
            let d = &d;
            let audit = &audit;
            let changer = scope.spawn(move || {
                // Devices move between boards and get accepted while the counts run.
                for round in 0..3 {
                    for i in (round..1500).step_by(7) {
                        let id = format!("d{i:04}");
                        let hw = if (i + round) % 2 == 0 { "other" } else { "hw" };
                        d.poll(&ident(&id, "F"), &req(hw), peer(), now).unwrap();
                        d.decide(&id, DeviceStatus::Accepted, audit, "op", now)
                            .unwrap();
                    }
                }
            });
            for _ in 0..3 {
                index.count_and_add(d, Counted::Group(Arc::clone(&group)));
                index.count_and_add(
                    d,
                    Counted::Deployment {
                        id: "dep-x".into(),
                        group: Arc::clone(&group),
                        policy: policy.clone(),
                        target: target.clone(),
                    },
                );
            }
            changer.join().unwrap();
        });
        d.with_cache_locked(|cache| {
            let members = cache.records().filter(|r| group.contains(r)).count() as u64;
            assert!(members > 0);
            assert_eq!(index.group_members("hw"), Some(members));
            let full = Audience::count("dep-x", &group, &policy, &target, cache.records());
            assert_eq!(
                index.targeted("dep-x"),
                Some(cumulative(&full.first_reached))
            );
            assert_eq!(index.outstanding("dep-x"), Some(full.outstanding));
            // first_phase agrees with the rollout's phase_of.
            for r in cache.records() {
                assert_eq!(
                    first_phase("dep-x", &r.id, &policy),
                    crate::rollout::phase_of("dep-x", &r.id, &policy)
                );
            }
        });
        assert!(index.lock().counting.is_empty());
    }

    /// Rough release-mode timings at 100,000 devices (run by hand:
    /// `cargo test -p ota-server --release --lib scale_timings -- --ignored --nocapture`).
    /// Prints, asserts nothing about speed.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn scale_timings() {
        use crate::devices::testing::{ident, peer, registry, req};
        use crate::devices::DeviceFilter;
        use std::time::Instant;
        let (_s, d, audit) = registry();
        let index = Arc::new(FleetIndex::default());
        d.set_observer(Arc::clone(&index) as Arc<dyn RecordObserver>);
        d.load_all().unwrap();
        let now = Utc::now();
        for i in 0..100_000 {
            let hw = if i % 1000 == 0 { "rare" } else { "hw" };
            d.poll(&ident(&format!("d{i:06}"), "F"), &req(hw), peer(), now)
                .unwrap();
        }
        for i in (0..100_000).step_by(2) {
            d.decide(
                &format!("d{i:06}"),
                DeviceStatus::Accepted,
                &audit,
                "op",
                now,
            )
            .unwrap();
        }
        d.decide("d099999", DeviceStatus::Rejected, &audit, "op", now)
            .unwrap();
        let f = DeviceFilter {
            status: Some(DeviceStatus::Rejected),
            hardware_id: None,
        };
        let t = Instant::now();
        let (page, _) = d.list(&f, None, 100).unwrap();
        println!(
            "indexed list status=rejected: {:?} ({} rows)",
            t.elapsed(),
            page.len()
        );
        let f = DeviceFilter {
            status: None,
            hardware_id: Some("rare".into()),
        };
        let t = Instant::now();
        let (page, _) = d.list(&f, None, 100).unwrap();
        println!(
            "indexed list hardware_id=rare: {:?} ({} rows)",
            t.elapsed(),
            page.len()
        );
        let group = Arc::new(Group {
            name: "all".into(),
            members: Membership::Dynamic {
                filter: GroupFilter::default(),
            },
            created_at: now,
            created_by: "op".into(),
        });
        let policy = RolloutPolicy {
            phases: [10, 50, 100]
                .map(|percent| PhaseSpec {
                    percent,
                    min_wait_secs: 0,
                })
                .to_vec(),
            failure_threshold_percent: 50,
            min_devices: 1,
        };
        let target = ReleaseTarget {
            version_text: "2.0.0".into(),
            version: "2.0.0".parse().ok(),
            hardware_ids: vec!["hw".into()],
        };
        let t = Instant::now();
        d.with_cache_locked(|c| {
            let n = c.records().filter(|r| group.contains(r)).count();
            let a = Audience {
                first_reached: vec![0; 3],
                outstanding: n as u64,
            };
            std::hint::black_box(a);
        });
        println!("old group count (all shards locked): {:?}", t.elapsed());
        let t = Instant::now();
        d.with_cache_locked(|c| {
            let mut out = vec![0u64; 3];
            for r in c.records() {
                if let Some(p) = crate::rollout::phase_of("dep-x", &r.id, &policy) {
                    out[p] += 1;
                }
            }
            std::hint::black_box(out);
        });
        println!(
            "old deployment count (all shards locked, phase_of): {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        index.count_and_add(&d, Counted::Group(Arc::clone(&group)));
        println!("new group count (shard copies): {:?}", t.elapsed());
        let t = Instant::now();
        index.count_and_add(
            &d,
            Counted::Deployment {
                id: "dep-x".into(),
                group,
                policy,
                target,
            },
        );
        println!(
            "new deployment count (shard copies, one hash): {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        d.snapshot_shards(|_| {}, |_| {});
        println!(
            "longest lock hold is one shard's pointer copy; all copies: {:?}",
            t.elapsed()
        );
    }
}
