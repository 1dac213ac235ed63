//! The operator web dashboard: server-rendered HTML under `/ui`, no JavaScript.
//!
//! | route | page |
//! |---|---|
//! | `GET /ui/login`, `POST /ui/login` | sign in with an API token (opens a session) |
//! | `POST /ui/logout` | end the session |
//! | `GET /ui/` | fleet overview: devices by status and version, releases, active deployments, recent anomalies |
//! | `GET /ui/devices?status=&hardware_id=&version=&after=` | device list with filters and paging |
//! | `GET /ui/devices/{id}`, `POST /ui/devices/{id}/accept`, `/reject` | one device; decisions |
//! | `GET /ui/deployments`, `POST /ui/deployments/{id}/pause`, `/resume`, `/abort` | deployments with per-phase progress |
//! | `GET /ui/anomalies?after=` | the anomaly feed |
//! | `GET /ui/releases` | releases with support-until warnings |
//! | `GET /ui/audit?before=` | the audit log, newest first |
//! | `GET /ui/static/dashboard.css` | the stylesheet (cached for a year; its URL carries its hash) |
//!
//! Security: sessions and CSRF are described in [`session`]. Every page requires the same
//! [`crate::auth::Permission`] as the matching API route (`Read` to look, `Operate` to
//! change) and every change goes through the same module functions (and audit entries)
//! as the API. Every answer carries `Content-Security-Policy: default-src 'self'` (plus
//! `frame-ancestors 'none'`, `form-action 'self'`, `base-uri 'none'`), `X-Frame-Options:
//! DENY`, `Referrer-Policy: no-referrer` and `X-Content-Type-Options: nosniff`; pages
//! are `Cache-Control: no-store`. A POST whose `Sec-Fetch-Site` says `cross-site` is
//! refused before any handler runs.

pub mod error;
pub mod layout;
pub mod pages;
pub mod session;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::app::AppState;

use self::error::UiError;
use self::pages::{anomalies, audit, deployments, devices, login, overview, releases};

/// The policy every dashboard answer carries.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(overview::show))
        .route("/ui/login", get(login::show).post(login::submit))
        .route("/ui/logout", post(login::logout))
        .route("/ui/devices", get(devices::list))
        .route("/ui/devices/{id}", get(devices::detail))
        .route("/ui/devices/{id}/accept", post(devices::accept))
        .route("/ui/devices/{id}/reject", post(devices::reject))
        .route("/ui/deployments", get(deployments::show))
        .route("/ui/deployments/{id}/pause", post(deployments::pause))
        .route("/ui/deployments/{id}/resume", post(deployments::resume))
        .route("/ui/deployments/{id}/abort", post(deployments::abort))
        .route("/ui/anomalies", get(anomalies::show))
        .route("/ui/releases", get(releases::show))
        .route("/ui/audit", get(audit::show))
        .route("/ui/static/dashboard.css", get(stylesheet))
        .layer(middleware::from_fn(guard))
}

/// Refuses cross-site POSTs (browsers say so in `Sec-Fetch-Site`), then adds the security
/// headers to whatever the handler answered.
async fn guard(req: Request, next: Next) -> Response {
    let cross_site = req.method() == Method::POST
        && req
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site");
    let mut resp = if cross_site {
        UiError::Forbidden("cross-site form posts are refused".into()).into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn stylesheet() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8".to_string()),
            (
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".to_string(),
            ),
            (header::ETAG, format!("\"{}\"", layout::css_version())),
        ],
        layout::CSS,
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::devices::testing::{self, ident, peer, req};
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct Answer {
        status: StatusCode,
        headers: axum::http::HeaderMap,
        body: String,
    }

    async fn send(state: &AppState, req: Request<Body>) -> Answer {
        let resp = crate::app::router(state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(state: &AppState, uri: &str, cookie: Option<&str>) -> Answer {
        let mut b = Request::builder().uri(uri);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        send(state, b.body(Body::empty()).unwrap()).await
    }

    async fn post(state: &AppState, uri: &str, cookie: Option<&str>, form: &str) -> Answer {
        let mut b = Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        send(state, b.body(Body::from(form.to_string())).unwrap()).await
    }

    fn set_cookie(a: &Answer, name: &str) -> Option<String> {
        a.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .map(str::to_string)
    }

    /// Logs in through the form; returns the `ota_session=...` cookie pair.
    async fn login(state: &AppState, secret: &str) -> String {
        let form = get(state, "/ui/login", None).await;
        assert_eq!(form.status, StatusCode::OK);
        let nonce_cookie = set_cookie(&form, session::LOGIN_COOKIE).unwrap();
        let nonce = nonce_cookie.split_once('=').unwrap().1.to_string();
        assert!(form.body.contains(&nonce));
        let a = post(
            state,
            "/ui/login",
            Some(&nonce_cookie),
            &format!("token={secret}&nonce={nonce}"),
        )
        .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        set_cookie(&a, session::SESSION_COOKIE).unwrap()
    }

    fn csrf_of(body: &str) -> String {
        let at = body.find("name=\"csrf\" value=\"").unwrap() + 19;
        body[at..at + 64].to_string()
    }

    #[tokio::test]
    async fn pages_need_a_session_and_carry_the_security_headers() {
        let (state, _dir) = testing::state();
        let a = get(&state, "/ui/", None).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        assert_eq!(a.headers[header::LOCATION], "/ui/login");
        assert_eq!(
            a.headers[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        let (secret, _) = state.tokens.create("v", Role::Viewer, state.now()).unwrap();
        let cookie = login(&state, &secret).await;
        for page in [
            "/ui/",
            "/ui/devices",
            "/ui/deployments",
            "/ui/anomalies",
            "/ui/releases",
            "/ui/audit",
        ] {
            let a = get(&state, page, Some(&cookie)).await;
            assert_eq!(a.status, StatusCode::OK, "{page}: {}", a.body);
            assert_eq!(a.headers[header::X_FRAME_OPTIONS], "DENY");
            assert_eq!(a.headers[header::REFERRER_POLICY], "no-referrer");
            assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
            assert!(!a.body.contains("<script"), "{page} has a script");
            assert!(!a.body.contains("style="), "{page} has an inline style");
        }
        let css = get(&state, &layout::css_href(), None).await;
        assert_eq!(css.status, StatusCode::OK);
        assert!(css.headers[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable"));
        // A wrong login nonce is refused, and so is a wrong token.
        let form = get(&state, "/ui/login", None).await;
        let nonce_cookie = set_cookie(&form, session::LOGIN_COOKIE).unwrap();
        let a = post(
            &state,
            "/ui/login",
            Some(&nonce_cookie),
            &format!("token={secret}&nonce=00"),
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        let nonce = nonce_cookie.split_once('=').unwrap().1;
        let a = post(
            &state,
            "/ui/login",
            Some(&nonce_cookie),
            &format!("token=ota_bad&nonce={nonce}"),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert!(set_cookie(&a, session::SESSION_COOKIE).is_none());
    }

    #[tokio::test]
    async fn posts_need_the_csrf_token_and_the_role() {
        let (state, _dir) = testing::state();
        state
            .devices
            .poll(&ident("d1", "F"), &req("hw"), peer(), state.now())
            .unwrap();
        let (op, _) = state
            .tokens
            .create("op", Role::Operator, state.now())
            .unwrap();
        let (viewer, _) = state.tokens.create("v", Role::Viewer, state.now()).unwrap();
        let op_cookie = login(&state, &op).await;
        let page = get(&state, "/ui/devices/d1", Some(&op_cookie)).await;
        assert!(page.body.contains("id=\"accept\""));
        let csrf = csrf_of(&page.body);
        // No token, a wrong one, or another session's: 403, and nothing changes.
        for form in [
            String::new(),
            "csrf=".into(),
            format!("csrf={}", "0".repeat(64)),
        ] {
            let a = post(&state, "/ui/devices/d1/accept", Some(&op_cookie), &form).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{form}");
        }
        let viewer_cookie = login(&state, &viewer).await;
        let a = post(
            &state,
            "/ui/devices/d1/accept",
            Some(&viewer_cookie),
            &format!("csrf={csrf}"),
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        // A cross-site post is refused even with the right token.
        let req = Request::builder()
            .method("POST")
            .uri("/ui/devices/d1/accept")
            .header(header::COOKIE, &op_cookie)
            .header("sec-fetch-site", "cross-site")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}")))
            .unwrap();
        assert_eq!(send(&state, req).await.status, StatusCode::FORBIDDEN);
        assert_eq!(
            state.devices.record("d1").unwrap().unwrap().status,
            crate::devices::DeviceStatus::Pending
        );
        // The viewer sees no decision buttons; its own token does not work either.
        let vpage = get(&state, "/ui/devices/d1", Some(&viewer_cookie)).await;
        assert!(!vpage.body.contains("id=\"accept\""));
        let vcsrf = csrf_of(&vpage.body);
        let a = post(
            &state,
            "/ui/devices/d1/accept",
            Some(&viewer_cookie),
            &format!("csrf={vcsrf}"),
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        // The operator with its token: accepted, audited under its token.
        let a = post(
            &state,
            "/ui/devices/d1/accept",
            Some(&op_cookie),
            &format!("csrf={csrf}"),
        )
        .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        assert_eq!(
            state.devices.record("d1").unwrap().unwrap().status,
            crate::devices::DeviceStatus::Accepted
        );
        let audit = state.audit.list(0, 100).unwrap();
        assert!(audit
            .iter()
            .any(|e| e.action == "device.accept" && e.actor.contains(":op")));
        // Logging out needs the token too, then the session is gone.
        let a = post(&state, "/ui/logout", Some(&op_cookie), "csrf=").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        let a = post(
            &state,
            "/ui/logout",
            Some(&op_cookie),
            &format!("csrf={csrf}"),
        )
        .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        assert!(set_cookie(&a, session::SESSION_COOKIE).is_some());
        let a = get(&state, "/ui/", Some(&op_cookie)).await;
        assert_eq!(a.headers[header::LOCATION], "/ui/login");
    }

    #[tokio::test]
    async fn signing_in_again_replaces_the_old_session() {
        let (state, _dir) = testing::state();
        let (secret, _) = state
            .tokens
            .create("op", Role::Operator, state.now())
            .unwrap();
        let old = login(&state, &secret).await;
        let form = get(&state, "/ui/login", Some(&old)).await;
        assert_eq!(form.status, StatusCode::SEE_OTHER, "signed in already");
        let form = get(&state, "/ui/login", None).await;
        let nonce_cookie = set_cookie(&form, session::LOGIN_COOKIE).unwrap();
        let nonce = nonce_cookie.split_once('=').unwrap().1.to_string();
        let a = post(
            &state,
            "/ui/login",
            Some(&format!("{old}; {nonce_cookie}")),
            &format!("token={secret}&nonce={nonce}"),
        )
        .await;
        let new = set_cookie(&a, session::SESSION_COOKIE).unwrap();
        assert_ne!(new, old);
        assert_eq!(get(&state, "/ui/", Some(&new)).await.status, StatusCode::OK);
        assert_eq!(
            get(&state, "/ui/", Some(&old)).await.status,
            StatusCode::SEE_OTHER
        );
    }

    #[tokio::test]
    async fn a_revoked_token_ends_its_sessions() {
        let (state, _dir) = testing::state();
        let (secret, rec) = state
            .tokens
            .create("op", Role::Operator, state.now())
            .unwrap();
        let cookie = login(&state, &secret).await;
        assert_eq!(
            get(&state, "/ui/", Some(&cookie)).await.status,
            StatusCode::OK
        );
        state.tokens.revoke(&rec.id, state.now()).unwrap();
        let a = get(&state, "/ui/", Some(&cookie)).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        assert_eq!(a.headers[header::LOCATION], "/ui/login");
    }
}
