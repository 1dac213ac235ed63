//! The fleet's background work: the phase tick and the silent-device detector.
//!
//! A device is silent when it has not been in contact for more than
//! [`FleetConfig::silent_after_polls`] of its own (jittered) poll intervals. The detector
//! passes over the in-memory registry (no store reads), flags devices in the fleet index
//! (the summary's `silent` count) and raises one `device_silent` anomaly per silence
//! episode: the anomaly's id is the time of the last contact, so a restart does not
//! raise it again, and a device that comes back and falls silent again raises a new
//! one. Time before the server started does not count as silence (the server was not
//! listening), so a restart after downtime does not flag the whole fleet.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::{Fleet, FleetConfig, FleetError};
use crate::devices::{poll_interval_for, DeviceStatus};

impl Fleet {
    /// Flags devices that fell silent (and clears those heard from again); raises
    /// `device_silent` for each newly silent device. Returns how many fell silent.
    pub fn detect_silent(&self, now: DateTime<Utc>) -> Result<usize, FleetError> {
        let base = self.devices.config().poll_interval_secs;
        let polls = u64::from(self.config.silent_after_polls.max(1));
        let secs = |s: u64| Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000));
        // Jitter moves a device's interval by at most 10 % below the base: quieter than
        // this, a device may be silent, and only then is its own interval computed.
        let floor = secs((base - base / 10).saturating_mul(polls));
        let mut newly = Vec::new();
        self.devices.visit_cached(|rec, last| {
            let quiet = last.map(|t| now - t.max(self.opened_at));
            let silent = rec.status == DeviceStatus::Accepted
                && quiet.is_some_and(|q| {
                    q > floor && q > secs(poll_interval_for(&rec.id, base).saturating_mul(polls))
                });
            if self.index.set_silent(rec, silent) && silent {
                if let Some(last) = last {
                    newly.push((rec.id.clone(), last));
                }
            }
        });
        for (id, last) in &newly {
            let interval = poll_interval_for(id, base);
            let local_id = format!("device_silent:{}", last.timestamp_micros());
            let message = format!(
                "device {id} has not been heard from since {last} (more than {polls} poll intervals of {interval} s)"
            );
            let detail = json!({
                "last_contact": last,
                "poll_interval_secs": interval,
                "silent_after_polls": polls,
            });
            self.devices.record_server_anomaly(
                id,
                &local_id,
                "device_silent",
                &message,
                detail,
                now,
            )?;
        }
        if !newly.is_empty() {
            tracing::warn!(devices = newly.len(), "devices fell silent");
        }
        Ok(newly.len())
    }

    /// Runs [`Fleet::tick`] every [`FleetConfig::tick_millis`] and
    /// [`Fleet::detect_silent`] every [`FleetConfig::silent_check_secs`] until `shutdown`
    /// completes. Failures are logged and retried at the next tick.
    pub fn spawn_background(
        self: &Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let fleet = Arc::clone(self);
        let FleetConfig {
            tick_millis,
            silent_check_secs,
            ..
        } = fleet.config.clone();
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut tick = tokio::time::interval(StdDuration::from_millis(tick_millis.max(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let check_every = Duration::seconds(i64::try_from(silent_check_secs).unwrap_or(60));
            let mut next_check = Utc::now() + check_every;
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    _ = tick.tick() => {}
                }
                let now = Utc::now();
                let check = now >= next_check;
                if check {
                    next_check = now + check_every;
                }
                let f = Arc::clone(&fleet);
                let run = tokio::task::spawn_blocking(move || {
                    let ticked = f.tick(now);
                    let silent = if check {
                        f.detect_silent(now).map(Some)
                    } else {
                        Ok(None)
                    };
                    (ticked, silent)
                })
                .await;
                match run {
                    Ok((ticked, silent)) => {
                        if let Err(e) = ticked {
                            tracing::warn!(error = %e, "deployment tick failed; will retry");
                        }
                        if let Err(e) = silent {
                            tracing::warn!(error = %e, "silent-device check failed; will retry");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "fleet background task failed"),
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::deployments::testing::device;
    use crate::devices::testing::{ident, peer, req};
    use crate::devices::Devices;

    fn silent_anomalies(fleet_devices: &Devices) -> usize {
        let (feed, _) = fleet_devices.list_anomalies(None, 100).unwrap();
        feed.iter().filter(|a| a.kind == "device_silent").count()
    }

    #[test]
    fn one_anomaly_per_silence_episode_and_the_summary_follows() {
        let (state, _dir) = crate::devices::testing::state();
        let t0 = Utc::now() + Duration::seconds(1);
        device(&state, "d1", "1.0.0", t0);
        // Seen but never accepted: not part of the watched fleet.
        state
            .devices
            .poll(&ident("p1", "F"), &req("hw"), peer(), t0)
            .unwrap();
        let fleet = &state.fleet;
        // Default: 300 s polls (±10 %), silent after 3 of them.
        assert_eq!(fleet.detect_silent(t0 + Duration::minutes(10)).unwrap(), 0);
        assert_eq!(fleet.detect_silent(t0 + Duration::minutes(20)).unwrap(), 1);
        assert_eq!(fleet.summary().by_update_state.silent, 1);
        assert!(fleet.index().is_silent("d1"));
        assert_eq!(fleet.detect_silent(t0 + Duration::minutes(25)).unwrap(), 0);
        assert_eq!(silent_anomalies(&state.devices), 1);
        // Heard from again: no longer silent.
        let back = t0 + Duration::minutes(26);
        let mut r = req("hw");
        r.current_version = Some("1.0.0".into());
        r.active_slot = None;
        r.attributes.insert("ring".into(), "beta".into());
        assert!(state
            .devices
            .poll_fast(&ident("d1", "F"), &r, peer(), back)
            .is_some());
        assert_eq!(fleet.detect_silent(back).unwrap(), 0);
        assert_eq!(fleet.summary().by_update_state.silent, 0);
        assert_eq!(fleet.summary().by_update_state.up_to_date, 1);
        // A second episode is a second anomaly.
        assert_eq!(
            fleet.detect_silent(back + Duration::minutes(20)).unwrap(),
            1
        );
        assert_eq!(silent_anomalies(&state.devices), 2);
        assert!(!fleet.index().is_silent("p1"));
    }

    #[test]
    fn time_before_a_restart_is_not_silence() {
        let (state, _dir) = crate::devices::testing::state();
        let t0 = Utc::now() + Duration::seconds(1);
        device(&state, "d1", "1.0.0", t0);
        state.devices.flush_last_seen().unwrap();
        // The server comes back two hours later.
        let restart = t0 + Duration::hours(2);
        let devices =
            Arc::new(Devices::open(Arc::clone(&state.store), Default::default()).unwrap());
        let fleet = Fleet::open(
            Arc::clone(&state.store),
            Arc::clone(&state.audit),
            Arc::clone(&devices),
            FleetConfig::default(),
            restart,
        )
        .unwrap();
        assert_eq!(
            fleet.detect_silent(restart + Duration::minutes(5)).unwrap(),
            0
        );
        assert_eq!(
            fleet
                .detect_silent(restart + Duration::minutes(20))
                .unwrap(),
            1
        );
        assert_eq!(fleet.summary().by_update_state.silent, 1);
    }
}
