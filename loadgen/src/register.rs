//! `register`: makes a simulated fleet known to the server and accepted, as an operator
//! would, so that later polls measure accepted devices on the server's fast path.
//!
//! Preauthorize first (the default): all ids are accepted in advance with
//! `POST /api/v1/devices/preauthorize` in batches (admin or operator token), then every
//! device polls once on its own new TLS session and must be answered 200 (the server
//! accepts a preauthorized id on first contact and pins its certificate). One full
//! handshake per device: a million devices in one pass.
//!
//! Poll first (`--flow poll-first`, the old flow): every device polls once (unknown ->
//! pending), all ids are preauthorized (pending -> accepted), every device polls again.
//!
//! Devices whose registration poll failed are polled again (`--retries` passes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use crate::client::{request, ClientError, Conn};
use crate::engine::{self, Fleet, FleetError, Plan};
use crate::progress::{Counters, Reporter};
use crate::stats::{cpu_time_us, Report};
use crate::target::Target;

/// The server's cap on ids per preauthorize request.
pub const MAX_BATCH: usize = 1000;

/// Why registering failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The batch size is out of range.
    #[error("--batch must be 1..={MAX_BATCH}, got {0}")]
    Batch(usize),
    /// The fleet has no device identities.
    #[error("no device identities (give --pki)")]
    NoDevices,
    /// The operator connection or request failed.
    #[error("preauthorize batch starting at {first}: {source}")]
    Client {
        /// First id of the batch.
        first: String,
        /// The failure.
        #[source]
        source: ClientError,
    },
    /// The server refused a batch.
    #[error("preauthorize batch starting at {first}: HTTP {status}: {body}")]
    Refused {
        /// First id of the batch.
        first: String,
        /// HTTP status.
        status: u16,
        /// What it said.
        body: String,
    },
    /// The anonymous TLS configuration could not be made.
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// The order of the steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Preauthorize every id, then one poll per device (accepted on first contact): one
    /// full TLS handshake per device.
    PreauthorizeFirst,
    /// The old flow: poll (-> pending), preauthorize (-> accepted), poll again to check:
    /// two full handshakes per device.
    PollFirst,
}

/// How to register.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The admin (or operator) token.
    pub token: String,
    /// Ids per preauthorize request.
    pub batch: usize,
    /// Step order.
    pub flow: Flow,
    /// Passes over the devices whose registration poll failed.
    pub retries: u32,
    /// Concurrent registration polls.
    pub concurrency: usize,
    /// Prefix of the printed figures.
    pub label: String,
    /// Longest time of one pass over the devices.
    pub max_pass: Duration,
    /// Server processes whose CPU time each pass reports.
    pub server_pids: Vec<u32>,
}

/// What registering achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Devices answered 200 in the end.
    pub accepted: u64,
    /// Fleet size.
    pub devices: u64,
    /// Registration polls that failed or were refused (all passes).
    pub errors: u64,
    /// Wall time of all steps.
    pub elapsed: Duration,
}

/// Registers every device of `fleet` as `spec` says; prints each step's figures and
/// the totals. The devices keep the TLS sessions of their last poll in `fleet`, so a run
/// that follows in this process resumes them.
pub async fn register(
    base: &Plan,
    fleet: Arc<Fleet>,
    target: Target,
    spec: &Spec,
) -> Result<Outcome, RegisterError> {
    if spec.batch == 0 || spec.batch > MAX_BATCH {
        return Err(RegisterError::Batch(spec.batch));
    }
    let n = fleet.devices();
    if !fleet.has_identities() {
        return Err(RegisterError::NoDevices);
    }
    let label = spec.label.as_str();
    let start = Instant::now();
    let pass = base.one_per_device(n, spec.concurrency, spec.max_pass);
    let mut errors = 0;
    if spec.flow == Flow::PollFirst {
        let mut first = pass.clone();
        first.keep_failed = false;
        rename_progress(&mut first, "first poll (unknown -> pending)");
        let (stats, took, cpu) = measured(first, &fleet, &target, &spec.server_pids).await;
        print(&format!("{label}_first_poll"), &stats, took, cpu);
    }
    preauthorize(&fleet, &target, spec, base.progress.as_ref().map(|p| p.1)).await?;
    let mut poll = pass;
    rename_progress(
        &mut poll,
        match spec.flow {
            Flow::PreauthorizeFirst => "register poll (accepted on first contact)",
            Flow::PollFirst => "check poll",
        },
    );
    let step = match spec.flow {
        Flow::PreauthorizeFirst => "poll",
        Flow::PollFirst => "check_poll",
    };
    let (stats, took, cpu) = measured(poll.clone(), &fleet, &target, &spec.server_pids).await;
    print(&format!("{label}_{step}"), &stats, took, cpu);
    let mut accepted = stats.ok;
    errors += stats.errors();
    let mut failed = stats.failed_devices;
    for round in 1..=spec.retries {
        if failed.is_empty() {
            break;
        }
        failed.sort_unstable();
        eprintln!(
            "# {label}: retry {round}: {} devices were not answered 200",
            failed.len()
        );
        let mut retry = pass_plan(&poll, &base.progress);
        retry.count = Some(failed.len() as u64);
        retry.concurrency = retry.concurrency.min(failed.len());
        retry.devices = Some(Arc::from(std::mem::take(&mut failed)));
        rename_progress(&mut retry, &format!("retry {round}"));
        let (stats, took, cpu) = measured(retry, &fleet, &target, &spec.server_pids).await;
        print(&format!("{label}_retry{round}"), &stats, took, cpu);
        accepted += stats.ok;
        errors += stats.errors();
        failed = stats.failed_devices;
    }
    let outcome = Outcome {
        accepted,
        devices: n,
        errors,
        elapsed: start.elapsed(),
    };
    for l in outcome.lines(label) {
        println!("{l}");
    }
    if accepted != n {
        eprintln!(
            "# WARNING: {} of {n} devices were not answered 200 (first of them: {:?})",
            n - accepted,
            &failed[..failed.len().min(5)]
        );
    }
    Ok(outcome)
}

impl Outcome {
    /// The totals, `name value unit`.
    pub fn lines(&self, label: &str) -> Vec<String> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        vec![
            format!("{label}_accepted {} count", self.accepted),
            format!("{label}_devices {} count", self.devices),
            format!("{label}_poll_errors_all_passes {} count", self.errors),
            format!("{label}_total_elapsed {secs:.3} s"),
            format!(
                "{label}_devices_per_s {:.0} devices/s",
                self.accepted as f64 / secs
            ),
        ]
    }
}

/// `plan` with the progress name of `base`.
fn pass_plan(plan: &Plan, base: &Option<(String, Duration)>) -> Plan {
    let mut p = plan.clone();
    p.progress.clone_from(base);
    p
}

fn rename_progress(plan: &mut Plan, what: &str) {
    if let Some(p) = plan.progress.as_mut() {
        p.0 = format!("{}: {what}", p.0);
    }
}

/// The preauthorize requests: `ids` cut into batches of at most `batch`.
pub fn batches(n: u64, batch: usize) -> impl Iterator<Item = std::ops::Range<u64>> {
    let batch = batch.max(1) as u64;
    (0..n.div_ceil(batch)).map(move |b| b * batch..((b + 1) * batch).min(n))
}

/// Accepts every id with `POST /api/v1/devices/preauthorize`, `spec.batch` at a time, on
/// one keep-alive connection (the server takes its write lock per batch anyway).
async fn preauthorize(
    fleet: &Fleet,
    target: &Target,
    spec: &Spec,
    progress_every: Option<Duration>,
) -> Result<(), RegisterError> {
    let label = spec.label.as_str();
    let n = fleet.devices();
    let start = Instant::now();
    let counters = Arc::new(Counters::default());
    let _reporter = progress_every.map(|every| {
        Reporter::start(
            format!("{label}: preauthorize"),
            Arc::clone(&counters),
            Some(n),
            every,
        )
    });
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut conn: Option<Conn> = None;
    let auth = format!("Bearer {}", spec.token);
    for range in batches(n, spec.batch) {
        let ids: Vec<String> = range.clone().filter_map(|i| fleet.device_id(i)).collect();
        let first_id = ids.first().cloned().unwrap_or_default();
        let client_err = |source| RegisterError::Client {
            first: first_id.clone(),
            source,
        };
        if !conn.as_ref().is_some_and(Conn::is_usable) {
            let c = Conn::open(target, fleet.anonymous()?)
                .await
                .map_err(client_err)?;
            conn = Some(c);
        }
        let body = Bytes::from(json!({ "ids": ids }).to_string());
        let req = request(
            Method::POST,
            target,
            "/api/v1/devices/preauthorize",
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            body,
        )
        .map_err(|e| client_err(ClientError::Setup(e.to_string())))?;
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let answer = c.send(req).await.map_err(client_err)?;
        let text = answer
            .body
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        if !answer.status.is_success() {
            return Err(RegisterError::Refused {
                first: first_id,
                status: answer.status.as_u16(),
                body: text.chars().take(300).collect(),
            });
        }
        count_outcomes(&text, &mut outcomes);
        counters.add(ids.len() as u64, true);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{label}_preauthorize_elapsed {secs:.3} s");
    println!(
        "{label}_preauthorize_rate {:.0} ids/s",
        n as f64 / secs.max(1e-9)
    );
    for (outcome, count) in &outcomes {
        println!("{label}_preauthorize_{outcome} {count} count");
    }
    Ok(())
}

/// Adds the outcomes of one preauthorize answer (`{"results": {id: outcome}}`) to `into`.
pub fn count_outcomes(answer: &str, into: &mut BTreeMap<String, u64>) {
    let parsed: Value = serde_json::from_str(answer).unwrap_or(Value::Null);
    match parsed.get("results").and_then(Value::as_object) {
        Some(results) => {
            for outcome in results.values() {
                let key = outcome
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| outcome.to_string());
                *into.entry(key).or_default() += 1;
            }
        }
        None => *into.entry("unreadable_answer".into()).or_default() += 1,
    }
}

/// CPU used by the server processes and by this one, µs.
type CpuUsed = (Option<u64>, Option<u64>);

/// Runs a pass, with the CPU the server (if `pids`) and this process used meanwhile.
async fn measured(
    plan: Plan,
    fleet: &Arc<Fleet>,
    target: &Target,
    pids: &[u32],
) -> (crate::stats::Stats, Duration, CpuUsed) {
    let me = [std::process::id()];
    let cpu = |p: &[u32]| (!p.is_empty()).then(|| cpu_time_us(p).ok()).flatten();
    let before = (cpu(pids), cpu(&me));
    let (stats, took) = engine::run(plan, fleet.clone(), target.clone()).await;
    let after = (cpu(pids), cpu(&me));
    let used = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    (
        stats,
        took,
        (used(before.0, after.0), used(before.1, after.1)),
    )
}

fn print(label: &str, stats: &crate::stats::Stats, elapsed: Duration, cpu: CpuUsed) {
    let report = Report {
        label,
        stats,
        elapsed,
        server_cpu_us: cpu.0,
        client_cpu_us: cpu.1,
    };
    for line in report.lines() {
        println!("{line}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_id_once_within_the_cap() {
        let b: Vec<_> = batches(2500, 1000).collect();
        assert_eq!(b, vec![0..1000, 1000..2000, 2000..2500]);
        assert_eq!(batches(1000, 1000).count(), 1);
        assert_eq!(batches(0, 1000).count(), 0);
        assert_eq!(batches(3, 0).collect::<Vec<_>>(), vec![0..1, 1..2, 2..3]);
        let total: u64 = batches(1_000_000, 1000).map(|r| r.end - r.start).sum();
        assert_eq!(total, 1_000_000);
    }

    #[test]
    fn outcomes_are_counted_and_garbage_is_noted() {
        let mut m = BTreeMap::new();
        count_outcomes(
            r#"{"results": {"a": "preauthorized", "b": "accepted", "c": "preauthorized"}}"#,
            &mut m,
        );
        count_outcomes("<html>", &mut m);
        assert_eq!(m.get("preauthorized"), Some(&2));
        assert_eq!(m.get("accepted"), Some(&1));
        assert_eq!(m.get("unreadable_answer"), Some(&1));
    }

    #[test]
    fn totals_give_the_registration_rate() {
        let o = Outcome {
            accepted: 9_990,
            devices: 10_000,
            errors: 12,
            elapsed: Duration::from_secs(5),
        };
        let l = o.lines("reg");
        assert!(l.contains(&"reg_accepted 9990 count".to_string()), "{l:?}");
        assert!(
            l.contains(&"reg_devices_per_s 1998 devices/s".to_string()),
            "{l:?}"
        );
        assert!(
            l.contains(&"reg_poll_errors_all_passes 12 count".to_string()),
            "{l:?}"
        );
    }
}
