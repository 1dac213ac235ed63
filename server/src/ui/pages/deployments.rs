//! `GET /ui/deployments`: deployments with their per-phase progress; `POST
//! /ui/deployments/{id}/pause|resume|abort` (operators only, CSRF-checked). Reads and
//! changes go through [`crate::deployments::Fleet`], as the JSON API's do.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Permission;
use crate::deployments::{DeploymentView, PhaseProgress};
use crate::error::ApiFailure;
use crate::rollout::DeploymentState;
use crate::ui::error::UiError;
use crate::ui::layout::{self, badge, number, when, Section, Tone};
use crate::ui::session::UiUser;

use super::{blocking, notice_text, posted_csrf, url_part, CsrfForm};

/// Whether a deployment still runs (active or paused).
pub fn is_live(d: &DeploymentView) -> bool {
    matches!(
        d.status,
        DeploymentState::Active | DeploymentState::Paused { .. }
    )
}

fn state_badge(d: &DeploymentView) -> Markup {
    match &d.status {
        DeploymentState::Active => badge(Tone::Good, "active"),
        DeploymentState::Paused {
            automatic: true, ..
        } => badge(Tone::Bad, "auto-paused"),
        DeploymentState::Paused { .. } => badge(Tone::Warn, "paused"),
        DeploymentState::Aborted { .. } => badge(Tone::Bad, "aborted"),
        DeploymentState::Completed => badge(Tone::Muted, "completed"),
    }
}

fn reason(d: &DeploymentView) -> Option<&str> {
    match &d.status {
        DeploymentState::Paused { reason, .. } | DeploymentState::Aborted { reason } => {
            Some(reason.as_str()).filter(|r| !r.is_empty())
        }
        _ => None,
    }
}

/// Devices a phase reaches beyond the phases before it (`targeted` is cumulative).
fn reach(phases: &[PhaseProgress], i: usize) -> u64 {
    let before = i
        .checked_sub(1)
        .and_then(|j| phases.get(j))
        .map_or(0, |p| p.targeted);
    phases
        .get(i)
        .map_or(0, |p| p.targeted.saturating_sub(before))
}

/// One line per phase: its share and a bar of finished devices out of those it reaches
/// (or that started in it, if more).
fn phases(d: &DeploymentView) -> Markup {
    let live = is_live(d);
    let completed = d.status == DeploymentState::Completed;
    html! {
        div.phases {
            @for (i, p) in d.phases.iter().enumerate() {
                @let of = reach(&d.phases, i).max(p.started);
                @let current = live && i == d.phase;
                @let class = if i < d.phase || completed {
                    "phase phase-done"
                } else if current { "phase phase-current" } else { "phase phase-next" };
                div class=(class) {
                    (layout::progress(p.succeeded + p.failed, of, &format!(
                        "Phase {} · {}%: {} of {} started, {} ok, {} failed{}",
                        i + 1, p.percent, number(p.started), number(of), number(p.succeeded), number(p.failed),
                        if current { " (current)" } else { "" },
                    )))
                }
            }
        }
    }
}

/// The deployments table; operators (given as `user`) get pause/resume/abort buttons.
pub fn table(rows: &[DeploymentView], now: DateTime<Utc>, user: Option<&UiUser>) -> Markup {
    let operate = user.filter(|u| u.may(Permission::Operate));
    html! {
        @if rows.is_empty() {
            p.empty { "No deployment." }
        } @else {
            table.deployments {
                thead { tr {
                    th { "Release" } th { "Group" } th { "State" } th { "Progress by phase" }
                    th { "Created" }
                    @if operate.is_some() { th { "Actions" } }
                } }
                tbody {
                    @for d in rows {
                        tr id={"dep-" (d.id)} {
                            td {
                                strong { (d.version) } br;
                                span.small.muted { (d.release) } br;
                                span.mono.small.muted { (d.id) }
                            }
                            td.nowrap {
                                (d.group)
                                @if let Some(n) = d.group_members {
                                    br; span.small.muted { (number(n)) " devices" }
                                }
                            }
                            td.state {
                                (state_badge(d))
                                @if let Some(why) = reason(d) { br; span.small.muted { (why) } }
                            }
                            td { (phases(d)) }
                            td { (when(d.created_at, now)) br; span.small.muted { (d.created_by) } }
                            @if let Some(u) = operate {
                                td { div.actions { (buttons(u, d)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn buttons(user: &UiUser, d: &DeploymentView) -> Markup {
    let base = format!("/ui/deployments/{}", url_part(&d.id));
    let button = |action: &str, label: &str, class: &str| {
        layout::action_button(
            user,
            &format!("{base}/{action}"),
            label,
            class,
            &format!("{action}-{}", d.id),
        )
    };
    html! {
        @match &d.status {
            DeploymentState::Active => {
                (button("pause", "Pause", "small"))
                (button("abort", "Abort", "small danger"))
            }
            DeploymentState::Paused { .. } => {
                (button("resume", "Resume", "small good"))
                (button("abort", "Abort", "small danger"))
            }
            _ => span.muted { "—" },
        }
    }
}

/// Page query.
#[derive(Debug, Default, Deserialize)]
pub struct DeploymentsQuery {
    /// A fixed notice to show.
    #[serde(default)]
    pub notice: Option<String>,
}

/// `GET /ui/deployments`.
pub async fn show(
    State(state): State<AppState>,
    user: UiUser,
    q: Result<Query<DeploymentsQuery>, QueryRejection>,
) -> Result<Response, UiError> {
    user.caller.require(Permission::Read)?;
    let notice = q.ok().and_then(|Query(q)| q.notice);
    let (live, done): (Vec<DeploymentView>, Vec<DeploymentView>) =
        state.fleet.deployments().into_iter().partition(is_live);
    let now = state.now();
    let body = html! {
        @if let Some(n) = notice_text(notice.as_deref()) { (layout::notice(n)) }
        section.card.section id="running" {
            h2 { "Running" }
            (table(&live, now, Some(&user)))
        }
        section.card.section id="finished" {
            h2 { "Finished" }
            (table(&done, now, None))
        }
    };
    Ok(layout::html(layout::page(
        "Deployments",
        Section::Deployments,
        &user,
        body,
    )))
}

/// An operator's change to a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Pause,
    Resume,
    Abort,
}

async fn control(
    state: AppState,
    user: UiUser,
    id: String,
    form: Result<Form<CsrfForm>, FormRejection>,
    what: Control,
) -> Result<Response, UiError> {
    user.check_csrf(&posted_csrf(form))?;
    user.caller.require(Permission::Operate)?;
    let (fleet, actor, now) = (state.fleet.clone(), user.caller.actor(), state.now());
    blocking("changing a deployment", move || {
        let done = match what {
            Control::Pause => fleet.pause(&id, None, &actor, now),
            Control::Resume => fleet.resume(&id, &actor, now),
            Control::Abort => fleet.abort(&id, None, &actor, now),
        };
        done.map(|_| ()).map_err(|e| ApiFailure::from(e).into())
    })
    .await?;
    let notice = match what {
        Control::Pause => "paused",
        Control::Resume => "resumed",
        Control::Abort => "aborted",
    };
    Ok((
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("/ui/deployments?notice={notice}"))],
    )
        .into_response())
}

/// `POST /ui/deployments/{id}/pause`.
pub async fn pause(
    State(state): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, UiError> {
    control(state, user, id, form, Control::Pause).await
}

/// `POST /ui/deployments/{id}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, UiError> {
    control(state, user, id, form, Control::Resume).await
}

/// `POST /ui/deployments/{id}/abort`.
pub async fn abort(
    State(state): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, UiError> {
    control(state, user, id, form, Control::Abort).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(percent: u8, targeted: u64) -> PhaseProgress {
        PhaseProgress {
            percent,
            min_wait_secs: 0,
            targeted,
            started: 0,
            succeeded: 0,
            failed: 0,
        }
    }

    #[test]
    fn each_phase_reaches_what_the_ones_before_did_not() {
        let p = [phase(10, 3), phase(50, 12), phase(100, 30)];
        assert_eq!((reach(&p, 0), reach(&p, 1), reach(&p, 2)), (3, 9, 18));
        assert_eq!(reach(&p, 3), 0);
    }
}
