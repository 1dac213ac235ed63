//! `ota audit [--after N] [--limit N]` and `ota audit verify`.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::Ctx;
use crate::client::decode;
use crate::error::CliError;
use crate::output::{cell, print_json, time, Format, Table};

/// Options of `ota audit`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Entries after this sequence number (for paging).
    #[arg(long, value_name = "N")]
    after: Option<u64>,
    /// At most this many entries (server default 100, at most 1000).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

/// `ota audit` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Check the audit log's hash chain on the server; exits non-zero when it is broken.
    Verify,
}

/// One audit entry (`AuditEntry` on the server).
#[derive(Debug, Deserialize)]
struct Entry {
    seq: u64,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    subject: String,
    #[serde(default)]
    detail: serde_json::Value,
}

/// The chain check's answer.
#[derive(Debug, Deserialize)]
struct Verdict {
    entries: u64,
    intact: bool,
    #[serde(default)]
    first_break: Option<serde_json::Value>,
    #[serde(default)]
    reason: Option<String>,
}

/// Runs `ota audit …`.
pub async fn run(ctx: &Ctx, a: Args) -> Result<(), CliError> {
    match a.command {
        Some(Command::Verify) => verify(ctx).await,
        None => list(ctx, a.after, a.limit).await,
    }
}

async fn list(ctx: &Ctx, after: Option<u64>, limit: Option<usize>) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(n) = after {
        query.push(("after", n.to_string()));
    }
    if let Some(n) = limit {
        query.push(("limit", n.to_string()));
    }
    let value = ctx.client.get(&["api", "v1", "audit"], &query).await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let entries: Vec<Entry> = decode("GET /api/v1/audit", value)?;
    let mut t = Table::new(&["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT", "DETAIL"]);
    for e in &entries {
        let detail = match &e.detail {
            serde_json::Value::Object(m) if m.is_empty() => "-".to_string(),
            serde_json::Value::Null => "-".to_string(),
            other => cell(Some(other)),
        };
        t.row(vec![
            e.seq.to_string(),
            time(&e.at),
            e.actor.clone(),
            e.action.clone(),
            e.subject.clone(),
            detail,
        ]);
    }
    t.print_or("no audit entries");
    // The server's default page is 100 entries, and it never sends more than 1000.
    let page = limit.unwrap_or(100).min(1000);
    if let Some(last) = entries.last().filter(|_| entries.len() >= page) {
        eprintln!("more entries may follow: ota audit --after {}", last.seq);
    }
    Ok(())
}

async fn verify(ctx: &Ctx) -> Result<(), CliError> {
    let value = ctx
        .client
        .get(&["api", "v1", "audit", "verify"], &[])
        .await?;
    let verdict: Verdict = decode("GET /api/v1/audit/verify", value.clone())?;
    match ctx.format {
        Format::Json => print_json(&value)?,
        Format::Human if verdict.intact => println!(
            "audit log intact: {} entries, hash chain verified",
            verdict.entries
        ),
        Format::Human => {}
    }
    if verdict.intact {
        Ok(())
    } else {
        Err(CliError::AuditBroken {
            first_break: cell(verdict.first_break.as_ref()),
            reason: verdict.reason.unwrap_or_else(|| "no reason given".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_decode() {
        let ok: Verdict = decode(
            "t",
            serde_json::json!({"entries": 3, "intact": true, "first_break": null, "reason": null}),
        )
        .unwrap();
        assert!(ok.intact && ok.entries == 3);
        let broken: Verdict = decode(
            "t",
            serde_json::json!({"entries": 3, "intact": false, "first_break": 2, "reason": "HashMismatch"}),
        )
        .unwrap();
        assert!(!broken.intact);
        assert_eq!(cell(broken.first_break.as_ref()), "2");
    }
}
