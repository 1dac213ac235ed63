//! `ota releases list | withdraw NAME`.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::Ctx;
use crate::client::decode;
use crate::error::CliError;
use crate::output::{or_dash, print_json, size, time, Format, Table};

/// `ota releases` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List the releases of the signed targets, withdrawn ones marked.
    List,
    /// Withdraw a release: no deployment offers it any more (a development server also
    /// re-signs targets without it).
    Withdraw {
        /// Target name of the release.
        name: String,
    },
}

/// One release as the server lists it (`ReleaseView` on the server).
#[derive(Debug, Deserialize)]
pub struct Release {
    /// Target name.
    pub name: String,
    /// Image length.
    pub length: u64,
    /// Image SHA-256.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Release fields, when the target has valid ones.
    #[serde(default)]
    pub release: Option<ReleaseFields>,
    /// Length of the zstd-compressed form, if there is one.
    #[serde(default)]
    pub zstd_length: Option<u64>,
    /// When it was withdrawn.
    #[serde(default)]
    pub withdrawn_at: Option<DateTime<Utc>>,
}

/// The release fields of a target.
#[derive(Debug, Deserialize)]
pub struct ReleaseFields {
    /// Release version.
    pub version: String,
    /// Boards it fits.
    #[serde(default)]
    pub hardware_ids: Vec<String>,
    /// End of security support.
    #[serde(default)]
    pub support_until: Option<DateTime<Utc>>,
}

/// Runs `ota releases …`.
pub async fn run(ctx: &Ctx, cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::List => list(ctx).await,
        Command::Withdraw { name } => withdraw(ctx, &name).await,
    }
}

/// All releases (also used by `ota status`).
pub async fn fetch(ctx: &Ctx) -> Result<(Value, Vec<Release>), CliError> {
    let value = ctx.client.get(&["api", "v1", "releases"], &[]).await?;
    let list = decode("GET /api/v1/releases", value.clone())?;
    Ok((value, list))
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let (value, list) = fetch(ctx).await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    table(&list).print_or("no releases");
    Ok(())
}

fn table(list: &[Release]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "VERSION",
        "HARDWARE",
        "SIZE",
        "ZSTD",
        "SHA256",
        "SUPPORT-UNTIL",
        "STATUS",
    ]);
    for r in list {
        let f = r.release.as_ref();
        t.row(vec![
            r.name.clone(),
            or_dash(f.map(|f| f.version.clone())),
            or_dash(f.map(|f| f.hardware_ids.join(","))),
            size(r.length),
            or_dash(r.zstd_length.map(size)),
            or_dash(
                r.sha256
                    .as_deref()
                    .map(|s| s.chars().take(12).collect::<String>()),
            ),
            or_dash(f.and_then(|f| f.support_until.as_ref()).map(time)),
            match &r.withdrawn_at {
                Some(t) => format!("withdrawn {}", time(t)),
                None => "active".to_string(),
            },
        ]);
    }
    t
}

async fn withdraw(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let value = ctx.client.delete(&["api", "v1", "releases", name]).await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    match value.get("targets").and_then(|t| t.get("targets_version")) {
        Some(v) => println!("withdrew {name}; targets re-signed without it (v{v})"),
        None => println!(
            "withdrew {name}; no deployment offers it any more. This server does not hold the \
             targets key: sign a targets version without it with `ota-keys remove-target` and \
             publish that"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_decodes_and_marks_withdrawn() {
        let v = serde_json::json!([
            {"name": "fw-1.bin", "length": 2048, "sha256": "ab".repeat(32),
             "release": {"version": "1.0.0", "hardware_ids": ["b1", "b2"]},
             "withdrawn_at": null},
            {"name": "odd", "length": 1, "sha256": null, "release": null,
             "withdrawn_at": "2030-01-01T00:00:00Z"}
        ]);
        let list: Vec<Release> = decode("test", v).unwrap();
        let text = table(&list).render();
        assert!(text.contains("fw-1.bin  1.0.0"), "{text}");
        assert!(text.contains("b1,b2"), "{text}");
        assert!(text.contains("active"), "{text}");
        assert!(text.contains("withdrawn 2030-01-01T00:00:00Z"), "{text}");
    }
}
