//! What the poll path reads: the running deployments as an immutable snapshot (swapped
//! whole when a deployment changes state or phase), plus, per deployment, the devices
//! whose update is running or has failed (small sets updated as reports arrive). Deciding
//! a directive reads memory only and holds each lock for a lookup.

use std::collections::HashSet;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use ota_common::api::UpdateDirective;

use super::groups::Group;
use super::model::{Deployment, Progress, ReleaseTarget};
use crate::devices::{DeviceRecord, DeviceStatus};
use crate::rollout::{reached, DeploymentState, RolloutPolicy};

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Each write is a single insert or remove: the set is consistent even after a panic.
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The devices of one running deployment that a paused rollout still serves (running)
/// and that it never serves again (failed).
#[derive(Debug, Default)]
pub struct DeviceSets {
    running: RwLock<HashSet<String>>,
    failed: RwLock<HashSet<String>>,
}

impl DeviceSets {
    /// Files `device` under its new progress.
    pub fn set(&self, device: &str, progress: Progress) {
        match progress {
            Progress::InProgress => {
                write(&self.running).insert(device.to_owned());
            }
            Progress::Succeeded => {
                write(&self.running).remove(device);
            }
            Progress::Failed => {
                write(&self.running).remove(device);
                write(&self.failed).insert(device.to_owned());
            }
        }
    }

    /// Whether the device's update is running.
    pub fn is_running(&self, device: &str) -> bool {
        read(&self.running).contains(device)
    }

    /// Whether the device failed or rolled back in this deployment.
    pub fn has_failed(&self, device: &str) -> bool {
        read(&self.failed).contains(device)
    }

    /// The devices that failed or rolled back in this deployment.
    pub fn failed(&self) -> Vec<String> {
        read(&self.failed).iter().cloned().collect()
    }
}

/// One running deployment as the poll path sees it.
#[derive(Debug)]
pub struct LiveDeployment {
    id: String,
    release: String,
    target: ReleaseTarget,
    group: Arc<Group>,
    policy: RolloutPolicy,
    phase: usize,
    /// Active: new devices are sent the release. Paused: only running updates continue.
    accepting: bool,
    created_at: DateTime<Utc>,
    devices: Arc<DeviceSets>,
}

impl LiveDeployment {
    /// The view of `dep` (which must be live) with its group and device sets.
    pub fn new(dep: &Deployment, group: Arc<Group>, devices: Arc<DeviceSets>) -> Self {
        LiveDeployment {
            id: dep.id.clone(),
            release: dep.release.clone(),
            target: ReleaseTarget::of(dep),
            group,
            policy: dep.policy.clone(),
            phase: dep.phase,
            accepting: dep.status == DeploymentState::Active,
            created_at: dep.created_at,
            devices,
        }
    }

    /// Whether this deployment sends `rec` its release now.
    fn offers(&self, rec: &DeviceRecord) -> bool {
        self.target.wanted_by(rec)
            && self.group.contains(rec)
            && reached(&self.id, &rec.id, &self.policy, self.phase)
            && !self.devices.has_failed(&rec.id)
            && (self.accepting || self.devices.is_running(&rec.id))
    }
}

/// Every running deployment, most preferred first: the highest release version, then the
/// oldest deployment (a device in several running deployments gets the newest release).
#[derive(Debug, Default)]
pub struct LiveSet {
    list: Vec<LiveDeployment>,
}

impl LiveSet {
    /// The set, ordered by preference.
    pub fn new(mut list: Vec<LiveDeployment>) -> Self {
        list.sort_by(|a, b| {
            b.target
                .version
                .cmp(&a.target.version)
                .then(a.created_at.cmp(&b.created_at))
                .then(a.id.cmp(&b.id))
        });
        LiveSet { list }
    }

    /// The update `rec` should install now, if any: memory only.
    pub fn directive_for(&self, rec: &DeviceRecord) -> Option<UpdateDirective> {
        if rec.status != DeviceStatus::Accepted || self.list.is_empty() {
            return None;
        }
        self.list
            .iter()
            .find(|d| d.offers(rec))
            .map(|d| UpdateDirective {
                target: d.release.clone(),
                version: d.target.version_text.clone(),
                deployment: Some(d.id.clone()),
            })
    }

    /// How many deployments are running.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::deployments::groups::{GroupFilter, Membership};
    use crate::rollout::{PhaseCounts, PhaseSpec};

    fn dep(id: &str, version: &str, status: DeploymentState) -> Deployment {
        let now = Utc::now();
        Deployment {
            id: id.into(),
            release: format!("fw-{version}"),
            version: version.into(),
            hardware_ids: vec!["hw".into()],
            group: "all".into(),
            policy: RolloutPolicy {
                phases: vec![PhaseSpec {
                    percent: 100,
                    min_wait_secs: 0,
                }],
                failure_threshold_percent: 50,
                min_devices: 1,
            },
            status,
            phase: 0,
            phase_started_at: now,
            counts: vec![PhaseCounts::default()],
            baseline: PhaseCounts::default(),
            targeted: None,
            created_at: now,
            created_by: "op".into(),
            updated_at: now,
            finished_at: None,
        }
    }

    fn all() -> Arc<Group> {
        Arc::new(Group {
            name: "all".into(),
            members: Membership::Dynamic {
                filter: GroupFilter::default(),
            },
            created_at: Utc::now(),
            created_by: "op".into(),
        })
    }

    fn device(id: &str, version: &str) -> DeviceRecord {
        let mut r = DeviceRecord::new(id, DeviceStatus::Accepted, "t", Utc::now());
        r.hardware_id = Some("hw".into());
        r.current_version = Some(version.into());
        r
    }

    #[test]
    fn directives_follow_version_hardware_state_and_failures() {
        let sets = Arc::new(DeviceSets::default());
        let live = LiveSet::new(vec![LiveDeployment::new(
            &dep("dep-a", "2.0.0", DeploymentState::Active),
            all(),
            Arc::clone(&sets),
        )]);
        let d = live.directive_for(&device("d1", "1.0.0")).unwrap();
        assert_eq!(
            (d.target.as_str(), d.deployment.as_deref()),
            ("fw-2.0.0", Some("dep-a"))
        );
        assert!(live.directive_for(&device("d1", "2.0.0")).is_none());
        assert!(live.directive_for(&device("d1", "3.0.0")).is_none());
        let mut other_hw = device("d1", "1.0.0");
        other_hw.hardware_id = Some("other".into());
        assert!(live.directive_for(&other_hw).is_none());
        let mut pending = device("d1", "1.0.0");
        pending.status = DeviceStatus::Pending;
        assert!(live.directive_for(&pending).is_none());
        sets.set("d1", Progress::Failed);
        assert!(live.directive_for(&device("d1", "1.0.0")).is_none());
        assert!(live.directive_for(&device("d2", "1.0.0")).is_some());
    }

    #[test]
    fn paused_deployments_serve_only_running_updates_and_newest_wins() {
        let sets = Arc::new(DeviceSets::default());
        let paused = DeploymentState::Paused {
            reason: "r".into(),
            automatic: false,
        };
        let live = LiveSet::new(vec![LiveDeployment::new(
            &dep("dep-p", "2.0.0", paused),
            all(),
            Arc::clone(&sets),
        )]);
        assert!(live.directive_for(&device("d1", "1.0.0")).is_none());
        sets.set("d1", Progress::InProgress);
        assert!(live.directive_for(&device("d1", "1.0.0")).is_some());
        sets.set("d1", Progress::Succeeded);
        assert!(live.directive_for(&device("d1", "1.0.0")).is_none());

        let live = LiveSet::new(vec![
            LiveDeployment::new(
                &dep("dep-old", "2.0.0", DeploymentState::Active),
                all(),
                Arc::default(),
            ),
            LiveDeployment::new(
                &dep("dep-new", "2.1.0", DeploymentState::Active),
                all(),
                Arc::default(),
            ),
        ]);
        assert_eq!(live.len(), 2);
        let d = live.directive_for(&device("d1", "1.0.0")).unwrap();
        assert_eq!(d.deployment.as_deref(), Some("dep-new"));
        let d = live.directive_for(&device("d1", "2.0.0")).unwrap();
        assert_eq!(d.version, "2.1.0");
    }
}
