//! `/healthz`, `/metrics` and the OpenAPI document.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::app::AppState;

/// Health and metrics routes (no authentication: they reveal no fleet data).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.yaml", get(openapi))
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let view = state.repo.view();
    let now = state.now();
    let fresh = view.timestamp_signed.expires > now;
    let status = if fresh {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if fresh { "ok" } else { "timestamp_expired" },
            "root_version": view.root.version,
            "timestamp_version": view.timestamp_signed.version,
            "timestamp_expires": ota_common::metadata::expiry::format(&view.timestamp_signed.expires),
            "targets_version": view.targets_signed.version,
        })),
    )
}

/// The OpenAPI document of the JSON API (kept beside the code in `server/api/`).
const OPENAPI: &str = include_str!("../../api/openapi.yaml");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.metrics.render(&state.transport.snapshot());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
