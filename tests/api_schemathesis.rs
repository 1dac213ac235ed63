//! Schemathesis (property-based API testing from the OpenAPI document) against a real
//! `ota-server`: no generated request may produce a 5xx, and every response must match the
//! document. The device routes are exercised with an accepted device's certificate.

mod harness;

use std::process::Command;

use harness::api::json_body;
use harness::ServerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_from_the_openapi_document_gets_a_5xx() {
    harness::http::install_crypto_provider();
    let python = harness::python_with_tuf();
    let schemathesis = python.with_file_name("schemathesis");
    assert!(
        schemathesis.is_file(),
        "{} is missing: run `bash .ci/run` (it installs .ci/python-requirements.txt into .venv)",
        schemathesis.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("srv"), None);
    let (cert, key) = server.issue_device("fuzz-device");
    // Register and accept the device so device routes get past authorisation.
    let device = server.client_with_identity(&cert, &key);
    let _ = device
        .post(server.url("/api/v1/device/poll"))
        .json(&serde_json::json!({"hardware_id": "board"}))
        .send()
        .await
        .unwrap();
    let resp = server
        .client()
        .post(server.url("/api/v1/devices/fuzz-device/accept"))
        .bearer_auth(server.admin_token())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", json_body(resp).await);

    let out = Command::new(&schemathesis)
        .arg("run")
        .arg(server.url("/api/v1/openapi.yaml"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance",
        ])
        .args(["--max-examples", "30", "--seed", "1", "--workers", "2"])
        .args(["--generation-deterministic"])
        .arg(format!("--tls-verify={}", server.ca_path().display()))
        .arg(format!("--request-cert={}", cert.display()))
        .arg(format!("--request-cert-key={}", key.display()))
        .arg(format!(
            "--header=Authorization: Bearer {}",
            server.admin_token()
        ))
        // Rotating root or revoking tokens with generated data only gets 4xx, but a token
        // revocation that guessed right would end the run's authority: keep them out.
        .args(["--exclude-path", "/api/v1/tokens/revoke"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let (status, _) = server.healthz().await;
    assert_eq!(status, 200, "server unhealthy after the run");
}
