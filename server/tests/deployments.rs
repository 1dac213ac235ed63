//! Deployments end to end, in process: the state built as a real start builds it (sled in a
//! temporary directory, the development PKI, a TUF repository the server signs), served
//! over real TLS on 127.0.0.1 port 0 with the fleet's background tick running every
//! 200 ms. Simulated devices are reqwest clients holding certificates from the device CA;
//! they poll and post status reports by hand, echoing the directive's deployment id as
//! the agent does.

#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration as StdDuration;
use support::repository;

use chrono::Utc;
use ota_common::api::{ApiError, PollResponse};
use ota_server::app::{routes, AppParts, AppState};
use ota_server::audit::AuditLog;
use ota_server::auth::{Role, Tokens};
use ota_server::blobs::BlobStore;
use ota_server::deployments::{Fleet, FleetConfig};
use ota_server::devices::{DeviceConfig, Devices};
use ota_server::limits::Limits;
use ota_server::metrics::Metrics;
use ota_server::pki::DevPki;
use ota_server::serve::{serve_with_metrics, TransportMetrics};
use ota_server::store::sled::SledStore;
use ota_server::store::Store;
use ota_server::tls::{self, install_crypto_provider};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct TestServer {
    base: String,
    state: AppState,
    pki: Arc<DevPki>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
    fleet_stop: Option<oneshot::Sender<()>>,
    op: String,
    viewer: String,
    publisher: String,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> Self {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let pki = Arc::new(DevPki::load_or_create(&dir.path().join("pki")).unwrap());
        let audit = Arc::new(AuditLog::new(Arc::clone(&store)));
        let devices = Arc::new(Devices::open(Arc::clone(&store), DeviceConfig::default()).unwrap());
        let config = FleetConfig {
            tick_millis: 200,
            ..FleetConfig::default()
        };
        let fleet = Fleet::open(
            Arc::clone(&store),
            Arc::clone(&audit),
            Arc::clone(&devices),
            config,
            Utc::now(),
        )
        .unwrap();
        let state = AppState::new(AppParts {
            repo: Arc::new(repository(&store)),
            blobs: BlobStore::open(&dir.path().join("blobs")).unwrap(),
            store: Arc::clone(&store),
            audit,
            tokens: Tokens::new(Arc::clone(&store)),
            metrics: Arc::new(Metrics::default()),
            transport: Arc::new(TransportMetrics::new()),
            device_ca: Some(Arc::clone(&pki)),
            limits: Limits::default(),
            dev_mode: true,
            devices,
            fleet: Arc::new(fleet),
        });
        let (fleet_tx, fleet_rx) = oneshot::channel::<()>();
        state.fleet.spawn_background(async {
            let _ = fleet_rx.await;
        });
        let tls_config = tls::server_config(&pki.tls_settings()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve_with_metrics(
            listener,
            tls_config,
            state.limits.clone(),
            routes(state.clone()),
            Arc::clone(&state.transport),
            async {
                let _ = rx.await;
            },
        ));
        let token = |role| state.tokens.create("test", role, Utc::now()).unwrap().0;
        let (op, viewer, publisher) = (
            token(Role::Operator),
            token(Role::Viewer),
            token(Role::Publisher),
        );
        TestServer {
            base: format!("https://{addr}"),
            state,
            pki,
            shutdown: Some(tx),
            handle,
            fleet_stop: Some(fleet_tx),
            op,
            viewer,
            publisher,
            _dir: dir,
        }
    }

    /// A client trusting this server's CA, presenting `cert` (PEM cert and key) if given.
    fn client(&self, cert: Option<(String, String)>) -> reqwest::Client {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pki.ca_cert_pem().as_bytes()).unwrap())
            .unwrap();
        let builder = ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An API call with a bearer token; `body` is sent as JSON unless `Null`.
    async fn api(&self, token: &str, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let client = self.client(None);
        let req = match method {
            "GET" => client.get(self.url(path)),
            "DELETE" => client.delete(self.url(path)),
            _ => client.post(self.url(path)),
        };
        let req = if body.is_null() { req } else { req.json(&body) };
        read(req.bearer_auth(token).send().await.unwrap()).await
    }

    /// A raw POST with a bearer token (for malformed bodies).
    async fn raw(&self, token: &str, path: &str, body: &'static str) -> (StatusCode, Value) {
        let resp = self
            .client(None)
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        read(resp).await
    }

    /// Uploads an image and publishes it as `name` at `version` for board `hw`.
    async fn publish(&self, name: &str, version: &str) {
        let resp = self
            .client(None)
            .put(self.url("/api/v1/blobs"))
            .bearer_auth(&self.publisher)
            .body(format!("image of {name}"))
            .send()
            .await
            .unwrap();
        let (code, blob) = read(resp).await;
        assert_eq!(code, StatusCode::CREATED, "{blob}");
        let body = json!({"name": name, "sha256": blob["sha256"], "version": version,
            "hardware_ids": ["hw"]});
        let (code, out) = self
            .api(&self.publisher, "POST", "/api/v1/releases", body)
            .await;
        assert_eq!(code, StatusCode::OK, "{out}");
    }

    /// `n` devices, preauthorized, on board `hw` running 1.0.0.
    async fn fleet(&self, prefix: &str, n: usize) -> Vec<Device> {
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:02}")).collect();
        let (code, body) = self
            .api(
                &self.op,
                "POST",
                "/api/v1/devices/preauthorize",
                json!({"ids": ids}),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        ids.into_iter()
            .map(|id| Device {
                client: self.client(Some(self.pki.issue_device_cert(&id, 30).unwrap())),
                id,
                version: "1.0.0".into(),
                reports: 0,
            })
            .collect()
    }

    async fn deployment(&self, id: &str) -> Value {
        let (code, body) = self
            .api(
                &self.viewer,
                "GET",
                &format!("/api/v1/deployments/{id}"),
                Value::Null,
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        body
    }

    async fn audit(&self) -> Vec<Value> {
        let (code, body) = self
            .api(&self.viewer, "GET", "/api/v1/audit?limit=1000", Value::Null)
            .await;
        assert_eq!(code, StatusCode::OK);
        body.as_array().unwrap().clone()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.fleet_stop.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap().unwrap();
    }
}

/// A simulated device.
struct Device {
    id: String,
    client: reqwest::Client,
    version: String,
    reports: u32,
}

impl Device {
    /// Polls, reporting its version; returns the directive's (target, deployment).
    async fn poll(&self, server: &TestServer) -> Option<(String, String)> {
        let body = json!({"hardware_id": "hw", "current_version": self.version});
        let resp = self
            .client
            .post(server.url("/api/v1/device/poll"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (code, body) = read(resp).await;
        assert_eq!(code, StatusCode::OK, "{}: {body}", self.id);
        let resp: PollResponse = serde_json::from_value(body).unwrap();
        resp.update
            .map(|u| (u.target, u.deployment.unwrap_or_default()))
    }

    /// Reports `state` about `target` (version 2.0.0) in `deployment`.
    async fn report(&mut self, server: &TestServer, target: &str, deployment: &str, state: &str) {
        self.reports += 1;
        let body = json!({"id": format!("{}-r{}", self.id, self.reports), "target": target,
            "version": "2.0.0", "state": state, "deployment": deployment,
            "at": Utc::now()});
        let resp = self
            .client
            .post(server.url("/api/v1/device/status"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (code, body) = read(resp).await;
        assert_eq!(code, StatusCode::OK, "{}: {body}", self.id);
        if state == "committed" {
            self.version = "2.0.0".into();
        }
    }
}

async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn error_code(body: &Value) -> String {
    serde_json::from_value::<ApiError>(body.clone())
        .unwrap_or_else(|e| panic!("not an ApiError ({e}): {body}"))
        .error
}

async fn create_group(server: &TestServer, name: &str) {
    let body = json!({"name": name, "filter": {"hardware_id": "hw"}});
    let (code, body) = server.api(&server.op, "POST", "/api/v1/groups", body).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

async fn create_deployment(server: &TestServer, group: &str, phases: Value, min: u64) -> String {
    let body = json!({"release": "fw-2", "group": group, "phases": phases,
        "failure_threshold_percent": 50, "min_devices": min});
    let (code, body) = server
        .api(&server.op, "POST", "/api/v1/deployments", body)
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

fn actions(audit: &[Value], deployment: &str) -> Vec<(String, String)> {
    audit
        .iter()
        .filter(|e| e["subject"] == deployment)
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_phases_advance_to_completion_as_devices_commit() {
    let server = TestServer::start().await;
    server.publish("fw-2", "2.0.0").await;
    let mut devices = server.fleet("dev", 30).await;
    for d in &devices {
        assert!(d.poll(&server).await.is_none());
    }
    create_group(&server, "all-hw").await;
    let (_, group) = server
        .api(&server.viewer, "GET", "/api/v1/groups/all-hw", Value::Null)
        .await;
    assert_eq!(group["member_count"], 30);
    let phases = json!([{"percent": 20, "min_wait_secs": 2}, {"percent": 60, "min_wait_secs": 1},
        {"percent": 100, "min_wait_secs": 0}]);
    let id = create_deployment(&server, "all-hw", phases, 3).await;

    // Phase 1 offers the release to exactly the devices it reaches.
    let first = server.deployment(&id).await;
    assert_eq!(first["phase"], 0);
    let mut offered = 0;
    for d in &devices {
        if let Some((target, dep)) = d.poll(&server).await {
            assert_eq!((target.as_str(), dep.as_str()), ("fw-2", id.as_str()));
            offered += 1;
        }
    }
    assert_eq!(offered, first["phases"][0]["targeted"].as_u64().unwrap());
    assert!(offered < 30);

    // Devices poll, install and commit until the deployment completes.
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(60);
    loop {
        let dep = server.deployment(&id).await;
        if dep["state"] == "completed" {
            break;
        }
        assert_eq!(dep["state"], "active", "{dep}");
        assert!(tokio::time::Instant::now() < deadline, "stuck: {dep}");
        for d in devices.iter_mut() {
            if let Some((target, dep_id)) = d.poll(&server).await {
                d.report(&server, &target, &dep_id, "downloading").await;
                d.report(&server, &target, &dep_id, "committed").await;
            }
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let dep = server.deployment(&id).await;
    let phases = dep["phases"].as_array().unwrap();
    let sum = |k: &str| phases.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        (sum("started"), sum("succeeded"), sum("failed")),
        (30, 30, 0)
    );
    assert_eq!(phases[2]["targeted"], 30);
    assert!(devices.iter().all(|d| d.version == "2.0.0"));
    // Up to date: nothing more is offered, even by a completed deployment.
    for d in &devices {
        assert!(d.poll(&server).await.is_none());
    }
    let audit = server.audit().await;
    let acts = actions(&audit, &id);
    assert_eq!(acts[0].1, "deployment.create");
    assert!(acts[0].0.starts_with("token:"));
    let server_acts: Vec<&str> = acts[1..]
        .iter()
        .map(|(actor, action)| {
            assert_eq!(actor, "server");
            action.as_str()
        })
        .collect();
    assert_eq!(
        server_acts,
        [
            "deployment.advance",
            "deployment.advance",
            "deployment.complete"
        ]
    );
    let moves: Vec<(u64, u64)> = audit
        .iter()
        .filter(|e| e["subject"] == id.as_str() && e["action"] == "deployment.advance")
        .map(|e| {
            (
                e["detail"]["from"].as_u64().unwrap(),
                e["detail"]["to"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(moves, [(0, 1), (1, 2)]);
    // The summary followed every report.
    let (code, summary) = server
        .api(&server.viewer, "GET", "/api/v1/fleet/summary", Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(summary["by_version"], json!({"2.0.0": 30}));
    assert_eq!(summary["by_status"]["accepted"], 30);
    assert_eq!(summary["by_update_state"]["up_to_date"], 30);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollbacks_pause_resume_continues_and_abort_stops() {
    let server = TestServer::start().await;
    server.publish("fw-2", "2.0.0").await;
    let mut devices = server.fleet("box", 10).await;
    for d in &devices {
        d.poll(&server).await;
    }
    create_group(&server, "boxes").await;
    // One long phase: only the failure rule moves it.
    let id = create_deployment(
        &server,
        "boxes",
        json!([{"percent": 100, "min_wait_secs": 3600}]),
        3,
    )
    .await;
    for d in devices.iter_mut().take(3) {
        let (target, dep) = d.poll(&server).await.unwrap();
        d.report(&server, &target, &dep, "downloading").await;
        d.report(&server, &target, &dep, "rolled_back").await;
    }
    let dep = server.deployment(&id).await;
    assert_eq!(dep["state"], "paused", "{dep}");
    assert_eq!(dep["status"]["automatic"], true);
    let reason = dep["status"]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("3/3"), "{reason}");
    assert_eq!(dep["phases"][0]["failed"], 3);
    let audit = server.audit().await;
    let pause = audit
        .iter()
        .find(|e| e["subject"] == id.as_str() && e["action"] == "deployment.pause")
        .unwrap();
    assert_eq!(pause["actor"], "server");
    assert_eq!(pause["detail"]["reason"], reason.as_str());
    let (_, feed) = server
        .api(&server.viewer, "GET", "/api/v1/anomalies", Value::Null)
        .await;
    let paused: Vec<&Value> = feed["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "rollout_paused")
        .collect();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0]["source"], "server");
    assert_eq!(paused[0]["detail"]["deployment"], id.as_str());
    let summary = server.state.fleet.summary();
    assert_eq!(summary.by_update_state.rolled_back, 3);

    // Paused: no new directives, and never again for the devices that rolled back.
    for d in &devices {
        assert!(d.poll(&server).await.is_none(), "{}", d.id);
    }
    // A viewer can neither resume nor pause nor create.
    let resume = format!("/api/v1/deployments/{id}/resume");
    let (code, body) = server
        .api(&server.viewer, "POST", &resume, Value::Null)
        .await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let (code, body) = server.api(&server.op, "POST", &resume, Value::Null).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "active");
    let (code, body) = server.api(&server.op, "POST", &resume, Value::Null).await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::CONFLICT, "wrong_state".into())
    );

    // Resumed: the others are offered the release again; the rolled-back ones are not.
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(d.poll(&server).await.is_some(), i >= 3, "{}", d.id);
    }
    // One healthy install; the old failures do not pause it again.
    let (target, dep) = devices[3].poll(&server).await.unwrap();
    devices[3].report(&server, &target, &dep, "committed").await;
    // An operator pause with a reason: a running install continues, nobody new starts.
    devices[4]
        .report(&server, &target, &dep, "downloading")
        .await;
    let pause = format!("/api/v1/deployments/{id}/pause");
    let (code, body) = server
        .api(
            &server.op,
            "POST",
            &pause,
            json!({"reason": "checking the logs"}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"]["reason"], "checking the logs");
    assert_eq!(body["status"]["automatic"], false);
    assert!(devices[4].poll(&server).await.is_some());
    assert!(devices[5].poll(&server).await.is_none());
    server.api(&server.op, "POST", &resume, Value::Null).await;
    // Abort stops every directive, running installs included.
    let abort = format!("/api/v1/deployments/{id}/abort");
    let (code, body) = server
        .api(&server.viewer, "POST", &abort, Value::Null)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let (code, body) = server.api(&server.op, "POST", &abort, Value::Null).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "aborted");
    for d in &devices {
        assert!(d.poll(&server).await.is_none(), "{}", d.id);
    }
    let acts = actions(&server.audit().await, &id);
    let ops: Vec<&str> = acts
        .iter()
        .filter(|(actor, _)| actor.starts_with("token:"))
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(
        ops,
        [
            "deployment.create",
            "deployment.resume",
            "deployment.pause",
            "deployment.resume",
            "deployment.abort"
        ]
    );
    // The group is free again.
    let (code, _) = server
        .api(&server.op, "DELETE", "/api/v1/groups/boxes", Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_the_release_aborts_its_deployments() {
    let server = TestServer::start().await;
    server.publish("fw-2", "2.0.0").await;
    let devices = server.fleet("unit", 4).await;
    for d in &devices {
        d.poll(&server).await;
    }
    create_group(&server, "units").await;
    let id = create_deployment(
        &server,
        "units",
        json!([{"percent": 100, "min_wait_secs": 3600}]),
        1,
    )
    .await;
    assert!(devices[0].poll(&server).await.is_some());
    // In use: the group cannot go.
    let (code, body) = server
        .api(&server.op, "DELETE", "/api/v1/groups/units", Value::Null)
        .await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::CONFLICT, "group_in_use".into())
    );
    let (code, body) = server
        .api(
            &server.publisher,
            "DELETE",
            "/api/v1/releases/fw-2",
            Value::Null,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["aborted_deployments"], json!([id]));
    let dep = server.deployment(&id).await;
    assert_eq!(dep["state"], "aborted");
    assert!(dep["status"]["reason"]
        .as_str()
        .unwrap()
        .contains("withdrawn"));
    for d in &devices {
        assert!(d.poll(&server).await.is_none());
    }
    let acts = actions(&server.audit().await, &id);
    assert_eq!(acts.last().unwrap().1, "deployment.abort");
    assert!(acts.last().unwrap().0.starts_with("token:"));
    // A withdrawn release cannot be deployed again.
    let body = json!({"release": "fw-2", "group": "units", "phases": [{"percent": 100}],
        "failure_threshold_percent": 50, "min_devices": 1});
    let (code, body) = server
        .api(&server.op, "POST", "/api/v1/deployments", body)
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(matches!(
        error_code(&body).as_str(),
        "release_withdrawn" | "unknown_release"
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_bad_bodies() {
    let server = TestServer::start().await;
    server.publish("fw-2", "2.0.0").await;
    let good = json!({"release": "fw-2", "group": "g",
        "phases": [{"percent": 100, "min_wait_secs": 3600}],
        "failure_threshold_percent": 50, "min_devices": 1});
    // Viewers look but do not change.
    let (code, body) = server
        .api(&server.viewer, "POST", "/api/v1/deployments", good.clone())
        .await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let (code, body) = server
        .api(
            &server.viewer,
            "POST",
            "/api/v1/groups",
            json!({"name": "g", "filter": {}}),
        )
        .await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let (code, _) = server
        .api("ota_nonsense", "GET", "/api/v1/fleet/summary", Value::Null)
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // Groups: bad bodies.
    for (body, want) in [
        (json!({"name": "g"}), StatusCode::BAD_REQUEST),
        (
            json!({"name": "g", "devices": ["a"], "filter": {}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "bad name", "filter": {}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "g", "devices": ["../x"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "g", "filter": {"colour": "red"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": 5, "filter": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (code, resp) = server
            .api(&server.op, "POST", "/api/v1/groups", body.clone())
            .await;
        assert_eq!(code, want, "{body} -> {resp}");
        error_code(&resp);
    }
    let (code, resp) = server.raw(&server.op, "/api/v1/groups", "{not json").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    error_code(&resp);
    // Deployments: unknown group, then bad policies and shapes.
    let (code, resp) = server
        .api(&server.op, "POST", "/api/v1/deployments", good.clone())
        .await;
    assert_eq!(
        (code, error_code(&resp)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_group".into())
    );
    let (code, resp) = server
        .api(
            &server.op,
            "POST",
            "/api/v1/groups",
            json!({"name": "g", "devices": ["a", "b"]}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{resp}");
    assert_eq!(
        (resp["kind"].as_str(), resp["listed"].as_u64()),
        (Some("static"), Some(2))
    );
    let (code, resp) = server
        .api(
            &server.op,
            "POST",
            "/api/v1/groups",
            json!({"name": "g", "filter": {}}),
        )
        .await;
    assert_eq!(
        (code, error_code(&resp)),
        (StatusCode::CONFLICT, "group_exists".into())
    );
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    for (body, want) in [
        (with("phases", json!([])), StatusCode::BAD_REQUEST),
        (
            with("phases", json!([{"percent": 60}, {"percent": 20}])),
            StatusCode::BAD_REQUEST,
        ),
        (
            with("phases", json!([{"percent": 120}])),
            StatusCode::BAD_REQUEST,
        ),
        (
            with("failure_threshold_percent", json!(0)),
            StatusCode::BAD_REQUEST,
        ),
        (
            with("failure_threshold_percent", json!(300)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            with("phases", json!([{"percent": 100, "extra": 1}])),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            with("min_devices", json!("many")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            with("release", json!("nope")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"release": "fw-2"}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (code, resp) = server
            .api(&server.op, "POST", "/api/v1/deployments", body.clone())
            .await;
        assert_eq!(code, want, "{body} -> {resp}");
        error_code(&resp);
    }
    let (code, resp) = server
        .raw(&server.op, "/api/v1/deployments", "{release")
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    error_code(&resp);
    // A good one, then bad control bodies and unknown ids.
    let (code, dep) = server
        .api(&server.op, "POST", "/api/v1/deployments", good.clone())
        .await;
    assert_eq!(code, StatusCode::CREATED, "{dep}");
    let pause = format!("/api/v1/deployments/{}/pause", dep["id"].as_str().unwrap());
    let (code, resp) = server.raw(&server.op, &pause, "{oops").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    error_code(&resp);
    let (code, resp) = server
        .api(&server.op, "POST", &pause, json!({"why": "x"}))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    error_code(&resp);
    let (code, resp) = server
        .api(
            &server.op,
            "POST",
            "/api/v1/deployments/dep-none/pause",
            Value::Null,
        )
        .await;
    assert_eq!(
        (code, error_code(&resp)),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let (code, _) = server
        .api(&server.viewer, "GET", "/api/v1/groups/none", Value::Null)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // Lists.
    let (code, list) = server
        .api(&server.viewer, "GET", "/api/v1/deployments", Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["deployments"].as_array().unwrap().len(), 1);
    let (_, groups) = server
        .api(&server.viewer, "GET", "/api/v1/groups", Value::Null)
        .await;
    assert_eq!(groups["groups"][0]["used_by"], json!([dep["id"]]));
    assert!(groups["groups"][0].get("devices").is_none());
    let (_, one) = server
        .api(&server.viewer, "GET", "/api/v1/groups/g", Value::Null)
        .await;
    assert_eq!(one["devices"], json!(["a", "b"]));
    assert_eq!(one["member_count"], 0);
    server.stop().await;
}
