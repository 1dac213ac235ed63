//! The application: shared state and the router that joins every area's routes.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, Utc};

use crate::audit::AuditLog;
use crate::auth::{HasTokens, Tokens};
use crate::blobs::BlobStore;
use crate::deployments::Fleet;
use crate::devices::Devices;
use crate::fast_route::Routes;
use crate::limits::Limits;
use crate::metrics::{inc, Metrics};
use crate::pki::DevPki;
use crate::repo::Repository;
use crate::routes::device::PollRoute;
use crate::serve::TransportMetrics;
use crate::store::Store;

/// Everything handlers share: one `Arc`, so that the clone axum makes for every extractor
/// of every request is a single reference count (it was a dozen, measurable per poll).
/// Fields are reached through `Deref`: `state.devices`.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// Shares `parts` with every handler.
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppParts {
    /// The TUF repository.
    pub repo: Arc<Repository>,
    /// Uploaded images.
    pub blobs: BlobStore,
    /// The state store.
    pub store: Arc<dyn Store>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// API tokens.
    pub tokens: Tokens,
    /// Application counters.
    pub metrics: Arc<Metrics>,
    /// Transport counters (filled by [`crate::serve`]).
    pub transport: Arc<TransportMetrics>,
    /// The device CA, when this server signs enrollment requests (development PKI).
    pub device_ca: Option<Arc<DevPki>>,
    /// Limits (upload cap for the blob route).
    pub limits: Limits,
    /// Whether the server holds the targets key (development mode).
    pub dev_mode: bool,
    /// The device registry (status, inventory, reports).
    pub devices: Arc<Devices>,
    /// Groups, deployments, the fleet summary and detectors (see [`crate::deployments`]).
    pub fleet: Arc<Fleet>,
}

impl AppState {
    /// The current time. Handlers read the clock here, in one place.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

impl HasTokens for AppState {
    fn tokens(&self) -> &Tokens {
        &self.tokens
    }
}

/// The router with the device poll served ahead of it (what `serve` runs).
pub fn routes(state: AppState) -> Routes {
    Routes::from(router(state.clone())).with_fast_route(PollRoute::new(state))
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let metrics = Arc::clone(&state.metrics);
    let small_body_cap = usize::try_from(state.limits.max_body_bytes).unwrap_or(usize::MAX);
    crate::routes::repo::routes()
        .merge(crate::routes::publish::routes(&state.limits))
        .merge(crate::routes::health::routes())
        .merge(crate::routes::admin::routes())
        .merge(crate::routes::device::routes())
        .merge(crate::routes::operator::routes())
        .merge(crate::routes::fleet::routes())
        .merge(crate::ui::routes())
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let metrics = Arc::clone(&metrics);
            async move { count_and_read_small_body(&metrics, small_body_cap, req, next).await }
        }))
        .with_state(state)
}

/// Counts the request (and its answer if an error), and reads a small request body
/// (declared length within the JSON limit) before routing. One layer for both: every
/// layer is a future and a service clone per request.
///
/// Why read first: a handler that refuses early (wrong content type, no token, no
/// permission) never reads the body; hyper then closes the connection with the body
/// unread, the kernel answers the rest with a reset, and the client sees a broken
/// connection instead of the JSON error. Reading small bodies first makes every refusal
/// arrive; uploads (large or chunked bodies) still stream.
async fn count_and_read_small_body(
    metrics: &Metrics,
    cap: usize,
    req: Request,
    next: Next,
) -> Response {
    let small = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > 0 && n <= cap);
    let resp = if small {
        let (parts, body) = req.into_parts();
        match axum::body::to_bytes(body, cap).await {
            Ok(bytes) => {
                next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                    .await
            }
            Err(e) => crate::error::ApiFailure::bad_request(format!(
                "could not read the request body: {e}"
            ))
            .into_response(),
        }
    } else {
        next.run(req).await
    };
    count_answered(metrics, resp.status());
    resp
}

/// Counts an answered request, and it as an error if `status` is one.
pub fn count_answered(metrics: &Metrics, status: StatusCode) {
    inc(&metrics.requests);
    if status.is_client_error() || status.is_server_error() {
        inc(&metrics.errors);
    }
}
