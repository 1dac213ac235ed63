//! The fleet API: groups, deployments and the fleet summary (API tokens: `Read` to look,
//! `Operate` to change). Every change is audited with the caller as actor. Reads are
//! answered from memory (see [`crate::deployments`]).
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /api/v1/fleet/summary` | | `FleetSummary` |
//! | `POST /api/v1/groups` | `{name, devices?: [id], filter?: {hardware_id?, attributes?}}` | 201 `GroupView`; 409 if the name exists |
//! | `GET /api/v1/groups` | | `{"groups": [GroupView]}` |
//! | `GET /api/v1/groups/{name}` | | `GroupView` with `member_count` (and `devices` if static) |
//! | `DELETE /api/v1/groups/{name}` | | `{"deleted": name}`; 409 while a running deployment uses it |
//! | `POST /api/v1/deployments` | `{release, group, phases: [{percent, min_wait_secs}], failure_threshold_percent, min_devices}` | 201 `DeploymentView`; 422 unknown or withdrawn release, unknown group |
//! | `GET /api/v1/deployments` | | `{"deployments": [DeploymentView]}` (newest first) |
//! | `GET /api/v1/deployments/{id}` | | `DeploymentView`: state, phase, per-phase targeted/started/succeeded/failed |
//! | `POST /api/v1/deployments/{id}/pause` | `{reason?}` or empty | `DeploymentView`; 409 unless active |
//! | `POST /api/v1/deployments/{id}/resume` | | `DeploymentView`; 409 unless paused |
//! | `POST /api/v1/deployments/{id}/abort` | `{reason?}` or empty | `DeploymentView`; 409 once finished |
//!
//! Malformed bodies are 400 (bad JSON) or 422 (wrong shape); invalid values are 400; all
//! with the [`ota_common::api::ApiError`] shape.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{Caller, Permission};
use crate::deployments::{
    DeploymentSpec, DeploymentView, FleetError, FleetSummary, GroupSpec, GroupView,
};
use crate::error::{blocking, ApiFailure};

/// Fleet routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/fleet/summary", get(summary))
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route("/api/v1/groups/{name}", get(group).delete(delete_group))
        .route(
            "/api/v1/deployments",
            get(list_deployments).post(create_deployment),
        )
        .route("/api/v1/deployments/{id}", get(deployment))
        .route("/api/v1/deployments/{id}/pause", post(pause))
        .route("/api/v1/deployments/{id}/resume", post(resume))
        .route("/api/v1/deployments/{id}/abort", post(abort))
}

impl From<FleetError> for ApiFailure {
    fn from(e: FleetError) -> Self {
        use FleetError as F;
        let msg = e.to_string();
        match e {
            F::Invalid { .. } => ApiFailure::bad_request(msg),
            F::NoGroup(_) | F::NoDeployment(_) => ApiFailure::not_found(msg),
            F::UnknownGroup(_) => {
                ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_group", msg)
            }
            F::UnknownRelease(_) | F::ReleaseFields(_) => {
                ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_release", msg)
            }
            F::ReleaseWithdrawn { .. } => {
                ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "release_withdrawn", msg)
            }
            F::GroupExists(_) => ApiFailure::new(StatusCode::CONFLICT, "group_exists", msg),
            F::GroupInUse { .. } => ApiFailure::new(StatusCode::CONFLICT, "group_in_use", msg),
            F::Transition { .. } => ApiFailure::new(StatusCode::CONFLICT, "wrong_state", msg),
            other => ApiFailure::internal("fleet operation", other),
        }
    }
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, ApiFailure> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiFailure::bad_request(e.body_text()))
}

async fn summary(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<FleetSummary>, ApiFailure> {
    caller.require(Permission::Read)?;
    Ok(Json(state.fleet.summary()))
}

async fn list_groups(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiFailure> {
    caller.require(Permission::Read)?;
    Ok(Json(json!({ "groups": state.fleet.groups() })))
}

async fn group(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<GroupView>, ApiFailure> {
    caller.require(Permission::Read)?;
    let name = path(name)?;
    state
        .fleet
        .group(&name)
        .map(Json)
        .ok_or_else(|| FleetError::NoGroup(name).into())
}

async fn create_group(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<GroupSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<GroupView>), ApiFailure> {
    caller.require(Permission::Operate)?;
    let Json(spec) = body?;
    let (fleet, actor, now) = (state.fleet.clone(), caller.actor(), state.now());
    let view = blocking("creating a group", move || {
        fleet
            .create_group(spec, &actor, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn delete_group(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiFailure> {
    caller.require(Permission::Operate)?;
    let name = path(name)?;
    let (fleet, actor, now) = (state.fleet.clone(), caller.actor(), state.now());
    let n = name.clone();
    blocking("deleting a group", move || {
        fleet
            .delete_group(&n, &actor, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    Ok(Json(json!({ "deleted": name })))
}

async fn list_deployments(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiFailure> {
    caller.require(Permission::Read)?;
    Ok(Json(json!({ "deployments": state.fleet.deployments() })))
}

async fn deployment(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeploymentView>, ApiFailure> {
    caller.require(Permission::Read)?;
    let id = path(id)?;
    state
        .fleet
        .deployment(&id)
        .map(Json)
        .ok_or_else(|| FleetError::NoDeployment(id).into())
}

async fn create_deployment(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<DeploymentSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiFailure> {
    caller.require(Permission::Operate)?;
    let Json(spec) = body?;
    let (fleet, repo, actor, now) = (
        state.fleet.clone(),
        state.repo.clone(),
        caller.actor(),
        state.now(),
    );
    let view = blocking("creating a deployment", move || {
        fleet
            .create_deployment(&repo, spec, &actor, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The optional body of pause and abort.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why, for the audit log and the deployment's state.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An empty body is no reason; anything else must be a [`ReasonBody`].
fn reason(body: &Bytes) -> Result<Option<String>, ApiFailure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<ReasonBody>(body)
        .map(|b| b.reason)
        .map_err(|e| {
            let status = if e.is_data() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::BAD_REQUEST
            };
            ApiFailure::new(status, "bad_request", format!("invalid body: {e}"))
        })
}

async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<DeploymentView>, ApiFailure> {
    caller.require(Permission::Operate)?;
    let (id, reason) = (path(id)?, reason(&body)?);
    let (fleet, actor, now) = (state.fleet.clone(), caller.actor(), state.now());
    let view = blocking("pausing a deployment", move || {
        fleet
            .pause(&id, reason, &actor, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    Ok(Json(view))
}

async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeploymentView>, ApiFailure> {
    caller.require(Permission::Operate)?;
    let id = path(id)?;
    let (fleet, actor, now) = (state.fleet.clone(), caller.actor(), state.now());
    let view = blocking("resuming a deployment", move || {
        fleet.resume(&id, &actor, now).map_err(ApiFailure::from)
    })
    .await?;
    Ok(Json(view))
}

async fn abort(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<DeploymentView>, ApiFailure> {
    caller.require(Permission::Operate)?;
    let (id, reason) = (path(id)?, reason(&body)?);
    let (fleet, actor, now) = (state.fleet.clone(), caller.actor(), state.now());
    let view = blocking("aborting a deployment", move || {
        fleet
            .abort(&id, reason, &actor, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    Ok(Json(view))
}
