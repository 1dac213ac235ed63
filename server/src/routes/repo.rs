//! The TUF repository over HTTPS: `metadata/…` from the in-memory view, `targets/…`
//! streamed from the blob store with `Range` (resume) and ETags. This is the hot path: no
//! store writes, no locks beyond an `Arc` clone, large read chunks.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::app::AppState;
use crate::metrics::{add, inc};
use crate::repo::Served;

/// Read size for streaming images: large, so a GiB image is a few thousand writes.
const CHUNK: usize = 256 * 1024;

/// Repository routes (public: TUF makes the transport untrusted for integrity).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/metadata/{file}", get(metadata))
        .route("/targets/{*path}", get(target))
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("{what} not found\n")).into_response()
}

/// Parses `N.role.json` or `role.json`.
fn parse_meta_name(file: &str) -> Option<(Option<u64>, &str)> {
    let stem = file.strip_suffix(".json")?;
    match stem.split_once('.') {
        Some((v, role)) => Some((Some(v.parse().ok()?), role)),
        None => Some((None, stem)),
    }
}

async fn metadata(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let view = state.repo.view();
    let served: Option<Served> = match parse_meta_name(&file) {
        Some((None, "timestamp")) => Some(view.timestamp.clone()),
        Some((None, "root")) => view.latest_root().cloned(),
        Some((Some(v), "root")) => view.roots.get(&v).cloned(),
        Some((None, "snapshot")) => view.snapshots.get(&view.snapshot_signed.version).cloned(),
        Some((None, "targets")) => view.targets.get(&view.targets_signed.version).cloned(),
        Some((Some(v), "snapshot")) => match state.repo.snapshot_bytes(v) {
            Ok(s) => s,
            Err(e) => {
                return crate::error::ApiFailure::internal("reading snapshot", e).into_response()
            }
        },
        Some((Some(v), "targets")) => match state.repo.targets_bytes(v) {
            Ok(s) => s,
            Err(e) => {
                return crate::error::ApiFailure::internal("reading targets", e).into_response()
            }
        },
        _ => None,
    };
    // A missing next root must be a plain 404: TUF clients stop their root walk there.
    let Some(served) = served else {
        return not_found(&file);
    };
    inc(&state.metrics.metadata_served);
    // Versioned files never change; the unversioned ones do.
    let cache = if file.starts_with(|c: char| c.is_ascii_digit()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    if etag_matches(&headers, &served.etag) {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, served.etag),
                (header::CACHE_CONTROL, cache.into()),
            ],
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::ETAG, served.etag),
            (header::CACHE_CONTROL, cache.to_string()),
        ],
        served.bytes,
    )
        .into_response()
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// A parsed single `Range: bytes=…` header.
#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// No usable range: send everything.
    Full,
    /// Send `start..=end`.
    Part { start: u64, end: u64 },
    /// Cannot be satisfied (416).
    Unsatisfiable,
}

fn parse_range(value: Option<&HeaderValue>, len: u64) -> RangeSpec {
    let Some(spec) = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeSpec::Full;
    };
    // Several ranges: answer with the whole file (allowed by RFC 9110 §14.2).
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, false) => b.parse::<u64>().ok().map(|n| {
            if n == 0 {
                None
            } else {
                Some((len.saturating_sub(n), len.saturating_sub(1)))
            }
        }),
        (false, true) => a
            .parse::<u64>()
            .ok()
            .map(|s| Some((s, len.saturating_sub(1)))),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => Some(Some((s, e.min(len.saturating_sub(1))))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => RangeSpec::Full,
        Some(None) => RangeSpec::Unsatisfiable,
        Some(Some((start, end))) if len == 0 || start >= len => {
            let _ = end;
            RangeSpec::Unsatisfiable
        }
        Some(Some((start, end))) => RangeSpec::Part { start, end },
    }
}

async fn target(
    State(state): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let view = state.repo.view();
    // Only files listed by current or recent signed targets are served: an upload is not
    // public until it is published.
    let Some(t) = view.files.get(&path).cloned() else {
        return not_found("target");
    };
    drop(view);
    let etag = format!("\"{}\"", t.sha256);
    if etag_matches(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let (mut file, len) = match state.blobs.open_blob(&t.sha256).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return crate::error::ApiFailure::internal(
                "serving target",
                format!("blob {} missing", t.sha256),
            )
            .into_response()
        }
        Err(e) => return crate::error::ApiFailure::internal("serving target", e).into_response(),
    };
    if len != t.length {
        return crate::error::ApiFailure::internal(
            "serving target",
            format!("blob {} has length {len}, signed {}", t.sha256, t.length),
        )
        .into_response();
    }
    // If-Range with a different validator means "send it all".
    let range_header = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) if v.trim() != etag => None,
        _ => headers.get(header::RANGE),
    };
    let (status, start, count) = match parse_range(range_header, len) {
        RangeSpec::Full => (StatusCode::OK, 0, len),
        RangeSpec::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeSpec::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    };
    if start > 0 {
        if let Err(e) = file.seek(SeekFrom::Start(start)).await {
            return crate::error::ApiFailure::internal("seeking target", e).into_response();
        }
    }
    inc(&state.metrics.target_downloads);
    add(&state.metrics.target_bytes_served, count);
    let stream = ReaderStream::with_capacity(file.take(count), CHUNK);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str, len: u64) -> RangeSpec {
        parse_range(Some(&HeaderValue::from_str(s).unwrap()), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeSpec::Full);
        assert_eq!(r("bytes=0-4", 10), RangeSpec::Part { start: 0, end: 4 });
        assert_eq!(r("bytes=5-", 10), RangeSpec::Part { start: 5, end: 9 });
        assert_eq!(r("bytes=-3", 10), RangeSpec::Part { start: 7, end: 9 });
        assert_eq!(r("bytes=5-100", 10), RangeSpec::Part { start: 5, end: 9 });
        assert_eq!(r("bytes=10-", 10), RangeSpec::Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), RangeSpec::Unsatisfiable);
        assert_eq!(r("bytes=4-2", 10), RangeSpec::Full);
        assert_eq!(r("bytes=0-1,3-4", 10), RangeSpec::Full);
        assert_eq!(r("items=0-1", 10), RangeSpec::Full);
        assert_eq!(r("bytes=x-1", 10), RangeSpec::Full);
    }

    #[test]
    fn metadata_names() {
        assert_eq!(parse_meta_name("3.root.json"), Some((Some(3), "root")));
        assert_eq!(parse_meta_name("timestamp.json"), Some((None, "timestamp")));
        assert_eq!(parse_meta_name("x.root.json"), None);
        assert_eq!(parse_meta_name("root"), None);
    }
}
