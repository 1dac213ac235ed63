//! The device API: poll, status reports, anomalies, the operation log (all behind the
//! device's client certificate), and enrollment (behind a one-time token).
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /api/v1/device/poll` | `PollRequest` | `PollResponse`; 403 `device_pending`, `device_rejected`, `device_decommissioned` |
//! | `POST /api/v1/device/status` | `StatusReport` | `{"stored": bool}` |
//! | `POST /api/v1/device/anomalies` | `AnomalyBatch` | `{"stored": n}` |
//! | `POST /api/v1/device/oplog` | `OplogBatch` | `OplogAck` |
//! | `POST /api/v1/enroll` | `EnrollRequest` | `EnrollResponse`; 403 on a bad or spent token, 501 without a device CA |
//!
//! Without a device certificate the device routes answer 401 `no_device_certificate`.
//! Reports are idempotent by their id (or seq) and flushed to disk before the 2xx; only
//! accepted devices may send them.

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ota_common::api::{
    AnomalyBatch, EnrollRequest, EnrollResponse, OplogAck, OplogBatch, PollRequest, PollResponse,
    StatusReport, UpdateDirective,
};
use serde_json::{json, Value};

use crate::app::{count_answered, AppState};
use crate::deployments::Fleet;
use crate::devices::enroll::EnrollError;
use crate::devices::record::check_poll;
use crate::devices::{DeviceError, DeviceRecord, DeviceStatus};
use crate::error::{blocking, ApiFailure};
use crate::fast_route::FastRoute;
use crate::identity::PeerIdentity;
use crate::metrics::{add, inc};
use crate::serve::ConnectionInfo;

/// Where devices poll.
pub const POLL_PATH: &str = "/api/v1/device/poll";

/// Device routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(POLL_PATH, post(poll))
        .route("/api/v1/device/status", post(status))
        .route("/api/v1/device/anomalies", post(anomalies))
        .route("/api/v1/device/oplog", post(oplog))
        .route("/api/v1/enroll", post(enroll))
}

/// The update an accepted device should install now: the one place that turns a device
/// record into an [`UpdateDirective`], from the running deployments. Memory only (no
/// store, no lock held beyond a lookup): it runs on every poll.
pub fn directive_for(fleet: &Fleet, device: &DeviceRecord) -> Option<UpdateDirective> {
    fleet.directive_for(device)
}

/// A request made with a verified device certificate.
#[derive(Clone, Debug)]
pub struct DeviceCaller {
    /// Who: the certificate's identity.
    pub identity: PeerIdentity,
    /// From where.
    pub peer: SocketAddr,
}

impl<S: Send + Sync> FromRequestParts<S> for DeviceCaller {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let info = parts
            .extensions
            .get::<ConnectionInfo>()
            // Only a router not served by `serve` lacks it: a server bug, not the client's.
            .ok_or_else(|| {
                ApiFailure::internal("reading the connection", "no ConnectionInfo extension")
            })?;
        let identity = info.identity.clone().ok_or_else(|| {
            ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "no_device_certificate",
                "this endpoint needs a device client certificate issued by the device CA",
            )
        })?;
        Ok(DeviceCaller {
            identity,
            peer: info.peer,
        })
    }
}

fn refusal(id: &str, status: DeviceStatus) -> ApiFailure {
    match status {
        DeviceStatus::Pending => ApiFailure::forbidden(
            "device_pending",
            format!(
                "device {id} is registered and waits for an operator to accept it; keep polling"
            ),
        ),
        DeviceStatus::Rejected => ApiFailure::forbidden(
            "device_rejected",
            format!("device {id} was rejected by an operator"),
        ),
        DeviceStatus::Accepted => {
            ApiFailure::internal("authorizing device", "accepted device refused")
        }
        DeviceStatus::Decommissioned => decommissioned(id),
    }
}

fn decommissioned(id: &str) -> ApiFailure {
    ApiFailure::forbidden(
        "device_decommissioned",
        format!("device {id} was decommissioned; this identity can never be used again"),
    )
}

impl From<DeviceError> for ApiFailure {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::InvalidId(_) | DeviceError::Invalid { .. } => {
                ApiFailure::bad_request(e.to_string())
            }
            DeviceError::Unknown { ref id } => ApiFailure::new(
                StatusCode::FORBIDDEN,
                "device_unknown",
                format!("device {id} is not registered: poll first"),
            ),
            DeviceError::NotAccepted { ref id, status } => refusal(id, status),
            DeviceError::Decommissioned { ref id, .. } => decommissioned(id),
            DeviceError::Store(crate::store::StoreError::Conflict(_)) => {
                ApiFailure::conflict("the device changed concurrently; retry")
            }
            other => ApiFailure::internal("device registry", other),
        }
    }
}

impl From<EnrollError> for ApiFailure {
    fn from(e: EnrollError) -> Self {
        let msg = e.to_string();
        match e {
            EnrollError::NoDeviceCa => {
                ApiFailure::new(StatusCode::NOT_IMPLEMENTED, "no_device_ca", msg)
            }
            EnrollError::UnknownToken | EnrollError::Expired { .. } => {
                ApiFailure::forbidden("invalid_enrollment_token", msg)
            }
            EnrollError::Used { .. } => ApiFailure::forbidden("enrollment_token_used", msg),
            EnrollError::WrongDevice { .. } | EnrollError::IdTaken { .. } => {
                ApiFailure::forbidden("enrollment_refused", msg)
            }
            EnrollError::Decommissioned { .. } => {
                ApiFailure::forbidden("device_decommissioned", msg)
            }
            EnrollError::InvalidId(_) | EnrollError::Ttl { .. } | EnrollError::Csr(_) => {
                ApiFailure::bad_request(msg)
            }
            other => ApiFailure::internal("enrollment", other),
        }
    }
}

async fn poll(
    State(state): State<AppState>,
    device: DeviceCaller,
    body: Result<Json<PollRequest>, JsonRejection>,
) -> Result<Json<PollResponse>, ApiFailure> {
    let Json(req) = body?;
    check_poll(&req).map_err(ApiFailure::bad_request)?;
    let now = state.now();
    let devices = state.devices.clone();
    let record = match devices.poll_fast(&device.identity, &req, device.peer, now) {
        Some(rec) => rec,
        None => {
            let (identity, peer) = (device.identity.clone(), device.peer);
            let outcome = blocking("poll", move || {
                devices
                    .poll(&identity, &req, peer, now)
                    .map_err(ApiFailure::from)
            })
            .await?;
            if outcome.identity_conflict {
                inc(&state.metrics.anomalies);
            }
            outcome.record
        }
    };
    inc(&state.metrics.polls);
    poll_answer(&state, &record).map(Json)
}

/// What a polling device is told: its update (or to hold) if accepted, a refusal if not.
fn poll_answer(state: &AppState, record: &DeviceRecord) -> Result<PollResponse, ApiFailure> {
    if record.status != DeviceStatus::Accepted {
        return Err(refusal(&record.id, record.status));
    }
    let update = directive_for(&state.fleet, record);
    Ok(PollResponse {
        hold: update.is_none() && state.devices.config().directed_updates,
        update,
        poll_after_secs: state.devices.poll_interval_secs(&record.id),
    })
}

/// The poll route ahead of the router (see [`crate::fast_route`]): a well-formed poll from
/// a device whose record is cached and unchanged is answered from memory, as [`poll`]
/// would answer it. Anything else (no certificate, a body that does not parse or check, a
/// device the store must be asked about) goes to [`poll`] untouched.
pub struct PollRoute {
    state: AppState,
}

impl PollRoute {
    /// The fast poll route over `state`.
    pub fn new(state: AppState) -> Self {
        PollRoute { state }
    }
}

impl FastRoute for PollRoute {
    fn path(&self) -> &'static str {
        POLL_PATH
    }

    fn answer(&self, conn: &ConnectionInfo, body: &[u8]) -> Option<Response> {
        let identity = conn.identity.as_ref()?;
        // Accepts exactly what axum's `Json` accepts (it parses with `serde_json` too).
        let req: PollRequest = serde_json::from_slice(body).ok()?;
        check_poll(&req).ok()?;
        let state = &self.state;
        let record = state
            .devices
            .poll_fast(identity, &req, conn.peer, state.now())?;
        inc(&state.metrics.polls);
        let resp = match poll_answer(state, &record) {
            Ok(answer) => Json(answer).into_response(),
            Err(refused) => refused.into_response(),
        };
        count_answered(&state.metrics, resp.status());
        Some(resp)
    }
}

/// Checks in memory that the caller may report (answers most refusals without I/O) and
/// notes the contact.
fn admit(state: &AppState, device: &DeviceCaller) -> Result<(), ApiFailure> {
    let id = &device.identity.device_id;
    if state.devices.decommissioned_at(id).is_some() {
        return Err(decommissioned(id));
    }
    if let Some(rec) = state.devices.cached(id) {
        if rec.status != DeviceStatus::Accepted {
            return Err(refusal(id, rec.status));
        }
        state.devices.mark_seen(id, device.peer, state.now());
    }
    Ok(())
}

async fn status(
    State(state): State<AppState>,
    device: DeviceCaller,
    body: Result<Json<StatusReport>, JsonRejection>,
) -> Result<Json<Value>, ApiFailure> {
    let Json(report) = body?;
    admit(&state, &device)?;
    let (devices, fleet, now) = (state.devices.clone(), state.fleet.clone(), state.now());
    let id = device.identity.device_id;
    let (stored, paused) = blocking("storing a status report", move || {
        let stored = devices
            .record_status(&id, &report, now)
            .map_err(ApiFailure::from)?;
        // Also for a retried report: counting is idempotent, and a retry after a failure
        // here must still be counted.
        let paused = fleet
            .on_status(&id, &report, now)
            .map_err(ApiFailure::from)?;
        Ok((stored, paused))
    })
    .await?;
    if stored {
        inc(&state.metrics.reports);
    }
    if paused {
        inc(&state.metrics.anomalies);
    }
    Ok(Json(json!({ "stored": stored })))
}

async fn anomalies(
    State(state): State<AppState>,
    device: DeviceCaller,
    body: Result<Json<AnomalyBatch>, JsonRejection>,
) -> Result<Json<Value>, ApiFailure> {
    let Json(batch) = body?;
    admit(&state, &device)?;
    let (devices, now) = (state.devices.clone(), state.now());
    let id = device.identity.device_id;
    let stored = blocking("storing anomalies", move || {
        devices
            .record_anomalies(&id, &batch.anomalies, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    let n = u64::try_from(stored).unwrap_or(u64::MAX);
    add(&state.metrics.reports, n);
    add(&state.metrics.anomalies, n);
    Ok(Json(json!({ "stored": stored })))
}

async fn oplog(
    State(state): State<AppState>,
    device: DeviceCaller,
    body: Result<Json<OplogBatch>, JsonRejection>,
) -> Result<Json<OplogAck>, ApiFailure> {
    let Json(batch) = body?;
    admit(&state, &device)?;
    let (devices, now) = (state.devices.clone(), state.now());
    let id = device.identity.device_id;
    let ack = blocking("storing the operation log", move || {
        devices
            .record_oplog(&id, &batch.records, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    inc(&state.metrics.reports);
    if !ack.chain_ok {
        inc(&state.metrics.anomalies);
    }
    Ok(Json(ack))
}

async fn enroll(
    State(state): State<AppState>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Json<EnrollResponse>, ApiFailure> {
    if state.device_ca.is_none() {
        return Err(EnrollError::NoDeviceCa.into());
    }
    let Json(req) = body?;
    let (devices, audit, pki, now) = (
        state.devices.clone(),
        state.audit.clone(),
        state.device_ca.clone(),
        state.now(),
    );
    let (certificate_pem, _) = blocking("enrolling", move || {
        devices
            .enroll(&req, pki.as_deref(), &audit, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    Ok(Json(EnrollResponse { certificate_pem }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::devices::testing;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use ota_common::api::ApiError;
    use tower::ServiceExt;

    fn conn(identity: Option<(&str, &str)>) -> ConnectionInfo {
        ConnectionInfo {
            peer: "192.0.2.9:1234".parse().unwrap(),
            identity: identity.map(|(id, fp)| PeerIdentity {
                device_id: id.into(),
                cert_sha256: fp.into(),
            }),
        }
    }

    /// A request as `serve` answers it: the fast poll route first, then the router.
    async fn call(
        state: &AppState,
        path: &str,
        identity: Option<(&str, &str)>,
        body: Value,
    ) -> (StatusCode, Value) {
        let text = body.to_string();
        let req = Request::post(path)
            .header("content-type", "application/json")
            .header("content-length", text.len())
            .body(Body::from(text))
            .unwrap();
        let cap = usize::try_from(state.limits.max_body_bytes).unwrap();
        let conn = std::sync::Arc::new(conn(identity));
        let resp = crate::fast_route::respond(crate::app::routes(state.clone()), conn, cap, req)
            .await
            .unwrap();
        decode(resp).await
    }

    /// A request answered by the router alone.
    async fn call_router(
        state: &AppState,
        path: &str,
        identity: Option<(&str, &str)>,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let mut req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
            .unwrap();
        req.extensions_mut().insert(conn(identity));
        let resp = crate::app::router(state.clone())
            .oneshot(req)
            .await
            .unwrap();
        decode(resp).await
    }

    async fn decode(resp: Response) -> (StatusCode, Value) {
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn poll_body() -> Value {
        json!({"hardware_id": "board-1", "current_version": "1.0.0"})
    }

    #[tokio::test]
    async fn poll_statuses() {
        let (state, _dir) = testing::state();
        let (code, body) = call(&state, "/api/v1/device/poll", None, poll_body()).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "no_device_certificate");
        let me = Some(("d1", "F"));
        let (code, body) = call(&state, "/api/v1/device/poll", me, poll_body()).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        let err: ApiError = serde_json::from_value(body).unwrap();
        assert_eq!(err.error, "device_pending");
        let now = state.now();
        state
            .devices
            .decide("d1", DeviceStatus::Accepted, &state.audit, "op", now)
            .unwrap();
        let (code, body) = call(&state, "/api/v1/device/poll", me, poll_body()).await;
        assert_eq!(code, StatusCode::OK);
        let resp: PollResponse = serde_json::from_value(body).unwrap();
        assert_eq!(resp.update, None);
        assert!((270..=330).contains(&resp.poll_after_secs));
        state
            .devices
            .decide("d1", DeviceStatus::Rejected, &state.audit, "op", now)
            .unwrap();
        let (code, body) = call(&state, "/api/v1/device/poll", me, poll_body()).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("device_rejected"))
        );
        state
            .devices
            .decommission("d1", &state.audit, "op", now)
            .unwrap();
        let (code, body) = call(&state, "/api/v1/device/poll", me, poll_body()).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("device_decommissioned"))
        );
    }

    /// The fast route answers what the router would, and declines (without a trace)
    /// whatever it cannot answer from memory.
    #[tokio::test]
    async fn the_fast_poll_route_answers_as_the_router_does() {
        let (state, _dir) = testing::state();
        let route = PollRoute::new(state.clone());
        let body = poll_body().to_string();
        let me = Some(("d1", "F"));
        // Unknown device: the store must register it. Declined, and nothing recorded.
        assert!(route.answer(&conn(me), body.as_bytes()).is_none());
        assert!(state.devices.cached("d1").is_none());
        // No certificate, bodies that do not parse or check: declined.
        assert!(route.answer(&conn(None), body.as_bytes()).is_none());
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"hardware_id": 7}"#,
            br#"{"hardware_id":"","current_version":"1"}"#,
        ] {
            assert!(route.answer(&conn(me), bad).is_none(), "{bad:?}");
            let (code, _) = call_router(&state, POLL_PATH, me, bad).await;
            assert!(code.is_client_error(), "{bad:?}: {code}");
        }
        let now = state.now();
        let decide = |status| {
            state
                .devices
                .decide("d1", status, &state.audit, "op", now)
                .unwrap();
        };
        let mut answered = 0;
        for step in 0..4 {
            match step {
                0 => {} // pending, once the router has registered it
                1 => decide(DeviceStatus::Accepted),
                2 => decide(DeviceStatus::Rejected),
                _ => {
                    state
                        .devices
                        .decommission("d1", &state.audit, "op", now)
                        .unwrap();
                }
            }
            let want = call_router(&state, POLL_PATH, me, body.as_bytes()).await;
            let count =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            let (requests, polls) = (count(&state.metrics.requests), count(&state.metrics.polls));
            if let Some(resp) = route.answer(&conn(me), body.as_bytes()) {
                assert_eq!(decode(resp).await, want, "step {step}");
                assert_eq!(count(&state.metrics.requests), requests + 1);
                assert_eq!(count(&state.metrics.polls), polls + 1);
                answered += 1;
            }
            assert_eq!(
                call(&state, POLL_PATH, me, poll_body()).await,
                want,
                "step {step}"
            );
        }
        // Pending, accepted and rejected come from memory; decommissioned from the store.
        assert_eq!(answered, 3);
    }

    #[tokio::test]
    async fn reports_need_an_accepted_device_and_valid_bodies() {
        let (state, _dir) = testing::state();
        let me = Some(("d1", "F"));
        let report = json!({
            "id": "r1", "target": "fw", "version": "1.1.0", "state": "installed",
            "at": "2025-01-01T00:00:00Z"
        });
        let (code, body) = call(&state, "/api/v1/device/status", me, report.clone()).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("device_unknown"))
        );
        call(&state, "/api/v1/device/poll", me, poll_body()).await;
        let (code, body) = call(&state, "/api/v1/device/status", me, report.clone()).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("device_pending"))
        );
        state
            .devices
            .decide(
                "d1",
                DeviceStatus::Accepted,
                &state.audit,
                "op",
                state.now(),
            )
            .unwrap();
        let (code, body) = call(&state, "/api/v1/device/status", me, report.clone()).await;
        assert_eq!(
            (code, body["stored"].as_bool()),
            (StatusCode::OK, Some(true))
        );
        let (code, body) = call(&state, "/api/v1/device/status", me, report).await;
        assert_eq!(
            (code, body["stored"].as_bool()),
            (StatusCode::OK, Some(false))
        );
        // Unknown fields and wrong types are 400 with the error shape.
        let (code, body) = call(&state, "/api/v1/device/status", me, json!({"id": 1})).await;
        assert!(code.is_client_error(), "{code}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{body}"
        );
        let (code, _) = call(
            &state,
            "/api/v1/device/anomalies",
            me,
            json!({"anomalies": []}),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        let (code, body) = call(&state, "/api/v1/device/oplog", me, json!({"records": []})).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["chain_ok"], true);
    }

    #[tokio::test]
    async fn enroll_without_device_ca_is_501() {
        let (mut parts, _dir) = testing::parts();
        parts.device_ca = None;
        let state = crate::app::AppState::new(parts);
        let body = json!({"token": "otae_x", "device_id": "d", "csr_pem": "x"});
        let (code, body) = call(&state, "/api/v1/enroll", None, body).await;
        assert_eq!(code, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(body["error"], "no_device_ca");
    }
}
