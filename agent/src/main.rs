//! `ota-agent`: the device daemon of the ota update system.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ota_agent::boot::BootSimulator;
use ota_agent::config::{AgentConfig, BootloaderConfig};
use ota_agent::cycle::{Agent, Outcome};

#[derive(Parser)]
#[command(
    name = "ota-agent",
    version,
    about = "Secure OTA update agent: verified A/B updates with health gate and rollback"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, default_value = "/etc/ota/agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a daemon: poll, update, commit or roll back, forever.
    Run,
    /// One cycle, then exit; prints the outcome as JSON (scripts, tests).
    Once,
    /// Show slots, versions, the pending update and undelivered anomalies.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Erase this device's identity, state, logs and cached downloads (device leaving service).
    Wipe {
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Play the bootloader's boot decision once (file backend): what a reboot would do.
    SimulateBoot,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The clock, read once per cycle and passed down. With the `test-hooks` feature,
/// `OTA_AGENT_TEST_TIME_OFFSET_SECS` shifts it (expiry tests).
fn now() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    #[cfg(feature = "test-hooks")]
    if let Some(off) = std::env::var("OTA_AGENT_TEST_TIME_OFFSET_SECS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        return now + chrono::Duration::seconds(off);
    }
    now
}

fn run(cli: Cli) -> Result<ExitCode, BoxError> {
    let cfg = AgentConfig::from_file(&cli.config)?;
    match cli.command {
        Command::Wipe { yes } => {
            if !yes {
                return Err(
                    "wipe erases this device's identity, state and logs; run again with --yes"
                        .into(),
                );
            }
            let removed = Agent::wipe(&cfg)?;
            for p in &removed {
                println!("erased {}", p.display());
            }
            println!("wiped: the device must be enrolled again before it can update");
            Ok(ExitCode::SUCCESS)
        }
        Command::SimulateBoot => {
            let BootloaderConfig::File { path, .. } = &cfg.bootloader else {
                return Err("simulate-boot works with the file bootloader backend only".into());
            };
            let env = ota_agent::boot::file::FileEnv::new(path.clone());
            env.init(ota_agent::boot::Slot::A)?;
            let slot = BootSimulator::new(&env).simulate_boot()?;
            println!("{}", serde_json::json!({"booted": slot}));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => status(cfg, json),
        Command::Once => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut agent = Agent::open(cfg, now())?;
                let outcome = agent.run_once(now()).await?;
                println!("{}", serde_json::to_string(&outcome)?);
                if let Outcome::RebootRequested { .. } | Outcome::RolledBack { reboot: true, .. } =
                    outcome
                {
                    if agent.reboot()? {
                        tracing::info!("reboot command ran");
                    }
                }
                Ok(match outcome {
                    Outcome::Failed { .. } => ExitCode::from(2),
                    Outcome::Refused { .. } => ExitCode::from(3),
                    _ => ExitCode::SUCCESS,
                })
            })
        }
        Command::Run => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(daemon(cfg))
        }
    }
}

async fn daemon(cfg: AgentConfig) -> Result<ExitCode, BoxError> {
    let poll = cfg.poll.clone();
    let mut agent = Agent::open(cfg, now())?;
    let mut backoff = Duration::from_secs(5);
    loop {
        let outcome = agent.run_once(now()).await?;
        tracing::info!(?outcome, "cycle done");
        let wait = match &outcome {
            Outcome::RebootRequested { .. } | Outcome::RolledBack { reboot: true, .. } => {
                if !agent.reboot()? {
                    tracing::warn!(
                        "a reboot is needed but no reboot_command is configured (or it failed)"
                    );
                }
                Duration::from_secs(poll.interval_secs)
            }
            Outcome::Failed {
                retry_soon: true, ..
            } => {
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(poll.max_backoff_secs));
                w
            }
            Outcome::Failed { .. } | Outcome::Refused { .. } => {
                let w = backoff.max(Duration::from_secs(poll.interval_secs));
                backoff = (backoff * 2).min(Duration::from_secs(poll.max_backoff_secs));
                w.min(Duration::from_secs(
                    poll.max_backoff_secs.max(poll.interval_secs),
                ))
            }
            _ => {
                backoff = Duration::from_secs(5);
                Duration::from_secs(poll.interval_secs)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(jitter(wait, poll.jitter_percent)) => {}
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("stopping");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Spreads polls of a fleet: ±`percent` of `d`, from the clock's sub-second noise (no
/// RNG needed for this).
fn jitter(d: Duration, percent: u8) -> Duration {
    let spread = d.as_millis() as u64 * u64::from(percent.min(100)) / 100;
    if spread == 0 {
        return d;
    }
    let noise = u64::from(now().timestamp_subsec_nanos()) % (2 * spread + 1);
    Duration::from_millis((d.as_millis() as u64 + noise).saturating_sub(spread))
}

fn status(cfg: AgentConfig, json: bool) -> Result<ExitCode, BoxError> {
    let agent = Agent::open(cfg, now())?;
    let state = agent.state();
    let boot = agent.boot().state()?;
    let anomalies = agent.pending_anomalies()?;
    let value = serde_json::json!({
        "booted_slot": boot.booted_slot,
        "default_slot": boot.default_slot,
        "trying": boot.trying,
        "tries_left": boot.tries_left,
        "highest_committed": state.highest_committed().map(|v| v.to_string()),
        "slots": state.slots,
        "pending": state.pending,
        "undelivered_anomalies": anomalies,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("booted slot:        {}", boot.booted_slot);
        println!("default slot:       {}", boot.default_slot);
        if let Some(t) = boot.trying {
            println!("trying:             {t} ({} boots left)", boot.tries_left);
        }
        println!(
            "highest committed:  {}",
            state
                .highest_committed()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "none".into())
        );
        for (name, img) in [("A", &state.slots.a), ("B", &state.slots.b)] {
            match img {
                Some(i) => println!(
                    "slot {name}:             {} {} ({} bytes)",
                    i.target_name, i.version, i.length
                ),
                None => println!("slot {name}:             (no image installed by ota)"),
            }
        }
        match &state.pending {
            Some(p) => println!(
                "pending:            {} {} -> slot {} ({:?}, {} bytes done)",
                p.target_name, p.version, p.slot, p.phase, p.resume_offset
            ),
            None => println!("pending:            none"),
        }
        println!("undelivered anomalies: {}", anomalies.len());
        for a in anomalies.iter().rev().take(5) {
            println!(
                "  {} {}: {}",
                a.at.format("%Y-%m-%d %H:%M:%S"),
                a.kind,
                a.message
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
