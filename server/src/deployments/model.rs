//! What a deployment is, as stored, and the pure rules that move it: checking a request,
//! a device's progress through one deployment, and the counters that progress feeds.
//! No store, no clock, no locks.

use chrono::{DateTime, Utc};
use ota_common::api::UpdateState;
use ota_common::release::ReleaseVersion;
use serde::{Deserialize, Serialize};

use crate::devices::{DeviceRecord, DeviceStatus};

use crate::rollout::{next_step, DeploymentState, PhaseCounts, PhaseSpec, RolloutPolicy, Step};

/// Store tree of deployments, keyed by id.
pub const DEPLOYMENTS_TREE: &str = "deployments";
/// Store tree of each device's progress in a deployment, keyed `{deployment}/{device}`.
pub const DEPLOYMENT_DEVICES_TREE: &str = "deployment_devices";
/// Most phases in a policy.
pub const MAX_PHASES: usize = 20;
/// Longest minimum wait of a phase (30 days).
pub const MAX_MIN_WAIT_SECS: u64 = 30 * 86_400;
/// Longest operator-given reason.
pub const MAX_REASON_LEN: usize = 1024;

/// A deployment to create (`POST /api/v1/deployments`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Target name of the release in the signed targets metadata.
    pub release: String,
    /// Group name.
    pub group: String,
    /// Phases, cumulative percentages rising to at most 100.
    pub phases: Vec<PhaseSpec>,
    /// Pause when failures reach this share of the finished devices of a phase.
    pub failure_threshold_percent: u8,
    /// ...once at least this many devices of the phase finished.
    pub min_devices: u64,
}

impl DeploymentSpec {
    /// The rollout policy, checked.
    pub fn policy(&self) -> Result<RolloutPolicy, String> {
        let policy = RolloutPolicy {
            phases: self.phases.clone(),
            failure_threshold_percent: self.failure_threshold_percent,
            min_devices: self.min_devices,
        };
        policy.validate().map_err(|e| e.to_string())?;
        if policy.phases.len() > MAX_PHASES {
            return Err(format!(
                "at most {MAX_PHASES} phases, got {}",
                policy.phases.len()
            ));
        }
        if let Some(p) = policy
            .phases
            .iter()
            .find(|p| p.min_wait_secs > MAX_MIN_WAIT_SECS)
        {
            return Err(format!(
                "min_wait_secs is at most {MAX_MIN_WAIT_SECS} (30 days), got {}",
                p.min_wait_secs
            ));
        }
        Ok(policy)
    }
}

/// A stored deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Id (`dep-` and 16 hex digits); devices echo it in their status reports.
    pub id: String,
    /// Target name of the release.
    pub release: String,
    /// Its version, from the signed target.
    pub version: String,
    /// Boards it fits, from the signed target.
    pub hardware_ids: Vec<String>,
    /// Group name.
    pub group: String,
    /// Rollout rules.
    pub policy: RolloutPolicy,
    /// Active, paused, aborted or completed.
    pub status: DeploymentState,
    /// Index of the current phase.
    pub phase: usize,
    /// When the current phase began.
    pub phase_started_at: DateTime<Utc>,
    /// Progress counted in each phase (a device counts in the phase it started in).
    pub counts: Vec<PhaseCounts>,
    /// The current phase's counts when an operator last resumed it: the failure detector
    /// judges only what happened since, so a resume is not undone by the failures that
    /// caused the pause.
    #[serde(default)]
    pub baseline: PhaseCounts,
    /// Cumulative group members reached by each phase, frozen when the deployment ends
    /// (while it runs they are counted live).
    #[serde(default)]
    pub targeted: Option<Vec<u64>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// By whom.
    pub created_by: String,
    /// Last change of state, phase or counters.
    pub updated_at: DateTime<Utc>,
    /// When it was aborted or completed.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl Deployment {
    /// Whether it is still running (active or paused): it may send directives, its group
    /// cannot be deleted, and it is tracked in memory.
    pub fn is_live(&self) -> bool {
        matches!(
            self.status,
            DeploymentState::Active | DeploymentState::Paused { .. }
        )
    }

    /// The current phase's counts, less the baseline set by the last resume.
    pub fn judged_counts(&self) -> PhaseCounts {
        let c = self.counts.get(self.phase).copied().unwrap_or_default();
        PhaseCounts {
            started: c.started.saturating_sub(self.baseline.started),
            succeeded: c.succeeded.saturating_sub(self.baseline.succeeded),
            failed: c.failed.saturating_sub(self.baseline.failed),
        }
    }

    /// What the rollout rules say now (meaningful for an active deployment).
    pub fn step(&self, now: DateTime<Utc>) -> Step {
        next_step(
            &self.policy,
            self.phase,
            self.phase_started_at,
            &self.judged_counts(),
            now,
        )
    }

    /// `"active"`, `"paused"`, `"aborted"` or `"completed"`.
    pub fn state_name(&self) -> &'static str {
        match self.status {
            DeploymentState::Active => "active",
            DeploymentState::Paused { .. } => "paused",
            DeploymentState::Aborted { .. } => "aborted",
            DeploymentState::Completed => "completed",
        }
    }
}

/// The release a deployment sends, as far as choosing devices goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseTarget {
    /// Version as published.
    pub version_text: String,
    /// Parsed (`None` if it does not parse, which publishing prevents).
    pub version: Option<ReleaseVersion>,
    /// Boards it fits.
    pub hardware_ids: Vec<String>,
}

impl ReleaseTarget {
    /// The release of `dep`.
    pub fn of(dep: &Deployment) -> Self {
        ReleaseTarget {
            version_text: dep.version.clone(),
            version: dep.version.parse().ok(),
            hardware_ids: dep.hardware_ids.clone(),
        }
    }

    /// Whether `rec` is an accepted device the release fits and that runs an older (or
    /// unparseable) version: never the version it runs, nor an older one (the agent
    /// refuses downgrades, and a refusal would count as a failure of the rollout).
    pub fn wanted_by(&self, rec: &DeviceRecord) -> bool {
        let fits = rec
            .hardware_id
            .as_deref()
            .is_some_and(|hw| self.hardware_ids.iter().any(|h| h == hw));
        let current: Option<ReleaseVersion> =
            rec.current_version.as_deref().and_then(|v| v.parse().ok());
        let newer = match (&current, &self.version) {
            (Some(cur), Some(v)) => cur < v,
            _ => rec.current_version.as_deref() != Some(self.version_text.as_str()),
        };
        rec.status == DeviceStatus::Accepted && fits && newer
    }
}

/// Where one device stands in one deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// Downloading, installed or booted.
    InProgress,
    /// Committed.
    Succeeded,
    /// Failed or rolled back: never offered this deployment's release again.
    Failed,
}

impl Progress {
    /// The progress a report in `state` shows.
    pub fn of(state: UpdateState) -> Self {
        match state {
            UpdateState::Downloading | UpdateState::Installed | UpdateState::Booted => {
                Progress::InProgress
            }
            UpdateState::Committed => Progress::Succeeded,
            UpdateState::RolledBack | UpdateState::Failed => Progress::Failed,
        }
    }
}

/// A device's progress in a deployment, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProgress {
    /// The phase it started in (the one its counters live in).
    pub phase: usize,
    /// Where it stands.
    pub progress: Progress,
    /// The report state that put it there.
    pub state: UpdateState,
    /// When that report was received.
    pub at: DateTime<Utc>,
}

/// The progress after a report showing `next`, or `None` when the report changes nothing.
///
/// Reports may arrive late, twice or out of order (devices queue and retry them), so the
/// progress only moves forward: nothing leaves `Failed`, a late "downloading" does not
/// undo a commit, and only a failure can follow a success (a device that committed and
/// then rolled back).
pub fn advance(prev: Option<Progress>, next: Progress) -> Option<Progress> {
    use Progress::{Failed, InProgress, Succeeded};
    match (prev, next) {
        (None, n) => Some(n),
        (Some(Failed), _) | (Some(InProgress), InProgress) | (Some(Succeeded), InProgress) => None,
        (Some(Succeeded), Succeeded) => None,
        (Some(InProgress), n) | (Some(Succeeded), n @ Failed) => Some(n),
    }
}

/// Moves a device's contribution to its phase's counters from `prev` to `next`.
pub fn count(counts: &mut PhaseCounts, prev: Option<Progress>, next: Progress) {
    match prev {
        None => counts.started += 1,
        Some(Progress::Succeeded) => counts.succeeded = counts.succeeded.saturating_sub(1),
        Some(Progress::Failed) => counts.failed = counts.failed.saturating_sub(1),
        Some(Progress::InProgress) => {}
    }
    match next {
        Progress::Succeeded => counts.succeeded += 1,
        Progress::Failed => counts.failed += 1,
        Progress::InProgress => {}
    }
}

/// Key of a device's progress in [`DEPLOYMENT_DEVICES_TREE`].
pub fn progress_key(deployment: &str, device: &str) -> Vec<u8> {
    let mut k = deployment_prefix(deployment);
    k.extend_from_slice(device.as_bytes());
    k
}

/// `{deployment}/`: the prefix of a deployment's device progress keys (ids hold no `/`).
pub fn deployment_prefix(deployment: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(deployment.len() + 1);
    k.extend_from_slice(deployment.as_bytes());
    k.push(b'/');
    k
}

/// Checks an operator's reason.
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_REASON_LEN || reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!(
            "reason must be at most {MAX_REASON_LEN} bytes without control characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use Progress::{Failed, InProgress, Succeeded};

    /// Applies a sequence of report states to one device and returns the counters.
    fn run(states: &[UpdateState]) -> (PhaseCounts, Option<Progress>) {
        let mut c = PhaseCounts::default();
        let mut p = None;
        for s in states {
            if let Some(n) = advance(p, Progress::of(*s)) {
                count(&mut c, p, n);
                p = Some(n);
            }
        }
        (c, p)
    }

    #[test]
    fn progress_moves_forward_only_and_counts_once() {
        use UpdateState as S;
        let (c, p) = run(&[S::Downloading, S::Installed, S::Booted, S::Committed]);
        assert_eq!(
            (c.started, c.succeeded, c.failed, p),
            (1, 1, 0, Some(Succeeded))
        );
        // Retried and late reports change nothing.
        let (c, _) = run(&[S::Committed, S::Committed, S::Downloading]);
        assert_eq!((c.started, c.succeeded, c.failed), (1, 1, 0));
        // A rollback after a commit moves the device from succeeded to failed.
        let (c, p) = run(&[S::Downloading, S::Committed, S::RolledBack]);
        assert_eq!(
            (c.started, c.succeeded, c.failed, p),
            (1, 0, 1, Some(Failed))
        );
        // Nothing leaves failed.
        let (c, p) = run(&[S::Failed, S::Downloading, S::Committed]);
        assert_eq!(
            (c.started, c.succeeded, c.failed, p),
            (1, 0, 1, Some(Failed))
        );
        let (c, p) = run(&[S::Booted]);
        assert_eq!(
            (c.started, c.succeeded, c.failed, p),
            (1, 0, 0, Some(InProgress))
        );
    }

    #[test]
    fn counters_over_many_devices_add_up() {
        use UpdateState as S;
        let mut total = PhaseCounts::default();
        let scripts: [&[S]; 4] = [
            &[S::Downloading, S::Committed],
            &[S::Downloading, S::RolledBack, S::Committed],
            &[S::Downloading],
            &[S::Failed],
        ];
        for i in 0..100 {
            let mut p = None;
            for s in scripts[i % 4] {
                if let Some(n) = advance(p, Progress::of(*s)) {
                    count(&mut total, p, n);
                    p = Some(n);
                }
            }
        }
        assert_eq!(
            total,
            PhaseCounts {
                started: 100,
                succeeded: 25,
                failed: 50
            }
        );
    }

    #[test]
    fn judged_counts_subtract_the_resume_baseline() {
        let now = Utc::now();
        let mut d = Deployment {
            id: "dep-1".into(),
            release: "fw".into(),
            version: "2.0.0".into(),
            hardware_ids: vec!["hw".into()],
            group: "g".into(),
            policy: RolloutPolicy {
                phases: vec![PhaseSpec {
                    percent: 100,
                    min_wait_secs: 0,
                }],
                failure_threshold_percent: 50,
                min_devices: 2,
            },
            status: DeploymentState::Active,
            phase: 0,
            phase_started_at: now,
            counts: vec![PhaseCounts {
                started: 4,
                succeeded: 1,
                failed: 3,
            }],
            baseline: PhaseCounts::default(),
            targeted: None,
            created_at: now,
            created_by: "op".into(),
            updated_at: now,
            finished_at: None,
        };
        assert!(matches!(d.step(now), Step::Pause { .. }));
        d.baseline = d.counts[0];
        assert_eq!(d.judged_counts(), PhaseCounts::default());
        assert_eq!(d.step(now), Step::Complete);
        d.counts[0].started += 2;
        d.counts[0].failed += 2;
        assert!(matches!(d.step(now), Step::Pause { .. }));
    }

    #[test]
    fn policies_are_checked() {
        let spec = |phases: Vec<(u8, u64)>, t: u8| DeploymentSpec {
            release: "fw".into(),
            group: "g".into(),
            phases: phases
                .into_iter()
                .map(|(percent, min_wait_secs)| PhaseSpec {
                    percent,
                    min_wait_secs,
                })
                .collect(),
            failure_threshold_percent: t,
            min_devices: 1,
        };
        assert!(spec(vec![(20, 0), (60, 1), (100, 0)], 10).policy().is_ok());
        assert!(spec(vec![], 10).policy().is_err());
        assert!(spec(vec![(60, 0), (20, 0)], 10).policy().is_err());
        assert!(spec(vec![(100, 0)], 0).policy().is_err());
        assert!(spec(vec![(100, MAX_MIN_WAIT_SECS + 1)], 10)
            .policy()
            .is_err());
        assert!(spec((1..=21).map(|p| (p, 0)).collect(), 10)
            .policy()
            .is_err());
        assert!(check_reason("fine").is_ok());
        assert!(check_reason("bad\u{7}").is_err());
    }
}
