//! `ota tokens create | list | revoke` (admin).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::Ctx;
use crate::client::decode;
use crate::error::CliError;
use crate::output::{or_dash, print_json, time, Format, Table};

/// `ota tokens` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create a token; its secret is printed once, on stdout alone.
    Create {
        /// A name for the token ("ci-publisher", "alice").
        #[arg(long)]
        name: String,
        /// What it may do.
        #[arg(long, value_parser = ["admin", "publisher", "operator", "viewer"])]
        role: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by its id.
    Revoke {
        /// The token's id (from `ota tokens list`).
        id: String,
    },
}

/// A token as listed (`TokenRecord` on the server).
#[derive(Debug, Deserialize)]
struct Record {
    id: String,
    name: String,
    role: String,
    created_at: DateTime<Utc>,
    #[serde(default)]
    revoked_at: Option<DateTime<Utc>>,
}

/// Runs `ota tokens …`.
pub async fn run(ctx: &Ctx, cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Create { name, role } => create(ctx, &name, &role).await,
        Command::List => list(ctx).await,
        Command::Revoke { id } => revoke(ctx, &id).await,
    }
}

async fn create(ctx: &Ctx, name: &str, role: &str) -> Result<(), CliError> {
    let value = ctx
        .client
        .post(
            &["api", "v1", "tokens"],
            &json!({"name": name, "role": role}),
        )
        .await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let secret =
        value
            .get("token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| CliError::BadResponse {
                url: "POST /api/v1/tokens".into(),
                reason: "no token in the answer".into(),
            })?;
    let record: Record = decode(
        "POST /api/v1/tokens",
        value.get("record").cloned().unwrap_or_default(),
    )?;
    // The secret alone on stdout, so that `ota tokens create … > file` stores just it.
    println!("{secret}");
    eprintln!(
        "created token {:?} (role {}, id {}); the secret above is shown once: store it now",
        record.name, record.role, record.id
    );
    Ok(())
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let value = ctx.client.get(&["api", "v1", "tokens"], &[]).await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let records: Vec<Record> = decode("GET /api/v1/tokens", value)?;
    let mut t = Table::new(&["ID", "NAME", "ROLE", "CREATED", "REVOKED"]);
    for r in &records {
        t.row(vec![
            r.id.clone(),
            r.name.clone(),
            r.role.clone(),
            time(&r.created_at),
            or_dash(r.revoked_at.as_ref().map(time)),
        ]);
    }
    t.print_or("no tokens");
    Ok(())
}

async fn revoke(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let value = ctx
        .client
        .post(&["api", "v1", "tokens", "revoke"], &json!({"id": id}))
        .await?;
    match ctx.format {
        Format::Json => print_json(&value),
        Format::Human => {
            println!("revoked token {id}");
            Ok(())
        }
    }
}
