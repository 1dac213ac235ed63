//! One route answered ahead of the router: the request that dominates a fleet's traffic
//! (every device polls every few minutes) skips axum's per-request machinery (routing,
//! boxed service clones, two middleware futures, extension inserts, the extractor stack).
//! Measured with callgrind on a keep-alive poll, that machinery was most of the server's
//! user-space instructions.
//!
//! A fast route answers only requests it fully understands and has the answer for in
//! memory; it hands everything else back (with the body it already read) to the router,
//! which answers exactly as it always does: one implementation of every refusal.

use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::response::Response;
use axum::{BoxError, Router};
use bytes::Bytes;
use http::request::Parts;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Limited};
use tower::ServiceExt;

use crate::serve::ConnectionInfo;

/// A route served before the router. See the module docs.
pub trait FastRoute: Send + Sync + 'static {
    /// The request path this route serves (for `POST` with a JSON body).
    fn path(&self) -> &'static str;

    /// The answer to a `POST` of `body` to [`FastRoute::path`] on `conn`, or `None` to hand
    /// the request to the router. Must have no side effect when it returns `None`.
    fn answer(&self, conn: &ConnectionInfo, body: &[u8]) -> Option<Response>;
}

/// What [`crate::serve::serve`] answers with: the router, and optionally a fast route.
#[derive(Clone)]
pub struct Routes {
    pub(crate) router: Router,
    pub(crate) fast: Option<Arc<dyn FastRoute>>,
}

impl Routes {
    /// Serves `route` ahead of the router.
    pub fn with_fast_route(mut self, route: impl FastRoute) -> Self {
        self.fast = Some(Arc::new(route));
        self
    }
}

impl From<Router> for Routes {
    fn from(router: Router) -> Self {
        Routes { router, fast: None }
    }
}

/// Whether `parts` is a request `route` may take: `POST` to its path with a JSON body of
/// a declared length within `cap` (the API's small-body limit). Anything else (another
/// content type, a chunked or empty body) goes to the router, which refuses it properly.
fn takes(route: &dyn FastRoute, parts: &Parts, cap: usize) -> bool {
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    let small = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > 0 && n <= cap);
    parts.method == Method::POST && parts.uri.path() == route.path() && json && small
}

/// Answers `req` (a request on connection `conn`): by the fast route when it takes it,
/// otherwise by the router (which finds the [`ConnectionInfo`] in the extensions, as every
/// handler expects). `body_cap` is the small-body limit.
pub async fn respond<B>(
    routes: Routes,
    conn: Arc<ConnectionInfo>,
    body_cap: usize,
    req: Request<B>,
) -> Result<Response, std::convert::Infallible>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let body = match &routes.fast {
        Some(fast) if takes(fast.as_ref(), &parts, body_cap) => {
            // The declared length is within the cap, so only a broken connection fails
            // here; the router then sees an empty body (and nobody reads its answer).
            let bytes = match Limited::new(body, body_cap).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::new(),
            };
            if let Some(resp) = fast.answer(&conn, &bytes) {
                return Ok(resp);
            }
            Body::from(bytes)
        }
        _ => Body::new(body),
    };
    parts.extensions.insert(ConnectionInfo::clone(&conn));
    parts
        .extensions
        .insert(axum::extract::ConnectInfo(conn.peer));
    routes
        .router
        .oneshot(Request::from_parts(parts, body))
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use axum::extract::Extension;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use http_body_util::Full;
    use std::sync::Mutex;

    /// Answers bodies starting with "fast"; remembers every body it was shown.
    struct Probe(Arc<Mutex<Vec<Vec<u8>>>>);

    impl FastRoute for Probe {
        fn path(&self) -> &'static str {
            "/fast"
        }
        fn answer(&self, conn: &ConnectionInfo, body: &[u8]) -> Option<Response> {
            self.0.lock().unwrap().push(body.to_vec());
            body.starts_with(b"fast")
                .then(|| format!("fast answer for {}", conn.peer).into_response())
        }
    }

    /// A router that echoes the body and the connection it was told about.
    fn routes() -> (Routes, Arc<Mutex<Vec<Vec<u8>>>>) {
        let echo = |Extension(conn): Extension<ConnectionInfo>, body: Bytes| async move {
            format!("router: {} {}", conn.peer, String::from_utf8_lossy(&body))
        };
        let router = Router::new()
            .route("/fast", post(echo))
            .route("/other", post(echo));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let routes = Routes::from(router).with_fast_route(Probe(Arc::clone(&seen)));
        (routes, seen)
    }

    fn request(path: &str, content_type: Option<&str>, body: &'static str) -> Request<Full<Bytes>> {
        let mut b = Request::post(path).header(header::CONTENT_LENGTH, body.len());
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    async fn answer(routes: &Routes, req: Request<Full<Bytes>>) -> String {
        let conn = Arc::new(ConnectionInfo {
            peer: "192.0.2.1:4242".parse().unwrap(),
            identity: None,
        });
        let resp = respond(routes.clone(), conn, 64, req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_fast_route_answers_what_it_takes_and_hands_back_the_rest_intact() {
        let (routes, seen) = routes();
        let json = Some("application/json");
        assert_eq!(
            answer(&routes, request("/fast", json, "fast please")).await,
            "fast answer for 192.0.2.1:4242"
        );
        // Declined after reading: the router gets the same bytes and the connection.
        assert_eq!(
            answer(&routes, request("/fast", json, "slow please")).await,
            "router: 192.0.2.1:4242 slow please"
        );
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(seen.lock().unwrap()[1], b"slow please");
    }

    #[tokio::test]
    async fn only_small_json_posts_to_its_path_reach_the_fast_route() {
        let (routes, seen) = routes();
        for (path, ct) in [
            ("/other", Some("application/json")),
            ("/fast", None),
            ("/fast", Some("text/plain")),
            ("/fast", Some("application/json; charset=latin1")),
        ] {
            let got = answer(&routes, request(path, ct, "fast please")).await;
            assert!(got.starts_with("router: "), "{path} {ct:?}: {got}");
        }
        // Above the small-body cap (64 here): the router's limits apply, not ours.
        let big = Box::leak(format!("fast{}", "x".repeat(61)).into_boxed_str());
        let got = answer(&routes, request("/fast", Some("application/json"), big)).await;
        assert!(got.starts_with("router: "), "{got}");
        // An empty body, and a GET.
        let got = answer(&routes, request("/fast", Some("application/json"), "")).await;
        assert!(got.starts_with("router: "), "{got}");
        let get = Request::get("/fast")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, 4)
            .body(Full::new(Bytes::from_static(b"fast")))
            .unwrap();
        let conn = Arc::new(ConnectionInfo {
            peer: "192.0.2.1:4242".parse().unwrap(),
            identity: None,
        });
        let resp = respond(routes.clone(), conn, 64, get).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::METHOD_NOT_ALLOWED);
        assert!(seen.lock().unwrap().is_empty());
    }
}
