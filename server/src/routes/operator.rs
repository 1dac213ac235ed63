//! The operator API over the device registry (API tokens: `Read` to look, `Operate` to
//! change). Every change appends an audit entry in the same atomic batch as the change.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/v1/devices?status=&hardware_id=&after=&limit=` | `{"devices": [...], "next_after": id?}` |
//! | `GET /api/v1/devices/{id}?limit=` | record (or tombstone), recent status reports, anomalies, oplog |
//! | `POST /api/v1/devices/{id}/accept`, `/reject` | `{"device": record, "changed": bool}` |
//! | `POST /api/v1/devices/{id}/decommission` | the tombstone; everything else about the device is deleted |
//! | `POST /api/v1/devices/preauthorize` `{"ids": [...]}` | `{"results": {id: outcome}}` |
//! | `POST /api/v1/enrollment-tokens` `{"device_id"?, "ttl_secs"?}` | `{"token", "id", "device_id", "expires_at"}` (the secret is shown once) |
//! | `GET /api/v1/anomalies?after=&limit=` | `{"anomalies": [...newest first], "next_after": cursor?}` |

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{Caller, Permission};
use crate::devices::reports::DeviceDetail;
use crate::devices::{DeviceFilter, DeviceStatus};
use crate::error::{blocking, ApiFailure};

/// Default page size of the lists.
const DEFAULT_LIMIT: usize = 100;
/// Largest page size of the lists.
const MAX_LIMIT: usize = 1000;
/// Default number of reports, anomalies and oplog records in a device's detail.
const DEFAULT_DETAIL_LIMIT: usize = 50;

/// Operator routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/preauthorize", post(preauthorize))
        .route("/api/v1/devices/{id}", get(device_detail))
        .route("/api/v1/devices/{id}/accept", post(accept))
        .route("/api/v1/devices/{id}/reject", post(reject))
        .route("/api/v1/devices/{id}/decommission", post(decommission))
        .route("/api/v1/enrollment-tokens", post(create_enroll_token))
        .route("/api/v1/anomalies", get(list_anomalies))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiFailure> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiFailure::bad_request(e.body_text()))
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, ApiFailure> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiFailure::bad_request(e.body_text()))
}

fn page_limit(limit: Option<usize>, default: usize) -> usize {
    limit.unwrap_or(default).clamp(1, MAX_LIMIT)
}

/// Filters and paging of the device list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `pending`, `accepted`, `rejected` or `decommissioned`.
    #[serde(default)]
    pub status: Option<String>,
    /// Only this board.
    #[serde(default)]
    pub hardware_id: Option<String>,
    /// Ids after this one (the previous page's `next_after`).
    #[serde(default)]
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

async fn list_devices(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiFailure> {
    caller.require(Permission::Read)?;
    let q = query(q)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(DeviceStatus::parse(s).ok_or_else(|| {
            ApiFailure::bad_request("status must be pending, accepted, rejected or decommissioned")
        })?),
    };
    let limit = page_limit(q.limit, DEFAULT_LIMIT);
    let devices = state.devices.clone();
    let page = blocking("listing devices", move || {
        let fail = |e| ApiFailure::internal("listing devices", e);
        if status == Some(DeviceStatus::Decommissioned) {
            let (tombs, next) = devices
                .list_tombstones(q.after.as_deref(), limit)
                .map_err(fail)?;
            let items: Vec<Value> = tombs
                .into_iter()
                .map(|t| json!({"id": t.id, "status": "decommissioned", "decommissioned_at": t.decommissioned_at}))
                .collect();
            return Ok(json!({ "devices": items, "next_after": next }));
        }
        let filter = DeviceFilter {
            status,
            hardware_id: q.hardware_id,
        };
        let (recs, next) = devices
            .list(&filter, q.after.as_deref(), limit)
            .map_err(fail)?;
        Ok(json!({ "devices": recs, "next_after": next }))
    })
    .await?;
    Ok(Json(page))
}

/// Size of a device's detail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailQuery {
    /// How many reports, anomalies and oplog records (default 50, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

async fn device_detail(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Json<DeviceDetail>, ApiFailure> {
    caller.require(Permission::Read)?;
    let id = path(id)?;
    let limit = page_limit(query(q)?.limit, DEFAULT_DETAIL_LIMIT);
    let devices = state.devices.clone();
    let detail = blocking("reading a device", move || {
        devices
            .detail(&id, limit)
            .map_err(|e| ApiFailure::internal("reading a device", e))?
            .ok_or_else(|| ApiFailure::not_found(format!("no device {id:?}")))
    })
    .await?;
    Ok(Json(detail))
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    status: DeviceStatus,
) -> Result<Json<Value>, ApiFailure> {
    caller.require(Permission::Operate)?;
    let id = path(id)?;
    let (devices, audit, actor, now) = (
        state.devices.clone(),
        state.audit.clone(),
        caller.actor(),
        state.now(),
    );
    let decision = blocking("deciding on a device", move || {
        devices
            .decide(&id, status, &audit, &actor, now)
            .map_err(operator_failure)
    })
    .await?;
    Ok(Json(json!(decision)))
}

/// Registry errors as operators see them: an unknown id is 404, a decommissioned one 409.
fn operator_failure(e: crate::devices::DeviceError) -> ApiFailure {
    use crate::devices::DeviceError as E;
    match e {
        E::Unknown { id } => ApiFailure::not_found(format!("no device {id:?}")),
        E::Decommissioned { id, at } => ApiFailure::new(
            StatusCode::CONFLICT,
            "device_decommissioned",
            format!("device {id} was decommissioned at {at}; the identity cannot come back"),
        ),
        other => other.into(),
    }
}

async fn accept(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiFailure> {
    decide(state, caller, id, DeviceStatus::Accepted).await
}

async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiFailure> {
    decide(state, caller, id, DeviceStatus::Rejected).await
}

async fn decommission(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiFailure> {
    caller.require(Permission::Operate)?;
    let id = path(id)?;
    let (devices, audit, actor, now) = (
        state.devices.clone(),
        state.audit.clone(),
        caller.actor(),
        state.now(),
    );
    let tomb = blocking("decommissioning a device", move || {
        devices
            .decommission(&id, &audit, &actor, now)
            .map_err(operator_failure)
    })
    .await?;
    Ok(Json(json!({
        "id": tomb.id,
        "status": "decommissioned",
        "decommissioned_at": tomb.decommissioned_at,
    })))
}

/// Ids to accept on first contact.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreauthorizeRequest {
    /// Device ids (certificate common names).
    pub ids: Vec<String>,
}

async fn preauthorize(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<PreauthorizeRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiFailure> {
    caller.require(Permission::Operate)?;
    let Json(req) = body?;
    let (devices, audit, actor, now) = (
        state.devices.clone(),
        state.audit.clone(),
        caller.actor(),
        state.now(),
    );
    let results = blocking("preauthorizing devices", move || {
        devices
            .preauthorize(&req.ids, &audit, &actor, now)
            .map_err(operator_failure)
    })
    .await?;
    Ok(Json(json!({ "results": results })))
}

/// An enrollment token to create.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollTokenRequest {
    /// The only device id it may enroll; any new id if absent.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Lifetime in seconds (default one day, at most 30 days).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

async fn create_enroll_token(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<EnrollTokenRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiFailure> {
    caller.require(Permission::Operate)?;
    let Json(req) = body?;
    if state.device_ca.is_none() {
        return Err(crate::devices::enroll::EnrollError::NoDeviceCa.into());
    }
    let (devices, audit, actor, now) = (
        state.devices.clone(),
        state.audit.clone(),
        caller.actor(),
        state.now(),
    );
    let (secret, token) = blocking("creating an enrollment token", move || {
        devices
            .create_enroll_token(req.device_id.as_deref(), req.ttl_secs, &audit, &actor, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": secret,
            "id": token.id,
            "device_id": token.device_id,
            "expires_at": token.expires_at,
        })),
    ))
}

/// Paging of the anomaly feed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyQuery {
    /// The previous page's `next_after` cursor.
    #[serde(default)]
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

async fn list_anomalies(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<AnomalyQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiFailure> {
    caller.require(Permission::Read)?;
    let q = query(q)?;
    let after = match q.after.as_deref() {
        None => None,
        Some(c) => Some(
            hex::decode(c)
                .map_err(|_| ApiFailure::bad_request("after must be a cursor from next_after"))?,
        ),
    };
    let limit = page_limit(q.limit, DEFAULT_LIMIT);
    let devices = state.devices.clone();
    let (items, next) = blocking("listing anomalies", move || {
        devices
            .list_anomalies(after.as_deref(), limit)
            .map_err(|e| ApiFailure::internal("listing anomalies", e))
    })
    .await?;
    Ok(Json(json!({ "anomalies": items, "next_after": next })))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::devices::testing;
    use crate::identity::PeerIdentity;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use ota_common::api::PollRequest;
    use tower::ServiceExt;

    async fn call(
        state: &AppState,
        method: &str,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let resp = crate::app::router(state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn token(state: &AppState, role: Role) -> String {
        state.tokens.create("t", role, state.now()).unwrap().0
    }

    fn seen(state: &AppState, id: &str) {
        let ident = PeerIdentity {
            device_id: id.into(),
            cert_sha256: "F".into(),
        };
        let req = PollRequest {
            hardware_id: "board".into(),
            current_version: None,
            active_slot: None,
            agent_version: None,
            attributes: Default::default(),
        };
        state
            .devices
            .poll(&ident, &req, "192.0.2.1:1".parse().unwrap(), state.now())
            .unwrap();
    }

    #[tokio::test]
    async fn operators_decide_and_viewers_only_look() {
        let (state, _dir) = testing::state();
        let (op, viewer) = (token(&state, Role::Operator), token(&state, Role::Viewer));
        seen(&state, "d1");
        let (code, body) = call(&state, "POST", "/api/v1/devices/d1/accept", &viewer, None).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );
        let (code, body) = call(&state, "POST", "/api/v1/devices/d1/accept", &op, None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["device"]["status"], "accepted");
        assert_eq!(body["changed"], true);
        let (code, body) = call(
            &state,
            "GET",
            "/api/v1/devices?status=accepted",
            &viewer,
            None,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["devices"].as_array().unwrap().len(), 1);
        let (code, _) = call(&state, "GET", "/api/v1/devices?status=weird", &viewer, None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, _) = call(&state, "POST", "/api/v1/devices/nope/reject", &op, None).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let (code, body) = call(&state, "GET", "/api/v1/devices/d1", &viewer, None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["device"]["id"], "d1");
        let (code, _) = call(&state, "GET", "/api/v1/devices", "ota_wrong", None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let audit = state.audit.list(0, 10).unwrap();
        assert_eq!(audit.len(), 1);
        assert!(audit[0].actor.starts_with("token:"));
    }

    #[tokio::test]
    async fn decommission_preauthorize_tokens_and_feed() {
        let (state, _dir) = testing::state();
        let op = token(&state, Role::Operator);
        seen(&state, "d1");
        let (code, body) = call(&state, "POST", "/api/v1/devices/d1/decommission", &op, None).await;
        assert_eq!(
            (code, body["status"].as_str()),
            (StatusCode::OK, Some("decommissioned"))
        );
        let (code, _) = call(&state, "POST", "/api/v1/devices/d1/decommission", &op, None).await;
        assert_eq!(code, StatusCode::CONFLICT);
        let (code, body) = call(&state, "POST", "/api/v1/devices/d1/accept", &op, None).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("device_decommissioned"))
        );
        let (_, body) = call(
            &state,
            "GET",
            "/api/v1/devices?status=decommissioned",
            &op,
            None,
        )
        .await;
        assert_eq!(body["devices"][0]["id"], "d1");
        let (code, body) = call(
            &state,
            "POST",
            "/api/v1/devices/preauthorize",
            &op,
            Some(json!({"ids": ["p1", "d1"]})),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["results"]["p1"], "preauthorized");
        assert_eq!(body["results"]["d1"], "decommissioned");
        let (code, body) = call(
            &state,
            "POST",
            "/api/v1/enrollment-tokens",
            &op,
            Some(json!({"device_id": "p2", "ttl_secs": 600})),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        assert!(body["token"].as_str().unwrap().starts_with("otae_"));
        let (code, _) = call(
            &state,
            "POST",
            "/api/v1/enrollment-tokens",
            &op,
            Some(json!({"ttl_secs": 0})),
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, body) = call(&state, "GET", "/api/v1/anomalies?limit=5", &op, None).await;
        assert_eq!(code, StatusCode::OK);
        assert!(body["anomalies"].as_array().unwrap().is_empty());
        let (code, _) = call(&state, "GET", "/api/v1/anomalies?after=zz", &op, None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
    }
}
