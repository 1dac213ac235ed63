//! Wire types of the device, publisher and operator APIs: what the server and its clients
//! agree on. JSON over HTTPS; every request a device retries carries an idempotency id.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Path prefix of the JSON API.
pub const API_PREFIX: &str = "/api/v1";

/// A device's poll: who it is and what it runs. Identity comes from its TLS certificate,
/// not from this body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// The board type.
    pub hardware_id: String,
    /// The release running now, if known.
    #[serde(default)]
    pub current_version: Option<String>,
    /// The slot booted now (`a` or `b`).
    #[serde(default)]
    pub active_slot: Option<String>,
    /// The agent's own version.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// Free-form attributes for grouping (for example `site`, `customer`).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// The server's answer to a poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollResponse {
    /// The target the device should install, if any. The device still runs the full TUF
    /// workflow and its own policy: this is a directive, not a trust decision.
    #[serde(default)]
    pub update: Option<UpdateDirective>,
    /// When to poll next, in seconds (the server spreads load and backs devices off).
    pub poll_after_secs: u64,
    /// When true and `update` is empty, install nothing now: the fleet is updated through
    /// deployments (phased rollouts), and this device's turn has not come. When false, a
    /// device without a directive may install the newest release that fits it.
    #[serde(default)]
    pub hold: bool,
}

/// Which target a device should move to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateDirective {
    /// Target name in the signed targets metadata.
    pub target: String,
    /// Its release version (informational; the signed metadata is authoritative).
    pub version: String,
    /// The deployment that sent it, if any.
    #[serde(default)]
    pub deployment: Option<String>,
}

/// States a device reports for an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Downloading into the inactive slot.
    Downloading,
    /// Written and verified; about to reboot.
    Installed,
    /// Rebooted into the new slot; health check running.
    Booted,
    /// Health check passed; committed.
    Committed,
    /// Health check failed, or the new slot did not boot; back on the old slot.
    RolledBack,
    /// Failed before switching (verification, download, disk).
    Failed,
}

/// A status report: idempotent by `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// Idempotency id chosen by the device (unique per report).
    pub id: String,
    /// Target concerned.
    pub target: String,
    /// Its version.
    pub version: String,
    /// State reached.
    pub state: UpdateState,
    /// Download progress in bytes, when downloading.
    #[serde(default)]
    pub progress_bytes: Option<u64>,
    /// Total bytes, when downloading.
    #[serde(default)]
    pub total_bytes: Option<u64>,
    /// Human-readable detail (error text, health check output).
    #[serde(default)]
    pub detail: Option<String>,
    /// Deployment that asked for it, if any.
    #[serde(default)]
    pub deployment: Option<String>,
    /// When the device observed it.
    pub at: DateTime<Utc>,
}

/// An anomaly a device detected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyReport {
    /// Idempotency id (unique per anomaly on the device).
    pub id: String,
    /// Stable kind, for example `bad_signature`, `rollback`, `expired_metadata`,
    /// `downgrade_offered`, `hash_mismatch`, `boot_failure`, `health_failure`,
    /// `certificate_mismatch`, `agent_crash_loop`.
    pub kind: String,
    /// What happened, for a person.
    pub message: String,
    /// Structured detail.
    #[serde(default)]
    pub detail: Value,
    /// When the device observed it.
    pub at: DateTime<Utc>,
}

/// A batch of anomalies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyBatch {
    /// The anomalies, oldest first.
    pub anomalies: Vec<AnomalyReport>,
}

/// One operation-log record as the device keeps and uploads it (hash-chained); see
/// [`crate::oplog`] for the format and the chain rules.
pub use crate::oplog::OpRecord as OplogRecord;

/// A batch of operation-log records, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OplogBatch {
    /// The records.
    pub records: Vec<OplogRecord>,
}

/// What the server says after taking an operation-log batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OplogAck {
    /// Highest sequence number stored; the device may drop records up to it.
    pub stored_through: u64,
    /// Whether the server found a gap or an altered record (also raised as an anomaly).
    pub chain_ok: bool,
}

/// Enrollment: a device that made its own key asks for a certificate with a one-time token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time enrollment token an operator issued.
    pub token: String,
    /// The device id it asks for.
    pub device_id: String,
    /// PKCS#10 certificate signing request, PEM. The private key never leaves the device.
    pub csr_pem: String,
}

/// The certificate an enrollment returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device certificate, PEM.
    pub certificate_pem: String,
}

/// An error body: every 4xx/5xx answer of the API has this shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable code (`unauthorized`, `device_pending`, `conflict`, ...).
    pub error: String,
    /// What went wrong and what to do, for a person.
    pub message: String,
}
