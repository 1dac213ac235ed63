//! `ota`: the command-line client for publishers and operators of an ota server.
//!
//! It talks to a running `ota-server` over HTTPS only, through the JSON API, trusting
//! only the CA given with `--ca`. It never opens the server's store.

mod client;
mod cmd;
mod error;
mod output;
mod upload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::{Client, ConnectOptions, Token, TOKEN_ENV};
use crate::cmd::Ctx;
use crate::error::{CliError, EXIT_CODES_HELP};
use crate::output::Format;

/// ota: publish releases and operate a fleet through an ota server.
#[derive(Parser, Debug)]
#[command(name = "ota", version, about, long_about = None, after_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct Global {
    /// Server base URL, https://HOST:PORT.
    #[arg(long, global = true, env = "OTA_SERVER", value_name = "URL")]
    server: Option<String>,
    /// File holding the API token. Otherwise the OTA_TOKEN environment variable
    /// (a token is never accepted on the command line, where other users could read it).
    #[arg(long, global = true, env = "OTA_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that issued the server's certificate: the only trust anchor.
    #[arg(long, global = true, env = "OTA_CA", value_name = "PATH")]
    ca: Option<PathBuf>,
    /// Print machine-readable JSON (the server's answer) instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upload an image and publish it (development server), or publish targets signed
    /// with ota-keys (--signed-targets REPO_DIR).
    Publish(cmd::publish::Args),
    /// List or withdraw releases.
    #[command(subcommand)]
    Releases(cmd::releases::Command),
    /// List, inspect and decide on devices.
    #[command(subcommand)]
    Devices(cmd::devices::Command),
    /// Create, list and delete device groups.
    #[command(subcommand)]
    Groups(cmd::groups::Command),
    /// Phased rollouts of a release to a group: create, watch, pause, resume, abort.
    #[command(subcommand)]
    Deployments(cmd::deployments::Command),
    /// Issue a one-time enrollment token for a device.
    EnrollToken(cmd::devices::EnrollTokenArgs),
    /// Anomalies reported by devices and found by the server.
    Anomalies(cmd::anomalies::Args),
    /// Read the audit log, or verify its hash chain (`ota audit verify`).
    Audit(cmd::audit::Args),
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand)]
    Tokens(cmd::tokens::Command),
    /// Server health, devices by status, the number of releases and the fleet summary.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let ctx = Ctx {
        client: Client::new(&connect_options(
            cli.global.server,
            cli.global.ca,
            cli.global.token_file,
        )?)?,
        format: if cli.global.json {
            Format::Json
        } else {
            Format::Human
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::ClientSetup(format!("starting the async runtime: {e}")))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Publish(a) => cmd::publish::run(&ctx, a).await,
            Command::Releases(c) => cmd::releases::run(&ctx, c).await,
            Command::Devices(c) => cmd::devices::run(&ctx, c).await,
            Command::Groups(c) => cmd::groups::run(&ctx, c).await,
            Command::Deployments(c) => cmd::deployments::run(&ctx, c).await,
            Command::EnrollToken(a) => cmd::devices::enroll_token(&ctx, a).await,
            Command::Anomalies(a) => cmd::anomalies::run(&ctx, a).await,
            Command::Audit(a) => cmd::audit::run(&ctx, a).await,
            Command::Tokens(c) => cmd::tokens::run(&ctx, c).await,
            Command::Status => cmd::status::run(&ctx).await,
        }
    })
}

/// Server, CA and token from options and environment; the token file wins over OTA_TOKEN.
fn connect_options(
    server: Option<String>,
    ca: Option<PathBuf>,
    token_file: Option<PathBuf>,
) -> Result<ConnectOptions, CliError> {
    let server = server.ok_or_else(|| {
        CliError::Usage("no server: give --server https://HOST:PORT or set OTA_SERVER".into())
    })?;
    let ca = ca.ok_or_else(|| {
        CliError::Usage(
            "no CA certificate: give --ca PATH or set OTA_CA (ota trusts only this CA, never \
             the system store)"
                .into(),
        )
    })?;
    let token = match token_file {
        Some(path) => Some(Token::from_file(&path)?),
        None => std::env::var(TOKEN_ENV)
            .ok()
            .as_deref()
            .and_then(Token::parse),
    };
    Ok(ConnectOptions { server, ca, token })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_and_ca_are_required() {
        let e = connect_options(None, Some("ca".into()), None).unwrap_err();
        assert!(e.to_string().contains("--server"), "{e}");
        let e = connect_options(Some("https://h".into()), None, None).unwrap_err();
        assert!(e.to_string().contains("--ca"), "{e}");
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "ota_abc\n").unwrap();
        let o = connect_options(Some("https://h".into()), Some("ca".into()), Some(f)).unwrap();
        assert!(o.token.is_some());
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(connect_options(Some("https://h".into()), Some("ca".into()), Some(empty)).is_err());
    }

    #[test]
    fn parses_the_documented_commands() {
        for args in [
            &[
                "ota",
                "publish",
                "img.bin",
                "--name",
                "n",
                "--version",
                "1.0.0",
                "--hardware-id",
                "h",
            ][..],
            &["ota", "publish", "--signed-targets", "repo"],
            &["ota", "releases", "list", "--json"],
            &["ota", "releases", "withdraw", "n"],
            &[
                "ota",
                "devices",
                "list",
                "--status",
                "pending",
                "--hardware-id",
                "h",
            ],
            &["ota", "devices", "decommission", "d1", "--yes"],
            &["ota", "devices", "preauthorize", "d1", "d2"],
            &[
                "ota",
                "enroll-token",
                "--device-id",
                "d1",
                "--ttl-secs",
                "60",
            ],
            &["ota", "anomalies", "--limit", "5"],
            &["ota", "audit", "--after", "3", "--limit", "10"],
            &["ota", "audit", "verify"],
            &[
                "ota",
                "tokens",
                "create",
                "--name",
                "ci",
                "--role",
                "publisher",
            ],
            &["ota", "tokens", "revoke", "abcd1234"],
            &["ota", "status"],
            &["ota", "groups", "list", "--json"],
            &[
                "ota", "groups", "create", "g", "--device", "a", "--device", "b",
            ],
            &[
                "ota",
                "groups",
                "create",
                "g",
                "--hardware-id",
                "h",
                "--attr",
                "site=x",
            ],
            &["ota", "groups", "delete", "g"],
            &[
                "ota",
                "deployments",
                "create",
                "--release",
                "r",
                "--group",
                "g",
                "--phases",
                "10,50,100",
                "--min-wait-secs",
                "60",
            ],
            &["ota", "deployments", "pause", "d1", "--reason", "why"],
            &["ota", "deployments", "resume", "d1"],
            &["ota", "deployments", "abort", "d1"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        // An image and --signed-targets exclude each other; a dev publish needs its fields.
        assert!(
            Cli::try_parse_from(["ota", "publish", "img.bin", "--signed-targets", "r"]).is_err()
        );
        assert!(Cli::try_parse_from(["ota", "publish", "img.bin", "--name", "n"]).is_err());
        assert!(
            Cli::try_parse_from(["ota", "tokens", "create", "--name", "n", "--role", "root"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["ota", "devices", "preauthorize"]).is_err());
        // A group is a list of devices or a rule, not both, and not neither.
        assert!(Cli::try_parse_from(["ota", "groups", "create", "g"]).is_err());
        assert!(Cli::try_parse_from([
            "ota",
            "groups",
            "create",
            "g",
            "--device",
            "a",
            "--hardware-id",
            "h"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["ota", "groups", "create", "g", "--attr", "k=v"]).is_err());
        assert!(Cli::try_parse_from([
            "ota",
            "deployments",
            "create",
            "--release",
            "r",
            "--group",
            "g",
            "--phases",
            "0,100"
        ])
        .is_err());
    }
}
