//! Phased rollouts as pure logic: which devices a deployment reaches in which phase, when
//! it advances, and when it pauses by itself. No store, no clock: the caller passes the
//! deployment, the counts it keeps, and the time.
//!
//! - Membership is a stable hash of (deployment id, device id) mapped to 0..10 000, so a
//!   device's place does not depend on the order devices appear in, and phase *k* reaches
//!   exactly the devices below its cumulative percentage (each later phase includes the
//!   earlier ones).
//! - A phase advances when its minimum wait has passed and it is healthy; it auto-pauses
//!   when, after a minimum number of finished devices, the failure rate (install failures,
//!   rollbacks, health-gate failures) reaches the threshold.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One phase: the share of the group it reaches (cumulative) and how long to watch it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// Cumulative percentage of the group reached by the end of this phase (1..=100).
    pub percent: u8,
    /// Minimum time in this phase before advancing, in seconds.
    #[serde(default)]
    pub min_wait_secs: u64,
}

/// Where a deployment stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeploymentState {
    /// Devices in the current phase are sent the release.
    Active,
    /// No new device is sent the release; those already updating finish.
    Paused {
        /// Why (operator, or the failure detector's words).
        reason: String,
        /// Whether the failure detector paused it (as opposed to an operator).
        automatic: bool,
    },
    /// Stopped for good: no further installs.
    Aborted {
        /// Why.
        reason: String,
    },
    /// Every phase done.
    Completed,
}

/// The rollout rules of a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// Phases in order; the last should be 100.
    pub phases: Vec<PhaseSpec>,
    /// Pause when failures / finished devices in the current phase reach this percentage.
    pub failure_threshold_percent: u8,
    /// ...but only once this many devices of the phase finished (success or failure).
    pub min_devices: u64,
}

/// Why a policy is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rollout: {0}")]
pub struct PolicyError(pub String);

impl RolloutPolicy {
    /// Checks the phases rise strictly to at most 100 and the numbers make sense.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.phases.is_empty() {
            return Err(PolicyError("at least one phase is needed".into()));
        }
        let mut last = 0u8;
        for p in &self.phases {
            if p.percent == 0 || p.percent > 100 || p.percent <= last {
                return Err(PolicyError(format!(
                    "phase percentages must rise strictly within 1..=100 (got {} after {last})",
                    p.percent
                )));
            }
            last = p.percent;
        }
        if self.failure_threshold_percent == 0 || self.failure_threshold_percent > 100 {
            return Err(PolicyError(
                "failure_threshold_percent must be within 1..=100".into(),
            ));
        }
        Ok(())
    }
}

/// A device's stable position in a deployment, in 0..10 000.
pub fn position(deployment_id: &str, device_id: &str) -> u16 {
    let mut h = Sha256::new();
    h.update(deployment_id.as_bytes());
    h.update([0u8]);
    h.update(device_id.as_bytes());
    let d = h.finalize();
    (u16::from_be_bytes([d[0], d[1]]) as u32 * 10_000 / 65_536) as u16
}

/// Whether `device_id` is reached by phase index `phase` of the deployment.
pub fn reached(deployment_id: &str, device_id: &str, policy: &RolloutPolicy, phase: usize) -> bool {
    let Some(p) = policy.phases.get(phase) else {
        return false;
    };
    u32::from(position(deployment_id, device_id)) < u32::from(p.percent) * 100
}

/// The phase index at which a device is first reached.
pub fn phase_of(deployment_id: &str, device_id: &str, policy: &RolloutPolicy) -> Option<usize> {
    (0..policy.phases.len()).find(|&i| reached(deployment_id, device_id, policy, i))
}

/// Counts of the devices of one phase, kept as reports arrive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseCounts {
    /// Devices sent the release in this phase.
    pub started: u64,
    /// Committed.
    pub succeeded: u64,
    /// Failed install, rolled back, or failed the health gate.
    pub failed: u64,
}

/// What the rollout should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to change.
    Stay,
    /// Move to the next phase.
    Advance {
        /// The new phase index.
        to: usize,
    },
    /// Every phase is done.
    Complete,
    /// Failure rate too high.
    Pause {
        /// Why, in words for the operator and the audit log.
        reason: String,
    },
}

/// Decides the next step of an active deployment in `phase`, entered at `since`.
pub fn next_step(
    policy: &RolloutPolicy,
    phase: usize,
    since: DateTime<Utc>,
    counts: &PhaseCounts,
    now: DateTime<Utc>,
) -> Step {
    let finished = counts.succeeded + counts.failed;
    if finished >= policy.min_devices.max(1)
        && counts.failed * 100 >= u64::from(policy.failure_threshold_percent) * finished
    {
        return Step::Pause {
            reason: format!(
                "phase {} failure rate {}/{} ({}%) reached the threshold of {}%",
                phase + 1,
                counts.failed,
                finished,
                counts.failed * 100 / finished,
                policy.failure_threshold_percent
            ),
        };
    }
    let Some(spec) = policy.phases.get(phase) else {
        return Step::Complete;
    };
    let waited = now - since
        >= Duration::seconds(i64::try_from(spec.min_wait_secs).unwrap_or(i64::MAX / 1000));
    // Advance only when the devices started in this phase have mostly finished: a phase
    // with installs still running is not yet known to be healthy.
    let settled = counts.started == 0 || finished * 2 >= counts.started;
    if waited && settled {
        if phase + 1 < policy.phases.len() {
            Step::Advance { to: phase + 1 }
        } else {
            Step::Complete
        }
    } else {
        Step::Stay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn policy() -> RolloutPolicy {
        RolloutPolicy {
            phases: vec![
                PhaseSpec {
                    percent: 10,
                    min_wait_secs: 60,
                },
                PhaseSpec {
                    percent: 50,
                    min_wait_secs: 60,
                },
                PhaseSpec {
                    percent: 100,
                    min_wait_secs: 0,
                },
            ],
            failure_threshold_percent: 20,
            min_devices: 5,
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().unwrap()
    }

    #[test]
    fn phases_are_cumulative_stable_and_proportional() {
        let p = policy();
        let ids: Vec<String> = (0..10_000).map(|i| format!("dev-{i}")).collect();
        let counts: Vec<usize> = (0..3)
            .map(|ph| ids.iter().filter(|d| reached("dep1", d, &p, ph)).count())
            .collect();
        // Roughly 10 %, 50 %, 100 % of the group, and cumulative.
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
        assert!((4600..5400).contains(&counts[1]), "{counts:?}");
        assert_eq!(counts[2], 10_000);
        for d in &ids {
            if reached("dep1", d, &p, 0) {
                assert!(reached("dep1", d, &p, 1));
            }
            // Stable: same answer every time.
            assert_eq!(position("dep1", d), position("dep1", d));
        }
        // Another deployment picks another first 10 %.
        let first_a: Vec<_> = ids.iter().filter(|d| reached("dep1", d, &p, 0)).collect();
        let first_b: Vec<_> = ids.iter().filter(|d| reached("dep2", d, &p, 0)).collect();
        assert_ne!(first_a, first_b);
    }

    #[test]
    fn advances_after_wait_when_settled() {
        let p = policy();
        let c = PhaseCounts {
            started: 10,
            succeeded: 10,
            failed: 0,
        };
        assert_eq!(next_step(&p, 0, t(0), &c, t(30)), Step::Stay);
        assert_eq!(next_step(&p, 0, t(0), &c, t(61)), Step::Advance { to: 1 });
        assert_eq!(next_step(&p, 2, t(0), &c, t(0)), Step::Complete);
        let busy = PhaseCounts {
            started: 10,
            succeeded: 2,
            failed: 0,
        };
        assert_eq!(next_step(&p, 0, t(0), &busy, t(600)), Step::Stay);
    }

    #[test]
    fn pauses_on_failure_rate_after_minimum() {
        let p = policy();
        // 2 of 3 failed, but fewer than min_devices finished: keep watching.
        let few = PhaseCounts {
            started: 3,
            succeeded: 1,
            failed: 2,
        };
        assert_eq!(next_step(&p, 0, t(0), &few, t(10)), Step::Stay);
        let many = PhaseCounts {
            started: 10,
            succeeded: 4,
            failed: 1,
        };
        assert!(matches!(
            next_step(&p, 0, t(0), &many, t(10)),
            Step::Pause { .. }
        ));
        let ok = PhaseCounts {
            started: 10,
            succeeded: 9,
            failed: 1,
        };
        assert_eq!(next_step(&p, 0, t(0), &ok, t(10)), Step::Stay);
    }

    #[test]
    fn validation() {
        policy().validate().unwrap();
        let mut bad = policy();
        bad.phases[1].percent = 5;
        assert!(bad.validate().is_err());
        bad.phases.clear();
        assert!(bad.validate().is_err());
    }
}
