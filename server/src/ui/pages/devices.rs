//! `GET /ui/devices` (filters: status, hardware id, version; paging), `GET
//! /ui/devices/{id}` (inventory, status history, operation log, anomalies) and `POST
//! /ui/devices/{id}/accept|reject` (operators only, CSRF-checked).

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use ota_common::api::UpdateState;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Permission;
use crate::devices::reports::DeviceDetail;
use crate::devices::{DeviceError, DeviceFilter, DeviceRecord, DeviceStatus, Devices};
use crate::store::StoreError;
use crate::ui::error::UiError;
use crate::ui::layout::{self, badge, short, text_opt, when, when_opt, Section, Tone};
use crate::ui::session::UiUser;

use super::{blocking, nonempty, notice_text, posted_csrf, url_part, CsrfForm};

/// Devices per page.
pub const PAGE: usize = 50;
/// Records scanned per store read while filtering by version.
const SCAN: usize = 500;
/// Reports, anomalies and log records on a device's page.
const DETAIL_LIMIT: usize = 50;

/// Filters and paging of the list.
#[derive(Debug, Default, Deserialize)]
pub struct DeviceQuery {
    /// `pending`, `accepted`, `rejected`, `decommissioned`, or empty for all.
    #[serde(default)]
    pub status: Option<String>,
    /// Only this board.
    #[serde(default)]
    pub hardware_id: Option<String>,
    /// Only devices running this version.
    #[serde(default)]
    pub version: Option<String>,
    /// Ids after this one.
    #[serde(default)]
    pub after: Option<String>,
    /// A fixed notice to show.
    #[serde(default)]
    pub notice: Option<String>,
}

/// The colour of a device status.
pub fn status_badge(s: DeviceStatus) -> Markup {
    match s {
        DeviceStatus::Pending => badge(Tone::Warn, "pending"),
        DeviceStatus::Accepted => badge(Tone::Good, "accepted"),
        DeviceStatus::Rejected => badge(Tone::Bad, "rejected"),
        DeviceStatus::Decommissioned => badge(Tone::Muted, "decommissioned"),
    }
}

/// The colour of an update state.
pub fn update_badge(s: UpdateState) -> Markup {
    match s {
        UpdateState::Downloading => badge(Tone::Info, "downloading"),
        UpdateState::Installed => badge(Tone::Info, "installed"),
        UpdateState::Booted => badge(Tone::Info, "booted"),
        UpdateState::Committed => badge(Tone::Good, "committed"),
        UpdateState::RolledBack => badge(Tone::Bad, "rolled back"),
        UpdateState::Failed => badge(Tone::Bad, "failed"),
    }
}

/// One page of devices matching `filter` and `version`, after `after`; and the id to
/// continue after when there may be more.
pub fn page(
    devices: &Devices,
    filter: &DeviceFilter,
    version: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<DeviceRecord>, Option<String>), StoreError> {
    let Some(version) = version else {
        return devices.list(filter, after, limit);
    };
    let mut out = Vec::new();
    let mut cursor = after.map(str::to_string);
    loop {
        let (recs, next) = devices.list(filter, cursor.as_deref(), SCAN)?;
        for r in recs {
            if r.current_version.as_deref() == Some(version) {
                out.push(r);
                if out.len() == limit {
                    let last = out.last().map(|r| r.id.clone());
                    return Ok((out, last));
                }
            }
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok((out, None)),
        }
    }
}

enum Listing {
    Devices(Vec<DeviceRecord>),
    Tombstones(Vec<(String, DateTime<Utc>)>),
}

/// `GET /ui/devices`.
pub async fn list(
    State(state): State<AppState>,
    user: UiUser,
    q: Result<Query<DeviceQuery>, QueryRejection>,
) -> Result<Response, UiError> {
    user.caller.require(Permission::Read)?;
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| UiError::BadRequest(e.body_text()))?;
    let status_text = nonempty(q.status);
    let status = match status_text.as_deref() {
        None => None,
        Some(s) => Some(DeviceStatus::parse(s).ok_or_else(|| {
            UiError::BadRequest(
                "status must be pending, accepted, rejected or decommissioned".into(),
            )
        })?),
    };
    let (hardware_id, version, after) = (
        nonempty(q.hardware_id),
        nonempty(q.version),
        nonempty(q.after),
    );
    let devices = state.devices.clone();
    let (hw, ver, aft) = (hardware_id.clone(), version.clone(), after.clone());
    let (listing, next) = blocking("listing devices", move || {
        let fail = |e| UiError::internal("listing devices", e);
        if status == Some(DeviceStatus::Decommissioned) {
            let (t, next) = devices
                .list_tombstones(aft.as_deref(), PAGE)
                .map_err(fail)?;
            let t = t.into_iter().map(|t| (t.id, t.decommissioned_at)).collect();
            return Ok((Listing::Tombstones(t), next));
        }
        let filter = DeviceFilter {
            status,
            hardware_id: hw,
        };
        let (recs, next) =
            page(&devices, &filter, ver.as_deref(), aft.as_deref(), PAGE).map_err(fail)?;
        Ok((Listing::Devices(recs), next))
    })
    .await?;
    let now = state.now();
    let keep = |extra: &str| -> String {
        let mut qs = String::new();
        for (k, v) in [
            ("status", &status_text),
            ("hardware_id", &hardware_id),
            ("version", &version),
        ] {
            if let Some(v) = v {
                qs.push_str(&format!("{k}={}&", url_part(v)));
            }
        }
        format!("/ui/devices?{qs}{extra}")
    };
    let body = html! {
        @if let Some(n) = notice_text(q.notice.as_deref()) { (layout::notice(n)) }
        section.card {
            form.filters method="get" action="/ui/devices" {
                label { "Status"
                    select name="status" id="filter-status" {
                        option value="" selected[status_text.is_none()] { "any" }
                        @for s in ["pending", "accepted", "rejected", "decommissioned"] {
                            option value=(s) selected[status_text.as_deref() == Some(s)] { (s) }
                        }
                    }
                }
                label { "Hardware id"
                    input type="text" name="hardware_id" value=[hardware_id.as_deref()] placeholder="any";
                }
                label { "Version"
                    input type="text" name="version" value=[version.as_deref()] placeholder="any";
                }
                button.primary type="submit" { "Filter" }
                a.button href="/ui/devices" { "Clear" }
            }
        }
        section.card {
            @match &listing {
                Listing::Devices(recs) => (device_table(recs, now)),
                Listing::Tombstones(t) => {
                    @if t.is_empty() { p.empty { "No decommissioned devices." } } @else {
                        table { thead { tr { th { "Device" } th { "Status" } th { "Decommissioned" } } }
                            tbody { @for (id, at) in t { tr {
                                td.mono { (id) } td { (status_badge(DeviceStatus::Decommissioned)) } td { (when(*at, now)) }
                            } } } }
                    }
                },
            }
            div.pager {
                @if after.is_some() { a href=(keep("")) { "← First page" } } @else { span {} }
                @if let Some(n) = &next { a href=(keep(&format!("after={}", url_part(n)))) id="next-page" { "Next page →" } }
            }
        }
    };
    Ok(layout::html(layout::page(
        "Devices",
        Section::Devices,
        &user,
        body,
    )))
}

fn device_table(recs: &[DeviceRecord], now: DateTime<Utc>) -> Markup {
    html! {
        @if recs.is_empty() {
            p.empty { "No device matches." }
        } @else {
            table id="devices" {
                thead { tr {
                    th { "Device" } th { "Status" } th { "Hardware" } th { "Version" }
                    th { "Slot" } th { "Last update" } th { "Last seen" }
                } }
                tbody {
                    @for d in recs {
                        tr {
                            td.mono { a href={"/ui/devices/" (url_part(&d.id))} { (d.id) } }
                            td { (status_badge(d.status)) }
                            td { (text_opt(d.hardware_id.as_deref())) }
                            td { (text_opt(d.current_version.as_deref())) }
                            td { (text_opt(d.active_slot.as_deref())) }
                            td { @match &d.last_status {
                                Some(s) => { (update_badge(s.state)) " " span.small { (s.version) } },
                                None => span.muted { "—" },
                            } }
                            td { (when_opt(d.last_seen, now)) }
                        }
                    }
                }
            }
        }
    }
}

/// Detail query.
#[derive(Debug, Default, Deserialize)]
pub struct DetailQuery {
    /// A fixed notice to show.
    #[serde(default)]
    pub notice: Option<String>,
}

/// `GET /ui/devices/{id}`.
pub async fn detail(
    State(state): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
    q: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Response, UiError> {
    user.caller.require(Permission::Read)?;
    let notice = q.ok().and_then(|Query(q)| q.notice);
    let devices = state.devices.clone();
    let lookup = id.clone();
    let d = blocking("reading a device", move || {
        devices
            .detail(&lookup, DETAIL_LIMIT)
            .map_err(|e| UiError::internal("reading a device", e))?
            .ok_or_else(|| UiError::NotFound(format!("no device {lookup:?}")))
    })
    .await?;
    let now = state.now();
    let body = render_detail(&d, &user, notice.as_deref(), now);
    Ok(layout::html(layout::page(
        &format!("Device {id}"),
        Section::Devices,
        &user,
        body,
    )))
}

fn render_detail(
    d: &DeviceDetail,
    user: &UiUser,
    notice: Option<&str>,
    now: DateTime<Utc>,
) -> Markup {
    html! {
        @if let Some(n) = notice_text(notice) { (layout::notice(n)) }
        @if let Some(t) = &d.decommissioned {
            section.card {
                p { (status_badge(DeviceStatus::Decommissioned)) " since " (when(t.decommissioned_at, now))
                    ". Its identity is revoked for good and its records were deleted." }
            }
        }
        @if let Some(r) = &d.device {
            div.grid2.section {
                section.card {
                    h2 { "Inventory" }
                    dl.facts {
                        dt { "Status" } dd { (status_badge(r.status)) " " span.small.muted { "by " (r.status_changed_by) ", " (when(r.status_changed_at, now)) } }
                        dt { "Hardware" } dd { (text_opt(r.hardware_id.as_deref())) }
                        dt { "Version" } dd { (text_opt(r.current_version.as_deref())) }
                        dt { "Active slot" } dd { (text_opt(r.active_slot.as_deref())) }
                        dt { "Agent" } dd { (text_opt(r.agent_version.as_deref())) }
                        dt { "First seen" } dd { (when_opt(r.first_seen, now)) }
                        dt { "Last seen" } dd { (when_opt(r.last_seen, now)) " " span.small.muted { (r.last_peer.as_deref().unwrap_or("")) } }
                        dt { "Certificate" } dd.mono.small { (text_opt(r.cert_sha256.as_deref().map(|c| short(c, 16)))) }
                        @if let Some(u) = &r.pending_update {
                            dt { "Pending update" } dd { (u.target) " (" (u.version) ")" }
                        }
                        @for (k, v) in &r.attributes { dt { (k) } dd { (v) } }
                    }
                }
                section.card {
                    h2 { "Decision" }
                    @if user.may(Permission::Operate) {
                        p.muted.small { "Accepted devices may poll, report and update; rejected ones may not." }
                        div.actions {
                            @if r.status != DeviceStatus::Accepted {
                                (layout::action_button(user, &format!("/ui/devices/{}/accept", url_part(&r.id)), "Accept", "good", "accept"))
                            }
                            @if r.status != DeviceStatus::Rejected {
                                (layout::action_button(user, &format!("/ui/devices/{}/reject", url_part(&r.id)), "Reject", "danger", "reject"))
                            }
                        }
                    } @else {
                        p.muted { "Your role may look but not decide." }
                    }
                }
            }
        }
        section.card {
            h2 { "Status history" }
            @if d.status_reports.is_empty() { p.empty { "No status reports." } } @else {
                table { thead { tr { th { "When" } th { "State" } th { "Target" } th { "Version" } th { "Deployment" } th { "Detail" } } }
                    tbody { @for s in &d.status_reports { tr {
                        td { (when(s.report.at, now)) }
                        td { (update_badge(s.report.state)) }
                        td.small { (s.report.target) }
                        td { (s.report.version) }
                        td.small { (text_opt(s.report.deployment.as_deref())) }
                        td.detail { (s.report.detail.as_deref().unwrap_or("")) }
                    } } }
                }
            }
        }
        section.card {
            h2 { "Anomalies" }
            (super::anomalies::table(&d.anomalies, now, false))
        }
        section.card {
            h2 { "Operation log" }
            @if d.oplog.is_empty() { p.empty { "No operation-log records uploaded." } } @else {
                table { thead { tr { th.num { "Seq" } th { "At" } th { "Step" } th { "Detail" } th { "Chain" } } }
                    tbody { @for o in d.oplog.iter().rev() { tr {
                        td.num.mono { (o.record.seq) }
                        td.small { (o.record.at) }
                        td { code { (o.record.kind) } }
                        td.detail.mono { (o.record.detail.to_string()) }
                        td { @if o.chain_break.is_some() { (badge(Tone::Bad, "broken")) } @else { (badge(Tone::Good, "ok")) } }
                    } } }
                }
            }
        }
    }
}

fn decision_failure(e: DeviceError) -> UiError {
    match e {
        DeviceError::Unknown { id } => UiError::NotFound(format!("no device {id:?}")),
        DeviceError::Decommissioned { id, at } => {
            UiError::Conflict(format!("device {id} was decommissioned at {at}"))
        }
        other => crate::error::ApiFailure::from(other).into(),
    }
}

async fn decide(
    state: AppState,
    user: UiUser,
    id: String,
    form: Result<Form<CsrfForm>, FormRejection>,
    status: DeviceStatus,
) -> Result<Response, UiError> {
    user.check_csrf(&posted_csrf(form))?;
    user.caller.require(Permission::Operate)?;
    let (devices, audit, actor, now) = (
        state.devices.clone(),
        state.audit.clone(),
        user.caller.actor(),
        state.now(),
    );
    let target = id.clone();
    let decision = blocking("deciding on a device", move || {
        devices
            .decide(&target, status, &audit, &actor, now)
            .map_err(decision_failure)
    })
    .await?;
    let notice = match (decision.changed, status) {
        (false, _) => "unchanged",
        (true, DeviceStatus::Accepted) => "accepted",
        (true, _) => "rejected",
    };
    let to = format!("/ui/devices/{}?notice={notice}", url_part(&id));
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response())
}

/// `POST /ui/devices/{id}/accept`.
pub async fn accept(
    State(state): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, UiError> {
    decide(state, user, id, form, DeviceStatus::Accepted).await
}

/// `POST /ui/devices/{id}/reject`.
pub async fn reject(
    State(state): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, UiError> {
    decide(state, user, id, form, DeviceStatus::Rejected).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::devices::testing::{ident, peer, registry, req};

    #[test]
    fn version_filter_pages_through_matching_devices_only() {
        let (_s, d, _a) = registry();
        let now = Utc::now();
        let mut v2 = req("hw");
        v2.current_version = Some("2.0.0".into());
        for i in 0..7 {
            let id = format!("d{i}");
            let r = if i % 2 == 0 { v2.clone() } else { req("hw") };
            d.poll(&ident(&id, &id), &r, peer(), now).unwrap();
        }
        let f = DeviceFilter::default();
        let (p1, next) = page(&d, &f, Some("2.0.0"), None, 2).unwrap();
        assert_eq!(
            p1.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["d0", "d2"]
        );
        let (p2, next) = page(&d, &f, Some("2.0.0"), next.as_deref(), 2).unwrap();
        assert_eq!(
            p2.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["d4", "d6"]
        );
        let (p3, next) = page(&d, &f, Some("2.0.0"), next.as_deref(), 2).unwrap();
        assert!(p3.is_empty() && next.is_none());
        let (all, _) = page(&d, &f, Some("1.0.0"), None, 10).unwrap();
        assert_eq!(all.len(), 3);
    }
}
