//! `GET /ui/`: the fleet at a glance: devices by status, update state and version (from
//! the in-memory [`FleetSummary`]), releases, active deployments with their phase
//! progress, recent anomalies.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use crate::app::AppState;
use crate::auth::Permission;
use crate::deployments::{DeploymentView, FleetSummary};
use crate::devices::reports::StoredAnomaly;
use crate::ui::error::UiError;
use crate::ui::layout::{self, badge, number, when, Section, Tone};
use crate::ui::session::UiUser;

use super::anomalies::kind_tone;
use super::deployments::{self, is_live};
use super::releases::{self, ReleaseRow};
use super::{blocking, url_part};

/// Anomalies shown on the overview.
const RECENT_ANOMALIES: usize = 8;

struct Overview {
    summary: FleetSummary,
    releases: Vec<ReleaseRow>,
    deployments: Vec<DeploymentView>,
    anomalies: Vec<StoredAnomaly>,
}

/// Devices per version, most common first (ties by version).
pub fn by_version(summary: &FleetSummary) -> Vec<(&str, u64)> {
    let mut v: Vec<(&str, u64)> = summary
        .by_version
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.as_str(), *n))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    v
}

/// `GET /ui/`.
pub async fn show(State(state): State<AppState>, user: UiUser) -> Result<Response, UiError> {
    user.caller.require(Permission::Read)?;
    let now = state.now();
    let st = state.clone();
    let (releases, anomalies) = blocking("reading the fleet overview", move || {
        let (anomalies, _) = st
            .devices
            .list_anomalies(None, RECENT_ANOMALIES)
            .map_err(|e| UiError::internal("reading recent anomalies", e))?;
        Ok((releases::read(&st)?, anomalies))
    })
    .await?;
    let data = Overview {
        summary: state.fleet.summary(),
        releases,
        deployments: state
            .fleet
            .deployments()
            .into_iter()
            .filter(is_live)
            .collect(),
        anomalies,
    };
    Ok(layout::html(layout::page(
        "Fleet overview",
        Section::Overview,
        &user,
        render(&data, now),
    )))
}

fn stat(tone: &str, value: u64, label: &str, href: &str, id: &str) -> Markup {
    html! {
        a class={"card stat " (tone)} href=(href) id=(id) {
            div.value { (number(value)) }
            div.label { (label) }
        }
    }
}

fn render(o: &Overview, now: DateTime<Utc>) -> Markup {
    let s = &o.summary;
    let (st, up) = (&s.by_status, &s.by_update_state);
    let live_releases = o
        .releases
        .iter()
        .filter(|r| r.withdrawn_at.is_none())
        .count() as u64;
    let versions = by_version(s);
    let largest = versions.first().map_or(1, |(_, n)| *n);
    let tone = |n: u64, t: &'static str| if n > 0 { t } else { "" };
    html! {
        div.cards {
            (stat("", s.devices, "Devices", "/ui/devices", "stat-devices"))
            (stat("good", st.accepted, "Accepted", "/ui/devices?status=accepted", "stat-accepted"))
            (stat(tone(st.pending, "warn"), st.pending, "Pending", "/ui/devices?status=pending", "stat-pending"))
            (stat(tone(st.rejected, "bad"), st.rejected, "Rejected", "/ui/devices?status=rejected", "stat-rejected"))
            (stat("", st.decommissioned, "Decommissioned", "/ui/devices?status=decommissioned", "stat-decommissioned"))
            (stat("info", live_releases, "Releases", "/ui/releases", "stat-releases"))
            (stat("info", o.deployments.len() as u64, "Active deployments", "/ui/deployments", "stat-deployments"))
        }
        div.cards {
            (stat("good", up.up_to_date, "Up to date", "/ui/devices?status=accepted", "stat-up-to-date"))
            (stat(tone(up.updating, "info"), up.updating, "Updating", "/ui/deployments", "stat-updating"))
            (stat(tone(up.failed, "bad"), up.failed, "Update failed", "/ui/anomalies", "stat-failed"))
            (stat(tone(up.rolled_back, "bad"), up.rolled_back, "Rolled back", "/ui/anomalies", "stat-rolled-back"))
            (stat(tone(up.silent, "warn"), up.silent, "Silent", "/ui/anomalies", "stat-silent"))
        }
        section.card.section {
            h2 { "Active deployments" }
            (deployments::table(&o.deployments, now, None))
        }
        div.grid2.section {
            section.card {
                h2 { "Accepted devices by version" }
                @if versions.is_empty() {
                    p.empty { "No accepted devices yet." }
                } @else {
                    ul.bars id="by-version" {
                        @for (v, n) in &versions {
                            li {
                                span.name { a href={"/ui/devices?status=accepted&version=" (url_part(v))} { (v) } }
                                (layout::progress(*n, largest, &number(*n)))
                            }
                        }
                    }
                }
            }
            section.card {
                h2 { "Recent anomalies" }
                @if o.anomalies.is_empty() {
                    p.empty { "No anomalies reported." }
                } @else {
                    table {
                        thead { tr { th { "When" } th { "Device" } th { "Kind" } } }
                        tbody {
                            @for a in &o.anomalies {
                                tr {
                                    td { (when(a.at, now)) }
                                    td { a href={"/ui/devices/" (url_part(&a.device_id))} { (a.device_id) } }
                                    td { (badge(kind_tone(&a.kind), &a.kind)) }
                                }
                            }
                        }
                    }
                    p.small { a href="/ui/anomalies" { "All anomalies →" } }
                }
            }
        }
        @if st.pending > 0 {
            p { (badge(Tone::Warn, "action needed")) " "
                a href="/ui/devices?status=pending" { (number(st.pending)) " device(s) wait for a decision." } }
        }
        section.card.section {
            h2 { "Latest releases" }
            @let latest: Vec<ReleaseRow> = o.releases.iter().rev().take(5).cloned().collect();
            (releases::table(&latest, s, now))
            p.small { a href="/ui/releases" { "All releases →" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_count_then_name() {
        let mut s = FleetSummary::default();
        for (v, n) in [("1.0.0", 2), ("2.0.0", 5), ("0.9.0", 2), ("3.0.0", 0)] {
            s.by_version.insert(v.into(), n);
        }
        assert_eq!(
            by_version(&s),
            vec![("2.0.0", 5), ("0.9.0", 2), ("1.0.0", 2)]
        );
    }
}
