//! `ota deployments …`: phased rollouts of a release to a group, over the server's fleet
//! API (`server/src/routes/fleet.rs`):
//!
//! | command | request | answer |
//! |---|---|---|
//! | `list` | `GET /api/v1/deployments` | `{"deployments": [DeploymentView]}` |
//! | `show ID` | `GET /api/v1/deployments/{id}` | `DeploymentView` |
//! | `create` | `POST /api/v1/deployments` `{release, group, phases, ...}` | 201 `DeploymentView` |
//! | `pause`, `abort` | `POST /api/v1/deployments/{id}/pause` `{reason?}` | `DeploymentView` |
//! | `resume` | `POST /api/v1/deployments/{id}/resume` | `DeploymentView` |

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::Ctx;
use crate::client::decode;
use crate::error::CliError;
use crate::output::{or_dash, print_json, sanitize, time, Format, Table};

/// `ota deployments` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List deployments, newest first.
    List,
    /// Show one deployment with the progress of each phase.
    Show {
        /// Deployment id.
        id: String,
    },
    /// Start a phased rollout of a published release to a group.
    Create(CreateArgs),
    /// Pause: no new device is sent the release; those already updating finish.
    Pause {
        /// Deployment id.
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused deployment.
    Resume {
        /// Deployment id.
        id: String,
    },
    /// Abort for good: no further installs.
    Abort {
        /// Deployment id.
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Options of `ota deployments create`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Target name of the release (as in `ota releases list`).
    #[arg(long)]
    release: String,
    /// Group name.
    #[arg(long)]
    group: String,
    /// Cumulative percentages of the group, rising, the last normally 100 (`10,50,100`).
    #[arg(long, value_delimiter = ',', required = true, value_parser = clap::value_parser!(u8).range(1..=100))]
    phases: Vec<u8>,
    /// Minimum seconds in each phase before the next begins.
    #[arg(long, default_value_t = 0)]
    min_wait_secs: u64,
    /// Pause when failures reach this percentage of a phase's finished devices.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
    failure_threshold: u8,
    /// ...once at least this many devices of the phase have finished.
    #[arg(long, default_value_t = 5)]
    min_devices: u64,
}

/// A deployment as the server shows it (`DeploymentView`).
#[derive(Debug, Deserialize)]
struct Deployment {
    id: String,
    release: String,
    version: String,
    group: String,
    state: String,
    status: Map<String, Value>,
    phase: usize,
    phase_started_at: DateTime<Utc>,
    phases: Vec<Phase>,
    failure_threshold_percent: u8,
    min_devices: u64,
    #[serde(default)]
    group_members: Option<u64>,
    #[serde(default)]
    outstanding: Option<u64>,
    created_at: DateTime<Utc>,
    created_by: String,
    #[serde(default)]
    finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
struct Phase {
    percent: u8,
    min_wait_secs: u64,
    targeted: u64,
    started: u64,
    succeeded: u64,
    failed: u64,
}

#[derive(Debug, Deserialize)]
struct List {
    deployments: Vec<Deployment>,
}

/// Runs `ota deployments …`.
pub async fn run(ctx: &Ctx, cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::List => list(ctx).await,
        Command::Show { id } => show(ctx, &id).await,
        Command::Create(a) => create(ctx, &a).await,
        Command::Pause { id, reason } => act(ctx, &id, "pause", reason.as_deref()).await,
        Command::Resume { id } => act(ctx, &id, "resume", None).await,
        Command::Abort { id, reason } => act(ctx, &id, "abort", reason.as_deref()).await,
    }
}

/// The `POST /api/v1/deployments` body.
fn create_body(a: &CreateArgs) -> Value {
    let phases: Vec<Value> = a
        .phases
        .iter()
        .map(|p| json!({"percent": p, "min_wait_secs": a.min_wait_secs}))
        .collect();
    json!({
        "release": a.release,
        "group": a.group,
        "phases": phases,
        "failure_threshold_percent": a.failure_threshold,
        "min_devices": a.min_devices,
    })
}

/// `paused (automatic): reason` and the like.
fn state_text(d: &Deployment) -> String {
    let mut s = d.state.clone();
    if d.status.get("automatic").and_then(Value::as_bool) == Some(true) {
        s.push_str(" (automatic)");
    }
    if let Some(r) = d.status.get("reason").and_then(Value::as_str) {
        s.push_str(": ");
        s.push_str(r);
    }
    s
}

/// `2/3` (1-based current phase of the total).
fn phase_text(d: &Deployment) -> String {
    format!("{}/{}", d.phase + 1, d.phases.len())
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let value = ctx.client.get(&["api", "v1", "deployments"], &[]).await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let list: List = decode("GET /api/v1/deployments", value)?;
    let mut t = Table::new(&[
        "ID", "RELEASE", "VERSION", "GROUP", "STATE", "PHASE", "CREATED",
    ]);
    for d in &list.deployments {
        t.row(vec![
            d.id.clone(),
            d.release.clone(),
            d.version.clone(),
            d.group.clone(),
            d.state.clone(),
            phase_text(d),
            time(&d.created_at),
        ]);
    }
    t.print_or("no deployments");
    Ok(())
}

fn render(d: &Deployment) -> String {
    let mut out = format!(
        "id:         {}\nrelease:    {} (version {})\ngroup:      {}\nstate:      {}\n\
         phase:      {} since {}\npause rule: {}% failed of at least {} finished\n",
        sanitize(&d.id),
        sanitize(&d.release),
        sanitize(&d.version),
        sanitize(&d.group),
        sanitize(&state_text(d)),
        phase_text(d),
        time(&d.phase_started_at),
        d.failure_threshold_percent,
        d.min_devices,
    );
    if let Some(m) = d.group_members {
        out.push_str(&format!(
            "members:    {m} ({} outstanding)\n",
            or_dash(d.outstanding)
        ));
    }
    out.push_str(&format!(
        "created:    {} by {}\n",
        time(&d.created_at),
        sanitize(&d.created_by)
    ));
    if let Some(f) = &d.finished_at {
        out.push_str(&format!("finished:   {}\n", time(f)));
    }
    let mut t = Table::new(&[
        "",
        "PHASE",
        "PERCENT",
        "MIN WAIT",
        "TARGETED",
        "STARTED",
        "SUCCEEDED",
        "FAILED",
    ]);
    for (i, p) in d.phases.iter().enumerate() {
        t.row(vec![
            if i == d.phase { "*" } else { "" }.to_string(),
            (i + 1).to_string(),
            format!("{}%", p.percent),
            format!("{}s", p.min_wait_secs),
            p.targeted.to_string(),
            p.started.to_string(),
            p.succeeded.to_string(),
            p.failed.to_string(),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());
    out
}

async fn show(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let value = ctx
        .client
        .get(&["api", "v1", "deployments", id], &[])
        .await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let d: Deployment = decode("GET /api/v1/deployments/{id}", value)?;
    print!("{}", render(&d));
    Ok(())
}

async fn create(ctx: &Ctx, a: &CreateArgs) -> Result<(), CliError> {
    let value = ctx
        .client
        .post(&["api", "v1", "deployments"], &create_body(a))
        .await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let d: Deployment = decode("POST /api/v1/deployments", value)?;
    println!(
        "created deployment {} of {} to group {} ({} phases)",
        sanitize(&d.id),
        sanitize(&d.release),
        sanitize(&d.group),
        d.phases.len()
    );
    Ok(())
}

/// `pause`, `resume` or `abort`.
async fn act(ctx: &Ctx, id: &str, action: &str, reason: Option<&str>) -> Result<(), CliError> {
    let body = match reason {
        Some(r) => json!({ "reason": r }),
        None => json!({}),
    };
    let value = ctx
        .client
        .post(&["api", "v1", "deployments", id, action], &body)
        .await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let d: Deployment = decode("POST /api/v1/deployments/{id}/…", value)?;
    println!(
        "deployment {}: {}",
        sanitize(&d.id),
        sanitize(&state_text(&d))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(status: Value) -> Deployment {
        serde_json::from_value(json!({
            "id": "d1", "release": "fw.bin", "version": "2.0.0", "hardware_ids": ["h"],
            "group": "g", "state": status["state"], "status": status, "phase": 1,
            "phase_started_at": "2030-01-01T00:00:00Z",
            "phases": [
                {"percent": 50, "min_wait_secs": 0, "targeted": 2, "started": 2, "succeeded": 2, "failed": 0},
                {"percent": 100, "min_wait_secs": 0, "targeted": 4, "started": 1, "succeeded": 0, "failed": 1}
            ],
            "failure_threshold_percent": 20, "min_devices": 5,
            "baseline": {"started": 0, "succeeded": 0, "failed": 0},
            "created_at": "2030-01-01T00:00:00Z", "created_by": "admin",
            "updated_at": "2030-01-01T00:00:00Z", "finished_at": null
        }))
        .unwrap()
    }

    #[test]
    fn body_gives_every_phase_the_wait() {
        let a = CreateArgs {
            release: "fw.bin".into(),
            group: "g".into(),
            phases: vec![10, 100],
            min_wait_secs: 30,
            failure_threshold: 20,
            min_devices: 5,
        };
        let b = create_body(&a);
        assert_eq!(b["phases"][1], json!({"percent": 100, "min_wait_secs": 30}));
        assert_eq!(b["failure_threshold_percent"], 20);
        assert_eq!(b["min_devices"], 5);
    }

    #[test]
    fn show_has_a_row_per_phase_and_the_reason() {
        let d = view(json!({"state": "paused", "reason": "too many failures", "automatic": true}));
        let text = render(&d);
        assert!(
            text.contains("paused (automatic): too many failures"),
            "{text}"
        );
        assert!(text.contains("2/2"), "{text}");
        let rows: Vec<&str> = text.lines().filter(|l| l.contains('%')).collect();
        assert!(
            rows.iter()
                .any(|l| l.starts_with('*') && l.contains("100%")),
            "{text}"
        );
        assert_eq!(state_text(&view(json!({"state": "active"}))), "active");
    }
}
