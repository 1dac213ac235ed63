//! Administration over the API: the audit log, root rotation, and tokens.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::audit::AuditEntry;
use crate::auth::{Caller, Permission, Role, TokenRecord};
use crate::error::{blocking, ApiFailure};

/// Admin routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/audit", get(audit_list))
        .route("/api/v1/audit/verify", get(audit_verify))
        .route("/api/v1/root", post(rotate_root))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/revoke", post(revoke_token))
}

/// Paging of the audit log.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    /// Entries after this sequence number.
    #[serde(default)]
    pub after: u64,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

async fn audit_list(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiFailure> {
    caller.require(Permission::Read)?;
    let Query(q) = q.map_err(|e| ApiFailure::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let audit = state.audit.clone();
    let list = blocking("reading the audit log", move || {
        audit
            .list(q.after, limit)
            .map_err(|e| ApiFailure::internal("reading the audit log", e))
    })
    .await?;
    Ok(Json(list))
}

async fn audit_verify(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    caller.require(Permission::Read)?;
    let audit = state.audit.clone();
    let report = blocking("verifying the audit log", move || {
        audit
            .verify_chain()
            .map_err(|e| ApiFailure::internal("verifying the audit log", e))
    })
    .await?;
    Ok(Json(json!({
        "entries": report.entries,
        "intact": report.first_break.is_none(),
        "first_break": report.first_break,
        "reason": report.reason.map(|r| format!("{r:?}")),
    })))
}

async fn rotate_root(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    caller.require(Permission::Administer)?;
    let body = body?;
    let repo = state.repo.clone();
    let now = state.now();
    let version = blocking("rotating root", move || {
        repo.rotate_root(&body, now).map_err(ApiFailure::from)
    })
    .await?;
    let (audit, actor) = (state.audit.clone(), caller.actor());
    blocking("audit", move || {
        audit
            .append(
                &actor,
                "root_rotation",
                &format!("root v{version}"),
                json!({}),
                now,
            )
            .map(|_| ())
            .map_err(|e| ApiFailure::internal("audit", e))
    })
    .await?;
    Ok(Json(json!({"root_version": version})))
}

/// A token to create.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Name.
    pub name: String,
    /// Role: admin, publisher, operator or viewer.
    pub role: String,
}

async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    caller.require(Permission::Administer)?;
    let Json(req) = body?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiFailure::bad_request("role must be admin, publisher, operator or viewer")
    })?;
    if req.name.is_empty() || req.name.len() > 64 {
        return Err(ApiFailure::bad_request("name must be 1 to 64 characters"));
    }
    let (tokens, audit, actor, now) = (
        state.tokens.clone(),
        state.audit.clone(),
        caller.actor(),
        state.now(),
    );
    let (secret, rec) = blocking("creating token", move || {
        let (secret, rec) = tokens
            .create(&req.name, role, now)
            .map_err(|e| ApiFailure::internal("creating token", e))?;
        audit
            .append(
                &actor,
                "token_create",
                &rec.id,
                json!({"name": rec.name, "role": rec.role}),
                now,
            )
            .map_err(|e| ApiFailure::internal("audit", e))?;
        Ok((secret, rec))
    })
    .await?;
    Ok(Json(json!({"token": secret, "record": rec})))
}

async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenRecord>>, ApiFailure> {
    caller.require(Permission::Administer)?;
    let tokens = state.tokens.clone();
    let list = blocking("listing tokens", move || {
        tokens
            .list()
            .map_err(|e| ApiFailure::internal("listing tokens", e))
    })
    .await?;
    Ok(Json(list))
}

/// A token to revoke.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeToken {
    /// Its public id.
    pub id: String,
}

async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<RevokeToken>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    caller.require(Permission::Administer)?;
    let Json(req) = body?;
    let (tokens, audit, actor, now) = (
        state.tokens.clone(),
        state.audit.clone(),
        caller.actor(),
        state.now(),
    );
    let id = req.id.clone();
    let found = blocking("revoking token", move || {
        let found = tokens
            .revoke(&id, now)
            .map_err(|e| ApiFailure::internal("revoking token", e))?;
        if found {
            audit
                .append(&actor, "token_revoke", &id, json!({}), now)
                .map_err(|e| ApiFailure::internal("audit", e))?;
        }
        Ok(found)
    })
    .await?;
    if !found {
        return Err(ApiFailure::not_found(format!(
            "no active token with id {:?}",
            req.id
        )));
    }
    Ok(Json(json!({"revoked": req.id})))
}
