//! How the dashboard refuses or fails: as an HTML page (or, signed out, a redirect to the
//! login page), never as the API's JSON. Causes of internal errors are logged, not shown.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;

use crate::error::ApiFailure;

use super::layout;

/// A refusal or failure of a dashboard request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UiError {
    /// No live session: go to the login page.
    #[error("not signed in")]
    SignedOut,
    /// 400.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 403: wrong role, or a missing or wrong CSRF token.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// 409.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 500; the cause went to the log.
    #[error("{context} failed on the server")]
    Internal {
        /// What was being done.
        context: String,
    },
}

impl UiError {
    /// 500: logs `err` and tells the user only what failed.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(%context, error = %err, "dashboard internal error");
        UiError::Internal {
            context: context.to_string(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            UiError::SignedOut => StatusCode::SEE_OTHER,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::Conflict(_) => StatusCode::CONFLICT,
            UiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ApiFailure> for UiError {
    fn from(f: ApiFailure) -> Self {
        match f.status {
            StatusCode::UNAUTHORIZED => UiError::SignedOut,
            StatusCode::FORBIDDEN => UiError::Forbidden(f.message),
            StatusCode::NOT_FOUND => UiError::NotFound(f.message),
            StatusCode::CONFLICT => UiError::Conflict(f.message),
            s if s.is_client_error() => UiError::BadRequest(f.message),
            // ApiFailure::internal logged the cause already.
            _ => UiError::Internal { context: f.message },
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        if let UiError::SignedOut = self {
            return (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/login")]).into_response();
        }
        let status = self.status();
        let (title, message) = match &self {
            UiError::Internal { context } => ("Server error", context.clone()),
            UiError::Forbidden(m) => ("Not allowed", m.clone()),
            UiError::NotFound(m) => ("Not found", m.clone()),
            UiError::Conflict(m) => ("Conflict", m.clone()),
            UiError::BadRequest(m) => ("Bad request", m.clone()),
            UiError::SignedOut => ("Signed out", String::new()),
        };
        let body = html! {
            section.card.error-card {
                h2 { (status.as_u16()) " · " (title) }
                p { (message) }
                p { a href="/ui/" { "Back to the overview" } }
            }
        };
        (status, layout::html(layout::bare_page(title, body))).into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_status_and_signed_out_redirects() {
        let r = UiError::SignedOut.into_response();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/ui/login");
        let r = UiError::Forbidden("no".into()).into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let e: UiError = ApiFailure::forbidden("forbidden", "viewer").into();
        assert!(matches!(e, UiError::Forbidden(_)));
        let e: UiError = ApiFailure::unauthorized("x").into();
        assert!(matches!(e, UiError::SignedOut));
    }
}
