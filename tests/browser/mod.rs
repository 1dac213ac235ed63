//! A small W3C WebDriver client (JSON over HTTP to Debian's `chromedriver`) driving a
//! headless Chromium, for the dashboard's real-browser test. No Python, no Selenium: the
//! few commands the test needs are plain JSON requests.
//!
//! # Trusting the development server
//! The dashboard is served over TLS with a certificate from the server's development CA.
//! Rather than turning certificate checks off, Chromium is started with
//! `--ignore-certificate-errors-spki-list=<base64 SHA-256 of the server certificate's
//! SubjectPublicKeyInfo>`: it accepts exactly that key (the flag needs a
//! `--user-data-dir`, which the test gives anyway) and nothing else.
//!
//! # Finding the programs
//! `$CHROMEDRIVER` (default `/usr/bin/chromedriver`) and `$CHROMIUM` (default
//! `/usr/bin/chromium`); both come from Debian's `chromium` and `chromium-driver`
//! packages, which `.ci/run` installs. A missing program fails the test with that hint.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use sha2::Digest;

/// How long chromedriver may take to answer `/status` after it starts.
pub const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each WebDriver command (page loads included): only there so a hung browser
/// fails the test instead of hanging it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a click may take to load the next page.
pub const NAVIGATION_TIMEOUT: Duration = Duration::from_secs(30);
/// The W3C element reference key.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The program at `$var`, else `default`; panics with an install hint if it is missing.
pub fn program(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.is_file(),
        "{} is missing (set ${var}, or install Debian's chromium and chromium-driver \
         packages: `apt-get install chromium chromium-driver`, as .ci/run does)",
        path.display()
    );
    path
}

/// The base64 SHA-256 of the SubjectPublicKeyInfo of the first certificate in a PEM
/// file: the form `--ignore-certificate-errors-spki-list` takes.
pub fn spki_sha256_base64(cert_pem: &Path) -> String {
    let pem =
        std::fs::read(cert_pem).unwrap_or_else(|e| panic!("reading {}: {e}", cert_pem.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .unwrap_or_else(|e| panic!("parsing PEM {}: {e}", cert_pem.display()));
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
        .unwrap_or_else(|e| panic!("parsing certificate {}: {e}", cert_pem.display()));
    let spki = cert.tbs_certificate.subject_pki.raw;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free loopback port")
}

/// A running chromedriver, in a process group of its own with the browsers it starts.
/// Dropping it (also when a test panics) closes its sessions, then kills the whole group,
/// so no Chromium outlives the test.
pub struct Driver {
    child: Child,
    port: u16,
    base: String,
    http: reqwest::Client,
    log: PathBuf,
    sessions: Arc<Mutex<Vec<String>>>,
}

impl Driver {
    /// Starts chromedriver on a free loopback port, logging to `log`, and waits until it
    /// is ready.
    pub async fn start(log: &Path) -> Driver {
        let bin = program("CHROMEDRIVER", "/usr/bin/chromedriver");
        // The port is free when picked; chromedriver binds it right after (a race with
        // another process is possible but would fail loudly, not silently).
        let port = free_port();
        let log_file = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = Command::new(&bin)
            // Without --allowed-ips it accepts loopback connections only.
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log_file.try_clone().expect("cloning the log handle"),
            ))
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .expect("building the WebDriver HTTP client");
        let driver = Driver {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            http,
            log: log.to_path_buf(),
            sessions: Arc::default(),
        };
        let deadline = Instant::now() + DRIVER_START_TIMEOUT;
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
                .ok();
            if let Some(resp) = ready {
                if let Ok(v) = resp.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        return driver;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready within {DRIVER_START_TIMEOUT:?}; log:\n{}",
                driver.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Chromedriver's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Opens a headless Chromium with `extra_args` after the usual headless flags, a
    /// fresh profile in `profile_dir`, and a `width`×`height` window.
    pub async fn browser(
        &self,
        profile_dir: &Path,
        extra_args: &[String],
        (width, height): (u32, u32),
    ) -> Browser {
        let chromium = program("CHROMIUM", "/usr/bin/chromium");
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile_dir.display()));
        args.push(format!("--window-size={width},{height}"));
        args.extend(extra_args.iter().cloned());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": false,
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let resp = self.raw("POST", "/session", Some(caps)).await;
        let id = resp["sessionId"]
            .as_str()
            .or_else(|| resp["value"]["sessionId"].as_str())
            .unwrap_or_else(|| {
                panic!(
                    "no session id in {resp}; chromedriver log:\n{}",
                    self.log_text()
                )
            })
            .to_string();
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(id.clone());
        Browser {
            http: self.http.clone(),
            base: format!("{}/session/{id}", self.base),
            driver_log: self.log.clone(),
        }
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        send(
            &self.http,
            method,
            &format!("{}{path}", self.base),
            body,
            &self.log,
        )
        .await
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Drop cannot await: close sessions with a plain blocking request (a session that
        // was quit already just answers an error).
        let sessions = std::mem::take(
            &mut *self
                .sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for id in sessions {
            let _ = blocking_delete(self.port, &format!("/session/{id}"));
        }
        // chromedriver leads its own process group (its pid is the group id), and the
        // browsers it started are in it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DELETE path` to chromedriver over a blocking socket, bounded by a few seconds.
fn blocking_delete(port: u16, path: &str) -> std::io::Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        conn,
        "DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)?;
    Ok(())
}

async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<Value>,
    log: &Path,
) -> Value {
    match try_send(http, method, url, body).await {
        Ok(v) => v,
        Err(e) => panic!(
            "{e}\nchromedriver log tail:\n{}",
            tail(&std::fs::read_to_string(log).unwrap_or_default(), 40)
        ),
    }
}

/// One WebDriver command; `Err` describes a transport failure or an error answer.
async fn try_send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let req = match method {
        "GET" => http.get(url),
        "DELETE" => http.delete(url),
        _ => http.post(url).json(&body.unwrap_or_else(|| json!({}))),
    };
    let resp = req
        .send()
        .await
        .map_err(|e| format!("WebDriver {method} {url}: {e}"))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .map_err(|e| format!("WebDriver {method} {url}: body is not JSON: {e}"))?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!("WebDriver {method} {url} failed ({status}): {v}"))
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An element reference.
#[derive(Clone, Debug)]
pub struct Element(String);

/// One browser session.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    driver_log: PathBuf,
}

impl Browser {
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = send(
            &self.http,
            method,
            &format!("{}{path}", self.base),
            body,
            &self.driver_log,
        )
        .await;
        v["value"].clone()
    }

    /// Navigates and waits for the load.
    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The document title.
    pub async fn title(&self) -> String {
        self.cmd("GET", "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's HTML.
    pub async fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every element matching a CSS selector.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str())
                    .map(|id| Element(id.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The one element matching `css`; panics (with the page source) if there is none.
    pub async fn find(&self, css: &str) -> Element {
        match self.find_all(css).await.into_iter().next() {
            Some(e) => e,
            None => panic!(
                "no element matches {css:?} on {}:\n{}",
                self.url().await,
                self.source().await
            ),
        }
    }

    /// The rendered text of an element.
    pub async fn text(&self, e: &Element) -> String {
        self.cmd("GET", &format!("/element/{}/text", e.0), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The text of the element matching `css`.
    pub async fn text_of(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.text(&e).await
    }

    /// Clicks an element (a submit button's click waits for the next page to load).
    pub async fn click(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await;
    }

    /// Clicks a button or link that loads another page, and waits (bounded by
    /// [`NAVIGATION_TIMEOUT`]) until the new document has loaded: WebDriver's click may
    /// return before a form submission's navigation finishes. The old document is marked
    /// first, so a page that answers on the same URL is still told apart.
    pub async fn click_and_wait(&self, e: &Element) {
        self.execute_async(
            "window.__otaOldPage = true; arguments[arguments.length - 1](null)",
            vec![],
        )
        .await;
        self.click(e).await;
        let deadline = Instant::now() + NAVIGATION_TIMEOUT;
        loop {
            // While the old page unloads the script may fail: that is "not yet".
            let loaded = try_send(
                &self.http,
                "POST",
                &format!("{}/execute/sync", self.base),
                Some(json!({
                    "script": "return window.__otaOldPage !== true && document.readyState === 'complete'",
                    "args": [],
                })),
            )
            .await;
            if loaded.is_ok_and(|v| v["value"] == Value::Bool(true)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no new page loaded within {NAVIGATION_TIMEOUT:?} after a click on {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types into an element.
    pub async fn type_into(&self, e: &Element, text: &str) {
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Runs an async script in the page; the script calls its last argument with the result.
    pub async fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// A cookie's value, HttpOnly ones included (WebDriver sees them; page scripts do not).
    pub async fn cookie(&self, name: &str) -> Option<String> {
        let all = self.cmd("GET", "/cookie", None).await;
        all.as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str())
            .map(str::to_string)
    }

    /// Every cookie as returned by WebDriver (name, value, secure, httpOnly, sameSite...).
    pub async fn cookies(&self) -> Vec<Value> {
        self.cmd("GET", "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves a PNG of the whole page to `path` (the window is grown to the page's height
    /// first, so nothing is cut off).
    pub async fn screenshot(&self, path: &Path) {
        let height = self
            .execute_async(
                "arguments[arguments.length - 1](document.documentElement.scrollHeight)",
                vec![],
            )
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 4000);
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": 1366, "height": height + 100})),
        )
        .await;
        let b64 = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Ends the session (closes the browser).
    pub async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}
