//! Progress of a long run on stderr: every few seconds one `#` line with what is done, the
//! rate over the last interval and overall, the errors, and (when the total is known) the
//! share done and the time left, so that a 15-minute registration of a million devices can
//! be watched.
//!
//! Workers only bump three relaxed atomic counters per request; a separate task reads
//! them on a timer and prints. The formatting is a pure function of two snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counters shared by the workers of a run.
#[derive(Debug, Default)]
pub struct Counters {
    done: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    /// Notes one finished unit of work (a request, or `n` ids of a batch).
    pub fn add(&self, n: u64, ok: bool) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if ok {
            self.ok.fetch_add(n, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The counts now.
    pub fn snapshot(&self, elapsed: Duration) -> Snapshot {
        Snapshot {
            elapsed,
            done: self.done.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// The counters at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Since the start of the run.
    pub elapsed: Duration,
    /// Units finished (answered or failed).
    pub done: u64,
    /// Of `done`, successful.
    pub ok: u64,
    /// Of `done`, failed or refused.
    pub errors: u64,
}

/// One progress line: `now` against the previous snapshot `prev`, out of `total` if known.
pub fn line(what: &str, prev: Snapshot, now: Snapshot, total: Option<u64>) -> String {
    let secs = now.elapsed.as_secs_f64();
    let interval = secs - prev.elapsed.as_secs_f64();
    let recent = if interval > 0.0 {
        now.done.saturating_sub(prev.done) as f64 / interval
    } else {
        0.0
    };
    let mean = if secs > 0.0 {
        now.done as f64 / secs
    } else {
        0.0
    };
    let mut out = format!("# {what}: {:>6.0} s: {} done", secs, now.done);
    if let Some(t) = total.filter(|t| *t > 0) {
        out.push_str(&format!(
            " of {t} ({:.1}%)",
            100.0 * now.done as f64 / t as f64
        ));
    }
    out.push_str(&format!(
        ", {recent:.0}/s now, {mean:.0}/s mean, {} ok, {} errors",
        now.ok, now.errors
    ));
    if let Some(t) = total {
        if mean > 0.0 && now.done < t {
            let left = (t - now.done) as f64 / mean;
            out.push_str(&format!(", ~{} left", human_secs(left)));
        }
    }
    out
}

/// `95 s`, `12 min 5 s`, `1 h 3 min`.
pub fn human_secs(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=99 => format!("{s} s"),
        100..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Prints a progress line for `counters` every `every` until dropped (the task is aborted
/// then). `every` of zero prints nothing.
pub struct Reporter {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Reporter {
    /// Starts reporting on the current runtime.
    pub fn start(
        what: String,
        counters: Arc<Counters>,
        total: Option<u64>,
        every: Duration,
    ) -> Self {
        if every.is_zero() {
            return Reporter { task: None };
        }
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(async move {
            let mut prev = Snapshot::default();
            let mut tick = tokio::time::interval_at(start + every, every);
            loop {
                tick.tick().await;
                let now = counters.snapshot(start.elapsed());
                eprintln!("{}", line(&what, prev, now, total));
                prev = now;
            }
        });
        Reporter { task: Some(task) }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    fn snap(secs: u64, done: u64, ok: u64, errors: u64) -> Snapshot {
        Snapshot {
            elapsed: Duration::from_secs(secs),
            done,
            ok,
            errors,
        }
    }

    #[test]
    fn lines_show_recent_and_mean_rates_share_and_time_left() {
        let l = line(
            "register",
            snap(10, 10_000, 10_000, 0),
            snap(20, 30_000, 29_990, 10),
            Some(1_000_000),
        );
        assert_eq!(
            l,
            "# register:     20 s: 30000 done of 1000000 (3.0%), 2000/s now, 1500/s mean, 29990 ok, 10 errors, ~10 min 47 s left"
        );
        // Unknown total: no share, no time left; finished: no time left.
        let l = line("poll", Snapshot::default(), snap(10, 500, 500, 0), None);
        assert_eq!(
            l,
            "# poll:     10 s: 500 done, 50/s now, 50/s mean, 500 ok, 0 errors"
        );
        let l = line("x", snap(10, 5, 5, 0), snap(20, 10, 10, 0), Some(10));
        assert!(l.ends_with("0 errors"), "{l}");
        // Same time twice: no division by zero.
        let l = line("x", snap(0, 0, 0, 0), snap(0, 0, 0, 0), Some(10));
        assert!(l.contains("0/s now, 0/s mean"), "{l}");
    }

    #[test]
    fn counters_split_ok_and_errors() {
        let c = Counters::default();
        c.add(1, true);
        c.add(1000, true);
        c.add(2, false);
        let s = c.snapshot(Duration::from_secs(3));
        assert_eq!((s.done, s.ok, s.errors), (1003, 1001, 2));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_secs(0.4), "0 s");
        assert_eq!(human_secs(99.0), "99 s");
        assert_eq!(human_secs(647.0), "10 min 47 s");
        assert_eq!(human_secs(3780.0), "1 h 3 min");
        assert_eq!(human_secs(-5.0), "0 s");
    }
}
