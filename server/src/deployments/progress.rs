//! What devices report moves deployments: counting status reports, the automatic pause,
//! and the tick that advances phases and completes deployments. Every function blocks on
//! disk I/O: call it from a blocking thread.
//!
//! A counted report writes the device's progress and the deployment's counters in one
//! batch under the book lock, flushed before the device is answered; a pause lands in
//! the same batch with its audit entry (actor `server`), and its anomaly is raised after
//! the lock is released.

use chrono::{DateTime, Utc};
use ota_common::api::StatusReport;
use serde_json::json;

use super::engine::SERVER_ACTOR;
use super::model::{
    advance, count, progress_key, Deployment, DeviceProgress, Progress, ReleaseTarget,
    DEPLOYMENTS_TREE, DEPLOYMENT_DEVICES_TREE,
};
use super::{Book, Fleet, FleetError};
use crate::rollout::{reached, DeploymentState, PhaseCounts, Step};
use crate::store::{Op, StoreExt};

/// What one tick changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickOutcome {
    /// Deployments moved to their next phase.
    pub advanced: Vec<String>,
    /// Deployments completed.
    pub completed: Vec<String>,
    /// Deployments paused by the failure rule.
    pub paused: Vec<String>,
}

/// An automatic pause to announce as an anomaly, once the book is unlocked.
struct PauseNotice {
    deployment: String,
    device: Option<String>,
    reason: String,
}

impl Fleet {
    /// Counts a status report that names a deployment, and pauses the deployment if the
    /// failure rule says so. Idempotent: a retried or late report changes nothing. Reports
    /// the deployment could not have caused (unknown deployment, other target, a device
    /// outside its audience) are ignored. Returns whether it paused the deployment.
    pub fn on_status(
        &self,
        device: &str,
        report: &StatusReport,
        now: DateTime<Utc>,
    ) -> Result<bool, FleetError> {
        let Some(dep_id) = report.deployment.as_deref() else {
            return Ok(false);
        };
        let mut book = self.book();
        let Some(current) = book.deployments.get(dep_id) else {
            tracing::debug!(
                device,
                deployment = dep_id,
                "status report names an unknown deployment"
            );
            return Ok(false);
        };
        if report.target != current.release {
            tracing::debug!(
                device,
                deployment = dep_id,
                "status report for another target"
            );
            return Ok(false);
        }
        let key = progress_key(dep_id, device);
        let prev: Option<DeviceProgress> = self.store.get_json(DEPLOYMENT_DEVICES_TREE, &key)?;
        if prev.is_none() && !self.could_have_sent(&book, current, device) {
            tracing::warn!(
                device,
                deployment = dep_id,
                "status report from a device this deployment did not reach; ignored"
            );
            return Ok(false);
        }
        let Some(next) = advance(
            prev.as_ref().map(|p| p.progress),
            Progress::of(report.state),
        ) else {
            return Ok(false);
        };
        let mut dep = current.clone();
        let phase = prev
            .as_ref()
            .map_or(dep.phase, |p| p.phase)
            .min(dep.counts.len().saturating_sub(1));
        if let Some(c) = dep.counts.get_mut(phase) {
            count(c, prev.as_ref().map(|p| p.progress), next);
        }
        dep.updated_at = now;
        let progress = DeviceProgress {
            phase,
            progress: next,
            state: report.state,
            at: now,
        };
        let mut ops = vec![Op::put_json(DEPLOYMENT_DEVICES_TREE, key, &progress)?];
        let pause = match (&dep.status, dep.step(now)) {
            (DeploymentState::Active, Step::Pause { reason }) => Some(reason),
            _ => None,
        };
        let Some(reason) = pause else {
            ops.push(Op::put_json(DEPLOYMENTS_TREE, dep.id.as_bytes(), &dep)?);
            self.store.apply_batch(ops)?;
            note_progress(&mut book, dep_id, device, next);
            book.deployments.insert(dep.id.clone(), dep);
            drop(book);
            self.store.flush()?;
            return Ok(false);
        };
        // The progress and the pause land together with the audit entry.
        dep.status = DeploymentState::Paused {
            reason: reason.clone(),
            automatic: true,
        };
        dep.updated_at = now;
        ops.push(Op::put_json(DEPLOYMENTS_TREE, dep.id.as_bytes(), &dep)?);
        let detail = json!({"reason": reason, "automatic": true, "device": device});
        self.audit
            .append_with(ops, SERVER_ACTOR, "deployment.pause", dep_id, detail, now)?;
        note_progress(&mut book, dep_id, device, next);
        book.deployments.insert(dep.id.clone(), dep);
        self.install_live(&book);
        drop(book);
        tracing::warn!(deployment = dep_id, %reason, "deployment paused automatically");
        self.announce_pause(
            &PauseNotice {
                deployment: dep_id.to_owned(),
                device: Some(device.to_owned()),
                reason,
            },
            now,
        )?;
        Ok(true)
    }

    /// Whether `dep` could have sent `device` its release: a member of its group reached
    /// by the current phase.
    fn could_have_sent(&self, book: &Book, dep: &Deployment, device: &str) -> bool {
        let Some(rec) = self.devices.cached(device) else {
            return false;
        };
        book.groups
            .get(&dep.group)
            .is_some_and(|g| g.contains(&rec))
            && reached(&dep.id, device, &dep.policy, dep.phase)
    }

    /// Raises the server-side anomaly `rollout_paused` on the device whose failure
    /// tripped the pause.
    fn announce_pause(&self, notice: &PauseNotice, now: DateTime<Utc>) -> Result<(), FleetError> {
        let Some(device) = &notice.device else {
            return Ok(());
        };
        let local_id = format!(
            "rollout_paused:{}:{}",
            notice.deployment,
            now.timestamp_micros()
        );
        let message = format!(
            "deployment {} paused itself: {}",
            notice.deployment, notice.reason
        );
        let detail = json!({"deployment": notice.deployment, "reason": notice.reason});
        self.devices.record_server_anomaly(
            device,
            &local_id,
            "rollout_paused",
            &message,
            detail,
            now,
        )?;
        Ok(())
    }

    /// Moves every active deployment on: next phase when its wait is over and it is
    /// settled, completion after the last phase, or an automatic pause. Audited with
    /// actor `server`.
    pub fn tick(&self, now: DateTime<Utc>) -> Result<TickOutcome, FleetError> {
        let mut out = TickOutcome::default();
        let mut notices = Vec::new();
        {
            let mut book = self.book();
            let active: Vec<String> = book
                .deployments
                .values()
                .filter(|d| d.status == DeploymentState::Active)
                .map(|d| d.id.clone())
                .collect();
            for id in active {
                let mut dep = book.deployments[&id].clone();
                match dep.step(now) {
                    Step::Stay => {}
                    // The phase reaches devices but none has started: they poll every few
                    // minutes, and advancing now would skip the canary. Wait for them.
                    Step::Advance { .. } if self.phase_not_started(&dep) => {}
                    Step::Advance { to } => {
                        let detail = json!({"from": dep.phase, "to": to,
                            "counts": dep.counts.get(dep.phase)});
                        dep.phase = to;
                        dep.phase_started_at = now;
                        dep.baseline = PhaseCounts::default();
                        self.commit(
                            &mut book,
                            dep,
                            SERVER_ACTOR,
                            "deployment.advance",
                            detail,
                            now,
                        )?;
                        out.advanced.push(id);
                    }
                    Step::Complete if self.waiting(&book, &dep) > 0 => {}
                    Step::Complete => {
                        dep.status = DeploymentState::Completed;
                        dep.finished_at = Some(now);
                        let detail = json!({"counts": dep.counts});
                        self.commit(
                            &mut book,
                            dep,
                            SERVER_ACTOR,
                            "deployment.complete",
                            detail,
                            now,
                        )?;
                        out.completed.push(id);
                    }
                    Step::Pause { reason } => {
                        dep.status = DeploymentState::Paused {
                            reason: reason.clone(),
                            automatic: true,
                        };
                        let detail = json!({"reason": reason, "automatic": true});
                        let device = book.last_failed.get(&id).cloned();
                        self.commit(
                            &mut book,
                            dep,
                            SERVER_ACTOR,
                            "deployment.pause",
                            detail,
                            now,
                        )?;
                        notices.push(PauseNotice {
                            deployment: id.clone(),
                            device,
                            reason,
                        });
                        out.paused.push(id);
                    }
                }
            }
        }
        for n in &notices {
            self.announce_pause(n, now)?;
        }
        Ok(out)
    }

    /// How many members of a running deployment's audience still wait for its release:
    /// those that want it, less those that failed in it (which it never serves again).
    /// Whether the current phase newly reaches some devices and none of them has started.
    fn phase_not_started(&self, dep: &Deployment) -> bool {
        let Some(cumulative) = self.index.targeted(&dep.id) else {
            return false;
        };
        let before = dep
            .phase
            .checked_sub(1)
            .and_then(|p| cumulative.get(p).copied())
            .unwrap_or(0);
        let reached_here = cumulative
            .get(dep.phase)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before);
        let c = dep.counts.get(dep.phase).copied().unwrap_or_default();
        reached_here > 0 && c.started == 0 && c.succeeded + c.failed == 0
    }

    fn waiting(&self, book: &Book, dep: &Deployment) -> u64 {
        let outstanding = self.index.outstanding(&dep.id).unwrap_or(0);
        let Some(sets) = book.sets.get(&dep.id) else {
            return outstanding;
        };
        let target = ReleaseTarget::of(dep);
        let group = book.groups.get(&dep.group);
        let failed_waiting = sets
            .failed()
            .iter()
            .filter_map(|id| self.devices.cached(id))
            .filter(|r| group.is_some_and(|g| g.contains(r)) && target.wanted_by(r))
            .count();
        outstanding.saturating_sub(u64::try_from(failed_waiting).unwrap_or(u64::MAX))
    }
}

/// Files a device's new progress in the running deployment's sets (after it is stored).
fn note_progress(book: &mut Book, deployment: &str, device: &str, progress: Progress) {
    let Some(sets) = book.sets.get(deployment) else {
        return;
    };
    sets.set(device, progress);
    if progress == Progress::Failed {
        book.last_failed
            .insert(deployment.to_owned(), device.to_owned());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use std::sync::Arc;

    use chrono::Duration;
    use ota_common::api::UpdateState;

    use super::*;
    use crate::deployments::testing::{device, group, publish, report, spec};
    use crate::deployments::FleetConfig;
    use crate::devices::Devices;

    #[test]
    fn failures_pause_resume_sets_a_baseline_and_the_tick_completes() {
        let (state, _dir) = crate::devices::testing::state();
        let t0 = Utc::now();
        publish(&state, "fw-2", "2.0.0");
        for i in 0..10 {
            device(&state, &format!("d{i}"), "1.0.0", t0);
        }
        group(&state);
        assert_eq!(state.fleet.group("beta").unwrap().member_count, 10);
        let view = state
            .fleet
            .create_deployment(&state.repo, spec(&[(100, 0)], 50, 2), "op", t0)
            .unwrap();
        let id = view.id.clone();
        assert_eq!(view.phases[0].targeted, 10);
        let rec = |i: usize| state.devices.cached(&format!("d{i}")).unwrap();
        assert!(state.fleet.directive_for(&rec(0)).is_some());
        // One failure of one finished device: under min_devices.
        assert!(!state
            .fleet
            .on_status("d0", &report(1, &id, UpdateState::RolledBack), t0)
            .unwrap());
        // Retried: counted once.
        assert!(!state
            .fleet
            .on_status("d0", &report(1, &id, UpdateState::RolledBack), t0)
            .unwrap());
        assert!(state.fleet.directive_for(&rec(0)).is_none());
        assert!(state
            .fleet
            .on_status("d1", &report(2, &id, UpdateState::Failed), t0)
            .unwrap());
        let v = state.fleet.deployment(&id).unwrap();
        assert_eq!(v.state, "paused");
        assert_eq!((v.phases[0].started, v.phases[0].failed), (2, 2));
        let entry = state.audit.list(0, 100).unwrap().pop().unwrap();
        assert_eq!(
            (entry.actor.as_str(), entry.action.as_str()),
            ("server", "deployment.pause")
        );
        assert!(entry.detail["reason"]
            .as_str()
            .unwrap()
            .contains("failure rate"));
        let (feed, _) = state.devices.list_anomalies(None, 10).unwrap();
        assert_eq!(
            (feed[0].kind.as_str(), feed[0].device_id.as_str()),
            ("rollout_paused", "d1")
        );
        // Paused: nobody new is sent the release, a running update continues.
        assert!(state.fleet.directive_for(&rec(2)).is_none());
        assert!(matches!(
            state.fleet.resume("nope", "op", t0),
            Err(FleetError::NoDeployment(_))
        ));
        assert!(matches!(
            state.fleet.pause(&id, None, "op", t0),
            Err(FleetError::Transition { .. })
        ));
        let v = state.fleet.resume(&id, "op", t0).unwrap();
        assert_eq!((v.state, v.baseline.failed), ("active", 2));
        // The old failures do not pause it again; the tick waits for running updates.
        state
            .fleet
            .on_status("d2", &report(3, &id, UpdateState::Downloading), t0)
            .unwrap();
        state
            .fleet
            .on_status("d3", &report(4, &id, UpdateState::Downloading), t0)
            .unwrap();
        assert_eq!(state.fleet.tick(t0).unwrap(), TickOutcome::default());
        state
            .fleet
            .pause(&id, Some("look".into()), "op", t0)
            .unwrap();
        assert!(state.fleet.directive_for(&rec(2)).is_some());
        assert!(state.fleet.directive_for(&rec(4)).is_none());
        state.fleet.resume(&id, "op", t0).unwrap();
        for (n, d) in [(5, "d2"), (6, "d3")] {
            state
                .fleet
                .on_status(d, &report(n, &id, UpdateState::Committed), t0)
                .unwrap();
        }
        // Settled, but eight members the release fits do not run it yet (two failed and
        // are not waited for): the deployment stays active to serve the others.
        assert_eq!(state.fleet.tick(t0).unwrap(), TickOutcome::default());
        let v = state.fleet.deployment(&id).unwrap();
        assert_eq!((v.state, v.outstanding), ("active", Some(10)));
        for i in 2..10 {
            device(&state, &format!("d{i}"), "2.0.0", t0);
        }
        assert_eq!(state.fleet.deployment(&id).unwrap().outstanding, Some(2));
        let out = state.fleet.tick(t0).unwrap();
        assert_eq!(out.completed, std::slice::from_ref(&id));
        let v = state.fleet.deployment(&id).unwrap();
        assert_eq!((v.state, v.outstanding), ("completed", None));
        assert_eq!(v.phases[0].targeted, 10);
        assert_eq!(
            (
                v.phases[0].started,
                v.phases[0].succeeded,
                v.phases[0].failed
            ),
            (4, 2, 2)
        );
        assert!(state.fleet.directive_for(&rec(5)).is_none());
        // A finished deployment's group can go.
        state.fleet.delete_group("beta", "op", t0).unwrap();
    }
    #[test]
    fn phases_advance_and_reports_from_outside_the_audience_are_ignored() {
        let (state, _dir) = crate::devices::testing::state();
        let t0 = Utc::now();
        publish(&state, "fw-2", "2.0.0");
        for i in 0..40 {
            device(&state, &format!("d{i}"), "1.0.0", t0);
        }
        group(&state);
        let s = spec(&[(25, 60), (100, 0)], 50, 1);
        let policy = s.policy().unwrap();
        let id = state
            .fleet
            .create_deployment(&state.repo, s, "op", t0)
            .unwrap()
            .id;
        let (first, rest): (Vec<String>, Vec<String>) = (0..40)
            .map(|i| format!("d{i}"))
            .partition(|d| crate::rollout::reached(&id, d, &policy, 0));
        assert!(!first.is_empty() && !rest.is_empty());
        // A device of a later phase cannot count in this one.
        state
            .fleet
            .on_status(&rest[0], &report(1, &id, UpdateState::Failed), t0)
            .unwrap();
        // Nor can another target.
        let mut other = report(2, &id, UpdateState::Failed);
        other.target = "fw-9".into();
        state.fleet.on_status(&first[0], &other, t0).unwrap();
        assert_eq!(state.fleet.deployment(&id).unwrap().phases[0].started, 0);
        for (n, d) in first.iter().enumerate() {
            state
                .fleet
                .on_status(d, &report(10 + n as u32, &id, UpdateState::Committed), t0)
                .unwrap();
        }
        assert_eq!(
            state.fleet.tick(t0 + Duration::seconds(30)).unwrap(),
            TickOutcome::default()
        );
        let out = state.fleet.tick(t0 + Duration::seconds(61)).unwrap();
        assert_eq!(out.advanced, std::slice::from_ref(&id));
        let v = state.fleet.deployment(&id).unwrap();
        assert_eq!(v.phase, 1);
        assert_eq!(v.phases[0].succeeded as usize, first.len());
        assert_eq!(
            (v.phases[0].targeted as usize, v.phases[1].targeted),
            (first.len(), 40)
        );
        assert!(state
            .fleet
            .directive_for(&state.devices.cached(&rest[0]).unwrap())
            .is_some());
        // The group cannot go while it runs; withdrawal aborts it.
        assert!(matches!(
            state.fleet.delete_group("beta", "op", t0),
            Err(FleetError::GroupInUse { .. })
        ));
        assert_eq!(
            state.fleet.abort_release("fw-2", "pub", t0).unwrap(),
            std::slice::from_ref(&id)
        );
        let v = state.fleet.deployment(&id).unwrap();
        assert_eq!(v.state, "aborted");
        assert!(state
            .fleet
            .directive_for(&state.devices.cached(&rest[0]).unwrap())
            .is_none());
        assert!(matches!(
            state.fleet.abort(&id, None, "op", t0),
            Err(FleetError::Transition { .. })
        ));
    }
    #[test]
    fn a_restart_restores_counters_failures_and_the_summary() {
        let (state, _dir) = crate::devices::testing::state();
        let t0 = Utc::now();
        publish(&state, "fw-2", "2.0.0");
        for i in 0..6 {
            device(&state, &format!("d{i}"), "1.0.0", t0);
        }
        group(&state);
        let id = state
            .fleet
            .create_deployment(&state.repo, spec(&[(100, 3600)], 100, 100), "op", t0)
            .unwrap()
            .id;
        state
            .fleet
            .on_status("d0", &report(1, &id, UpdateState::RolledBack), t0)
            .unwrap();
        state
            .fleet
            .on_status("d1", &report(2, &id, UpdateState::Booted), t0)
            .unwrap();
        state
            .devices
            .record_status("d1", &report(2, &id, UpdateState::Booted), t0)
            .unwrap();
        let before = state.fleet.summary();
        assert_eq!(before.by_update_state.updating, 1);
        let devices =
            Arc::new(Devices::open(Arc::clone(&state.store), Default::default()).unwrap());
        let fleet = crate::deployments::Fleet::open(
            Arc::clone(&state.store),
            Arc::clone(&state.audit),
            Arc::clone(&devices),
            FleetConfig::default(),
            t0,
        )
        .unwrap();
        assert_eq!(fleet.summary(), before);
        let v = fleet.deployment(&id).unwrap();
        assert_eq!(
            (
                v.phases[0].started,
                v.phases[0].failed,
                v.phases[0].targeted
            ),
            (2, 1, 6)
        );
        assert!(fleet
            .directive_for(&devices.cached("d0").unwrap())
            .is_none());
        assert!(fleet
            .directive_for(&devices.cached("d2").unwrap())
            .is_some());
        fleet.pause(&id, None, "op", t0).unwrap();
        assert!(fleet
            .directive_for(&devices.cached("d1").unwrap())
            .is_some());
        assert!(fleet
            .directive_for(&devices.cached("d2").unwrap())
            .is_none());
        // One fleet per registry.
        assert!(matches!(
            crate::deployments::Fleet::open(
                Arc::clone(&state.store),
                Arc::clone(&state.audit),
                devices,
                FleetConfig::default(),
                t0,
            ),
            Err(FleetError::ObserverTaken)
        ));
    }
}
