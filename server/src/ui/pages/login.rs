//! `GET/POST /ui/login` and `POST /ui/logout`.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::ui::error::UiError;
use crate::ui::layout;
use crate::ui::session::{
    clear_login_cookie, clear_session_cookie, cookie, login_cookie, login_nonce,
    login_nonce_matches, session_cookie, SessionId, Sessions, UiUser, LOGIN_COOKIE, SESSION_COOKIE,
};

use super::{blocking, posted_csrf, CsrfForm};

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// The API token.
    #[serde(default)]
    pub token: String,
    /// The double-submit nonce (also in the `ota_login` cookie).
    #[serde(default)]
    pub nonce: String,
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let nonce = login_nonce();
    let body: Markup = html! {
        section.card.login {
            h2 { "Sign in to the ota dashboard" }
            p.muted.small {
                "Paste an API token. Viewers can look; operators can also accept devices "
                "and pause, resume or abort deployments."
            }
            @if let Some(e) = error {
                div.notice.bad role="alert" { (e) }
            }
            form method="post" action="/ui/login" autocomplete="off" {
                input type="hidden" name="nonce" value=(nonce);
                label for="token" { "API token"
                    input type="password" id="token" name="token" required
                        placeholder="ota_…" autofocus;
                }
                p { button.primary type="submit" id="sign-in" { "Sign in" } }
            }
        }
    };
    (
        status,
        [(header::SET_COOKIE, login_cookie(&nonce))],
        layout::html(layout::bare_page("Sign in", body)),
    )
        .into_response()
}

/// `GET /ui/login`: the form, or straight to the overview when signed in already.
pub async fn show(user: Result<UiUser, UiError>) -> Response {
    match user {
        Ok(_) => (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/")]).into_response(),
        Err(_) => login_page(StatusCode::OK, None),
    }
}

/// `POST /ui/login`: checks the nonce and the token, opens a session.
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, UiError> {
    let Ok(Form(form)) = form else {
        return Err(UiError::BadRequest("send the login form".into()));
    };
    if !login_nonce_matches(cookie(&headers, LOGIN_COOKIE), &form.nonce) {
        return Err(UiError::Forbidden(
            "the login form expired or did not come from this site; reload it and sign in again"
                .into(),
        ));
    }
    let secret = form.token.trim().to_string();
    // Signing in again replaces the session this browser had, if any.
    let previous = cookie(&headers, SESSION_COOKIE).and_then(SessionId::parse);
    let (sessions, audit, now) = (
        Sessions::new(Arc::clone(&state.store)),
        state.audit.clone(),
        state.now(),
    );
    let opened = blocking("signing in", move || {
        let opened = sessions
            .login(&secret, now)
            .map_err(|e| UiError::internal("signing in", e))?;
        if let (Some(_), Some(old)) = (&opened, &previous) {
            sessions
                .logout(old)
                .map_err(|e| UiError::internal("signing in", e))?;
        }
        if let Some((_, caller)) = &opened {
            audit
                .append(
                    &caller.actor(),
                    "ui.login",
                    &caller.token.id,
                    json!({}),
                    now,
                )
                .map_err(|e| UiError::internal("audit", e))?;
        }
        Ok(opened)
    })
    .await?;
    match opened {
        None => Ok(login_page(
            StatusCode::UNAUTHORIZED,
            Some("Unknown or revoked API token."),
        )),
        Some((id, _)) => {
            let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/")]).into_response();
            let h = resp.headers_mut();
            for c in [session_cookie(&id), clear_login_cookie()] {
                if let Ok(v) = c.parse() {
                    h.append(header::SET_COOKIE, v);
                }
            }
            Ok(resp)
        }
    }
}

/// `POST /ui/logout`: ends the session (CSRF-checked, so no other site can sign you out).
pub async fn logout(
    State(state): State<AppState>,
    user: UiUser,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, UiError> {
    user.check_csrf(&posted_csrf(form))?;
    let sessions = Sessions::new(Arc::clone(&state.store));
    let id = user.session.clone();
    blocking("signing out", move || {
        sessions
            .logout(&id)
            .map_err(|e| UiError::internal("signing out", e))
    })
    .await?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui/login".to_string()),
            (header::SET_COOKIE, clear_session_cookie()),
        ],
    )
        .into_response())
}
