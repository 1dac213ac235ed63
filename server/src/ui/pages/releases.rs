//! `GET /ui/releases`: every signed target with its version, boards, size, support end
//! (warned about when past or within [`SUPPORT_WARNING_DAYS`]) and withdrawal.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use maud::{html, Markup};
use ota_common::release::{ReleaseInfo, ReleaseVersion};

use crate::app::AppState;
use crate::auth::Permission;
use crate::deployments::FleetSummary;
use crate::repo::RELEASES_TREE;
use crate::routes::publish::ReleaseRecord;
use crate::store::StoreExt;
use crate::ui::error::UiError;
use crate::ui::layout::{self, badge, bytes, number, short, when, Section, Tone};
use crate::ui::session::UiUser;

use super::{blocking, url_part};

/// Support ending within this many days is flagged.
pub const SUPPORT_WARNING_DAYS: i64 = 90;

/// One release as the dashboard shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseRow {
    /// Target name.
    pub name: String,
    /// Release version, if the target carries valid release fields.
    pub version: Option<ReleaseVersion>,
    /// Boards it fits.
    pub hardware_ids: Vec<String>,
    /// Image length.
    pub length: u64,
    /// Length of the zstd-compressed form devices download instead, if it has one.
    pub zstd_length: Option<u64>,
    /// Image SHA-256.
    pub sha256: Option<String>,
    /// End of security support.
    pub support_until: Option<DateTime<Utc>>,
    /// When it was withdrawn.
    pub withdrawn_at: Option<DateTime<Utc>>,
}

/// Releases in the signed targets, oldest version first (unversioned targets first).
pub fn read(state: &AppState) -> Result<Vec<ReleaseRow>, UiError> {
    let view = state.repo.view();
    let mut rows = Vec::with_capacity(view.targets_signed.targets.len());
    for (name, file) in &view.targets_signed.targets {
        let rec: Option<ReleaseRecord> = state
            .repo
            .store()
            .get_json(RELEASES_TREE, name.as_bytes())
            .map_err(|e| UiError::internal("listing releases", e))?;
        let info = ReleaseInfo::from_target(name, file).ok();
        rows.push(ReleaseRow {
            name: name.clone(),
            version: info.as_ref().map(|i| i.version.clone()),
            hardware_ids: info
                .as_ref()
                .map(|i| i.hardware_ids.clone())
                .unwrap_or_default(),
            length: file.length,
            sha256: file.sha256().map(str::to_string),
            zstd_length: info
                .as_ref()
                .and_then(|i| i.zstd.as_ref())
                .map(|z| z.length),
            support_until: info.and_then(|i| i.support_until),
            withdrawn_at: rec.and_then(|r| r.withdrawn_at),
        });
    }
    rows.sort_by(|a, b| a.version.cmp(&b.version).then_with(|| a.name.cmp(&b.name)));
    Ok(rows)
}

/// Where a release's support stands.
pub fn support_badge(until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    match until {
        None => badge(Tone::Muted, "not announced"),
        Some(t) if t <= now => badge(Tone::Bad, "support ended"),
        Some(t) if t - now <= Duration::days(SUPPORT_WARNING_DAYS) => {
            badge(Tone::Warn, &format!("ends {}", layout::ago(t, now)))
        }
        Some(_) => badge(Tone::Good, "supported"),
    }
}

/// The releases table, with the accepted devices running each version.
pub fn table(rows: &[ReleaseRow], summary: &FleetSummary, now: DateTime<Utc>) -> Markup {
    let devices_on = |v: &Option<ReleaseVersion>| -> u64 {
        v.as_ref()
            .and_then(|v| summary.by_version.get(&v.to_string()))
            .copied()
            .unwrap_or(0)
    };
    html! {
        @if rows.is_empty() {
            p.empty { "No release has been published." }
        } @else {
            table id="releases" {
                thead { tr {
                    th { "Version" } th { "Name" } th { "Hardware" } th.num { "Size" }
                    th.num { "Devices" } th { "Support until" } th { "State" }
                } }
                tbody {
                    @for r in rows {
                        tr {
                            td { strong { @match &r.version {
                                Some(v) => (v),
                                None => span.muted { "—" },
                            } } }
                            td {
                                (r.name)
                                @if let Some(h) = &r.sha256 {
                                    br; span.mono.muted.small title=(h) { (short(h, 12)) }
                                }
                            }
                            td { @for h in &r.hardware_ids { code { (h) } " " } }
                            td.num {
                                (bytes(r.length))
                                @if let Some(z) = r.zstd_length {
                                    br; span.muted.small title="zstd-compressed form that devices download" {
                                        "zstd " (bytes(z))
                                    }
                                }
                            }
                            td.num {
                                @match &r.version {
                                    Some(v) => a href={"/ui/devices?status=accepted&version=" (url_part(&v.to_string()))} {
                                        (number(devices_on(&r.version)))
                                    },
                                    None => span.muted { "—" },
                                }
                            }
                            td {
                                @if let Some(t) = r.support_until {
                                    span title=(t.to_rfc3339()) { (t.format("%Y-%m-%d")) } " "
                                }
                                (support_badge(r.support_until, now))
                            }
                            td {
                                @match r.withdrawn_at {
                                    Some(t) => { (badge(Tone::Bad, "withdrawn")) " " (when(t, now)) },
                                    None => (badge(Tone::Good, "published")),
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/releases`.
pub async fn show(State(state): State<AppState>, user: UiUser) -> Result<Response, UiError> {
    user.caller.require(Permission::Read)?;
    let now = state.now();
    let st = state.clone();
    let rows = blocking("listing releases", move || read(&st)).await?;
    let summary = state.fleet.summary();
    let newest_first: Vec<ReleaseRow> = rows.into_iter().rev().collect();
    let body = html! {
        section.card {
            p.muted.small {
                "Support dates come from each target's signed release fields. Releases whose "
                "support ended, or ends within " (SUPPORT_WARNING_DAYS) " days, are flagged."
            }
            (table(&newest_first, &summary, now))
        }
    };
    Ok(layout::html(layout::page(
        "Releases",
        Section::Releases,
        &user,
        body,
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;

    #[test]
    fn support_is_flagged_when_past_or_near() {
        let now = Utc::now();
        let s =
            |d: Option<i64>| support_badge(d.map(|d| now + Duration::days(d)), now).into_string();
        assert!(s(Some(-1)).contains("support ended") && s(Some(-1)).contains("bad"));
        assert!(s(Some(30)).contains("warn") && s(Some(30)).contains("ends in"));
        assert!(s(Some(SUPPORT_WARNING_DAYS - 1)).contains("warn"));
        assert!(s(Some(365)).contains("supported"));
        assert!(s(None).contains("not announced"));
    }

    #[test]
    fn a_compressed_form_shows_under_the_image_size() {
        let row = |name: &str, zstd_length| ReleaseRow {
            name: name.into(),
            version: Some("1.0.0".parse().unwrap()),
            hardware_ids: vec!["hw".into()],
            length: 64 * 1024 * 1024,
            zstd_length,
            sha256: None,
            support_until: None,
            withdrawn_at: None,
        };
        let now = Utc::now();
        let html = table(&[row("a", Some(14_468_089))], &FleetSummary::default(), now);
        let html = html.into_string();
        assert!(html.contains("zstd 13.8 MiB"), "{html}");
        let plain = table(&[row("b", None)], &FleetSummary::default(), now).into_string();
        assert!(!plain.contains("zstd"), "{plain}");
    }
}
