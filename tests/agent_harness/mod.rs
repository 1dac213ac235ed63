//! End-to-end harness for `ota-agent`: the real agent binary (built with the `test-hooks`
//! feature) run as child processes against a real `ota-server` (see `tests/harness`) over
//! loopback TLS, with file-backed slots and the file bootloader.
//!
//! Used as `mod harness; mod agent_harness;` from `tests/agent_*.rs`. Each test crate uses
//! a different subset, hence the `dead_code` allowance.
//!
//! - [`agent_bin`] builds `ota-agent --features test-hooks` once per test process and runs
//!   a private copy of it (other builds of the workspace overwrite `target/*/ota-agent`
//!   without the feature at any time).
//! - [`Lab`] is one server plus its trusted root, with the operator calls the tests need
//!   (accept, publish, withdraw, device detail).
//! - [`AgentProcess`] is one device: a directory with its config, identity, trusted root,
//!   data directory, slots and bootloader file; each method runs one `ota-agent` command
//!   with a bounded wait and returns what it printed.

#![allow(dead_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{self, json_body, sha256_hex, ServerProcess};

/// The hardware id every test device and release uses.
pub const HW: &str = "ota-test-board";

/// Longest one agent command may run before the test fails (a hang is a bug, not a wait).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The agent's crash points, in cycle order: a copy of `ota_agent::cycle::CRASH_POINTS`
/// (the crash-matrix test checks it against agent/src/cycle.rs).
pub const CRASH_POINTS: [&str; 10] = [
    "after_poll",
    "after_refresh",
    "after_begin",
    "mid_download",
    "after_download",
    "after_try_once",
    "before_reboot",
    "after_boot_seen",
    "after_health",
    "after_commit",
];

/// The crash points reached on the `once` after a (simulated) reboot into the new slot.
pub const POST_BOOT_POINTS: [&str; 3] = ["after_boot_seen", "after_health", "after_commit"];

/// The marker only a `test-hooks` build of the agent contains (the hook's env variable).
const HOOK_MARKER: &[u8] = b"OTA_AGENT_CRASH_AT";

/// Path of an `ota-agent` binary with the `test-hooks` feature, built once per test
/// process. `$OTA_AGENT_BIN` overrides it with a prebuilt one (which must have the hooks).
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("OTA_AGENT_BIN") {
            let p = PathBuf::from(p);
            assert!(
                has_hooks(&p),
                "$OTA_AGENT_BIN {} was built without --features test-hooks",
                p.display()
            );
            return p;
        }
        build_agent_with_hooks()
    })
    .clone()
}

fn has_hooks(bin: &Path) -> bool {
    let bytes = std::fs::read(bin).unwrap_or_else(|e| panic!("reading {}: {e}", bin.display()));
    let first = HOOK_MARKER[0];
    // Cheap scan: only compare where the first byte matches.
    bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == first)
        .any(|(i, _)| bytes[i..].starts_with(HOOK_MARKER))
}

/// `cargo build -p ota-agent --bin ota-agent --features test-hooks` in the tests' profile,
/// then a private copy under `<target>/agent-test-hooks/`: the shared `target/*/ota-agent`
/// is rewritten by any build without the feature, so the copy is checked for the hook
/// marker and the build repeated if another build won the race.
fn build_agent_with_hooks() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let release = !cfg!(debug_assertions);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| harness::workspace_root().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        harness::workspace_root().join(target)
    };
    let profile = if release { "release" } else { "debug" };
    let built = target.join(profile).join("ota-agent");
    let private_dir = target.join("agent-test-hooks");
    std::fs::create_dir_all(&private_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", private_dir.display()));
    let private = private_dir.join(format!("ota-agent-{profile}"));
    for attempt in 1..=3 {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(harness::workspace_root()).args([
            "build",
            "--quiet",
            "-p",
            "ota-agent",
            "--bin",
            "ota-agent",
            "--features",
            "test-hooks",
        ]);
        if release {
            cmd.arg("--release");
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running cargo build -p ota-agent: {e}"));
        assert!(
            out.status.success(),
            "cargo build -p ota-agent --features test-hooks failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let tmp = private_dir.join(format!("ota-agent-{profile}.{}.tmp", std::process::id()));
        std::fs::copy(&built, &tmp)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), tmp.display()));
        if has_hooks(&tmp) {
            // Atomic: agents of a concurrent test process keep running the old inode.
            std::fs::rename(&tmp, &private)
                .unwrap_or_else(|e| panic!("renaming to {}: {e}", private.display()));
            return private;
        }
        let _ = std::fs::remove_file(&tmp);
        eprintln!(
            "attempt {attempt}: {} lost its test hooks to a concurrent build; rebuilding",
            built.display()
        );
    }
    panic!(
        "could not get an ota-agent build with test hooks from {}",
        built.display()
    );
}

/// `len` bytes for an image, different per `seed` (see [`harness::pseudo_random_bytes`]).
pub fn image(seed: &str, len: usize) -> Vec<u8> {
    harness::pseudo_random_bytes(seed, len)
}

/// SHA-256 (hex) of a file's bytes.
pub fn file_sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    sha256_hex(&bytes)
}

/// One server and what devices need from it.
pub struct Lab {
    /// The server (declared first: dropped, i.e. killed, before its directory goes).
    pub server: ServerProcess,
    /// The TUF root devices trust initially (`GET /metadata/1.root.json`).
    pub root: Vec<u8>,
    tmp: tempfile::TempDir,
}

impl Lab {
    /// Starts a development server in a fresh temporary directory and fetches its root.
    pub async fn start() -> Lab {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let server = ServerProcess::start_dev(&tmp.path().join("server"), None);
        server.wait_healthy().await;
        let root = server
            .metadata("1.root.json")
            .await
            .expect("the server serves 1.root.json");
        Lab { server, root, tmp }
    }

    /// The temporary directory the lab's files live in.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// A device `id` with a fresh identity from the server's device CA, not yet known to
    /// the server.
    pub fn new_device(&self, id: &str, opts: DeviceOptions) -> AgentProcess {
        let (cert, key) = self.server.issue_device(id);
        let server_url = opts
            .server_url
            .clone()
            .unwrap_or_else(|| self.server.base_url());
        let ca = opts
            .ca_file
            .clone()
            .unwrap_or_else(|| self.server.ca_path());
        AgentProcess::create(
            &self.dir().join("devices").join(id),
            id,
            &server_url,
            &ca,
            (&cert, &key),
            &self.root,
            opts,
        )
    }

    /// A device the operator accepted after its first contact: its first `once` is
    /// refused with `device_pending` (exit code 3), then `POST .../accept`.
    pub async fn enrolled_device(&self, id: &str, opts: DeviceOptions) -> AgentProcess {
        let dev = self.new_device(id, opts);
        let first = dev.once();
        assert_eq!(first.kind(), "refused", "first contact: {first}");
        assert_eq!(first.outcome["code"], "device_pending", "{first}");
        assert_eq!(first.code, Some(3), "refused exits 3: {first}");
        self.accept(id).await;
        dev
    }

    fn admin(&self) -> (reqwest::Client, String) {
        (self.server.client(), self.server.admin_token())
    }

    /// `POST /api/v1/devices/{id}/accept`.
    pub async fn accept(&self, id: &str) {
        let (client, token) = self.admin();
        let resp = client
            .post(self.server.url(&format!("/api/v1/devices/{id}/accept")))
            .bearer_auth(token)
            .send()
            .await
            .expect("POST accept");
        let status = resp.status().as_u16();
        let body = json_body(resp).await;
        assert_eq!(status, 200, "accept {id}: {body}");
        assert_eq!(body["device"]["status"], "accepted", "accept {id}: {body}");
    }

    /// `POST /api/v1/devices/preauthorize`: accepted on first contact.
    pub async fn preauthorize(&self, ids: &[String]) {
        let (client, token) = self.admin();
        let resp = client
            .post(self.server.url("/api/v1/devices/preauthorize"))
            .bearer_auth(token)
            .json(&json!({ "ids": ids }))
            .send()
            .await
            .expect("POST preauthorize");
        let status = resp.status().as_u16();
        let body = json_body(resp).await;
        assert_eq!(status, 200, "preauthorize: {body}");
    }

    /// Uploads `bytes` and publishes them as release `name` at `version` for [`HW`];
    /// returns the sha256.
    pub async fn publish(&self, name: &str, bytes: Vec<u8>, version: &str) -> String {
        let sha = self.server.upload(bytes).await;
        self.server
            .publish_release(name, &sha, version, &[HW])
            .await;
        sha
    }

    /// Publishes `bytes` as release `version` with a zstd form made by `ota-keys` at
    /// `level` (both blobs uploaded); returns the image's SHA-256 and the compressed bytes.
    pub async fn publish_compressed(
        &self,
        name: &str,
        bytes: Vec<u8>,
        version: &str,
        level: i32,
    ) -> (String, Vec<u8>) {
        let mut zst = Vec::new();
        let c = ota_keys::compress::compress_frames(&bytes[..], &mut zst, level)
            .expect("compressing the image");
        let zsha = self.server.upload(zst.clone()).await;
        assert_eq!(zsha, hex::encode(c.sha256));
        let sha = self.server.upload(bytes).await;
        let (client, token) = self.admin();
        let resp = client
            .post(self.server.url("/api/v1/releases"))
            .bearer_auth(token)
            .json(&serde_json::json!({
                "name": name, "sha256": sha, "version": version, "hardware_ids": [HW],
                "zstd": {"length": c.length, "sha256": zsha},
            }))
            .send()
            .await
            .expect("POST release");
        let status = resp.status().as_u16();
        let body = json_body(resp).await;
        assert_eq!(status, 200, "publish {name}: {body}");
        (sha, zst)
    }

    /// `DELETE /api/v1/releases/{name}` (development mode: re-signs targets without it).
    pub async fn withdraw(&self, name: &str) {
        let (client, token) = self.admin();
        let resp = client
            .delete(self.server.url(&format!("/api/v1/releases/{name}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("DELETE release");
        let status = resp.status().as_u16();
        let body = json_body(resp).await;
        assert_eq!(status, 200, "withdraw {name}: {body}");
    }

    /// `GET /api/v1/devices/{id}?limit=1000`: record, status reports and anomalies (newest
    /// first), oplog and its head.
    pub async fn device(&self, id: &str) -> Value {
        let (client, token) = self.admin();
        let resp = client
            .get(self.server.url(&format!("/api/v1/devices/{id}?limit=1000")))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET device");
        let status = resp.status().as_u16();
        let body = json_body(resp).await;
        assert_eq!(status, 200, "device {id}: {body}");
        body
    }

    /// The kinds of the anomalies the server stored for `id` (from the global feed).
    pub async fn anomaly_kinds(&self, id: &str) -> Vec<String> {
        let (client, token) = self.admin();
        let resp = client
            .get(self.server.url("/api/v1/anomalies?limit=1000"))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET anomalies");
        let status = resp.status().as_u16();
        let body = json_body(resp).await;
        assert_eq!(status, 200, "anomalies: {body}");
        body["anomalies"]
            .as_array()
            .unwrap_or_else(|| panic!("anomalies must be an array: {body}"))
            .iter()
            .filter(|a| a["device_id"] == id)
            .map(|a| a["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The states of the status reports the server stored for `id`, newest first.
    pub async fn status_states(&self, id: &str) -> Vec<String> {
        let detail = self.device(id).await;
        detail["status_reports"]
            .as_array()
            .unwrap_or_else(|| panic!("status_reports must be an array: {detail}"))
            .iter()
            .map(|s| {
                s["report"]["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }
}

/// How a device is set up.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Health-gate commands (argv each).
    pub health_commands: Vec<Vec<String>>,
    /// Whether the health gate needs the server reachable.
    pub require_server: bool,
    /// Boots of a tried slot before the bootloader falls back.
    pub tries: u32,
    /// The CA the agent pins (default: the server's).
    pub ca_file: Option<PathBuf>,
    /// The server URL (default: the lab server's).
    pub server_url: Option<String>,
    /// Slot A's initial content, the "factory image".
    pub factory_image: Vec<u8>,
    /// Slot B's initial size (zeros).
    pub slot_b_len: usize,
    /// `[download] compressed`: use a release's zstd form when it has one.
    pub compressed: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            health_commands: Vec::new(),
            require_server: true,
            tries: 3,
            ca_file: None,
            server_url: None,
            factory_image: image("factory image", 256 * 1024),
            compressed: true,
            slot_b_len: 2 * 1024 * 1024,
        }
    }
}

/// What one `ota-agent` command did.
#[derive(Debug, Clone)]
pub struct Run {
    /// The last stdout line parsed as JSON, or `Null`.
    pub outcome: Value,
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr (the agent's log).
    pub stderr: String,
}

impl Run {
    /// `outcome["outcome"]` (`"committed"`, `"failed"`, ...), or `""`.
    pub fn kind(&self) -> &str {
        self.outcome["outcome"].as_str().unwrap_or("")
    }

    /// Asserts the run printed `{"outcome": kind, ...}`; returns the outcome.
    pub fn expect(&self, kind: &str) -> &Value {
        assert_eq!(self.kind(), kind, "expected outcome {kind}: {self}");
        &self.outcome
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}, signal {:?}, outcome {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.signal, self.outcome, self.stdout, self.stderr
        )
    }
}

/// A slot booted by `simulate-boot`, and what it held at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// `"A"` or `"B"`.
    pub slot: String,
    /// SHA-256 of the slot file's bytes.
    pub sha256: String,
}

/// One device: files under its own directory, commands run as child processes.
pub struct AgentProcess {
    /// Device id (certificate common name).
    pub id: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The agent configuration file.
    pub config: PathBuf,
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// Device certificate and key (copies owned by the device).
    pub cert: PathBuf,
    /// Device key.
    pub key: PathBuf,
    /// Slot A (a file).
    pub slot_a: PathBuf,
    /// Slot B (a file).
    pub slot_b: PathBuf,
    /// The file bootloader's environment.
    pub boot_env: PathBuf,
    /// SHA-256 of the factory image in slot A.
    pub factory_sha256: String,
    boots: Mutex<Vec<Boot>>,
    runs: AtomicU32,
}

impl AgentProcess {
    /// Lays out a device in `dir` and writes its configuration.
    pub fn create(
        dir: &Path,
        id: &str,
        server_url: &str,
        ca: &Path,
        identity: (&Path, &Path),
        trusted_root: &[u8],
        opts: DeviceOptions,
    ) -> AgentProcess {
        std::fs::create_dir_all(dir.join("logs"))
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
            p
        };
        let read =
            |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        let cert = write("device.crt", &read(identity.0));
        let key = write("device.key", &read(identity.1));
        let ca = write("ca.crt", &read(ca));
        let root = write("root.json", trusted_root);
        let slot_a = write("a.img", &opts.factory_image);
        let slot_b = write("b.img", &vec![0u8; opts.slot_b_len]);
        let boot_env = dir.join("boot.json");
        let data_dir = dir.join("data");
        let health: Vec<String> = opts
            .health_commands
            .iter()
            .map(|argv| {
                format!(
                    "[{}]",
                    argv.iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        // Debug formatting of plain ASCII paths is a valid TOML basic string.
        let p = |p: &Path| format!("{:?}", p.display().to_string());
        let text = format!(
            "server_url = {url:?}\n\
             ca_file = {ca}\n\
             cert_file = {cert}\n\
             key_file = {key}\n\
             trusted_root = {root}\n\
             hardware_id = {hw:?}\n\
             data_dir = {data}\n\
             reboot_command = []\n\
             \n[slots]\na = {a}\nb = {b}\n\
             \n[bootloader]\nkind = \"file\"\npath = {boot}\ntries = {tries}\n\
             \n[health]\ncommands = [{health}]\nrequire_server = {req}\ntimeout_secs = 60\n\
             \n[poll]\ninterval_secs = 300\n\
             \n[download]\ncheckpoint_mib = 8\ncheckpoint_secs = 0\ncompressed = {compressed}\n",
            compressed = opts.compressed,
            url = server_url,
            ca = p(&ca),
            cert = p(&cert),
            key = p(&key),
            root = p(&root),
            hw = HW,
            data = p(&data_dir),
            a = p(&slot_a),
            b = p(&slot_b),
            boot = p(&boot_env),
            tries = opts.tries,
            health = health.join(", "),
            req = opts.require_server,
        );
        let config = write("agent.toml", text.as_bytes());
        AgentProcess {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            config,
            data_dir,
            cert,
            key,
            slot_a,
            slot_b,
            boot_env,
            factory_sha256: sha256_hex(&opts.factory_image),
            boots: Mutex::new(Vec::new()),
            runs: AtomicU32::new(0),
        }
    }

    /// Runs `ota-agent --config CONFIG args...` with `env` (the test-hook variables are
    /// removed from the inherited environment first), waiting at most [`AGENT_TIMEOUT`].
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let label = args.first().copied().unwrap_or("none");
        let out_path = self.dir.join("logs").join(format!("{n:03}-{label}.out"));
        let err_path = self.dir.join("logs").join(format!("{n:03}-{label}.err"));
        let create = |p: &Path| {
            std::fs::File::create(p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()))
        };
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("OTA_AGENT_CRASH_AT")
            .env_remove("OTA_AGENT_TEST_TIME_OFFSET_SECS")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(create(&out_path))
            .stderr(create(&err_path));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", agent_bin().display()));
        let deadline = Instant::now() + AGENT_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "ota-agent {args:?} of {} did not finish within {AGENT_TIMEOUT:?} ({other:?}); stderr:\n{}",
                        self.id,
                        std::fs::read_to_string(&err_path).unwrap_or_default()
                    );
                }
            }
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let outcome = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or(Value::Null);
        Run {
            outcome,
            code: status.code(),
            signal: status.signal(),
            stdout,
            stderr,
        }
    }

    /// `ota-agent once`.
    pub fn once(&self) -> Run {
        self.command(&["once"], &[])
    }

    /// `ota-agent once` with extra environment (test hooks).
    pub fn once_with_env(&self, env: &[(&str, &str)]) -> Run {
        self.command(&["once"], env)
    }

    /// `ota-agent once` with `OTA_AGENT_CRASH_AT=point`; asserts it aborted there (killed
    /// by SIGABRT, the hook's message on stderr, no outcome printed).
    pub fn crash_at(&self, point: &str) -> Run {
        let run = self.once_with_env(&[("OTA_AGENT_CRASH_AT", point)]);
        assert!(
            run.code != Some(0) && run.outcome.is_null(),
            "crash at {point}: expected an abort without an outcome: {run}"
        );
        assert_eq!(
            run.signal,
            Some(6),
            "crash at {point}: expected SIGABRT: {run}"
        );
        assert!(
            run.stderr
                .contains(&format!("crash point {point}: aborting")),
            "crash at {point}: the hook did not fire: {run}"
        );
        run
    }

    /// `ota-agent simulate-boot`: returns the slot booted (`"A"`/`"B"`) and records it with
    /// the slot's content at that moment (see [`AgentProcess::boots`]).
    pub fn simulate_boot(&self) -> String {
        let run = self.command(&["simulate-boot"], &[]);
        assert_eq!(run.code, Some(0), "simulate-boot: {run}");
        let slot = run.outcome["booted"]
            .as_str()
            .unwrap_or_else(|| panic!("simulate-boot printed no slot: {run}"))
            .to_string();
        let path = match slot.as_str() {
            "A" => &self.slot_a,
            "B" => &self.slot_b,
            other => panic!("simulate-boot booted {other:?}"),
        };
        let boot = Boot {
            slot: slot.clone(),
            sha256: file_sha256(path),
        };
        self.boots.lock().expect("boots").push(boot);
        slot
    }

    /// Every simulated boot so far, in order.
    pub fn boots(&self) -> Vec<Boot> {
        self.boots.lock().expect("boots").clone()
    }

    /// Asserts every simulated boot ran a verified image: slot A the factory image, slot B
    /// the image with sha256 `image_sha` (B starts as zeros, which is no image at all).
    pub fn assert_boots_verified(&self, image_sha: &str) {
        for (i, b) in self.boots().iter().enumerate() {
            let expected = match b.slot.as_str() {
                "A" => &self.factory_sha256,
                _ => image_sha,
            };
            assert_eq!(
                b.sha256, *expected,
                "{}: boot #{i} ran slot {} holding an unverified image",
                self.id, b.slot
            );
        }
    }

    /// `ota-agent status --json`, parsed; asserts exit code 0.
    pub fn status_json(&self) -> Value {
        let run = self.command(&["status", "--json"], &[]);
        assert_eq!(run.code, Some(0), "status --json: {run}");
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {run}"))
    }

    /// `ota-agent wipe --yes`.
    pub fn wipe(&self) -> Run {
        self.command(&["wipe", "--yes"], &[])
    }

    /// Runs the agent as a device would until the update is committed: `once`; after
    /// `reboot_requested` or `rolled_back` with `reboot: true`, `simulate-boot`; a failure
    /// marked `retry_soon` is retried. Stops after `committed` or `up_to_date` (nothing
    /// left to do) and returns every `once` run; panics on anything else or after
    /// `max_steps` runs.
    pub fn run_until_committed(&self, max_steps: usize) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for _ in 0..max_steps {
            let run = self.once();
            let kind = run.kind().to_string();
            let reboot = run.outcome["reboot"] == true;
            let retry_soon = run.outcome["retry_soon"] == true;
            runs.push(run);
            match kind.as_str() {
                "committed" | "up_to_date" => return runs,
                "reboot_requested" => {
                    self.simulate_boot();
                }
                "rolled_back" if reboot => {
                    self.simulate_boot();
                }
                "rolled_back" => {}
                "failed" if retry_soon => {}
                _ => panic!(
                    "{}: unexpected outcome on the way to a commit: {}",
                    self.id,
                    describe(&runs)
                ),
            }
        }
        panic!(
            "{}: not committed after {max_steps} runs: {}",
            self.id,
            describe(&runs)
        );
    }

    /// The agent's operation log (`data_dir/oplog.jsonl`), one JSON value per line.
    pub fn oplog(&self) -> Vec<Value> {
        let path = self.data_dir.join("oplog.jsonl");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("oplog line {l:?}: {e}")))
            .collect()
    }

    /// SHA-256 of slot `"A"` or `"B"`.
    pub fn slot_sha256(&self, slot: &str) -> String {
        match slot {
            "A" => file_sha256(&self.slot_a),
            "B" => file_sha256(&self.slot_b),
            other => panic!("no slot {other:?}"),
        }
    }
}

/// The outcomes of `runs`, one per line, with the last run's stderr (for failures).
pub fn describe(runs: &[Run]) -> String {
    let mut s: String = runs
        .iter()
        .map(|r| format!("\n  {} (exit {:?})", r.outcome, r.code))
        .collect();
    if let Some(last) = runs.last() {
        s.push_str(&format!("\nlast run:\n{last}"));
    }
    s
}
