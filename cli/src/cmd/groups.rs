//! `ota groups …`: device groups, the audiences of deployments, over the server's fleet API
//! (`server/src/routes/fleet.rs`):
//!
//! | command | request | answer |
//! |---|---|---|
//! | `list` | `GET /api/v1/groups` | `{"groups": [GroupView]}` |
//! | `show NAME` | `GET /api/v1/groups/{name}` | `GroupView` |
//! | `create NAME` | `POST /api/v1/groups` `{name, devices? \| filter?}` | 201 `GroupView` |
//! | `delete NAME` | `DELETE /api/v1/groups/{name}` | `{"deleted": name}` |

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::Ctx;
use crate::client::decode;
use crate::error::CliError;
use crate::output::{or_dash, print_json, sanitize, time, Format, Table};

/// `ota groups` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List groups with their member counts.
    List,
    /// Show one group: its rule or its devices, and the deployments using it.
    Show {
        /// Group name.
        name: String,
    },
    /// Create a group: a static list of devices, or a rule (hardware id and attributes).
    Create(CreateArgs),
    /// Delete a group (refused while a running deployment uses it).
    Delete {
        /// Group name.
        name: String,
    },
}

/// Options of `ota groups create`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("members").required(true).args(["device", "hardware_id"])))]
pub struct CreateArgs {
    /// Group name.
    name: String,
    /// A device of a static group (repeatable).
    #[arg(long = "device", value_name = "ID", conflicts_with_all = ["hardware_id", "attr"])]
    device: Vec<String>,
    /// Dynamic group: devices of this board type.
    #[arg(long)]
    hardware_id: Option<String>,
    /// Dynamic group: devices reporting this attribute value (repeatable, all must match).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_attr, requires = "hardware_id")]
    attr: Vec<(String, String)>,
}

/// A group as the server shows it (`GroupView`).
#[derive(Debug, Deserialize)]
struct Group {
    name: String,
    kind: String,
    #[serde(default)]
    filter: Option<Filter>,
    #[serde(default)]
    listed: Option<usize>,
    #[serde(default)]
    devices: Option<Vec<String>>,
    member_count: u64,
    #[serde(default)]
    used_by: Vec<String>,
    created_at: DateTime<Utc>,
    created_by: String,
}

#[derive(Debug, Deserialize)]
struct Filter {
    #[serde(default)]
    hardware_id: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct List {
    groups: Vec<Group>,
}

/// Runs `ota groups …`.
pub async fn run(ctx: &Ctx, cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::List => list(ctx).await,
        Command::Show { name } => show(ctx, &name).await,
        Command::Create(a) => create(ctx, a).await,
        Command::Delete { name } => delete(ctx, &name).await,
    }
}

/// `KEY=VALUE`, the key non-empty.
fn parse_attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The `POST /api/v1/groups` body.
fn create_body(a: &CreateArgs) -> Value {
    if a.device.is_empty() {
        let attributes: BTreeMap<&str, &str> = a
            .attr
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        json!({
            "name": a.name,
            "filter": {"hardware_id": a.hardware_id, "attributes": attributes},
        })
    } else {
        json!({"name": a.name, "devices": a.device})
    }
}

fn rule(f: Option<&Filter>) -> String {
    let Some(f) = f else {
        return "-".into();
    };
    let mut parts = Vec::new();
    if let Some(h) = &f.hardware_id {
        parts.push(format!("hardware_id={h}"));
    }
    parts.extend(f.attributes.iter().map(|(k, v)| format!("{k}={v}")));
    if parts.is_empty() {
        "every device".into()
    } else {
        parts.join(" ")
    }
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let value = ctx.client.get(&["api", "v1", "groups"], &[]).await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let list: List = decode("GET /api/v1/groups", value)?;
    let mut t = Table::new(&["NAME", "KIND", "MEMBERS", "RULE", "USED BY", "CREATED"]);
    for g in &list.groups {
        t.row(vec![
            g.name.clone(),
            g.kind.clone(),
            g.member_count.to_string(),
            rule(g.filter.as_ref()),
            or_dash((!g.used_by.is_empty()).then(|| g.used_by.join(","))),
            time(&g.created_at),
        ]);
    }
    t.print_or("no groups");
    Ok(())
}

fn render(g: &Group) -> String {
    let mut out = format!(
        "name:       {}\nkind:       {}\nmembers:    {}\n",
        sanitize(&g.name),
        sanitize(&g.kind),
        g.member_count
    );
    if g.filter.is_some() {
        out.push_str(&format!(
            "rule:       {}\n",
            sanitize(&rule(g.filter.as_ref()))
        ));
    }
    if let Some(n) = g.listed {
        out.push_str(&format!("listed:     {n}\n"));
    }
    out.push_str(&format!(
        "used by:    {}\ncreated:    {} by {}\n",
        sanitize(&or_dash(
            (!g.used_by.is_empty()).then(|| g.used_by.join(", "))
        )),
        time(&g.created_at),
        sanitize(&g.created_by)
    ));
    if let Some(devices) = &g.devices {
        out.push_str("devices:\n");
        for d in devices {
            out.push_str(&format!("  {}\n", sanitize(d)));
        }
    }
    out
}

async fn show(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let value = ctx.client.get(&["api", "v1", "groups", name], &[]).await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let group: Group = decode("GET /api/v1/groups/{name}", value)?;
    print!("{}", render(&group));
    Ok(())
}

async fn create(ctx: &Ctx, a: CreateArgs) -> Result<(), CliError> {
    let value = ctx
        .client
        .post(&["api", "v1", "groups"], &create_body(&a))
        .await?;
    if ctx.format == Format::Json {
        return print_json(&value);
    }
    let g: Group = decode("POST /api/v1/groups", value)?;
    println!(
        "created {} group {} ({} members now)",
        sanitize(&g.kind),
        sanitize(&g.name),
        g.member_count
    );
    Ok(())
}

async fn delete(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let value = ctx.client.delete(&["api", "v1", "groups", name]).await?;
    match ctx.format {
        Format::Json => print_json(&value),
        Format::Human => {
            println!("deleted group {}", sanitize(name));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str, device: &[&str], hw: Option<&str>, attr: &[(&str, &str)]) -> CreateArgs {
        CreateArgs {
            name: name.into(),
            device: device.iter().map(|s| s.to_string()).collect(),
            hardware_id: hw.map(str::to_string),
            attr: attr
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn bodies_are_static_or_dynamic() {
        let b = create_body(&args("g", &["a", "b"], None, &[]));
        assert_eq!(b, json!({"name": "g", "devices": ["a", "b"]}));
        let b = create_body(&args("g", &[], Some("board"), &[("site", "x")]));
        assert_eq!(
            b,
            json!({"name": "g", "filter": {"hardware_id": "board", "attributes": {"site": "x"}}})
        );
    }

    #[test]
    fn attributes_need_a_key() {
        assert_eq!(parse_attr("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_attr("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_attr("=b").is_err());
        assert!(parse_attr("ab").is_err());
    }

    #[test]
    fn rules_read_well() {
        assert_eq!(rule(None), "-");
        let f = Filter {
            hardware_id: Some("h".into()),
            attributes: [("k".to_string(), "v".to_string())].into(),
        };
        assert_eq!(rule(Some(&f)), "hardware_id=h k=v");
    }
}
