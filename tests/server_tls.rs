//! TLS trust in both directions: a client that trusts another CA refuses the server, and
//! the server refuses a device certificate issued by another CA during the handshake,
//! while its own device certificates and its own CA work (the controls).

#![allow(clippy::unwrap_used)] // tests may unwrap

mod harness;

use harness::{issue_device_in, raw_exchange, raw_status, tls_client_config, ServerProcess};

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_refuses_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("data"), None);
    server.wait_healthy().await;

    // Another development PKI: its server CA is a perfectly good CA, just not ours.
    let foreign = tmp.path().join("foreign");
    issue_device_in(&foreign, "unused", &foreign.join("out"));
    let foreign_ca = foreign.join("pki").join("ca.crt");
    assert_ne!(
        std::fs::read(&foreign_ca).unwrap(),
        std::fs::read(server.ca_path()).unwrap()
    );

    // Control: our CA completes the handshake.
    let ok = harness::tls_connect(server.addr(), server.tls_config()).await;
    assert!(ok.is_ok(), "handshake with our CA: {:?}", ok.err());

    let err = harness::tls_connect(
        server.addr(),
        tls_client_config(&foreign_ca, None, &[b"http/1.1"]),
    )
    .await
    .expect_err("the handshake must fail with a foreign CA");
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"));
    // Every development CA has the same subject name, so the chain builder finds a
    // candidate issuer and then fails its signature check: BadSignature, not UnknownIssuer.
    assert!(
        matches!(
            inner,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature
            )
        ),
        "expected an untrusted-issuer error, got {inner:?}"
    );

    // The same through the HTTP client: no response at all.
    let client = harness::https_client(&foreign_ca, None);
    let res = client.get(server.url("/healthz")).send().await;
    assert!(res.is_err(), "request with a foreign CA must fail: {res:?}");
    assert!(!res.unwrap_err().is_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_certificate_from_a_foreign_ca_is_refused_at_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_dev(&tmp.path().join("data"), None);
    server.wait_healthy().await;

    // Control: a device issued by this server's device CA gets an answer.
    let (cert, key) = server.issue_device("dev-good-1");
    let own = tls_client_config(&server.ca_path(), Some((&cert, &key)), &[b"http/1.1"]);
    let reply = raw_exchange(server.addr(), own, GET_HEALTHZ)
        .await
        .unwrap_or_else(|(e, _)| panic!("own device certificate refused: {e}"));
    assert_eq!(raw_status(&reply), Some(200));

    // The same device id, but issued by another (development) device CA.
    let foreign = tmp.path().join("foreign");
    let (fcert, fkey) = issue_device_in(&foreign, "dev-good-1", &foreign.join("out"));
    let bad = tls_client_config(&server.ca_path(), Some((&fcert, &fkey)), &[b"http/1.1"]);
    // In TLS 1.3 the client's handshake completes before the server has checked the
    // client certificate; the server's refusal arrives as an alert instead of a response.
    // (The device CAs share a subject name, so the server's chain check fails on the
    // signature: rustls sends decrypt_error for that.)
    let outcome = raw_exchange(server.addr(), bad, GET_HEALTHZ).await;
    match outcome {
        Ok(bytes) => panic!(
            "foreign device certificate was accepted; server said {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Err((e, got)) => {
            assert!(got.is_empty(), "bytes before the refusal: {got:?}");
            let inner = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .unwrap_or_else(|| panic!("not a TLS refusal: {e:?}"));
            assert!(
                matches!(
                    inner,
                    rustls::Error::AlertReceived(
                        rustls::AlertDescription::UnknownCA
                            | rustls::AlertDescription::BadCertificate
                            | rustls::AlertDescription::CertificateUnknown
                            | rustls::AlertDescription::DecryptError
                    )
                ),
                "expected a certificate alert, got {inner:?}"
            );
        }
    }

    // The server is unaffected.
    let health = server.wait_healthy().await;
    assert_eq!(health["status"], "ok");
}
