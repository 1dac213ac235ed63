//! `ota devices …` and `ota enroll-token`: the operator's decisions on devices, over the
//! server's operator API (`server/src/routes/operator.rs`):
//!
//! | command | request | answer |
//! |---|---|---|
//! | `list` | `GET /api/v1/devices?status=&hardware_id=&after=&limit=` | `{"devices": [...], "next_after": id?}` |
//! | `show ID` | `GET /api/v1/devices/{id}` | record or tombstone, reports, anomalies, oplog |
//! | `accept`, `reject` | `POST /api/v1/devices/{id}/accept` | `{"device": record, "changed": bool}` |
//! | `decommission` | `POST /api/v1/devices/{id}/decommission` | `{"id", "status", "decommissioned_at"}` |
//! | `preauthorize` | `POST /api/v1/devices/preauthorize` `{"ids"}` | `{"results": {id: outcome}}` |
//! | `enroll-token` | `POST /api/v1/enrollment-tokens` | `{"token", "id", "device_id", "expires_at"}` |

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::Ctx;
use crate::client::decode;
use crate::error::CliError;
use crate::output::{cell, or_dash, print_json, sanitize, time, Format, Table};

/// Page size when walking the device list (the server's maximum is 1000).
const PAGE: usize = 500;

/// Device states the server knows.
pub const STATUSES: [&str; 4] = ["pending", "accepted", "rejected", "decommissioned"];

/// `ota devices` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List devices (decommissioned ones only with --status decommissioned).
    List {
        /// Only devices in this state.
        #[arg(long, value_parser = STATUSES)]
        status: Option<String>,
        /// Only devices of this board type.
        #[arg(long)]
        hardware_id: Option<String>,
    },
    /// Show one device: its record, recent reports, anomalies and operation log.
    Show {
        /// Device id.
        id: String,
    },
    /// Accept a device: it may poll, report and update.
    Accept {
        /// Device id.
        id: String,
    },
    /// Reject a device: it is refused service (it may be accepted later).
    Reject {
        /// Device id.
        id: String,
    },
    /// Decommission a device: revoke it for good and delete its records (an audit entry
    /// remains).
    Decommission {
        /// Device id.
        id: String,
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Accept devices on their first contact, before they call.
    Preauthorize {
        /// Device ids (their certificates' common names).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Options of `ota enroll-token`.
#[derive(clap::Args, Debug)]
pub struct EnrollTokenArgs {
    /// The only device id the token may enroll (default: any new id).
    #[arg(long)]
    device_id: Option<String>,
    /// Lifetime in seconds (server default one day, at most 30 days).
    #[arg(long)]
    ttl_secs: Option<u64>,
}

/// A device record as the server sends it (the fields shown here; `--json` has them all).
#[derive(Debug, Deserialize)]
struct Device {
    id: String,
    status: String,
    #[serde(default)]
    status_changed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    status_changed_by: Option<String>,
    #[serde(default)]
    preauthorized: bool,
    #[serde(default)]
    hardware_id: Option<String>,
    #[serde(default)]
    current_version: Option<String>,
    #[serde(default)]
    active_slot: Option<String>,
    #[serde(default)]
    agent_version: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    cert_sha256: Option<String>,
    #[serde(default)]
    first_seen: Option<DateTime<Utc>>,
    #[serde(default)]
    last_seen: Option<DateTime<Utc>>,
    #[serde(default)]
    last_peer: Option<String>,
    #[serde(default)]
    decommissioned_at: Option<DateTime<Utc>>,
}

/// One page of `GET /api/v1/devices`.
#[derive(Debug, Deserialize)]
struct Page {
    devices: Vec<Value>,
    #[serde(default)]
    next_after: Option<String>,
}

/// `GET /api/v1/devices/{id}`.
#[derive(Debug, Deserialize)]
struct Detail {
    #[serde(default)]
    device: Option<Device>,
    #[serde(default)]
    decommissioned: Option<Tombstone>,
    #[serde(default)]
    status_reports: Vec<StoredStatus>,
    #[serde(default)]
    anomalies: Vec<Value>,
    #[serde(default)]
    oplog: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct Tombstone {
    id: String,
    decommissioned_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct StoredStatus {
    received_at: DateTime<Utc>,
    report: Value,
}

/// Runs `ota devices …`.
pub async fn run(ctx: &Ctx, cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::List {
            status,
            hardware_id,
        } => list(ctx, status.as_deref(), hardware_id.as_deref()).await,
        Command::Show { id } => show(ctx, &id).await,
        Command::Accept { id } => decide(ctx, &id, "accept", "accepted").await,
        Command::Reject { id } => decide(ctx, &id, "reject", "rejected").await,
        Command::Decommission { id, yes } => {
            if !yes {
                return Err(CliError::Usage(format!(
                    "decommissioning revokes {id} for good and deletes its records; this \
                     cannot be undone. Repeat with --yes to do it"
                )));
            }
            decommission(ctx, &id).await
        }
        Command::Preauthorize { ids } => preauthorize(ctx, &ids).await,
    }
}

/// Every device matching the filters, following the server's `next_after` cursor.
pub async fn fetch_all(
    ctx: &Ctx,
    status: Option<&str>,
    hardware_id: Option<&str>,
) -> Result<Vec<Value>, CliError> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", PAGE.to_string())];
        if let Some(s) = status {
            query.push(("status", s.to_string()));
        }
        if let Some(h) = hardware_id {
            query.push(("hardware_id", h.to_string()));
        }
        if let Some(a) = &after {
            query.push(("after", a.clone()));
        }
        let page: Page = decode(
            "GET /api/v1/devices",
            ctx.client.get(&["api", "v1", "devices"], &query).await?,
        )?;
        all.extend(page.devices);
        after = match page.next_after {
            // A cursor that does not move would loop forever.
            Some(next) if after.as_ref() != Some(&next) => Some(next),
            _ => break,
        };
    }
    Ok(all)
}

async fn list(ctx: &Ctx, status: Option<&str>, hardware_id: Option<&str>) -> Result<(), CliError> {
    let devices = fetch_all(ctx, status, hardware_id).await?;
    if ctx.format == Format::Json {
        return print_json(&Value::Array(devices));
    }
    let devices: Vec<Device> = decode("GET /api/v1/devices", Value::Array(devices))?;
    table(&devices).print_or("no devices");
    Ok(())
}

fn table(devices: &[Device]) -> Table {
    let mut t = Table::new(&["ID", "STATUS", "HARDWARE", "VERSION", "SLOT", "LAST SEEN"]);
    for d in devices {
        t.row(vec![
            d.id.clone(),
            d.status.clone(),
            or_dash(d.hardware_id.as_deref()),
            or_dash(d.current_version.as_deref()),
            or_dash(d.active_slot.as_deref()),
            or_dash(
                d.last_seen
                    .as_ref()
                    .or(d.decommissioned_at.as_ref())
                    .map(time),
            ),
        ]);
    }
    t
}

async fn show(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let value = ctx.client.get(&["api", "v1", "devices", id], &[]).await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let detail: Detail = decode("GET /api/v1/devices/{id}", value)?;
    print!("{}", render_detail(&detail));
    Ok(())
}

fn render_detail(d: &Detail) -> String {
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{k:<18}{}\n", sanitize(&v)));
    if let Some(t) = &d.decommissioned {
        field("id:", t.id.clone());
        field("status:", "decommissioned".into());
        field("decommissioned:", time(&t.decommissioned_at));
    }
    if let Some(dev) = &d.device {
        field("id:", dev.id.clone());
        field("status:", dev.status.clone());
        field(
            "status changed:",
            format!(
                "{} by {}",
                or_dash(dev.status_changed_at.as_ref().map(time)),
                or_dash(dev.status_changed_by.as_deref())
            ),
        );
        field("preauthorized:", dev.preauthorized.to_string());
        field("hardware:", or_dash(dev.hardware_id.as_deref()));
        field("version:", or_dash(dev.current_version.as_deref()));
        field("active slot:", or_dash(dev.active_slot.as_deref()));
        field("agent:", or_dash(dev.agent_version.as_deref()));
        field("certificate:", or_dash(dev.cert_sha256.as_deref()));
        field("first seen:", or_dash(dev.first_seen.as_ref().map(time)));
        field(
            "last seen:",
            format!(
                "{} from {}",
                or_dash(dev.last_seen.as_ref().map(time)),
                or_dash(dev.last_peer.as_deref())
            ),
        );
        for (k, v) in &dev.attributes {
            field(&format!("attr {}:", sanitize(k)), v.clone());
        }
    }
    let mut reports = Table::new(&["RECEIVED", "TARGET", "VERSION", "STATE", "DETAIL"]);
    for s in &d.status_reports {
        reports.row(vec![
            time(&s.received_at),
            cell(s.report.get("target")),
            cell(s.report.get("version")),
            cell(s.report.get("state")),
            cell(s.report.get("detail")),
        ]);
    }
    out.push_str(&format!("\nstatus reports ({}):\n", d.status_reports.len()));
    if !d.status_reports.is_empty() {
        out.push_str(&reports.render());
    }
    out.push_str(&format!("\nanomalies ({}):\n", d.anomalies.len()));
    if !d.anomalies.is_empty() {
        out.push_str(&anomaly_table(&d.anomalies).render());
    }
    out.push_str(&format!(
        "\noperation log: {} recent record(s)\n",
        d.oplog.len()
    ));
    out
}

/// The anomaly table shared with `ota anomalies`.
pub fn anomaly_table(items: &[Value]) -> Table {
    let mut t = Table::new(&["AT", "DEVICE", "SOURCE", "KIND", "MESSAGE"]);
    for a in items {
        t.row(vec![
            cell(a.get("at")),
            cell(a.get("device_id")),
            cell(a.get("source")),
            cell(a.get("kind")),
            cell(a.get("message")),
        ]);
    }
    t
}

async fn decide(ctx: &Ctx, id: &str, action: &str, done: &str) -> Result<(), CliError> {
    let value = ctx
        .client
        .post(&["api", "v1", "devices", id, action], &json!({}))
        .await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let changed = value
        .get("changed")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let id = sanitize(id);
    if changed {
        println!("{id} {done}");
    } else {
        println!("{id} was already {done}; nothing changed");
    }
    Ok(())
}

async fn decommission(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let value = ctx
        .client
        .post(&["api", "v1", "devices", id, "decommission"], &json!({}))
        .await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    println!(
        "{} decommissioned at {}; its identity can never be used again",
        sanitize(id),
        cell(value.get("decommissioned_at"))
    );
    Ok(())
}

async fn preauthorize(ctx: &Ctx, ids: &[String]) -> Result<(), CliError> {
    let value = ctx
        .client
        .post(
            &["api", "v1", "devices", "preauthorize"],
            &json!({"ids": ids}),
        )
        .await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let results: BTreeMap<String, String> = decode(
        "POST /api/v1/devices/preauthorize",
        value.get("results").cloned().unwrap_or(Value::Null),
    )?;
    let mut t = Table::new(&["ID", "OUTCOME"]);
    for (id, outcome) in results {
        t.row(vec![id, outcome.replace('_', " ")]);
    }
    t.print_or("no devices");
    Ok(())
}

/// Runs `ota enroll-token`.
pub async fn enroll_token(ctx: &Ctx, a: EnrollTokenArgs) -> Result<(), CliError> {
    let mut body = Map::new();
    if let Some(id) = &a.device_id {
        body.insert("device_id".into(), json!(id));
    }
    if let Some(ttl) = a.ttl_secs {
        body.insert("ttl_secs".into(), json!(ttl));
    }
    let value = ctx
        .client
        .post(&["api", "v1", "enrollment-tokens"], &Value::Object(body))
        .await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let token =
        value
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| CliError::BadResponse {
                url: "POST /api/v1/enrollment-tokens".into(),
                reason: "no token in the answer".into(),
            })?;
    // The secret alone on stdout, for scripts that hand it to a device.
    println!("{token}");
    eprintln!(
        "one-time enrollment token {} for {}, expires {}; it is shown once",
        cell(value.get("id")),
        match value.get("device_id") {
            Some(Value::String(d)) => format!("device {}", sanitize(d)),
            _ => "any new device id".into(),
        },
        cell(value.get("expires_at"))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(v: Value) -> Device {
        decode("test", v).unwrap()
    }

    #[test]
    fn table_shows_missing_fields_as_dashes() {
        let text = table(&[device(json!({
            "id": "dev-1", "status": "pending", "hardware_id": "b", "revision": 3
        }))])
        .render();
        assert!(text.contains("dev-1  pending"), "{text}");
        assert!(text.lines().nth(1).unwrap().ends_with('-'), "{text}");
    }

    #[test]
    fn tombstones_list_with_their_time() {
        let text = table(&[device(json!({
            "id": "d9", "status": "decommissioned", "decommissioned_at": "2030-01-01T00:00:00Z"
        }))])
        .render();
        assert!(text.contains("2030-01-01T00:00:00Z"), "{text}");
    }

    #[test]
    fn detail_renders_reports_and_neutralises_device_text() {
        let d: Detail = decode(
            "test",
            json!({
                "device": {"id": "d1", "status": "accepted",
                           "attributes": {"site": "\u{1b}[2Jevil"}},
                "decommissioned": null,
                "status_reports": [{"device_id": "d1", "received_at": "2030-01-01T00:00:00Z",
                    "report": {"target": "fw.bin", "version": "1.0.0", "state": "committed"}}],
                "anomalies": [], "oplog": [], "oplog_head": null
            }),
        )
        .unwrap();
        let text = render_detail(&d);
        assert!(text.contains("status:           accepted"), "{text}");
        assert!(text.contains("fw.bin"), "{text}");
        assert!(text.contains("committed"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn a_page_needs_its_devices_array() {
        let p: Page = decode("t", json!({"devices": [], "next_after": "d1"})).unwrap();
        assert_eq!(p.next_after.as_deref(), Some("d1"));
        assert!(decode::<Page>("t", json!([])).is_err());
    }
}
