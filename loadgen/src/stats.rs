//! What a run measured: latency histogram (µs), counts by outcome, bytes, handshakes, and
//! the CPU the server processes used meanwhile (from `/proc/<pid>/stat`).
//!
//! Every figure is printed as one line `name value unit` on stdout, so that scripts can
//! pick them with awk; `label` prefixes every name.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency recorded (longer ones are clamped), in µs.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Counts and latencies of one worker, or of a whole run once merged.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency of each completed request, µs.
    pub latency: Histogram<u64>,
    /// Requests answered with 2xx.
    pub ok: u64,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Failures by class (`connect`, `tls`, `http`, `timeout`).
    pub failures: BTreeMap<&'static str, u64>,
    /// Response body bytes.
    pub bytes: u64,
    /// TLS handshakes made, and how many resumed a session.
    pub handshakes: u64,
    /// Of `handshakes`, resumed.
    pub resumed: u64,
    /// Devices whose request failed or was not answered 2xx (only when the plan keeps them).
    pub failed_devices: Vec<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty.
    pub fn new() -> Self {
        Stats {
            // Constant bounds and precision that hdrhistogram accepts (low >= 1, sigfig <= 5).
            #[allow(clippy::expect_used)]
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds"),
            ok: 0,
            statuses: BTreeMap::new(),
            failures: BTreeMap::new(),
            bytes: 0,
            handshakes: 0,
            resumed: 0,
            failed_devices: Vec::new(),
        }
    }

    /// Notes a completed request.
    pub fn answered(&mut self, status: u16, bytes: u64, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latency.saturating_record(us.min(MAX_LATENCY_US));
        *self.statuses.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            self.ok += 1;
        }
        self.bytes += bytes;
    }

    /// Notes a failed request.
    pub fn failed(&mut self, class: &'static str) {
        *self.failures.entry(class).or_default() += 1;
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.bytes += other.bytes;
        self.handshakes += other.handshakes;
        self.resumed += other.resumed;
        self.failed_devices.extend_from_slice(&other.failed_devices);
    }

    /// Requests answered (any status).
    pub fn answered_count(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Requests that failed or were answered with a status other than 2xx.
    pub fn errors(&self) -> u64 {
        self.failures.values().sum::<u64>() + self.answered_count() - self.ok
    }
}

/// CPU time (user + system) of processes, from `/proc/<pid>/stat`, in µs.
pub fn cpu_time_us(pids: &[u32]) -> Result<u64, std::io::Error> {
    // USER_HZ is 100 on every Linux ABI this runs on (it is fixed at 100 for x86 and arm).
    const TICK_US: u64 = 10_000;
    let mut total = 0;
    for pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let after = text.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        match (ticks(11), ticks(12)) {
            (Some(u), Some(s)) => total += (u + s) * TICK_US,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("/proc/{pid}/stat: no utime/stime fields"),
                ))
            }
        }
    }
    Ok(total)
}

/// The figures of a run, ready to print.
pub struct Report<'a> {
    /// Prefix of every name.
    pub label: &'a str,
    /// The merged stats.
    pub stats: &'a Stats,
    /// Wall time of the measured part.
    pub elapsed: Duration,
    /// Server CPU used meanwhile, µs, if pids were given.
    pub server_cpu_us: Option<u64>,
    /// CPU this process (the client) used meanwhile, µs, if measured.
    pub client_cpu_us: Option<u64>,
}

impl Report<'_> {
    /// The lines `name value unit`.
    pub fn lines(&self) -> Vec<String> {
        let s = self.stats;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let n = s.answered_count();
        let name = |k: &str| {
            if self.label.is_empty() {
                k.to_owned()
            } else {
                format!("{}_{k}", self.label)
            }
        };
        let mut out = vec![
            format!("{} {:.3} s", name("elapsed"), secs),
            format!("{} {} count", name("requests"), n),
            format!("{} {} count", name("ok"), s.ok),
            format!("{} {} count", name("errors"), s.errors()),
            format!("{} {:.0} req/s", name("rate"), n as f64 / secs),
            format!("{} {:.0} req/s", name("ok_rate"), s.ok as f64 / secs),
        ];
        if n > 0 {
            let q = |p: f64| s.latency.value_at_quantile(p);
            out.push(format!("{} {} us", name("latency_p50"), q(0.50)));
            out.push(format!("{} {} us", name("latency_p99"), q(0.99)));
            out.push(format!("{} {} us", name("latency_max"), s.latency.max()));
        }
        out.push(format!("{} {} B", name("bytes"), s.bytes));
        out.push(format!(
            "{} {:.1} MB/s",
            name("throughput"),
            s.bytes as f64 / secs / 1e6
        ));
        out.push(format!("{} {} count", name("handshakes"), s.handshakes));
        out.push(format!(
            "{} {} count",
            name("handshakes_resumed"),
            s.resumed
        ));
        for (status, count) in &s.statuses {
            out.push(format!(
                "{} {count} count",
                name(&format!("status_{status}"))
            ));
        }
        for (class, count) in &s.failures {
            out.push(format!(
                "{} {count} count",
                name(&format!("failed_{class}"))
            ));
        }
        for (what, cpu) in [
            ("server", self.server_cpu_us),
            ("client", self.client_cpu_us),
        ] {
            let Some(cpu) = cpu else {
                continue;
            };
            out.push(format!(
                "{} {:.3} cores",
                name(&format!("{what}_cpu")),
                cpu as f64 / 1e6 / secs
            ));
            if n > 0 {
                out.push(format!(
                    "{} {:.1} us",
                    name(&format!("{what}_cpu_per_req")),
                    cpu as f64 / n as f64
                ));
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    #[test]
    fn merge_counts_and_quantiles() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for i in 1..=99u64 {
            a.answered(200, 10, Duration::from_micros(i * 10));
        }
        b.answered(403, 0, Duration::from_millis(50));
        b.failed("tls");
        b.handshakes = 3;
        b.resumed = 2;
        a.merge(&b);
        assert_eq!((a.ok, a.answered_count(), a.errors()), (99, 100, 2));
        assert_eq!(a.bytes, 990);
        assert_eq!((a.handshakes, a.resumed), (3, 2));
        let p50 = a.latency.value_at_quantile(0.5);
        assert!((490..=510).contains(&p50), "{p50}");
        assert!(a.latency.max() >= 49_900);
        let lines = Report {
            label: "x",
            stats: &a,
            elapsed: Duration::from_secs(2),
            server_cpu_us: Some(1_000_000),
            client_cpu_us: Some(500_000),
        }
        .lines();
        assert!(
            lines.contains(&"x_requests 100 count".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"x_rate 50 req/s".to_string()), "{lines:?}");
        assert!(
            lines.contains(&"x_status_403 1 count".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"x_failed_tls 1 count".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"x_server_cpu_per_req 10000.0 us".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"x_client_cpu 0.250 cores".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn cpu_time_of_this_process_is_readable() {
        let t = cpu_time_us(&[std::process::id()]).unwrap();
        // Only that it parses; a test process may have used almost no CPU yet.
        assert_eq!(t % 10_000, 0);
        assert!(cpu_time_us(&[u32::MAX]).is_err());
    }
}
