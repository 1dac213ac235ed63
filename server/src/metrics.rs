//! Counters for `/metrics` (Prometheus text format). Atomics only: the hot paths (polls,
//! downloads) add to them without locks or allocation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::serve::TransportStats;

/// Application counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// HTTP requests handled.
    pub requests: AtomicU64,
    /// Device polls answered.
    pub polls: AtomicU64,
    /// Metadata documents served.
    pub metadata_served: AtomicU64,
    /// Target bytes sent (as queued to the connection).
    pub target_bytes_served: AtomicU64,
    /// Target downloads started.
    pub target_downloads: AtomicU64,
    /// Successful publishes (targets changes).
    pub publishes: AtomicU64,
    /// Images uploaded.
    pub uploads: AtomicU64,
    /// Device reports stored (status, oplog, anomalies).
    pub reports: AtomicU64,
    /// Anomalies recorded (device-reported and server-detected).
    pub anomalies: AtomicU64,
    /// Requests answered with a 4xx or 5xx.
    pub errors: AtomicU64,
    /// Timestamp/snapshot re-signings.
    pub resignings: AtomicU64,
}

/// Adds one.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n`.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// The Prometheus text exposition of these counters and the transport's.
    pub fn render(&self, transport: &TransportStats) -> String {
        let mut out = String::with_capacity(2048);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        line(
            "ota_http_requests_total",
            "counter",
            "HTTP requests handled.",
            get(&self.requests),
        );
        line(
            "ota_http_errors_total",
            "counter",
            "Requests answered with 4xx or 5xx.",
            get(&self.errors),
        );
        line(
            "ota_polls_total",
            "counter",
            "Device polls answered.",
            get(&self.polls),
        );
        line(
            "ota_metadata_served_total",
            "counter",
            "TUF metadata documents served.",
            get(&self.metadata_served),
        );
        line(
            "ota_target_downloads_total",
            "counter",
            "Target downloads started.",
            get(&self.target_downloads),
        );
        line(
            "ota_target_bytes_served_total",
            "counter",
            "Target bytes sent.",
            get(&self.target_bytes_served),
        );
        line(
            "ota_publishes_total",
            "counter",
            "Targets metadata publishes.",
            get(&self.publishes),
        );
        line(
            "ota_uploads_total",
            "counter",
            "Images uploaded.",
            get(&self.uploads),
        );
        line(
            "ota_reports_total",
            "counter",
            "Device reports stored.",
            get(&self.reports),
        );
        line(
            "ota_anomalies_total",
            "counter",
            "Anomalies recorded.",
            get(&self.anomalies),
        );
        line(
            "ota_resignings_total",
            "counter",
            "Automatic re-signings of timestamp/snapshot.",
            get(&self.resignings),
        );
        line(
            "ota_tls_handshakes_total",
            "counter",
            "Completed TLS handshakes.",
            transport.handshakes_ok,
        );
        line(
            "ota_tls_handshakes_resumed_total",
            "counter",
            "TLS handshakes that resumed a session.",
            transport.handshakes_resumed,
        );
        line(
            "ota_tls_handshake_failures_total",
            "counter",
            "Failed TLS handshakes.",
            transport.handshakes_failed,
        );
        line(
            "ota_tls_handshake_timeouts_total",
            "counter",
            "TLS handshakes that timed out.",
            transport.handshake_timeouts,
        );
        line(
            "ota_connections_active",
            "gauge",
            "Open connections.",
            transport.connections_active,
        );
        line(
            "ota_connections_rejected_total",
            "counter",
            "Connections refused at the cap.",
            transport.connections_rejected,
        );
        out
    }
}
