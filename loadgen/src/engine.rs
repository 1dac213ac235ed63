//! The load engine: C concurrent workers making requests as devices, over keep-alive
//! connections or a new TLS session per request, at full speed or at a fixed total rate,
//! until a request count or a deadline.
//!
//! Which device makes a request: on keep-alive connections, connection `w` belongs to
//! device `w mod N` for the whole run; with a new session per request, request number `k`
//! (counted across all workers) is made by device `k mod N`, so a run of N requests
//! polls every device exactly once. With a rate, request `k` is due at `start + k/rate`
//! and its latency is counted from then (a late server is not excused by a late client).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use ota_common::api::{StatusReport, UpdateState};
use rustls::ClientConfig;
use tokio::time::Instant;

use crate::client::{request, Answer, ClientError, Conn, TlsBase};
use crate::identity::{DeviceCa, IdentityError};
use crate::progress::{Counters, Reporter};
use crate::stats::Stats;
use crate::target::Target;

/// How connections are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnMode {
    /// One connection per worker, reused for all its requests (reopened if the server
    /// closes it).
    KeepAlive,
    /// A new TCP connection and TLS session for every request (`Connection: close`).
    NewPerRequest,
}

/// What each request is.
#[derive(Debug, Clone)]
pub enum Work {
    /// `POST /api/v1/device/poll` with this JSON body.
    Poll {
        /// The `PollRequest` JSON.
        body: Bytes,
    },
    /// `POST /api/v1/device/status` with a new report id each time.
    Report {
        /// Makes ids unique across runs.
        run: String,
    },
    /// `GET` this path (a target, metadata, or any static file).
    Get {
        /// The path.
        path: String,
    },
}

impl Work {
    fn build(
        &self,
        target: &Target,
        device: u64,
        k: u64,
        close: bool,
    ) -> Result<Request<Full<Bytes>>, http::Error> {
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(2);
        if close {
            headers.push(("connection", "close"));
        }
        match self {
            Work::Poll { body } => {
                headers.push(("content-type", "application/json"));
                request(
                    Method::POST,
                    target,
                    "/api/v1/device/poll",
                    &headers,
                    body.clone(),
                )
            }
            Work::Report { run } => {
                headers.push(("content-type", "application/json"));
                let report = StatusReport {
                    id: format!("{run}-{device}-{k}"),
                    target: "loadgen.bin".into(),
                    version: "1.0.1".into(),
                    state: UpdateState::Downloading,
                    progress_bytes: Some(k),
                    total_bytes: Some(1 << 30),
                    detail: None,
                    deployment: None,
                    at: chrono::Utc::now(),
                };
                // Serializing a plain struct of strings and numbers cannot fail.
                let body = serde_json::to_vec(&report).unwrap_or_default();
                request(
                    Method::POST,
                    target,
                    "/api/v1/device/status",
                    &headers,
                    body.into(),
                )
            }
            Work::Get { path } => request(Method::GET, target, path, &headers, Bytes::new()),
        }
    }
}

/// The simulated devices: their TLS configurations, made once each, on first use or ahead.
/// Without a device CA the "devices" are anonymous clients (no certificate), each still
/// with its own session cache, so that resumption behaves the same against any server.
pub struct Fleet {
    tls: TlsBase,
    ca: Option<DeviceCa>,
    configs: Vec<OnceLock<Arc<ClientConfig>>>,
}

/// Why the fleet could not make a device's TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The identity could not be made.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rustls refused it.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No such device.
    #[error("device {index} out of range (fleet of {devices})")]
    Range {
        /// The index asked for.
        index: u64,
        /// The fleet size.
        devices: u64,
    },
}

impl Fleet {
    /// `devices` clients, with identities from `ca` if given.
    pub fn new(tls: TlsBase, ca: Option<DeviceCa>, devices: u64) -> Self {
        let n = usize::try_from(devices).unwrap_or(usize::MAX);
        Fleet {
            tls,
            ca,
            configs: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Number of clients.
    pub fn devices(&self) -> u64 {
        self.configs.len() as u64
    }

    /// Whether the clients have device certificates.
    pub fn has_identities(&self) -> bool {
        self.ca.is_some()
    }

    /// The device id of `index`, if there are identities.
    pub fn device_id(&self, index: u64) -> Option<String> {
        self.ca.as_ref().map(|ca| ca.device_id(index))
    }

    /// A configuration without certificate or session cache (operator calls).
    pub fn anonymous(&self) -> Result<Arc<ClientConfig>, FleetError> {
        Ok(self.tls.device_config(None)?)
    }

    /// The TLS configuration of client `index`.
    pub fn config(&self, index: u64) -> Result<Arc<ClientConfig>, FleetError> {
        let cell = usize::try_from(index)
            .ok()
            .and_then(|i| self.configs.get(i))
            .ok_or(FleetError::Range {
                index,
                devices: self.devices(),
            })?;
        if let Some(c) = cell.get() {
            return Ok(Arc::clone(c));
        }
        let config = match &self.ca {
            Some(ca) => self.tls.device_config(Some(&ca.identity(index)?))?,
            None => self.tls.device_config(None)?,
        };
        // Two workers may race on a device; either configuration is equally good.
        Ok(Arc::clone(cell.get_or_init(|| config)))
    }

    /// Makes the configurations of devices `0..n` now, on `threads` threads, so that the
    /// timed run does not include them. Returns how long it took.
    pub fn pregenerate(&self, n: u64, threads: usize) -> Result<Duration, FleetError> {
        let start = std::time::Instant::now();
        let n = n.min(self.devices());
        let threads = threads.max(1) as u64;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        (t..n)
                            .step_by(threads as usize)
                            .try_for_each(|i| self.config(i).map(|_| ()))
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(FleetError::Client(ClientError::Setup(
                        "identity thread panicked".into(),
                    )))
                })
            })
        })?;
        Ok(start.elapsed())
    }
}

/// A run to make.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Each request.
    pub work: Work,
    /// Keep-alive or a new session per request.
    pub conn: ConnMode,
    /// Concurrent workers (connections).
    pub concurrency: usize,
    /// Total requests per second, or as fast as possible.
    pub rate: Option<f64>,
    /// Stop after this many requests.
    pub count: Option<u64>,
    /// Stop at this time after the start (always set: runs are bounded).
    pub duration: Duration,
    /// Longest time one request (connect included) may take.
    pub timeout: Duration,
    /// With a new session per request: request `k` is made by device `devices[k mod len]`
    /// instead of `k mod N` (a retry of some devices).
    pub devices: Option<Arc<[u64]>>,
    /// Keep the indexes of devices whose request failed or was not answered 2xx
    /// ([`Stats::failed_devices`]).
    pub keep_failed: bool,
    /// Print a progress line on stderr this often, naming the run so.
    pub progress: Option<(String, Duration)>,
}

impl Plan {
    /// One request per device on a new session each (full handshake unless the device has
    /// a session to resume), as fast as answered, keeping failed devices: the registration
    /// pass of `register`, made from the run's plan.
    pub fn one_per_device(&self, devices: u64, concurrency: usize, max: Duration) -> Plan {
        Plan {
            work: self.work.clone(),
            conn: ConnMode::NewPerRequest,
            concurrency: concurrency.max(1),
            rate: None,
            count: Some(devices),
            duration: max,
            timeout: self.timeout,
            devices: None,
            keep_failed: true,
            progress: self.progress.clone(),
        }
    }
}

/// The device that makes request `k` of worker `w` in a fleet of `n` (see the module
/// documentation), or the `k`-th of an explicit list.
pub fn pick_device(k: u64, w: u64, n: u64, list: Option<&[u64]>, new_per_request: bool) -> u64 {
    match list {
        Some(l) if !l.is_empty() && new_per_request => {
            let i = usize::try_from(k % l.len() as u64).unwrap_or(0);
            l.get(i).copied().unwrap_or(0)
        }
        _ => match (n, new_per_request) {
            (0, _) => 0,
            (n, true) => k % n,
            (n, false) => w % n,
        },
    }
}

struct Shared {
    plan: Plan,
    fleet: Arc<Fleet>,
    target: Target,
    issued: AtomicU64,
    start: Instant,
    deadline: Instant,
    counters: Arc<Counters>,
}

/// Runs `plan` against `target`; returns the merged stats and the wall time from the
/// start until the last worker stopped.
pub async fn run(plan: Plan, fleet: Arc<Fleet>, target: Target) -> (Stats, Duration) {
    let start = Instant::now();
    let counters = Arc::new(Counters::default());
    let total = plan.count.or_else(|| {
        plan.rate
            .map(|r| (r * plan.duration.as_secs_f64()).round() as u64)
    });
    let _reporter = plan
        .progress
        .as_ref()
        .map(|(what, every)| Reporter::start(what.clone(), Arc::clone(&counters), total, *every));
    let shared = Arc::new(Shared {
        deadline: start + plan.duration,
        plan,
        fleet,
        target,
        issued: AtomicU64::new(0),
        start,
        counters,
    });
    let workers: Vec<_> = (0..shared.plan.concurrency.max(1))
        .map(|w| tokio::spawn(worker(w as u64, Arc::clone(&shared))))
        .collect();
    let mut total = Stats::new();
    for w in workers {
        match w.await {
            Ok(stats) => total.merge(&stats),
            Err(_) => total.failed("worker_panic"),
        }
    }
    (total, start.elapsed())
}

async fn worker(w: u64, sh: Arc<Shared>) -> Stats {
    let mut stats = Stats::new();
    let mut conn: Option<Conn> = None;
    let plan = &sh.plan;
    let devices = sh.fleet.devices();
    let new_per_request = plan.conn == ConnMode::NewPerRequest;
    loop {
        let k = sh.issued.fetch_add(1, Ordering::Relaxed);
        if plan.count.is_some_and(|c| k >= c) {
            break;
        }
        let due = match plan.rate {
            Some(rate) => {
                let due = sh.start + Duration::from_secs_f64(k as f64 / rate);
                if due >= sh.deadline {
                    break;
                }
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        if Instant::now() >= sh.deadline {
            break;
        }
        let device = pick_device(k, w, devices, plan.devices.as_deref(), new_per_request);
        let outcome = tokio::time::timeout(
            plan.timeout,
            one(&sh, &mut conn, &mut stats, device, k, new_per_request),
        )
        .await;
        let ok = match outcome {
            Ok(Ok(answer)) => {
                stats.answered(answer.status.as_u16(), answer.bytes, due.elapsed());
                answer.status.is_success()
            }
            Ok(Err(e)) => {
                stats.failed(e.class());
                conn = None;
                false
            }
            Err(_) => {
                stats.failed("timeout");
                conn = None;
                false
            }
        };
        sh.counters.add(1, ok);
        if !ok && plan.keep_failed {
            stats.failed_devices.push(device);
        }
        if new_per_request {
            conn = None;
        }
    }
    stats
}

/// One request: (re)connects if needed, sends, reads the answer.
async fn one(
    sh: &Shared,
    conn: &mut Option<Conn>,
    stats: &mut Stats,
    device: u64,
    k: u64,
    close: bool,
) -> Result<Answer, ClientError> {
    if !conn.as_ref().is_some_and(Conn::is_usable) {
        let config = sh
            .fleet
            .config(device)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let c = Conn::open(&sh.target, config).await?;
        stats.handshakes += 1;
        stats.resumed += u64::from(c.resumed);
        *conn = Some(c);
    }
    let req = sh
        .plan
        .work
        .build(&sh.target, device, k, close)
        .map_err(|e| ClientError::Setup(format!("building the request: {e}")))?;
    match conn {
        Some(c) => c.send(req).await,
        None => Err(ClientError::Setup("no connection".into())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::client::ResumeMode;
    use crate::identity::tests::write_pki;
    use http_body_util::BodyExt;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use std::path::Path;

    /// A TLS 1.3 HTTP/1.1 server on 127.0.0.1 that answers 200 to requests on connections
    /// with a device certificate and 401 otherwise (like ota-server's device routes).
    async fn server(dir: &Path) -> std::net::SocketAddr {
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&read("device-ca.crt")).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(&read("server.crt")).unwrap()],
                PrivateKeyDer::from_pem_slice(&read("server.key")).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let device = tls.get_ref().1.peer_certificates().is_some();
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| async move {
                            let _ = req.into_body().collect().await;
                            let status = if device { 200 } else { 401 };
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn fleet(dir: &Path, devices: u64, resume: ResumeMode, identities: bool) -> Arc<Fleet> {
        let tls = TlsBase::new(&std::fs::read(dir.join("ca.crt")).unwrap(), resume).unwrap();
        let ca = identities.then(|| DeviceCa::load(dir, "test", "lg").unwrap());
        Arc::new(Fleet::new(tls, ca, devices))
    }

    fn plan(conn: ConnMode, concurrency: usize, count: u64) -> Plan {
        Plan {
            work: Work::Poll {
                body: Bytes::from_static(b"{}"),
            },
            conn,
            concurrency,
            rate: None,
            count: Some(count),
            duration: Duration::from_secs(120),
            timeout: Duration::from_secs(30),
            devices: None,
            keep_failed: false,
            progress: None,
        }
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection_per_worker() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let addr = server(dir.path()).await;
        let target = Target::parse(&format!("https://{addr}")).unwrap();
        let fleet = fleet(dir.path(), 4, ResumeMode::Device, true);
        fleet.pregenerate(4, 2).unwrap();
        let (stats, _) = run(plan(ConnMode::KeepAlive, 4, 40), fleet, target).await;
        assert_eq!((stats.ok, stats.errors()), (40, 0), "{stats:?}");
        assert_eq!(stats.handshakes, 4);
        assert_eq!(stats.bytes, 40 * 11);
        assert_eq!(stats.latency.len(), 40);
    }

    #[tokio::test]
    async fn new_sessions_resume_per_device_and_carry_certificates() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let addr = server(dir.path()).await;
        let target = Target::parse(&format!("https://{addr}")).unwrap();
        let fleet = fleet(dir.path(), 3, ResumeMode::Device, true);
        let mut p = plan(ConnMode::NewPerRequest, 1, 12);
        p.rate = Some(10_000.0);
        let (stats, _) = run(p, fleet, target.clone()).await;
        assert_eq!((stats.ok, stats.handshakes), (12, 12), "{stats:?}");
        // The first connection of each of the 3 devices is a full handshake.
        assert_eq!(stats.resumed, 9, "{stats:?}");
        // Without identities the server's device check refuses, and nothing resumes.
        let anon = fleet_anon(dir.path());
        let (stats, _) = run(plan(ConnMode::NewPerRequest, 2, 6), anon, target).await;
        assert_eq!(
            (stats.ok, stats.statuses.get(&401), stats.resumed),
            (0, Some(&6), 0)
        );
    }

    #[test]
    fn devices_are_picked_by_request_worker_or_list() {
        // New session per request: request k is device k mod N.
        assert_eq!(pick_device(7, 0, 5, None, true), 2);
        // Keep-alive: worker w is device w mod N.
        assert_eq!(pick_device(7, 6, 5, None, false), 1);
        // An explicit list (a retry) wraps around it.
        let list = [40, 10, 30];
        assert_eq!(pick_device(0, 0, 100, Some(&list), true), 40);
        assert_eq!(pick_device(4, 0, 100, Some(&list), true), 10);
        assert_eq!(pick_device(3, 9, 0, Some(&[]), true), 0);
    }

    #[tokio::test]
    async fn a_pass_keeps_failed_devices_and_a_retry_polls_only_them() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let addr = server(dir.path()).await;
        let target = Target::parse(&format!("https://{addr}")).unwrap();
        // Without certificates every device is refused (401) and kept.
        let base = plan(ConnMode::KeepAlive, 8, 1);
        let pass = base.one_per_device(5, 2, Duration::from_secs(60));
        assert_eq!(
            (pass.conn, pass.count, pass.rate),
            (ConnMode::NewPerRequest, Some(5), None)
        );
        let (stats, _) = run(
            pass,
            fleet(dir.path(), 5, ResumeMode::Off, false),
            target.clone(),
        )
        .await;
        let mut failed = stats.failed_devices.clone();
        failed.sort_unstable();
        assert_eq!(failed, vec![0, 1, 2, 3, 4]);
        // With certificates: a pass over devices 3 and 1 polls each once, and their next
        // sessions resume.
        let devices = fleet(dir.path(), 5, ResumeMode::Device, true);
        let mut retry = plan(ConnMode::NewPerRequest, 1, 4);
        retry.devices = Some(Arc::from(vec![3u64, 1]));
        retry.keep_failed = true;
        let (stats, _) = run(retry, devices.clone(), target).await;
        assert_eq!((stats.ok, stats.resumed), (4, 2), "{stats:?}");
        assert!(stats.failed_devices.is_empty());
        // Only devices 1 and 3 were ever made.
        assert!(devices.configs[0].get().is_none() && devices.configs[1].get().is_some());
    }

    #[tokio::test]
    async fn a_device_keeps_resuming_with_its_small_ticket_store() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let addr = server(dir.path()).await;
        let target = Target::parse(&format!("https://{addr}")).unwrap();
        let fleet = fleet(dir.path(), 1, ResumeMode::Device, true);
        let (stats, _) = run(plan(ConnMode::NewPerRequest, 1, 20), fleet, target).await;
        assert_eq!(
            (stats.ok, stats.handshakes, stats.resumed),
            (20, 20, 19),
            "{stats:?}"
        );
    }

    fn fleet_anon(dir: &Path) -> Arc<Fleet> {
        fleet(dir, 2, ResumeMode::Off, false)
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_counted_failure_and_the_run_ends() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        // A port with nothing listening: bind, note the port, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let target = Target::parse(&format!("https://{addr}")).unwrap();
        let (stats, _) = run(
            plan(ConnMode::KeepAlive, 2, 5),
            fleet_anon(dir.path()),
            target,
        )
        .await;
        assert_eq!(stats.failures.get("connect"), Some(&5), "{stats:?}");
        assert_eq!(stats.ok, 0);
    }
}
