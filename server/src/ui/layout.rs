//! The page shell (header, navigation, who is signed in) and the small pieces every page
//! uses: status badges, relative dates, numbers, progress bars. Markup is built with
//! maud, which escapes every interpolated value; nothing here emits script or inline
//! style (the Content-Security-Policy forbids both), so widths come from `<progress>`.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use sha2::{Digest, Sha256};

use super::session::UiUser;

/// The stylesheet, embedded in the binary.
pub const CSS: &str = include_str!("../../static/dashboard.css");

/// The sections of the navigation bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// `/ui/`.
    Overview,
    /// `/ui/devices`.
    Devices,
    /// `/ui/deployments`.
    Deployments,
    /// `/ui/anomalies`.
    Anomalies,
    /// `/ui/releases`.
    Releases,
    /// `/ui/audit`.
    Audit,
}

const NAV: [(Section, &str, &str); 6] = [
    (Section::Overview, "/ui/", "Overview"),
    (Section::Devices, "/ui/devices", "Devices"),
    (Section::Deployments, "/ui/deployments", "Deployments"),
    (Section::Anomalies, "/ui/anomalies", "Anomalies"),
    (Section::Releases, "/ui/releases", "Releases"),
    (Section::Audit, "/ui/audit", "Audit log"),
];

/// A short hash of the stylesheet: its URL changes when it does, so it can be cached for
/// good.
pub fn css_version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| hex::encode(&Sha256::digest(CSS.as_bytes())[..6]))
}

/// The stylesheet's URL.
pub fn css_href() -> String {
    format!("/ui/static/dashboard.css?v={}", css_version())
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · ota" }
            link rel="stylesheet" href=(css_href());
        }
    }
}

/// A page for a signed-in user, with navigation and a logout button.
pub fn page(title: &str, active: Section, user: &UiUser, body: Markup) -> Markup {
    let role = format!("{:?}", user.caller.token.role).to_lowercase();
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.topbar {
                    a.brand href="/ui/" { span.logo { "◆" } " ota" }
                    nav {
                        @for (section, href, label) in NAV {
                            @if section == active {
                                a.active href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                    div.who {
                        span.user { (user.caller.token.name) }
                        span class={"badge role-" (role)} { (role) }
                        form.inline method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(user.csrf());
                            button.link-button type="submit" id="logout" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page without navigation (login, errors).
pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                header.topbar {
                    a.brand href="/ui/" { span.logo { "◆" } " ota" }
                }
                main.narrow { (body) }
            }
        }
    }
}

/// An HTML response that no cache keeps (pages show fleet data).
pub fn html(markup: Markup) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// Colour of a badge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Green.
    Good,
    /// Amber.
    Warn,
    /// Red.
    Bad,
    /// Blue.
    Info,
    /// Grey.
    Muted,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Good => "badge good",
            Tone::Warn => "badge warn",
            Tone::Bad => "badge bad",
            Tone::Info => "badge info",
            Tone::Muted => "badge muted",
        }
    }
}

/// A coloured badge.
pub fn badge(tone: Tone, text: &str) -> Markup {
    html! { span class=(tone.class()) { (text) } }
}

/// Short English for how long ago (or ahead) `t` is from `now`.
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let amount = match n {
        0..=59 => {
            return if future {
                "in a moment".into()
            } else {
                "just now".into()
            }
        }
        60..=3_599 => format!("{} min", n / 60),
        3_600..=172_799 => format!("{} h", n / 3_600),
        172_800..=5_183_999 => format!("{} d", n / 86_400),
        _ => return t.format("%Y-%m-%d").to_string(),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A relative date, with the exact time on hover.
pub fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    let exact = t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(t.to_rfc3339()) title=(exact) { (ago(t, now)) } }
}

/// [`when`], or a dash.
pub fn when_opt(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    match t {
        Some(t) => when(t, now),
        None => html! { span.muted { "—" } },
    }
}

/// An optional text, or a dash.
pub fn text_opt(s: Option<&str>) -> Markup {
    match s {
        Some(s) if !s.is_empty() => html! { (s) },
        _ => html! { span.muted { "—" } },
    }
}

/// A count with thin-space thousands separators.
pub fn number(n: u64) -> String {
    let digits = n.to_string();
    // Group from the right: a separator before every digit that has a multiple of three
    // digits after it.
    let mut groups: Vec<&str> = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join("\u{2009}")
}

/// Bytes in KiB/MiB/GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A progress bar of `value` out of `max` with a label (a native `<progress>`: its width
/// needs no inline style).
pub fn progress(value: u64, max: u64, label: &str) -> Markup {
    let max = max.max(1);
    html! {
        span.progress {
            progress value=(value.min(max)) max=(max) aria-label=(label) {}
            span.progress-label { (label) }
        }
    }
}

/// The first `n` characters of a long hash or id.
pub fn short(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A notice banner.
pub fn notice(text: &str) -> Markup {
    html! { div.notice role="status" { (text) } }
}

/// A POST button with the session's CSRF token.
pub fn action_button(user: &UiUser, action: &str, label: &str, class: &str, id: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(user.csrf());
            button type="submit" class=(class) id=(id) { (label) }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn dates_read_relative() {
        let now: DateTime<Utc> = "2025-06-01T12:00:00Z".parse().unwrap();
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - Duration::minutes(5), now), "5 min ago");
        assert_eq!(ago(now - Duration::hours(3), now), "3 h ago");
        assert_eq!(ago(now - Duration::days(4), now), "4 d ago");
        assert_eq!(ago(now + Duration::days(30), now), "in 30 d");
        assert_eq!(ago(now - Duration::days(400), now), "2024-04-27");
    }

    #[test]
    fn numbers_and_sizes_are_short() {
        assert_eq!(number(7), "7");
        assert_eq!(number(1234567), "1\u{2009}234\u{2009}567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(short("abcdef", 3), "abc");
        assert_eq!(short("ab", 3), "ab");
    }

    #[test]
    fn interpolated_text_is_escaped() {
        let m = text_opt(Some("<script>alert(1)</script>")).into_string();
        assert!(!m.contains("<script>"), "{m}");
        assert!(m.contains("&lt;script&gt;"));
    }
}
