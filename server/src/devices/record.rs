//! What the registry stores about a device, where it keeps it, and the pure rules applied
//! on each poll: inventory changes, certificate fingerprint changes, poll jitter.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use ota_common::api::{PollRequest, UpdateDirective, UpdateState};
use serde::{Deserialize, Serialize};

/// Device records, keyed by device id.
pub const DEVICES_TREE: &str = "devices";
/// Decommissioned ids (id and time only), kept forever.
pub const TOMBSTONES_TREE: &str = "device_tombstones";
/// Status reports, keyed `{device}/{inverted receive time}{report id}` (newest first).
pub const STATUS_TREE: &str = "device_status";
/// Status report ids already stored, keyed `{device}/{report id}`, value the report's key.
pub const STATUS_IDS_TREE: &str = "device_status_ids";
/// The fleet's anomaly feed, keyed `{inverted receive time}{inverted index}{device}/...`
/// (newest first).
pub const ANOMALIES_TREE: &str = "anomalies";
/// A device's anomalies, keyed `{device}/{d|s}/{anomaly id}`, value the feed key.
pub const DEVICE_ANOMALIES_TREE: &str = "device_anomalies";
/// Operation-log records, keyed `{device}/{seq as 8 big-endian bytes}`.
pub const OPLOG_TREE: &str = "oplog";
/// The last operation-log record accepted per device, keyed by device id.
pub const OPLOG_HEADS_TREE: &str = "oplog_heads";
/// Enrollment tokens, keyed by the hex SHA-256 of the secret.
pub const ENROLL_TOKENS_TREE: &str = "enrollment_tokens";

/// Longest hardware id, version, slot name or attribute key/value accepted from a device.
pub const MAX_FIELD_LEN: usize = 128;
/// Most attributes a device may report.
pub const MAX_ATTRIBUTES: usize = 64;

/// Where a device stands with the operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Seen, waiting for an operator.
    Pending,
    /// May poll, report and update.
    Accepted,
    /// Refused by an operator (may be accepted later).
    Rejected,
    /// Revoked for good; only a tombstone is left.
    Decommissioned,
}

impl DeviceStatus {
    /// Parses `pending`, `accepted`, `rejected` or `decommissioned`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "accepted" => Some(Self::Accepted),
            "rejected" => Some(Self::Rejected),
            "decommissioned" => Some(Self::Decommissioned),
            _ => None,
        }
    }
}

/// The last status report of a device, kept on its record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastStatus {
    /// State reached.
    pub state: UpdateState,
    /// Target concerned.
    pub target: String,
    /// Its version.
    pub version: String,
    /// When the device observed it.
    pub at: DateTime<Utc>,
}

/// Everything the registry knows about one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Device id: the certificate's common name.
    pub id: String,
    /// Operator decision.
    pub status: DeviceStatus,
    /// Bumped on every write; the in-memory cache keeps the highest.
    #[serde(default)]
    pub revision: u64,
    /// When `status` last changed.
    pub status_changed_at: DateTime<Utc>,
    /// Who changed it (`device`, `token:<id>:<name>`, `enroll:<token id>`).
    pub status_changed_by: String,
    /// Whether an operator entered the id before the device first called.
    #[serde(default)]
    pub preauthorized: bool,
    /// SHA-256 of the first certificate seen for this id.
    #[serde(default)]
    pub first_cert_sha256: Option<String>,
    /// SHA-256 of the certificate in use now.
    #[serde(default)]
    pub cert_sha256: Option<String>,
    /// The certificate in use before the last change, if any.
    #[serde(default)]
    pub previous_cert_sha256: Option<String>,
    /// When the certificate last changed.
    #[serde(default)]
    pub cert_changed_at: Option<DateTime<Utc>>,
    /// When an `identity_conflict` anomaly was last raised (they are rate-limited).
    #[serde(default)]
    pub identity_conflict_at: Option<DateTime<Utc>>,
    /// Board type.
    #[serde(default)]
    pub hardware_id: Option<String>,
    /// Release running now.
    #[serde(default)]
    pub current_version: Option<String>,
    /// Slot booted now.
    #[serde(default)]
    pub active_slot: Option<String>,
    /// Agent version.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// Free-form attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// First contact.
    #[serde(default)]
    pub first_seen: Option<DateTime<Utc>>,
    /// Last contact as last flushed (the registry keeps newer times in memory).
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    /// Peer address of the last contact, as last flushed.
    #[serde(default)]
    pub last_peer: Option<String>,
    /// Last status report.
    #[serde(default)]
    pub last_status: Option<LastStatus>,
    /// The update the device has been told to install, if any.
    #[serde(default)]
    pub pending_update: Option<UpdateDirective>,
}

impl DeviceRecord {
    /// A record for a device not yet seen.
    pub fn new(id: &str, status: DeviceStatus, by: &str, now: DateTime<Utc>) -> Self {
        DeviceRecord {
            id: id.to_owned(),
            status,
            revision: 0,
            status_changed_at: now,
            status_changed_by: by.to_owned(),
            preauthorized: false,
            first_cert_sha256: None,
            cert_sha256: None,
            previous_cert_sha256: None,
            cert_changed_at: None,
            identity_conflict_at: None,
            hardware_id: None,
            current_version: None,
            active_slot: None,
            agent_version: None,
            attributes: BTreeMap::new(),
            first_seen: None,
            last_seen: None,
            last_peer: None,
            last_status: None,
            pending_update: None,
        }
    }

    /// Whether a poll carrying `req` would change the recorded inventory.
    pub fn inventory_differs(&self, req: &PollRequest) -> bool {
        self.hardware_id.as_deref() != Some(req.hardware_id.as_str())
            || self.current_version != req.current_version
            || self.active_slot != req.active_slot
            || self.agent_version != req.agent_version
            || self.attributes != req.attributes
    }

    /// Copies the inventory of a poll into the record.
    pub fn set_inventory(&mut self, req: &PollRequest) {
        self.hardware_id = Some(req.hardware_id.clone());
        self.current_version.clone_from(&req.current_version);
        self.active_slot.clone_from(&req.active_slot);
        self.agent_version.clone_from(&req.agent_version);
        self.attributes.clone_from(&req.attributes);
    }
}

/// A decommissioned id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The id, never usable again.
    pub id: String,
    /// When it was decommissioned.
    pub decommissioned_at: DateTime<Utc>,
}

/// How the certificate of a poll relates to the record's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertChange {
    /// The certificate in use.
    Same,
    /// No certificate recorded yet (preauthorized or enrolled, first contact).
    First,
    /// A new certificate: re-issued or re-enrolled, which is legitimate.
    Reissued,
    /// The certificate used before the last change came back within the window: two
    /// devices hold this identity and take turns.
    Alternating,
}

/// Classifies the fingerprint `fp` against the record.
///
/// One change of certificate is a re-issue and is accepted quietly. Only a switch back
/// to the previous certificate within `window` of the last change counts as two places
/// using one identity; after the window, a return to an old certificate is treated like
/// a re-issue (for example a restored backup).
pub fn classify_cert(
    rec: &DeviceRecord,
    fp: &str,
    now: DateTime<Utc>,
    window: Duration,
) -> CertChange {
    match rec.cert_sha256.as_deref() {
        None => CertChange::First,
        Some(cur) if cur == fp => CertChange::Same,
        Some(_) => {
            let back = rec.previous_cert_sha256.as_deref() == Some(fp);
            let recent = rec.cert_changed_at.is_some_and(|t| now - t <= window);
            if back && recent {
                CertChange::Alternating
            } else {
                CertChange::Reissued
            }
        }
    }
}

/// Applies a certificate change to the record.
pub fn apply_cert(rec: &mut DeviceRecord, fp: &str, change: CertChange, now: DateTime<Utc>) {
    match change {
        CertChange::Same => {}
        CertChange::First => {
            rec.cert_sha256 = Some(fp.to_owned());
            if rec.first_cert_sha256.is_none() {
                rec.first_cert_sha256 = Some(fp.to_owned());
            }
        }
        CertChange::Reissued | CertChange::Alternating => {
            rec.previous_cert_sha256 = rec.cert_sha256.replace(fp.to_owned());
            rec.cert_changed_at = Some(now);
        }
    }
}

/// The poll interval for `device_id`: `base` moved by up to ±10 %, the same for the same
/// id every time, so that a fleet started at once spreads out.
///
/// The spread needs a well-mixed number, not a secret: FNV-1a then a 64-bit finalizer
/// (it runs on every poll; SHA-256 in software was 6 % of a keep-alive poll's CPU).
pub fn poll_interval_for(device_id: &str, base: u64) -> u64 {
    let x = mix64(fnv1a(device_id.as_bytes()));
    let spread = base / 10;
    let offset = x % (2 * spread + 1);
    (base - spread + offset).max(1)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finalizer: every input bit reaches every output bit.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `{device}/`: the prefix of a device's keys in the per-device trees. Device ids have no
/// `/`, so one id's prefix never matches another's keys.
pub fn device_prefix(device_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device_id.len() + 1);
    k.extend_from_slice(device_id.as_bytes());
    k.push(b'/');
    k
}

/// Microseconds since the epoch, inverted so that later times sort first.
pub fn inverted_micros(t: DateTime<Utc>) -> [u8; 8] {
    let micros = u64::try_from(t.timestamp_micros()).unwrap_or(0);
    (u64::MAX - micros).to_be_bytes()
}

/// Checks a short text field a device sends: 1..=`MAX_FIELD_LEN` bytes, no control
/// characters.
pub fn check_field(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_FIELD_LEN {
        return Err(format!(
            "{name} must be 1 to {MAX_FIELD_LEN} bytes, got {}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name} must not contain control characters"));
    }
    Ok(())
}

/// Checks what a poll says about the device.
pub fn check_poll(req: &PollRequest) -> Result<(), String> {
    check_field("hardware_id", &req.hardware_id)?;
    for (name, v) in [
        ("current_version", &req.current_version),
        ("active_slot", &req.active_slot),
        ("agent_version", &req.agent_version),
    ] {
        if let Some(v) = v {
            check_field(name, v)?;
        }
    }
    if req.attributes.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "at most {MAX_ATTRIBUTES} attributes, got {}",
            req.attributes.len()
        ));
    }
    for (k, v) in &req.attributes {
        check_field("attribute name", k)?;
        if v.len() > MAX_FIELD_LEN || v.chars().any(char::is_control) {
            return Err(format!(
                "attribute {k:?}: value must be at most {MAX_FIELD_LEN} bytes without control characters"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn jitter_is_deterministic_and_within_ten_percent() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..500 {
            let id = format!("dev-{i}");
            let v = poll_interval_for(&id, 300);
            assert_eq!(v, poll_interval_for(&id, 300));
            assert!((270..=330).contains(&v), "{v}");
            seen.insert(v);
        }
        // The fleet spreads out over the range, not onto a few values.
        assert!(seen.len() > 40, "{}", seen.len());
        // Evenly, even for ids that differ in one character: each third of the range
        // gets about a third of 3,000 sequential ids.
        let mut thirds = [0u32; 3];
        for i in 0..3000 {
            let v = poll_interval_for(&format!("dev-{i}"), 300);
            thirds[usize::try_from((v - 270) * 3 / 61).unwrap()] += 1;
        }
        assert!(
            thirds.iter().all(|&n| (850..=1150).contains(&n)),
            "{thirds:?}"
        );
        assert_eq!(poll_interval_for("x", 5), 5);
        assert_eq!(poll_interval_for("x", 0), 1);
    }

    #[test]
    fn certificate_changes() {
        let now = t("2025-01-01T12:00:00Z");
        let win = Duration::hours(24);
        let mut rec = DeviceRecord::new("d", DeviceStatus::Accepted, "test", now);
        assert_eq!(classify_cert(&rec, "A", now, win), CertChange::First);
        apply_cert(&mut rec, "A", CertChange::First, now);
        assert_eq!(classify_cert(&rec, "A", now, win), CertChange::Same);
        // A new certificate is a re-issue.
        let c = classify_cert(&rec, "B", now, win);
        assert_eq!(c, CertChange::Reissued);
        apply_cert(&mut rec, "B", c, now);
        assert_eq!(rec.first_cert_sha256.as_deref(), Some("A"));
        assert_eq!(rec.previous_cert_sha256.as_deref(), Some("A"));
        // Going back to A soon after: two devices share the identity.
        let later = now + Duration::hours(1);
        let c = classify_cert(&rec, "A", later, win);
        assert_eq!(c, CertChange::Alternating);
        apply_cert(&mut rec, "A", c, later);
        assert_eq!(rec.cert_sha256.as_deref(), Some("A"));
        assert_eq!(
            classify_cert(&rec, "B", later, win),
            CertChange::Alternating
        );
        // A third certificate, or the old one long after, is a re-issue.
        assert_eq!(classify_cert(&rec, "C", later, win), CertChange::Reissued);
        let much_later = later + Duration::days(3);
        assert_eq!(
            classify_cert(&rec, "B", much_later, win),
            CertChange::Reissued
        );
    }

    #[test]
    fn inventory_comparison() {
        let now = t("2025-01-01T00:00:00Z");
        let mut rec = DeviceRecord::new("d", DeviceStatus::Pending, "device", now);
        let req = PollRequest {
            hardware_id: "board".into(),
            current_version: Some("1.0.0".into()),
            active_slot: Some("a".into()),
            agent_version: None,
            attributes: BTreeMap::from([("site".into(), "x".into())]),
        };
        assert!(rec.inventory_differs(&req));
        rec.set_inventory(&req);
        assert!(!rec.inventory_differs(&req));
        let mut moved = req.clone();
        moved.active_slot = Some("b".into());
        assert!(rec.inventory_differs(&moved));
    }

    #[test]
    fn poll_fields_are_checked() {
        let mut req = PollRequest {
            hardware_id: "board".into(),
            current_version: None,
            active_slot: None,
            agent_version: None,
            attributes: BTreeMap::new(),
        };
        check_poll(&req).unwrap();
        req.hardware_id = String::new();
        assert!(check_poll(&req).is_err());
        req.hardware_id = "b\n".into();
        assert!(check_poll(&req).is_err());
        req.hardware_id = "b".into();
        req.attributes = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(check_poll(&req).is_err());
    }

    #[test]
    fn keys_order_newest_first() {
        let a = inverted_micros(t("2025-01-01T00:00:00Z"));
        let b = inverted_micros(t("2025-01-01T00:00:01Z"));
        assert!(b < a);
        assert_eq!(device_prefix("d1"), b"d1/");
        assert!(DeviceStatus::parse("accepted") == Some(DeviceStatus::Accepted));
        assert!(DeviceStatus::parse("ACCEPTED").is_none());
    }
}
