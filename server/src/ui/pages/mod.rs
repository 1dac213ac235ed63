//! One module per page. Each reads what it shows through the same module functions the
//! JSON API uses (on a blocking thread), checks the same permissions, and renders with
//! [`super::layout`].

pub mod anomalies;
pub mod audit;
pub mod deployments;
pub mod devices;
pub mod login;
pub mod overview;
pub mod releases;

use serde::Deserialize;

use super::error::UiError;

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<T, F>(context: &'static str, f: F) -> Result<T, UiError>
where
    F: FnOnce() -> Result<T, UiError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UiError::internal(context, e))?
}

/// A filter field from a GET form: empty means "any".
pub(crate) fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The body of every POST form: just the CSRF token (other fields are ignored).
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

/// The CSRF token of a POST body; a body that is not a form carries none.
pub(crate) fn posted_csrf(
    form: Result<axum::Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> String {
    form.map(|axum::Form(f)| f.csrf).unwrap_or_default()
}

/// Percent-encodes `s` for a URL path segment or query value (all but unreserved bytes).
pub fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The fixed messages a redirect may ask a page to show (`?notice=`); anything else is
/// ignored, so a link cannot put arbitrary words on the page.
pub(crate) fn notice_text(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "accepted" => "Device accepted.",
        "rejected" => "Device rejected.",
        "unchanged" => "Nothing changed: the device already had that status.",
        "paused" => "Deployment paused.",
        "resumed" => "Deployment resumed.",
        "aborted" => "Deployment aborted.",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts_are_encoded_and_notices_fixed() {
        assert_eq!(url_part("dev-01.a_b~"), "dev-01.a_b~");
        assert_eq!(url_part("a/b c?&"), "a%2Fb%20c%3F%26");
        assert_eq!(notice_text(Some("paused")), Some("Deployment paused."));
        assert_eq!(notice_text(Some("<b>hi</b>")), None);
        assert_eq!(notice_text(None), None);
        assert_eq!(nonempty(Some("  ".into())), None);
        assert_eq!(nonempty(Some(" x ".into())), Some("x".into()));
    }
}
