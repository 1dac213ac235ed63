//! `GET /ui/audit?before=`: the audit log, newest first, a page at a time.

use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use crate::app::AppState;
use crate::audit::{AuditEntry, AuditLog, AUDIT_HEAD_TREE};
use crate::auth::Permission;
use crate::store::{Store, StoreExt};
use crate::ui::error::UiError;
use crate::ui::layout::{self, badge, short, when, Section, Tone};
use crate::ui::session::UiUser;

use super::blocking;

/// Entries per page.
const PAGE: u64 = 50;
/// Longest subject shown whole, in characters.
const SUBJECT_CHARS: usize = 24;
/// Longest detail shown, in characters.
const DETAIL_CHARS: usize = 160;

/// Paging.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    /// Show entries with a smaller sequence number.
    #[serde(default)]
    pub before: Option<u64>,
}

/// The last sequence number of the log (0 when empty).
pub fn head_seq(store: &dyn Store) -> Result<u64, UiError> {
    let head: Option<Value> = store
        .get_json(AUDIT_HEAD_TREE, b"head")
        .map_err(|e| UiError::internal("reading the audit head", e))?;
    Ok(head
        .as_ref()
        .and_then(|h| h.get("seq"))
        .and_then(Value::as_u64)
        .unwrap_or(0))
}

/// Up to [`PAGE`] entries with `seq < before`, newest first.
pub fn page_before(audit: &AuditLog, before: u64) -> Result<Vec<AuditEntry>, UiError> {
    let last = before.saturating_sub(1);
    let after = last.saturating_sub(PAGE);
    let limit = usize::try_from(last - after).unwrap_or(usize::MAX);
    let mut entries = audit
        .list(after, limit)
        .map_err(|e| UiError::internal("reading the audit log", e))?;
    entries.retain(|e| e.seq < before);
    entries.reverse();
    Ok(entries)
}

fn action_tone(action: &str) -> Tone {
    if action.contains("abort")
        || action.contains("revoke")
        || action.contains("reject")
        || action.contains("decommission")
        || action.contains("withdraw")
    {
        Tone::Bad
    } else if action.contains("pause") || action.contains("root") {
        Tone::Warn
    } else if action.starts_with("ui.") || action.starts_with("token") {
        Tone::Muted
    } else {
        Tone::Info
    }
}

/// `key=value` pairs (strings unquoted, the rest as compact JSON), cut to
/// [`DETAIL_CHARS`]: easier to scan than raw JSON.
fn detail_text(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        v => v.to_string(),
    };
    if text.chars().count() > DETAIL_CHARS {
        format!("{}…", short(&text, DETAIL_CHARS))
    } else {
        text
    }
}

/// A subject, shortened when it is a long hash (the full text on hover).
fn subject(s: &str) -> Markup {
    if s.chars().count() > SUBJECT_CHARS {
        html! { span title=(s) { (short(s, SUBJECT_CHARS)) "…" } }
    } else {
        html! { (s) }
    }
}

fn table(entries: &[AuditEntry], now: DateTime<Utc>) -> Markup {
    html! {
        @if entries.is_empty() {
            p.empty { "The audit log is empty." }
        } @else {
            table id="audit" {
                thead { tr {
                    th.num { "#" } th { "When" } th { "Actor" } th { "Action" }
                    th { "Subject" } th { "Detail" }
                } }
                tbody {
                    @for e in entries {
                        tr {
                            td.num.mono { (e.seq) }
                            td { (when(e.at, now)) }
                            td.mono.small.nowrap { (e.actor) }
                            td { (badge(action_tone(&e.action), &e.action)) }
                            td.mono.small { (subject(&e.subject)) }
                            td.detail.mono { (detail_text(&e.detail)) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/audit`.
pub async fn show(
    State(state): State<AppState>,
    user: UiUser,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    user.caller.require(Permission::Read)?;
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let (store, audit) = (state.store.clone(), state.audit.clone());
    let (head, entries) = blocking("reading the audit log", move || {
        let head = head_seq(store.as_ref())?;
        let before = q.before.unwrap_or(u64::MAX).min(head.saturating_add(1));
        Ok((head, page_before(&audit, before)?))
    })
    .await?;
    let now = state.now();
    let oldest = entries.last().map(|e| e.seq);
    let newest = entries.first().map(|e| e.seq);
    let body = html! {
        section.card {
            p.muted.small {
                (head) " entries, hash-chained: each entry commits to the one before it."
            }
            (table(&entries, now))
            div.pager {
                @if newest.is_some_and(|n| n < head) { a href="/ui/audit" { "← Newest" } } @else { span {} }
                @if let Some(o) = oldest.filter(|o| *o > 1) { a href={"/ui/audit?before=" (o)} { "Older →" } }
            }
        }
    };
    Ok(layout::html(layout::page(
        "Audit log",
        Section::Audit,
        &user,
        body,
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn pages_run_newest_first_down_to_the_first_entry() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let audit = AuditLog::new(Arc::clone(&store));
        assert_eq!(head_seq(store.as_ref()).unwrap(), 0);
        assert!(page_before(&audit, 1).unwrap().is_empty());
        let now = Utc::now();
        for i in 0..(PAGE + 7) {
            audit
                .append("t", "publish", &format!("r{i}"), json!({}), now)
                .unwrap();
        }
        let head = head_seq(store.as_ref()).unwrap();
        assert_eq!(head, PAGE + 7);
        let first = page_before(&audit, head + 1).unwrap();
        assert_eq!(first.len() as u64, PAGE);
        assert_eq!(first[0].seq, head);
        assert_eq!(first.last().unwrap().seq, 8);
        let second = page_before(&audit, 8).unwrap();
        assert_eq!(
            second.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..8).rev().collect::<Vec<_>>()
        );
    }

    #[test]
    fn long_details_are_cut() {
        let long = json!({"x": "y".repeat(500)});
        assert!(detail_text(&long).chars().count() <= DETAIL_CHARS + 1);
        assert_eq!(detail_text(&json!({})), "");
        assert_eq!(
            detail_text(&json!({"from": "pending", "n": 2})),
            "from=pending, n=2"
        );
        assert!(subject(&"a".repeat(64)).into_string().contains("title="));
    }
}
