//! `ota status`: the server's health, devices by status, the number of releases and the
//! fleet summary (`GET /api/v1/fleet/summary`: versions and update states).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{devices, releases, Ctx};
use crate::error::CliError;
use crate::output::{cell, print_json, sanitize, Format};

/// Runs `ota status`.
pub async fn run(ctx: &Ctx) -> Result<(), CliError> {
    // /healthz answers 503 with the same JSON when the timestamp has expired.
    let (status, bytes) = ctx.client.get_public(&["healthz"]).await?;
    let health: Value = serde_json::from_slice(&bytes).map_err(|e| CliError::BadResponse {
        url: "/healthz".into(),
        reason: format!("HTTP {status}, not JSON: {e}"),
    })?;
    let (_, releases) = releases::fetch(ctx).await?;
    let withdrawn = releases.iter().filter(|r| r.withdrawn_at.is_some()).count();
    // Older servers have no device API: report that rather than fail the whole status.
    let devices = match devices::fetch_all(ctx, None, None).await {
        Ok(list) => {
            // The unfiltered list leaves out decommissioned ids (only tombstones remain).
            let gone = devices::fetch_all(ctx, Some("decommissioned"), None).await?;
            let mut counts = count_by_status(&list);
            if !gone.is_empty() {
                counts.insert("decommissioned".into(), gone.len());
            }
            Some(counts)
        }
        Err(CliError::Api { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => None,
        Err(e) => return Err(e),
    };
    // Servers without the fleet API: leave the summary out rather than fail.
    let fleet = match ctx
        .client
        .get(&["api", "v1", "fleet", "summary"], &[])
        .await
    {
        Ok(v) => Some(v),
        Err(CliError::Api { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => None,
        Err(e) => return Err(e),
    };
    if ctx.format == Format::Json {
        return print_json(&json!({
            "health": health,
            "releases": {"total": releases.len(), "withdrawn": withdrawn},
            "devices": devices,
            "fleet": fleet,
        }));
    }
    println!(
        "server:    {} (root v{}, targets v{}, timestamp v{} expires {})",
        cell(health.get("status")),
        cell(health.get("root_version")),
        cell(health.get("targets_version")),
        cell(health.get("timestamp_version")),
        cell(health.get("timestamp_expires")),
    );
    println!(
        "releases:  {} ({} active, {withdrawn} withdrawn)",
        releases.len(),
        releases.len() - withdrawn
    );
    match devices {
        None => println!("devices:   (this server has no device API)"),
        Some(counts) => {
            let total: usize = counts.values().sum();
            let parts: Vec<String> = counts
                .iter()
                .map(|(s, n)| format!("{n} {}", sanitize(s)))
                .collect();
            if parts.is_empty() {
                println!("devices:   0");
            } else {
                println!("devices:   {total} ({})", parts.join(", "));
            }
        }
    }
    if let Some(f) = &fleet {
        print!("{}", render_fleet(f));
    }
    if !status.is_success() {
        return Err(CliError::Api {
            method: "GET".into(),
            path: "/healthz".into(),
            status,
            code: cell(health.get("status")),
            message: "the server reports itself unhealthy".into(),
        });
    }
    Ok(())
}

/// `versions:` and `updates:` lines of the fleet summary (counts of zero left out).
fn render_fleet(f: &Value) -> String {
    let parts = |v: Option<&Value>| -> String {
        let parts: Vec<String> = v
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter(|(_, n)| n.as_u64() != Some(0))
                    .map(|(k, n)| format!("{} {}", cell(Some(n)), sanitize(k)))
                    .collect()
            })
            .unwrap_or_default();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    };
    format!(
        "versions:  {}\nupdates:   {}\n",
        parts(f.get("by_version")),
        parts(f.get("by_update_state"))
    )
}

fn count_by_status(devices: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for d in devices {
        *counts.entry(cell(d.get("status"))).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_by_status() {
        let c = count_by_status(&[
            json!({"status": "pending"}),
            json!({"status": "accepted"}),
            json!({"status": "pending"}),
            json!({}),
        ]);
        assert_eq!(c.get("pending"), Some(&2));
        assert_eq!(c.get("accepted"), Some(&1));
        assert_eq!(c.get("-"), Some(&1));
    }

    #[test]
    fn fleet_summary_lines_skip_zeros() {
        let text = render_fleet(&json!({
            "devices": 3,
            "by_version": {"1.0.0": 2, "2.0.0": 1},
            "by_update_state": {"up_to_date": 3, "updating": 0, "failed": 0},
        }));
        assert_eq!(
            text,
            "versions:  2 1.0.0, 1 2.0.0\nupdates:   3 up_to_date\n"
        );
        assert_eq!(render_fleet(&json!({})), "versions:  -\nupdates:   -\n");
    }
}
