//! `ota-loadgen`: plays a fleet of devices against a running `ota-server` on loopback,
//! each device with its own mutual-TLS identity, and prints what it measured.
//!
//! Benchmarks only: it refuses any target that is not a loopback address, and every run
//! is bounded by `--count` or `--duration`. See bench/README.md.

#![forbid(unsafe_code)]

mod client;
mod engine;
mod identity;
mod probe;
mod progress;
mod register;
mod sessions;
mod stats;
mod target;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use ota_common::api::PollRequest;

use crate::client::{ResumeMode, TlsBase};
use crate::engine::{ConnMode, Fleet, Plan, Work};
use crate::identity::DeviceCa;
use crate::stats::{cpu_time_us, Report, Stats};
use crate::target::Target;

/// Most simulated devices.
const MAX_DEVICES: u64 = 1_000_000;
/// Longest run.
const MAX_DURATION_SECS: f64 = 3600.0;
/// Most requests in one run.
const MAX_COUNT: u64 = 10_000_000_000;
/// Most concurrent connections.
const MAX_CONCURRENCY: usize = 50_000;

#[derive(Parser)]
#[command(
    name = "ota-loadgen",
    version,
    about = "Plays a fleet of devices against an ota-server on loopback (benchmarks only)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Devices poll: POST /api/v1/device/poll with their client certificates.
    Poll {
        #[command(flatten)]
        run: RunArgs,
        /// The hardware id the devices report.
        #[arg(long, default_value = "loadgen-board")]
        hardware_id: String,
        /// Register all --devices first, in this process (as `register` does), then poll:
        /// the devices then resume the TLS sessions of their registration, as real devices
        /// would (sessions cannot be handed from one process to another).
        #[arg(long)]
        register_first: bool,
        #[command(flatten)]
        reg: RegisterArgs,
    },
    /// Makes --devices devices known and accepted. By default all ids are accepted first
    /// through POST /api/v1/devices/preauthorize (admin token, in batches), then each device
    /// polls once on a new TLS session and must be answered 200.
    Register {
        #[command(flatten)]
        run: RunArgs,
        /// The hardware id the devices report.
        #[arg(long, default_value = "loadgen-board")]
        hardware_id: String,
        #[command(flatten)]
        reg: RegisterArgs,
    },
    /// Concurrent downloads of a target (GET, repeated): bytes/s.
    Download {
        #[command(flatten)]
        run: RunArgs,
        /// The path to download, e.g. targets/<sha256>.<name> [default: the --server URL's path].
        #[arg(long)]
        path: Option<String>,
    },
    /// Status reports: POST /api/v1/device/status, a new report id each time.
    Report {
        #[command(flatten)]
        run: RunArgs,
    },
    /// GETs a URL, e.g. a peer server's static file, with the same client as the other modes.
    Get {
        #[command(flatten)]
        run: RunArgs,
        /// The path to get [default: the --server URL's path].
        #[arg(long)]
        path: Option<String>,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Server URL (loopback only); a path in it is the default for download and get.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    server: String,
    /// The server's PKI directory (<data dir>/pki): device-ca.crt and device-ca.key sign the
    /// devices' certificates; ca.crt is the default --ca. Without it, requests carry no
    /// client certificate.
    #[arg(long)]
    pki: Option<PathBuf>,
    /// CA certificate(s) the server's certificate must chain to [default: <pki>/ca.crt].
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Number of simulated devices (each its own key and certificate).
    #[arg(long, default_value_t = 256)]
    devices: u64,
    /// Seed of the device keys: the same seed makes the same fleet.
    #[arg(long, default_value = "ota-loadgen")]
    seed: String,
    /// Device ids are <prefix>-<index, 7 digits>.
    #[arg(long, default_value = "lg")]
    id_prefix: String,
    /// Concurrent connections [default: --devices with keep-alive, else min(--devices, 64)].
    #[arg(long)]
    concurrency: Option<usize>,
    /// A new TCP connection and TLS session for every request, instead of keep-alive.
    #[arg(long)]
    new_session: bool,
    /// Session resumption on new connections.
    #[arg(long, value_enum, default_value_t = ResumeMode::Device)]
    resume: ResumeMode,
    /// Total requests per second [default: as fast as possible].
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many requests.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Longest time one request may take, in seconds (connect included).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Client threads (the client shares the CPUs with the server).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Server process ids: their CPU time over the run is reported (repeat for several).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Prefix of the printed figure names [default: the mode].
    #[arg(long)]
    label: Option<String>,
    /// Make identities on first use inside the timed run instead of before it.
    #[arg(long)]
    lazy_identities: bool,
    /// Print progress on stderr every this many seconds (0: never).
    #[arg(long, default_value_t = 10.0)]
    progress: f64,
}

/// How `register` (and `poll --register-first`) registers.
#[derive(Args, Clone)]
struct RegisterArgs {
    /// File holding the admin (or operator) token [default: <pki>/../admin.token].
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Ids per preauthorize request (the server takes at most 1000).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Preauthorize all ids, then one poll per device (the default).
    #[arg(long, conflicts_with = "poll_first")]
    preauthorize_first: bool,
    /// The old flow: poll (pending), preauthorize, poll again (two handshakes per device).
    #[arg(long)]
    poll_first: bool,
    /// Passes over the devices whose registration poll failed.
    #[arg(long, default_value_t = 1)]
    retries: u32,
    /// Concurrent registration polls (each a new TLS session).
    #[arg(long, default_value_t = 64)]
    register_concurrency: usize,
    /// The server's data directory: its disk usage is reported before and after
    /// registering (and after polling).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// A refused command line or a failed setup.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("{0}")]
    Args(String),
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Fleet(#[from] engine::FleetError),
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("register: {0}")]
    Register(#[from] register::RegisterError),
}

/// Most concurrent registration polls.
const MAX_REGISTER_CONCURRENCY: usize = 4096;

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("ota-loadgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes the work of a run once the target is known.
type WorkOf = Box<dyn Fn(&Target) -> Result<Work, SetupError>>;

/// A checked run: what the engine needs, plus what to print.
struct Prepared {
    target: Target,
    fleet: Arc<Fleet>,
    plan: Plan,
    args: RunArgs,
    label: String,
}

/// Returns whether the run succeeded: at least one request answered 2xx (and, when
/// registering, every device accepted).
fn run(cli: Cli) -> Result<bool, SetupError> {
    let (mode, args, work_of, reg): (&str, RunArgs, WorkOf, Option<RegisterArgs>) = match cli.mode {
        Mode::Poll {
            run,
            hardware_id,
            register_first,
            reg,
        } => (
            "poll",
            run,
            poll_work(hardware_id),
            register_first.then_some(reg),
        ),
        Mode::Register {
            run,
            hardware_id,
            reg,
        } => ("register", run, poll_work(hardware_id), Some(reg)),
        Mode::Download { run, path } => ("download", run, get_work(path), None),
        Mode::Report { run } => (
            "report",
            run,
            Box::new(|_: &Target| {
                Ok(Work::Report {
                    run: format!("lg{}", chrono::Utc::now().timestamp_micros()),
                })
            }),
            None,
        ),
        Mode::Get { run, path } => ("get", run, get_work(path), None),
    };
    let needs_devices = matches!(mode, "poll" | "report" | "register");
    let p = prepare(mode, args, work_of, needs_devices, reg.is_some())?;
    let rt = runtime(p.args.threads)?;
    let pids = p.args.server_pids.clone();
    let mut registered = true;
    if let Some(reg) = &reg {
        let label = if mode == "register" {
            p.label.clone()
        } else {
            format!("{}_register", p.label)
        };
        // `register` alone also takes --concurrency for its polls, as before.
        let concurrency = match mode {
            "register" => p.args.concurrency.unwrap_or(reg.register_concurrency),
            _ => reg.register_concurrency,
        };
        let spec = register_spec(reg, &p, label.clone(), concurrency)?;
        let dir = reg.data_dir.as_deref();
        print_probes(&label, "before", &pids, dir);
        let outcome = rt.block_on(register::register(
            &p.plan,
            p.fleet.clone(),
            p.target.clone(),
            &spec,
        ))?;
        print_probes(&label, "after", &pids, dir);
        registered = outcome.accepted == outcome.devices;
        if mode == "register" {
            return Ok(registered);
        }
    }
    let me = [std::process::id()];
    let cpu_before = (server_cpu(&pids), cpu_time_us(&me).ok());
    let (stats, elapsed) = rt.block_on(engine::run(
        p.plan.clone(),
        p.fleet.clone(),
        p.target.clone(),
    ));
    let cpu_after = (server_cpu(&pids), cpu_time_us(&me).ok());
    let used = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    print_report(
        &p.label,
        &stats,
        elapsed,
        used(cpu_before.0, cpu_after.0),
        used(cpu_before.1, cpu_after.1),
    );
    if let Some(reg) = &reg {
        print_probes(&p.label, "after", &pids, reg.data_dir.as_deref());
    }
    Ok(stats.ok > 0 && registered)
}

/// The registration of a prepared run.
fn register_spec(
    reg: &RegisterArgs,
    p: &Prepared,
    label: String,
    concurrency: usize,
) -> Result<register::Spec, SetupError> {
    if concurrency == 0 || concurrency > MAX_REGISTER_CONCURRENCY {
        return Err(SetupError::Args(format!(
            "--register-concurrency must be 1..={MAX_REGISTER_CONCURRENCY}"
        )));
    }
    let token_file = match (&reg.admin_token_file, &p.args.pki) {
        (Some(f), _) => f.clone(),
        (None, Some(pki)) => pki.join("..").join("admin.token"),
        (None, None) => return Err(SetupError::Args("register needs --pki".into())),
    };
    let token = read(&token_file)?;
    let token = String::from_utf8_lossy(&token).trim().to_owned();
    Ok(register::Spec {
        token,
        batch: reg.batch,
        flow: if reg.poll_first {
            register::Flow::PollFirst
        } else {
            register::Flow::PreauthorizeFirst
        },
        retries: reg.retries,
        concurrency,
        label,
        max_pass: Duration::from_secs_f64(MAX_DURATION_SECS),
        server_pids: p.args.server_pids.clone(),
    })
}

/// Prints the memory of the server processes and of this one, and the disk usage of the
/// server's data directory, as `<label>_<what>_<when> value B`; failures are warned.
fn print_probes(label: &str, when: &str, pids: &[u32], data_dir: Option<&Path>) {
    let mut lines = Vec::new();
    if !pids.is_empty() {
        match probe::memory(pids) {
            Ok(m) => {
                lines.push(format!("{label}_server_vmrss_{when} {} B", m.rss));
                lines.push(format!("{label}_server_vmhwm_{when} {} B", m.hwm));
            }
            Err(e) => eprintln!("# WARNING: server memory not measured: {e}"),
        }
    }
    match probe::memory(&[]) {
        Ok(m) => {
            lines.push(format!("{label}_loadgen_vmrss_{when} {} B", m.rss));
            lines.push(format!("{label}_loadgen_vmhwm_{when} {} B", m.hwm));
        }
        Err(e) => eprintln!("# WARNING: own memory not measured: {e}"),
    }
    if let Some(dir) = data_dir {
        match probe::disk_usage(dir) {
            Ok(b) => lines.push(format!("{label}_data_dir_{when} {b} B")),
            Err(e) => eprintln!("# WARNING: disk usage not measured: {e}"),
        }
    }
    for l in lines {
        println!("{l}");
    }
}

fn poll_work(hardware_id: String) -> WorkOf {
    Box::new(move |_| {
        let req = PollRequest {
            hardware_id: hardware_id.clone(),
            current_version: Some("1.0.0".into()),
            active_slot: Some("a".into()),
            agent_version: Some(concat!("ota-loadgen/", env!("CARGO_PKG_VERSION")).into()),
            attributes: Default::default(),
        };
        let body = serde_json::to_vec(&req).map_err(|e| SetupError::Args(e.to_string()))?;
        Ok(Work::Poll {
            body: Bytes::from(body),
        })
    })
}

fn get_work(path: Option<String>) -> WorkOf {
    Box::new(move |t: &Target| {
        let path = path.clone().unwrap_or_else(|| t.path.clone());
        Ok(Work::Get {
            path: t.with_path(&path).path,
        })
    })
}

fn read(path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks the arguments (bounded, loopback), loads the CA and device CA, makes the plan.
fn prepare(
    mode: &str,
    args: RunArgs,
    work_of: WorkOf,
    needs_devices: bool,
    registers: bool,
) -> Result<Prepared, SetupError> {
    let bad = |m: String| Err(SetupError::Args(m));
    let target = Target::parse(&args.server)?;
    if mode == "register" {
        // Register polls each device exactly once per phase.
        if args.count.is_some() {
            return bad("register makes one poll per device: give --devices, not --count".into());
        }
    } else if args.count.is_none() && args.duration.is_none() {
        return bad("refusing an unbounded run: give --count or --duration".into());
    }
    if let Some(d) = args.duration {
        if !(d > 0.0 && d <= MAX_DURATION_SECS) {
            return bad(format!(
                "--duration must be in (0, {MAX_DURATION_SECS}] seconds"
            ));
        }
    }
    if args.count.is_some_and(|c| c == 0 || c > MAX_COUNT) {
        return bad(format!("--count must be 1..={MAX_COUNT}"));
    }
    if args.devices == 0 || args.devices > MAX_DEVICES {
        return bad(format!("--devices must be 1..={MAX_DEVICES}"));
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return bad("--rate must be a positive number".into());
        }
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= MAX_DURATION_SECS) {
        return bad("--timeout must be in (0, 3600] seconds".into());
    }
    if !(args.progress.is_finite() && args.progress >= 0.0 && args.progress <= MAX_DURATION_SECS) {
        return bad("--progress must be in [0, 3600] seconds".into());
    }
    if !(1..=64).contains(&args.threads) {
        return bad("--threads must be 1..=64".into());
    }
    let conn = if args.new_session || mode == "register" {
        ConnMode::NewPerRequest
    } else {
        ConnMode::KeepAlive
    };
    let device_count = usize::try_from(args.devices).unwrap_or(usize::MAX);
    let concurrency = args.concurrency.unwrap_or(match conn {
        ConnMode::KeepAlive => device_count,
        ConnMode::NewPerRequest => device_count.min(64),
    });
    if concurrency == 0 || concurrency > MAX_CONCURRENCY {
        return bad(format!("--concurrency must be 1..={MAX_CONCURRENCY}"));
    }
    if needs_devices && args.pki.is_none() {
        return bad(format!(
            "{mode} needs device identities: give --pki <server data dir>/pki"
        ));
    }
    let ca_path = match (&args.ca, &args.pki) {
        (Some(ca), _) => ca.clone(),
        (None, Some(pki)) => pki.join("ca.crt"),
        (None, None) => return bad("give --ca (or --pki)".into()),
    };
    let tls = TlsBase::new(&read(&ca_path)?, args.resume)?;
    let ca = match &args.pki {
        Some(pki) => Some(DeviceCa::load(pki, &args.seed, &args.id_prefix)?),
        None => None,
    };
    let fleet = Arc::new(Fleet::new(tls, ca, args.devices));
    let work = work_of(&target)?;
    let duration = Duration::from_secs_f64(args.duration.unwrap_or(MAX_DURATION_SECS));
    let plan = Plan {
        work,
        conn,
        concurrency,
        rate: args.rate,
        count: if mode == "register" {
            Some(args.devices)
        } else {
            args.count
        },
        duration,
        timeout: Duration::from_secs_f64(args.timeout),
        devices: None,
        keep_failed: false,
        progress: (args.progress > 0.0).then(|| {
            (
                args.label.clone().unwrap_or_else(|| mode.to_owned()),
                Duration::from_secs_f64(args.progress),
            )
        }),
    };
    let label = args.label.clone().unwrap_or_else(|| mode.to_owned());
    eprintln!(
        "# ota-loadgen {mode}: {} -> {}; {} clients{}, {:?}, concurrency {concurrency}, resume {:?}, rate {}, count {}, duration {}, {} client thread(s)",
        args.server,
        target.addr,
        fleet.devices(),
        if fleet.has_identities() { " with device certificates" } else { " without certificates" },
        conn,
        args.resume,
        args.rate.map_or("max".into(), |r| format!("{r}/s")),
        plan.count.map_or("-".into(), |c| c.to_string()),
        args.duration.map_or("-".into(), |d| format!("{d}s")),
        args.threads,
    );
    if !args.lazy_identities {
        let used = match conn {
            // Registering polls every device once.
            _ if registers => fleet.devices(),
            ConnMode::KeepAlive => (concurrency as u64).min(fleet.devices()),
            ConnMode::NewPerRequest => {
                expected_requests(plan.count, plan.rate, args.duration).min(fleet.devices())
            }
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let took = fleet.pregenerate(used, threads)?;
        eprintln!(
            "# made {used} client configurations in {:.2} s ({:.0}/s)",
            took.as_secs_f64(),
            used as f64 / took.as_secs_f64().max(1e-9)
        );
    }
    Ok(Prepared {
        target,
        fleet,
        plan,
        args,
        label,
    })
}

/// How many requests a new-session run can make at most: its count, or its rate times its
/// duration (rounded up, plus a little for timing slack); unbounded otherwise. Only the
/// devices of these requests need identities before the run.
fn expected_requests(count: Option<u64>, rate: Option<f64>, duration: Option<f64>) -> u64 {
    match (count, rate.zip(duration)) {
        (Some(c), _) => c,
        (None, Some((r, d))) => ((r * d).ceil() as u64).saturating_add(1),
        (None, None) => u64::MAX,
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, SetupError> {
    let mut b = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().map_err(SetupError::Runtime)
}

/// Server CPU time now, µs; `None` without pids or if one cannot be read (warned).
fn server_cpu(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    match cpu_time_us(pids) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("# WARNING: server CPU not measured: {e}");
            None
        }
    }
}

fn print_report(
    label: &str,
    stats: &Stats,
    elapsed: Duration,
    server_cpu_us: Option<u64>,
    client_cpu_us: Option<u64>,
) {
    let report = Report {
        label,
        stats,
        elapsed,
        server_cpu_us,
        client_cpu_us,
    };
    for line in report.lines() {
        println!("{line}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<bool, SetupError> {
        let mut argv = vec!["ota-loadgen"];
        argv.extend_from_slice(args);
        run(Cli::try_parse_from(argv).unwrap())
    }

    #[test]
    fn timed_runs_at_a_rate_need_only_the_identities_they_can_use() {
        assert_eq!(expected_requests(Some(50), Some(10.0), Some(60.0)), 50);
        assert_eq!(expected_requests(None, Some(3333.0), Some(10.0)), 33_331);
        assert_eq!(expected_requests(None, Some(0.5), Some(3.0)), 3);
        assert_eq!(expected_requests(None, None, Some(10.0)), u64::MAX);
    }

    #[test]
    fn unbounded_and_non_loopback_runs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        identity::tests::write_pki(dir.path());
        let pki = dir.path().to_str().unwrap();
        let err = parse(&["poll", "--pki", pki]).unwrap_err();
        assert!(err.to_string().contains("unbounded"), "{err}");
        let err = parse(&["poll", "--pki", pki, "--duration", "0"]).unwrap_err();
        assert!(err.to_string().contains("--duration"), "{err}");
        let err = parse(&["poll", "--pki", pki, "--duration", "99999"]).unwrap_err();
        assert!(err.to_string().contains("--duration"), "{err}");
        let err = parse(&[
            "poll",
            "--pki",
            pki,
            "--count",
            "1",
            "--server",
            "https://192.0.2.7:8443",
        ])
        .unwrap_err();
        assert!(
            matches!(
                err,
                SetupError::Target(target::TargetError::NotLoopback { .. })
            ),
            "{err}"
        );
        let err = parse(&["poll", "--count", "1"]).unwrap_err();
        assert!(err.to_string().contains("--pki"), "{err}");
        let err = parse(&["register", "--pki", pki, "--count", "5"]).unwrap_err();
        assert!(err.to_string().contains("--devices"), "{err}");
        let err =
            parse(&["poll", "--pki", pki, "--count", "1", "--devices", "1000001"]).unwrap_err();
        assert!(err.to_string().contains("--devices"), "{err}");
        let err = parse(&["poll", "--pki", pki, "--count", "1", "--progress=-1"]).unwrap_err();
        assert!(err.to_string().contains("--progress"), "{err}");
        // Both flows at once are refused by the parser.
        assert!(Cli::try_parse_from([
            "ota-loadgen",
            "register",
            "--pki",
            pki,
            "--poll-first",
            "--preauthorize-first"
        ])
        .is_err());
    }
}
