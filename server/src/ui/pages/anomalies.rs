//! `GET /ui/anomalies?after=`: the fleet's anomalies, newest first, a page at a time.

use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Permission;
use crate::devices::reports::{AnomalySource, StoredAnomaly};
use crate::ui::error::UiError;
use crate::ui::layout::{self, badge, when, Section, Tone};
use crate::ui::session::UiUser;

use super::{blocking, nonempty, url_part};

/// Anomalies per page.
const PAGE: usize = 50;

/// Paging.
#[derive(Debug, Default, Deserialize)]
pub struct AnomalyQuery {
    /// The cursor of the previous page.
    #[serde(default)]
    pub after: Option<String>,
}

/// The colour of an anomaly kind: integrity failures red, the rest amber.
pub fn kind_tone(kind: &str) -> Tone {
    match kind {
        "bad_signature"
        | "hash_mismatch"
        | "downgrade_offered"
        | "identity_conflict"
        | "oplog_chain_break"
        | "certificate_mismatch"
        | "expired_metadata"
        | "replayed_metadata" => Tone::Bad,
        _ => Tone::Warn,
    }
}

/// The anomalies table; `with_device` adds the device column.
pub fn table(items: &[StoredAnomaly], now: DateTime<Utc>, with_device: bool) -> Markup {
    html! {
        @if items.is_empty() {
            p.empty { "No anomalies." }
        } @else {
            table.anomalies {
                thead { tr {
                    th { "When" }
                    @if with_device { th { "Device" } }
                    th { "Kind" } th { "Source" } th { "Message" }
                } }
                tbody {
                    @for a in items {
                        tr {
                            td { (when(a.at, now)) }
                            @if with_device {
                                td { a href={"/ui/devices/" (url_part(&a.device_id))} { (a.device_id) } }
                            }
                            td { (badge(kind_tone(&a.kind), &a.kind)) }
                            td { @match a.source {
                                AnomalySource::Device => (badge(Tone::Muted, "device")),
                                AnomalySource::Server => (badge(Tone::Info, "server")),
                            } }
                            td.detail { (a.message) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/anomalies`.
pub async fn show(
    State(state): State<AppState>,
    user: UiUser,
    q: Result<Query<AnomalyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    user.caller.require(Permission::Read)?;
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let after = match nonempty(q.after) {
        None => None,
        Some(c) => Some(
            hex::decode(&c)
                .map_err(|_| UiError::BadRequest("after must be a page cursor".into()))?,
        ),
    };
    let first_page = after.is_none();
    let devices = state.devices.clone();
    let (items, next) = blocking("listing anomalies", move || {
        devices
            .list_anomalies(after.as_deref(), PAGE)
            .map_err(|e| UiError::internal("listing anomalies", e))
    })
    .await?;
    let now = state.now();
    let body = html! {
        section.card {
            (table(&items, now, true))
            div.pager {
                @if first_page { span {} } @else { a href="/ui/anomalies" { "← Newest" } }
                @if let Some(n) = next { a href={"/ui/anomalies?after=" (n)} { "Older →" } }
            }
        }
    };
    Ok(layout::html(layout::page(
        "Anomalies",
        Section::Anomalies,
        &user,
        body,
    )))
}
