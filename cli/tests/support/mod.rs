//! Shared helpers for `ota` end-to-end tests: a real `ota-server` in development mode on
//! 127.0.0.1:0 as a child process, and the `ota` binary pointed at it.
//!
//! `ota-server` belongs to another package, so `CARGO_BIN_EXE_ota-server` does not exist
//! here: the first call to [`workspace_bin`] runs `cargo build -p ota-server` once per test
//! process (cargo has released its build lock by the time tests run) and returns
//! `<target dir>/<profile>/ota-server`, the target dir being `$CARGO_TARGET_DIR` or the
//! workspace's `target/`.

#![allow(dead_code)] // each test file uses a subset
#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

use tempfile::TempDir;

/// How long a first development start (keys, PKI) may take.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one `ota` invocation may take before the test fails instead of hanging.
const OTA_TIMEOUT: Duration = Duration::from_secs(120);
/// The line the server prints once bound.
const LISTENING_PREFIX: &str = "ota-server listening on https://";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds `bin` of workspace package `package` once per process and returns its path.
pub fn workspace_bin(package: &'static str, bin: &'static str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(&'static str, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    // Held across the build, so concurrent tests do not start two cargo builds.
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(b, _)| *b == bin) {
        return p.clone();
    }
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "cargo build -p {package} failed:\n{}",
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
    built.push((bin, path.clone()));
    path
}

/// A development `ota-server` running in a temporary data directory; killed on drop.
pub struct Server {
    pub dir: TempDir,
    pub addr: SocketAddr,
    child: Child,
}

impl Server {
    /// Starts `ota-server serve --dev --data-dir TMP --listen 127.0.0.1:0`.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut child = Command::new(workspace_bin("ota-server", "ota-server"))
            .args(["serve", "--dev", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Drains stdout for the server's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .strip_prefix(LISTENING_PREFIX)
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Server { dir, addr, child },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ota-server did not start ({e:?}):\n{}",
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
                );
            }
        }
    }

    /// `https://ADDR`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The development CA, `DATA/pki/ca.crt`.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("pki").join("ca.crt")
    }

    /// The admin token file, `DATA/admin.token`.
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.path().join("admin.token")
    }

    /// A file in the data directory (for test inputs and outputs).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `ota` with --server and --ca set and no token: the environment is cleared of OTA_*.
    pub fn ota_bare(&self) -> assert_cmd::Command {
        self.ota_trusting(&self.ca())
    }

    /// `ota` with --server, --ca `ca` and no token.
    pub fn ota_trusting(&self, ca: &Path) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_ota"));
        for var in ["OTA_SERVER", "OTA_CA", "OTA_TOKEN", "OTA_TOKEN_FILE"] {
            c.env_remove(var);
        }
        c.arg("--server")
            .arg(self.url())
            .arg("--ca")
            .arg(ca)
            .timeout(OTA_TIMEOUT);
        c
    }

    /// `ota` as the admin (token file).
    pub fn ota(&self) -> assert_cmd::Command {
        let mut c = self.ota_bare();
        c.arg("--token-file").arg(self.admin_token_file());
        c
    }

    /// Runs `ota ARGS` as the admin and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ota().args(args).output().unwrap();
        expect_ok(args, &out)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requires a successful run; returns stdout.
pub fn expect_ok(args: &[&str], out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "ota {args:?} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Requires a failed run with exit code `code`; returns stderr.
pub fn expect_fail(args: &[&str], out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "ota {args:?}: expected exit {code}\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Writes a file of `len` deterministic bytes.
pub fn write_image(path: &Path, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(path, data).unwrap();
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// An HTTPS client trusting only the server's CA, TLS 1.3, as devices and the CLI connect;
/// with `device` = (directory, id), it presents that device's certificate (`<id>.crt`,
/// `<id>.key` as `ota-server device issue` writes them).
pub fn https_client(server: &Server, device: Option<(&Path, &str)>) -> reqwest::Client {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(server.ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let tls = match device {
        None => builder.with_no_client_auth(),
        Some((dir, id)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(dir.join(format!("{id}.crt")))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{id}.key"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}
