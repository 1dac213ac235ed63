//! Counters over the fleet, kept up to date as device records change rather than computed
//! by scanning: the fleet summary, the member count of each group, and, for each running
//! deployment, how many members of its group each phase reaches and how many of them
//! still want its release.
//!
//! The index is the registry's [`RecordObserver`]: every change of a cached record comes
//! with its previous version, under the record's shard lock, so the counters move by
//! exact differences. The cache holds every registered device (loaded once at startup by
//! [`crate::devices::Devices::load_all`]), so the counters cover the fleet. Groups and
//! deployments are registered with a count taken while the whole cache is locked
//! ([`crate::devices::Devices::with_cache_locked`]), so nothing is counted twice or missed.
//!
//! Cost: reading the summary is O(versions); a record change is O(groups + running
//! deployments) membership checks (a stable hash only when membership changes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use ota_common::api::UpdateState;
use serde::Serialize;

use super::groups::Group;
use super::model::ReleaseTarget;
use crate::devices::{DeviceRecord, DeviceStatus, RecordObserver};
use crate::rollout::{phase_of, RolloutPolicy};

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
            if let Some(p) = phase_of(deployment, &rec.id, policy) {
                out.first_reached[p] += 1;
            }
            if target.wanted_by(rec) {
                out.outstanding += 1;
            }
        }
        out
    }
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

    /// Starts counting the members of `group`, `members` of them now (counted with the
    /// cache locked).
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

    /// Starts counting the audience of a running deployment, from `now` (counted with
    /// the cache locked).
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
                    phase_of(dep, id, &t.policy).and_then(|p| t.first_reached.get_mut(p))
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
}
