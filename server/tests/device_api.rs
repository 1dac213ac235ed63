//! The device and operator APIs end to end, in process: the state built as a real start
//! builds it (sled in a temporary directory, the development PKI, an initialised TUF
//! repository), served over real TLS on 127.0.0.1 port 0, called with reqwest and device
//! certificates from the device CA.

#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use support::repository;

use chrono::Utc;
use ota_common::api::OplogRecord;
use ota_common::api::{ApiError, OplogAck, PollResponse};
use ota_server::app::{routes, AppParts, AppState};
use ota_server::audit::AuditLog;
use ota_server::auth::{Role, Tokens};
use ota_server::blobs::BlobStore;
use ota_server::deployments::{Fleet, FleetConfig};
use ota_server::devices::record::{
    ANOMALIES_TREE, DEVICES_TREE, DEVICE_ANOMALIES_TREE, OPLOG_HEADS_TREE, OPLOG_TREE,
    STATUS_IDS_TREE, STATUS_TREE,
};
use ota_server::devices::{DeviceConfig, Devices};
use ota_server::limits::Limits;
use ota_server::metrics::Metrics;
use ota_server::oplog_chain::{head_after, ChainHead};
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
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> Self {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let pki = Arc::new(DevPki::load_or_create(&dir.path().join("pki")).unwrap());
        let devices = Arc::new(Devices::open(Arc::clone(&store), DeviceConfig::default()).unwrap());
        let state = AppState::new(AppParts {
            repo: Arc::new(repository(&store)),
            blobs: BlobStore::open(&dir.path().join("blobs")).unwrap(),
            store: Arc::clone(&store),
            audit: Arc::new(AuditLog::new(Arc::clone(&store))),
            tokens: Tokens::new(Arc::clone(&store)),
            metrics: Arc::new(Metrics::default()),
            transport: Arc::new(TransportMetrics::new()),
            device_ca: Some(Arc::clone(&pki)),
            limits: Limits::default(),
            dev_mode: true,
            devices: Arc::clone(&devices),
            fleet: Arc::new(
                Fleet::open(
                    Arc::clone(&store),
                    Arc::new(AuditLog::new(Arc::clone(&store))),
                    devices,
                    FleetConfig::default(),
                    Utc::now(),
                )
                .unwrap(),
            ),
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
        TestServer {
            base: format!("https://{addr}"),
            state,
            pki,
            shutdown: Some(tx),
            handle,
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

    fn device(&self, id: &str) -> reqwest::Client {
        self.client(Some(self.pki.issue_device_cert(id, 30).unwrap()))
    }

    fn token(&self, role: Role) -> String {
        self.state
            .tokens
            .create("test", role, Utc::now())
            .unwrap()
            .0
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, client: &reqwest::Client, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        read(resp).await
    }

    async fn operator(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let client = self.client(None);
        let req = match method {
            "GET" => client.get(self.url(path)),
            _ => client.post(self.url(path)).json(&body),
        };
        read(req.bearer_auth(token).send().await.unwrap()).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap().unwrap();
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

fn poll_body() -> Value {
    json!({"hardware_id": "board-x", "current_version": "1.0.0", "active_slot": "a"})
}

fn error_code(body: &Value) -> String {
    serde_json::from_value::<ApiError>(body.clone())
        .unwrap_or_else(|e| panic!("not an ApiError ({e}): {body}"))
        .error
}

fn oplog_chain(n: u64) -> Vec<OplogRecord> {
    let mut head = ChainHead::genesis();
    (1..=n)
        .map(|i| {
            let r = OplogRecord::next(
                &head,
                format!("2025-01-01T00:00:{i:02}.000Z"),
                "poll".into(),
                json!({"n": i, "note": "line\nbreak", "ratio": 0.25}),
            );
            head = head_after(&r);
            r
        })
        .collect()
}

#[tokio::test]
async fn device_lifecycle_from_pending_to_decommissioned() {
    let server = TestServer::start().await;
    let device = server.device("dev-001");
    let op = server.token(Role::Operator);
    let viewer = server.token(Role::Viewer);

    // Unknown: recorded as pending, refused.
    let (code, body) = server
        .post(&device, "/api/v1/device/poll", poll_body())
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "device_pending");

    // A viewer cannot accept; an operator can.
    let (code, body) = server
        .operator(&viewer, "POST", "/api/v1/devices/dev-001/accept", json!({}))
        .await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden".to_string())
    );
    let (code, _) = server
        .operator(&op, "POST", "/api/v1/devices/dev-001/accept", json!({}))
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = server
        .post(&device, "/api/v1/device/poll", poll_body())
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let resp: PollResponse = serde_json::from_value(body).unwrap();
    assert!(resp.update.is_none());
    assert!((270..=330).contains(&resp.poll_after_secs));

    // Reports are idempotent.
    let report = json!({"id": "r-1", "target": "fw-1.1.0", "version": "1.1.0",
        "state": "downloading", "progress_bytes": 10, "total_bytes": 100,
        "at": "2025-01-01T00:00:00Z"});
    for expect_new in [true, false] {
        let (code, body) = server
            .post(&device, "/api/v1/device/status", report.clone())
            .await;
        assert_eq!(
            (code, body["stored"].as_bool()),
            (StatusCode::OK, Some(expect_new))
        );
    }
    let anomalies = json!({"anomalies": [{"id": "a-1", "kind": "hash_mismatch",
        "message": "image hash differs", "at": "2025-01-01T00:00:01Z"}]});
    for n in [1, 0] {
        let (code, body) = server
            .post(&device, "/api/v1/device/anomalies", anomalies.clone())
            .await;
        assert_eq!((code, body["stored"].as_u64()), (StatusCode::OK, Some(n)));
    }

    // The operation log: an intact chain, then a lost record.
    let records = oplog_chain(5);
    let (code, body) = server
        .post(
            &device,
            "/api/v1/device/oplog",
            json!({"records": records[..3]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let ack: OplogAck = serde_json::from_value(body).unwrap();
    assert_eq!(
        ack,
        OplogAck {
            stored_through: 3,
            chain_ok: true
        }
    );
    let (_, body) = server
        .post(
            &device,
            "/api/v1/device/oplog",
            json!({"records": records[4..]}),
        )
        .await;
    let ack: OplogAck = serde_json::from_value(body).unwrap();
    assert_eq!(
        ack,
        OplogAck {
            stored_through: 5,
            chain_ok: false
        }
    );
    let (code, body) = server
        .operator(&viewer, "GET", "/api/v1/anomalies", json!({}))
        .await;
    assert_eq!(code, StatusCode::OK);
    let feed = body["anomalies"].as_array().unwrap();
    assert_eq!(feed.len(), 2);
    assert_eq!(feed[0]["kind"], "oplog_chain_break");
    assert_eq!(feed[0]["source"], "server");
    assert_eq!(feed[0]["detail"]["seq"], 5);
    assert_eq!(feed[1]["kind"], "hash_mismatch");

    let (code, body) = server
        .operator(&viewer, "GET", "/api/v1/devices/dev-001", json!({}))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["status_reports"].as_array().unwrap().len(), 1);
    assert_eq!(body["anomalies"].as_array().unwrap().len(), 2);
    assert_eq!(body["oplog"].as_array().unwrap().len(), 4);
    assert_eq!(body["device"]["hardware_id"], "board-x");
    assert_eq!(body["device"]["last_status"]["state"], "downloading");
    assert!(body["device"]["last_peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    // Last-seen times reach the store in a batch.
    assert!(server.state.devices.flush_last_seen().unwrap() >= 1);

    // Rejected.
    let (code, _) = server
        .operator(&op, "POST", "/api/v1/devices/dev-001/reject", json!({}))
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = server
        .post(&device, "/api/v1/device/poll", poll_body())
        .await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::FORBIDDEN, "device_rejected".to_string())
    );
    let (code, body) = server
        .post(&device, "/api/v1/device/status", report.clone())
        .await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::FORBIDDEN, "device_rejected".to_string())
    );

    // Decommissioned: refused forever, even with a new valid certificate; its data gone.
    let (code, _) = server
        .operator(
            &op,
            "POST",
            "/api/v1/devices/dev-001/decommission",
            json!({}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    for client in [&device, &server.device("dev-001")] {
        let (code, body) = server
            .post(client, "/api/v1/device/poll", poll_body())
            .await;
        assert_eq!(
            (code, error_code(&body)),
            (StatusCode::FORBIDDEN, "device_decommissioned".to_string())
        );
    }
    let (code, _) = server
        .operator(&op, "POST", "/api/v1/devices/dev-001/accept", json!({}))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    let store = &server.state.store;
    for tree in [
        DEVICES_TREE,
        STATUS_TREE,
        STATUS_IDS_TREE,
        ANOMALIES_TREE,
        DEVICE_ANOMALIES_TREE,
        OPLOG_TREE,
        OPLOG_HEADS_TREE,
    ] {
        assert!(
            store.scan_prefix(tree, b"").unwrap().is_empty(),
            "{tree} still holds data"
        );
    }
    let (_, body) = server
        .operator(&viewer, "GET", "/api/v1/devices/dev-001", json!({}))
        .await;
    assert!(body["device"].is_null());
    assert!(body["decommissioned"]["decommissioned_at"].is_string());
    let actions: Vec<String> = server
        .state
        .audit
        .list(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        ["device.accept", "device.reject", "device.decommission"]
    );
    server.stop().await;
}

#[tokio::test]
async fn certificates_gate_the_device_api() {
    let server = TestServer::start().await;
    // No certificate: the TLS handshake succeeds, the device API says 401.
    let anonymous = server.client(None);
    let (code, body) = server
        .post(&anonymous, "/api/v1/device/poll", poll_body())
        .await;
    assert_eq!(
        (code, error_code(&body)),
        (
            StatusCode::UNAUTHORIZED,
            "no_device_certificate".to_string()
        )
    );
    // A device certificate from another CA fails the handshake.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = DevPki::load_or_create(foreign_dir.path()).unwrap();
    let impostor = server.client(Some(foreign.issue_device_cert("dev-001", 30).unwrap()));
    let result = impostor
        .post(server.url("/api/v1/device/poll"))
        .json(&poll_body())
        .send()
        .await;
    assert!(
        result.is_err(),
        "a foreign device certificate was accepted: {result:?}"
    );
    // Nothing was registered for it.
    assert!(server
        .state
        .store
        .scan_prefix(DEVICES_TREE, b"")
        .unwrap()
        .is_empty());
    server.stop().await;
}

#[tokio::test]
async fn enrollment_token_works_once() {
    let server = TestServer::start().await;
    let op = server.token(Role::Operator);
    let (code, body) = server
        .operator(
            &op,
            "POST",
            "/api/v1/enrollment-tokens",
            json!({"device_id": "dev-enr"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap().to_string();

    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let anonymous = server.client(None);
    let enroll = json!({"token": token, "device_id": "dev-enr", "csr_pem": csr});
    let (code, body) = server
        .post(&anonymous, "/api/v1/enroll", enroll.clone())
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let cert = body["certificate_pem"].as_str().unwrap().to_string();

    // The device polls with its new certificate and is accepted at once.
    let device = server.client(Some((cert, key.serialize_pem())));
    let (code, body) = server
        .post(&device, "/api/v1/device/poll", poll_body())
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // The token is spent.
    let (code, body) = server.post(&anonymous, "/api/v1/enroll", enroll).await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::FORBIDDEN, "enrollment_token_used".to_string())
    );
    let (code, body) = server
        .post(
            &anonymous,
            "/api/v1/enroll",
            json!({"token": "otae_00", "device_id": "x", "csr_pem": "x"}),
        )
        .await;
    assert_eq!(
        (code, error_code(&body)),
        (
            StatusCode::FORBIDDEN,
            "invalid_enrollment_token".to_string()
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_4xx_with_the_error_shape() {
    let server = TestServer::start().await;
    let device = server.device("dev-bad");
    server
        .state
        .devices
        .preauthorize(&["dev-bad".into()], &server.state.audit, "test", Utc::now())
        .unwrap();
    let paths = [
        "/api/v1/device/poll",
        "/api/v1/device/status",
        "/api/v1/device/anomalies",
        "/api/v1/device/oplog",
        "/api/v1/enroll",
    ];
    let garbage: [&[u8]; 6] = [
        b"{not json",
        b"",
        b"[]",
        b"{\"unknown\": 1}",
        b"{\"records\": [{\"seq\": 1}]}",
        b"\xff\xfe",
    ];
    for path in paths {
        for body in garbage {
            let resp = device
                .post(server.url(path))
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            let (code, value) = read(resp).await;
            assert!(code.is_client_error(), "{path} {body:?}: {code}");
            error_code(&value);
        }
    }
    // Malformed JSON is 400.
    let resp = device
        .post(server.url("/api/v1/device/poll"))
        .header("content-type", "application/json")
        .body("{\"hardware_id\": ")
        .send()
        .await
        .unwrap();
    let (code, value) = read(resp).await;
    assert_eq!(
        (code, error_code(&value)),
        (StatusCode::BAD_REQUEST, "bad_request".to_string())
    );
    // Semantically bad values are 400 too.
    let (code, value) = server
        .post(&device, "/api/v1/device/poll", json!({"hardware_id": ""}))
        .await;
    assert_eq!(
        (code, error_code(&value)),
        (StatusCode::BAD_REQUEST, "bad_request".to_string())
    );
    // An oversized body is 413.
    let big = json!({"hardware_id": "b", "attributes": {"blob": "x".repeat(2 * 1024 * 1024)}});
    let (code, value) = server.post(&device, "/api/v1/device/poll", big).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    error_code(&value);
    // And the device still works.
    let (code, _) = server
        .post(&device, "/api/v1/device/poll", poll_body())
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        server
            .state
            .metrics
            .polls
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    server.stop().await;
}
