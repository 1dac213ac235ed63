//! The publisher API: upload images, publish signed targets (or, in development mode,
//! have the server sign them), withdraw releases, list releases. Every change is audited.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use ota_common::release::{CompressedForm, ReleaseInfo, ReleaseVersion};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::AppState;
use crate::auth::{Caller, Permission};
use crate::blobs::BlobError;
use crate::error::{blocking, ApiFailure};
use crate::limits::Limits;
use crate::metrics::inc;
use crate::repo::publish::{BlobFacts, NewRelease};
use crate::repo::{PublishError, PublishOutcome, RELEASES_TREE};
use crate::store::StoreExt;

/// Largest targets metadata accepted (python-tuf's default targets limit).
const MAX_TARGETS_BYTES: usize = 5_000_000;

/// Publisher routes.
pub fn routes(limits: &Limits) -> Router<AppState> {
    let upload_cap = usize::try_from(limits.max_upload_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/api/v1/blobs",
            put(upload_blob).layer(DefaultBodyLimit::max(upload_cap)),
        )
        .route(
            "/api/v1/targets",
            post(publish_targets).layer(DefaultBodyLimit::max(MAX_TARGETS_BYTES)),
        )
        .route("/api/v1/releases", get(list_releases).post(publish_release))
        .route("/api/v1/releases/{name}", delete(withdraw_release))
}

impl From<PublishError> for ApiFailure {
    fn from(e: PublishError) -> Self {
        use PublishError as P;
        let msg = e.to_string();
        match e {
            P::Conflict { .. } | P::TargetExists(_) => ApiFailure::conflict(msg),
            P::Malformed(_) | P::TargetName(_) | P::ReleaseFields(_) | P::MissingHash(_) => {
                ApiFailure::bad_request(msg)
            }
            P::Signature(_) => ApiFailure::forbidden("bad_signature", msg),
            P::Expired { .. }
            | P::MissingBlob { .. }
            | P::BlobMismatch { .. }
            | P::MissingCompressedBlob { .. }
            | P::CompressedForm { .. }
            | P::DelegationsUnsupported
            | P::Root(_) => ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", msg),
            P::NoTargetsKey => ApiFailure::new(StatusCode::CONFLICT, "no_targets_key", msg),
            P::UnknownTarget(_) => ApiFailure::not_found(msg),
            P::Repo(crate::repo::RepoError::Store(crate::store::StoreError::Conflict(_))) => {
                ApiFailure::conflict("another change to the repository landed first; retry")
            }
            other => ApiFailure::internal("publishing", other),
        }
    }
}

async fn audit(
    state: &AppState,
    actor: String,
    action: &'static str,
    subject: String,
    detail: serde_json::Value,
) -> Result<(), ApiFailure> {
    let audit = state.audit.clone();
    let now = state.now();
    blocking("audit", move || {
        audit
            .append(&actor, action, &subject, detail, now)
            .map(|_| ())
            .map_err(|e| ApiFailure::internal("audit", e))
    })
    .await
}

async fn upload_blob(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<impl IntoResponse, ApiFailure> {
    caller.require(Permission::Publish)?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let info = state
        .blobs
        .write_stream(stream, state.limits.max_upload_bytes)
        .await
        .map_err(|e| match e {
            BlobError::TooLarge { .. } => {
                ApiFailure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            BlobError::Source { ref source, .. }
                if crate::error::is_length_limit(source.as_ref()) =>
            {
                ApiFailure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the image is larger than this server accepts (limits.max_upload_bytes)",
                )
            }
            BlobError::Source { .. } => ApiFailure::bad_request(format!("upload interrupted: {e}")),
            e => ApiFailure::internal("storing upload", e),
        })?;
    let facts = BlobFacts {
        sha256: info.sha256_hex.clone(),
        sha512: info.sha512_hex.clone(),
        length: info.length,
    };
    let repo = state.repo.clone();
    let f = facts.clone();
    blocking("recording upload", move || {
        repo.record_blob(&f).map_err(ApiFailure::from)
    })
    .await?;
    inc(&state.metrics.uploads);
    audit(
        &state,
        caller.actor(),
        "upload",
        facts.sha256.clone(),
        json!({"length": facts.length}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(facts)))
}

async fn publish_targets(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<PublishOutcome>, ApiFailure> {
    caller.require(Permission::Publish)?;
    let body = body?;
    let (repo, blobs) = (state.repo.clone(), state.blobs.clone());
    let now = state.now();
    let outcome = blocking("publishing", move || {
        repo.publish_targets(&body, &blobs, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    inc(&state.metrics.publishes);
    audit(
        &state,
        caller.actor(),
        "publish",
        format!("targets v{}", outcome.targets_version),
        serde_json::to_value(&outcome).unwrap_or_default(),
    )
    .await?;
    Ok(Json(outcome))
}

/// A release to publish in development mode (the server signs targets).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// Target name.
    pub name: String,
    /// SHA-256 of an uploaded image.
    pub sha256: String,
    /// Release version.
    pub version: ReleaseVersion,
    /// Hardware ids it fits.
    pub hardware_ids: Vec<String>,
    /// End of security support.
    #[serde(default)]
    pub support_until: Option<DateTime<Utc>>,
    /// A zstd-compressed form of the image, uploaded as its own blob: checked to decode to
    /// the image before the release is signed, then served beside it.
    #[serde(default)]
    pub zstd: Option<CompressedForm>,
}

async fn publish_release(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<ReleaseRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PublishOutcome>, ApiFailure> {
    caller.require(Permission::Publish)?;
    let Json(req) = body?;
    if req.hardware_ids.is_empty() {
        return Err(ApiFailure::bad_request(
            "hardware_ids must name at least one board",
        ));
    }
    crate::blobs::validate_sha256_hex(&req.sha256)
        .map_err(|e| ApiFailure::bad_request(e.to_string()))?;
    let (repo, blobs) = (state.repo.clone(), state.blobs.clone());
    let now = state.now();
    let name = req.name.clone();
    let outcome = blocking("publishing", move || {
        let blob: BlobFacts = repo
            .store()
            .get_json(crate::repo::BLOBS_TREE, req.sha256.as_bytes())
            .map_err(|e| ApiFailure::internal("reading upload", e))?
            .ok_or_else(|| {
                ApiFailure::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "rejected",
                    format!(
                        "image {} has not been uploaded (PUT it to /api/v1/blobs first)",
                        req.sha256
                    ),
                )
            })?;
        let release = NewRelease {
            name: req.name,
            blob,
            info: ReleaseInfo {
                version: req.version,
                hardware_ids: req.hardware_ids,
                support_until: req.support_until,
                zstd: req.zstd,
            },
        };
        // The compressed form, if any, is decoded and checked here, on this blocking
        // thread, before anything is signed.
        repo.publish_release_checked(&release, &blobs, now)
            .map_err(ApiFailure::from)
    })
    .await?;
    inc(&state.metrics.publishes);
    audit(
        &state,
        caller.actor(),
        "publish",
        name,
        serde_json::to_value(&outcome).unwrap_or_default(),
    )
    .await?;
    Ok(Json(outcome))
}

/// Bookkeeping of a release beyond its signed target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// When it was withdrawn, if it was: no deployment offers it any more.
    #[serde(default)]
    pub withdrawn_at: Option<DateTime<Utc>>,
}

async fn withdraw_release(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    caller.require(Permission::Publish)?;
    let repo = state.repo.clone();
    let (fleet, actor) = (state.fleet.clone(), caller.actor());
    let now = state.now();
    let n = name.clone();
    let (outcome, aborted) = blocking("withdrawing", move || {
        if !repo.view().targets_signed.targets.contains_key(&n) {
            return Err(ApiFailure::not_found(format!("no release named {n:?}")));
        }
        let rec = ReleaseRecord {
            withdrawn_at: Some(now),
        };
        repo.store()
            .put_json_durable(RELEASES_TREE, n.as_bytes(), &rec)
            .map_err(|e| ApiFailure::internal("withdrawing", e))?;
        // No deployment sends it from now on (each abort is audited).
        let aborted = fleet
            .abort_release(&n, &actor, now)
            .map_err(ApiFailure::from)?;
        // With the targets key, also take it out of the signed metadata; without it the
        // release engineers sign targets without it, and meanwhile no device is sent to it.
        match repo.withdraw_release(&n, now) {
            Ok(o) => Ok((Some(o), aborted)),
            Err(PublishError::NoTargetsKey) => Ok((None, aborted)),
            Err(e) => Err(ApiFailure::from(e)),
        }
    })
    .await?;
    audit(
        &state,
        caller.actor(),
        "withdraw",
        name.clone(),
        json!({"resigned": outcome, "aborted_deployments": aborted}),
    )
    .await?;
    Ok(Json(
        json!({"withdrawn": name, "targets": outcome, "aborted_deployments": aborted}),
    ))
}

/// One release as listed.
#[derive(Debug, Serialize)]
pub struct ReleaseView {
    /// Target name.
    pub name: String,
    /// Length.
    pub length: u64,
    /// SHA-256.
    pub sha256: Option<String>,
    /// Release fields, if valid.
    pub release: Option<ReleaseInfo>,
    /// Length of the zstd-compressed form, if the release has one.
    pub zstd_length: Option<u64>,
    /// Withdrawal time.
    pub withdrawn_at: Option<DateTime<Utc>>,
}

async fn list_releases(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ReleaseView>>, ApiFailure> {
    caller.require(Permission::Read)?;
    let repo = state.repo.clone();
    let list = blocking("listing releases", move || {
        let view = repo.view();
        let mut out = Vec::new();
        for (name, file) in &view.targets_signed.targets {
            let rec: Option<ReleaseRecord> = repo
                .store()
                .get_json(RELEASES_TREE, name.as_bytes())
                .map_err(|e| ApiFailure::internal("listing releases", e))?;
            let release = ReleaseInfo::from_target(name, file).ok();
            out.push(ReleaseView {
                name: name.clone(),
                length: file.length,
                sha256: file.sha256().map(str::to_string),
                zstd_length: release
                    .as_ref()
                    .and_then(|r| r.zstd.as_ref())
                    .map(|z| z.length),
                release,
                withdrawn_at: rec.and_then(|r| r.withdrawn_at),
            });
        }
        Ok(out)
    })
    .await?;
    Ok(Json(list))
}
