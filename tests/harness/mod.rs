//! End-to-end harness: runs the real `ota-server` binary as a child process over loopback
//! TLS, and talks to it as clients, devices and tools do.
//!
//! Used as `mod harness;` from `tests/server_*.rs` (and the agent's end-to-end tests).
//! Each test crate uses a different subset, hence the `dead_code` allowance.
//!
//! # Finding the binary
//! `CARGO_BIN_EXE_<name>` exists only for binaries of the package under test, and
//! `ota-server` belongs to another workspace member. So the first call to [`server_bin`]
//! runs `$CARGO build -p ota-server --bin ota-server` once per test process (guarded by a
//! `OnceLock`; cargo releases its build lock before it runs test binaries, so the nested
//! build does not deadlock) and returns `<target dir>/<profile>/ota-server`, where the
//! target dir is `$CARGO_TARGET_DIR` or `<workspace>/target` and the profile is `release`
//! when the tests themselves were built without debug assertions, else `debug`.
//! `$OTA_SERVER_BIN` overrides all of this with a prebuilt binary.
//!
//! # Process model
//! [`ServerProcess::start_dev`] starts `ota-server serve` on `127.0.0.1:0` and waits (at
//! most [`START_TIMEOUT`]) for its stdout line `ota-server listening on https://ADDR`.
//! Its stderr goes to a log file in the data directory, quoted in every failure message.
//! `kill` is SIGKILL (a crash), `stop` is SIGTERM then a bounded wait (a clean shutdown);
//! `restart` starts again on the same data directory (on a new port). Drop kills.

#![allow(dead_code)]

pub mod api;
pub mod http;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// Each test crate uses some of these; the rest would warn as unused re-exports.
#[allow(unused_imports)]
pub use api::*;
#[allow(unused_imports)]
pub use http::*;

/// How long a start may take before the test fails (first start makes keys and a PKI).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd server may take to exit (its shutdown grace is 30 s by default).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(45);
/// The stdout line prefix the server prints once it is bound (see `print_welcome`).
pub const LISTENING_PREFIX: &str = "ota-server listening on https://";

/// The workspace root (the root package `ota` lives there).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the `ota-server` binary, built once per test process. See the module docs.
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("OTA_SERVER_BIN") {
            return PathBuf::from(p);
        }
        build_workspace_bin("ota-server", "ota-server")
    })
    .clone()
}

/// Builds binary `bin` of workspace package `package` with the cargo running the tests,
/// in the profile the tests were built in, and returns its path. Panics with cargo's
/// output if the build fails.
pub fn build_workspace_bin(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running cargo build -p {package}: {e}"));
    assert!(
        out.status.success(),
        "cargo build -p {package} --bin {bin} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        workspace_root().join(target)
    };
    let path = target
        .join(if release { "release" } else { "debug" })
        .join(bin);
    assert!(
        path.is_file(),
        "built {bin} but {} is missing",
        path.display()
    );
    path
}

/// A running (or stopped) `ota-server serve` child process in development mode.
pub struct ServerProcess {
    data_dir: PathBuf,
    config_path: Option<PathBuf>,
    child: Option<Child>,
    addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    log_path: PathBuf,
    starts: u32,
}

impl ServerProcess {
    /// Starts a development server with data directory `dir` (created if missing).
    ///
    /// With `extra_config_toml` (TOML tables such as `[repo_policy]` or `[limits]`), writes
    /// `dir/ota-test-server.toml` holding `dev = true`, `data_dir` and `listen =
    /// "127.0.0.1:0"` followed by the extra text, and serves with `--config`; without, it
    /// serves with `--dev --data-dir dir --listen 127.0.0.1:0`.
    pub fn start_dev(dir: &Path, extra_config_toml: Option<&str>) -> Self {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("creating data dir {}: {e}", dir.display()));
        let config_path = extra_config_toml.map(|extra| {
            let path = dir.join("ota-test-server.toml");
            // Debug formatting of a plain ASCII path is a valid TOML basic string.
            let text = format!(
                "dev = true\ndata_dir = {:?}\nlisten = \"127.0.0.1:0\"\n\n{extra}\n",
                dir.display().to_string()
            );
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            path
        });
        let mut server = ServerProcess {
            data_dir: dir.to_path_buf(),
            config_path,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdout: Arc::new(Mutex::new(Vec::new())),
            log_path: PathBuf::new(),
            starts: 0,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server is already running");
        self.starts += 1;
        self.log_path = self
            .data_dir
            .join(format!("ota-test-server.{}.log", self.starts));
        let log = std::fs::File::create(&self.log_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", self.log_path.display()));
        let mut cmd = Command::new(server_bin());
        cmd.arg("serve");
        match &self.config_path {
            Some(cfg) => cmd.arg("--config").arg(cfg),
            None => cmd.arg("--dev").arg("--data-dir").arg(&self.data_dir),
        };
        cmd.args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", server_bin().display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        self.stdout = Arc::clone(&lines);
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        // Drains stdout for the process's lifetime so the server never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .strip_prefix(LISTENING_PREFIX)
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                lines.lock().expect("stdout lines").push(line);
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => self.addr = addr,
            Err(e) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                self.kill();
                panic!(
                    "ota-server did not print its listening line ({e:?}; exit status {status:?}).\n\
                     stdout:\n{}\nstderr:\n{}",
                    self.stdout_lines().join("\n"),
                    self.log()
                );
            }
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `base_url` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The development CA certificate clients must trust (`data_dir/pki/ca.crt`).
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("pki").join("ca.crt")
    }

    /// The development device CA (`data_dir/pki/device-ca.crt`).
    pub fn device_ca_path(&self) -> PathBuf {
        self.data_dir.join("pki").join("device-ca.crt")
    }

    /// The blob directory (uploads and their temporary files).
    pub fn blobs_dir(&self) -> PathBuf {
        self.data_dir.join("blobs")
    }

    /// The admin token the first development start wrote to `data_dir/admin.token`.
    pub fn admin_token(&self) -> String {
        let path = self.data_dir.join("admin.token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// The child's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every stdout line of the current (or last) run so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lines").clone()
    }

    /// The stderr log of the current (or last) run so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the child is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(_)) | Err(_) => {
                    self.child = None;
                    false
                }
            },
        }
    }

    /// SIGKILL, as a crash or power cut would stop it, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (at most [`STOP_TIMEOUT`]) for the exit; returns its status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("stop: server is not running");
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            sent.as_ref().is_ok_and(ExitStatus::success),
            "kill -TERM {pid}: {sent:?}"
        );
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "ota-server did not exit within {STOP_TIMEOUT:?} of SIGTERM ({other:?}); stderr:\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    /// Starts again on the same data directory (stopping with SIGTERM first if running).
    pub fn restart(&mut self) {
        if self.is_running() {
            let status = self.stop();
            assert!(status.success(), "stop before restart: {status}");
        }
        self.spawn();
    }

    /// Issues a device identity from this server's development device CA with
    /// `ota-server device issue` (safe while the server runs: it touches only `pki/`).
    /// Returns `(cert_path, key_path)` under `data_dir/devices/`.
    pub fn issue_device(&self, id: &str) -> (PathBuf, PathBuf) {
        issue_device_in(&self.data_dir, id, &self.data_dir.join("devices"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `ota-server device issue --data-dir DATA ID --out OUT`: makes the development PKI
/// in `DATA/pki` if there is none (so a fresh `data_dir` gives a foreign CA) and writes
/// `OUT/ID.crt`, `OUT/ID.key` and `OUT/ca.crt` (the server CA of that PKI).
pub fn issue_device_in(data_dir: &Path, id: &str, out: &Path) -> (PathBuf, PathBuf) {
    let output = Command::new(server_bin())
        .args(["device", "issue", "--data-dir"])
        .arg(data_dir)
        .arg(id)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("running ota-server device issue: {e}"));
    assert!(
        output.status.success(),
        "ota-server device issue {id} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let cert = out.join(format!("{id}.crt"));
    let key = out.join(format!("{id}.key"));
    assert!(
        cert.is_file() && key.is_file(),
        "device issue wrote no {id}.crt/.key"
    );
    (cert, key)
}

/// Polls `check` every `interval` until it returns `Some`, for at most `timeout`; panics
/// with `what` on timeout. For waiting on a condition, never for asserting a speed.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(interval).await;
    }
}

/// The Python interpreter with python-tuf: `$OTA_PYTHON`, else `<workspace>/.venv/bin/python`.
/// Panics (the test fails, it does not skip) when neither exists or tuf cannot be imported.
pub fn python_with_tuf() -> PathBuf {
    let python = std::env::var_os("OTA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import tuf.ngclient"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "python-tuf is not available at {} (set OTA_PYTHON, or run `bash .ci/run` once, \
         which makes .venv with tests/interop's requirements)",
        python.display()
    );
    python
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `len` deterministic pseudo-random bytes (SHA-256 in counter mode over `seed`): images
/// that do not compress and differ per seed, without a RNG dependency.
pub fn pseudo_random_bytes(seed: &str, len: usize) -> Vec<u8> {
    use sha2::Digest;
    let mut out = Vec::with_capacity(len + 32);
    let mut counter: u64 = 0;
    while out.len() < len {
        let mut h = sha2::Sha256::new();
        h.update(seed.as_bytes());
        h.update(counter.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}
