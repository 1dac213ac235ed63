//! Operator changes to groups and deployments: create, delete, pause, resume, abort, and
//! the aborts that follow a withdrawn release. Every function blocks on disk I/O: call it
//! from a blocking thread.
//!
//! All changes run under the book lock, store first, memory after: each change and its
//! audit entry are one atomic, durable batch. Lock order: book, then a registry shard
//! (one at a time, only to copy it when counting members), then the index; nothing takes
//! them the other way round.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ota_common::release::ReleaseInfo;
use serde_json::json;

use super::groups::{GroupSpec, GROUPS_TREE};
use super::index::Counted;
use super::model::{check_reason, Deployment, DeploymentSpec, ReleaseTarget, DEPLOYMENTS_TREE};
use super::{Book, DeploymentView, Fleet, FleetError, GroupView};
use crate::repo::{Repository, RELEASES_TREE};
use crate::rollout::{DeploymentState, PhaseCounts};
use crate::routes::publish::ReleaseRecord;
use crate::store::{Op, StoreExt};

/// The actor of automatic changes in the audit log.
pub const SERVER_ACTOR: &str = "server";

fn invalid(what: &'static str) -> impl FnOnce(String) -> FleetError {
    move |reason| FleetError::Invalid { what, reason }
}

impl Fleet {
    /// Creates a group (audited as `group.create`).
    pub fn create_group(
        &self,
        spec: GroupSpec,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<GroupView, FleetError> {
        let group = Arc::new(spec.into_group(actor, now).map_err(invalid("group"))?);
        let mut book = self.book();
        if book.groups.contains_key(&group.name) {
            return Err(FleetError::GroupExists(group.name.clone()));
        }
        let ops = vec![
            Op::expect(GROUPS_TREE, group.name.as_bytes(), None),
            Op::put_json(GROUPS_TREE, group.name.as_bytes(), group.as_ref())?,
        ];
        let detail = match &group.members {
            super::Membership::Static { devices } => {
                json!({"kind": "static", "devices": devices.len()})
            }
            super::Membership::Dynamic { filter } => json!({"kind": "dynamic", "filter": filter}),
        };
        self.audit
            .append_with(ops, actor, "group.create", &group.name, detail, now)?;
        self.index
            .count_and_add(&self.devices, Counted::Group(Arc::clone(&group)));
        book.groups.insert(group.name.clone(), Arc::clone(&group));
        Ok(self.group_view(&book, &group, false))
    }

    /// Deletes a group no running deployment uses (audited as `group.delete`).
    pub fn delete_group(
        &self,
        name: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(), FleetError> {
        let mut book = self.book();
        if !book.groups.contains_key(name) {
            return Err(FleetError::NoGroup(name.to_owned()));
        }
        let users: Vec<String> = book
            .deployments
            .values()
            .filter(|d| d.is_live() && d.group == name)
            .map(|d| d.id.clone())
            .collect();
        if !users.is_empty() {
            return Err(FleetError::GroupInUse {
                name: name.to_owned(),
                deployments: users,
            });
        }
        let ops = vec![Op::delete(GROUPS_TREE, name.as_bytes())];
        self.audit
            .append_with(ops, actor, "group.delete", name, json!({}), now)?;
        self.index.remove_group(name);
        book.groups.remove(name);
        Ok(())
    }

    /// Creates and starts a deployment of a release in the current signed targets that
    /// was not withdrawn (audited as `deployment.create`).
    pub fn create_deployment(
        &self,
        repo: &Repository,
        spec: DeploymentSpec,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<DeploymentView, FleetError> {
        let policy = spec.policy().map_err(invalid("rollout policy"))?;
        let mut book = self.book();
        let group = book
            .groups
            .get(&spec.group)
            .cloned()
            .ok_or_else(|| FleetError::UnknownGroup(spec.group.clone()))?;
        // Checked under the book lock: a withdrawal writes its record first and then
        // aborts under this lock, so no deployment of a withdrawn release survives.
        let info = self.release_info(repo, &spec.release)?;
        let mut id = format!("dep-{:016x}", rand::random::<u64>());
        while book.deployments.contains_key(&id) {
            id = format!("dep-{:016x}", rand::random::<u64>());
        }
        let dep = Deployment {
            id: id.clone(),
            release: spec.release.clone(),
            version: info.version.to_string(),
            hardware_ids: info.hardware_ids,
            group: group.name.clone(),
            counts: vec![PhaseCounts::default(); policy.phases.len()],
            policy,
            status: DeploymentState::Active,
            phase: 0,
            phase_started_at: now,
            baseline: PhaseCounts::default(),
            targeted: None,
            created_at: now,
            created_by: actor.to_owned(),
            updated_at: now,
            finished_at: None,
        };
        let ops = vec![
            Op::expect(DEPLOYMENTS_TREE, id.as_bytes(), None),
            Op::put_json(DEPLOYMENTS_TREE, id.as_bytes(), &dep)?,
        ];
        let detail = json!({
            "release": dep.release, "version": dep.version, "group": dep.group,
            "policy": dep.policy,
        });
        self.audit
            .append_with(ops, actor, "deployment.create", &id, detail, now)?;
        self.index.count_and_add(
            &self.devices,
            Counted::Deployment {
                id: id.clone(),
                group: Arc::clone(&group),
                policy: dep.policy.clone(),
                target: ReleaseTarget::of(&dep),
            },
        );
        book.sets.insert(id.clone(), Arc::default());
        book.deployments.insert(id.clone(), dep);
        self.install_live(&book);
        tracing::info!(deployment = %id, release = %spec.release, group = %spec.group, "deployment created");
        Ok(self.deployment_view(&book.deployments[&id]))
    }

    fn release_info(&self, repo: &Repository, name: &str) -> Result<ReleaseInfo, FleetError> {
        let view = repo.view();
        let file = view
            .targets_signed
            .targets
            .get(name)
            .ok_or_else(|| FleetError::UnknownRelease(name.to_owned()))?;
        let info = ReleaseInfo::from_target(name, file)?;
        let rec: Option<ReleaseRecord> = self.store.get_json(RELEASES_TREE, name.as_bytes())?;
        if let Some(at) = rec.and_then(|r| r.withdrawn_at) {
            return Err(FleetError::ReleaseWithdrawn {
                name: name.to_owned(),
                at,
            });
        }
        Ok(info)
    }

    /// Pauses an active deployment (audited as `deployment.pause`).
    pub fn pause(
        &self,
        id: &str,
        reason: Option<String>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<DeploymentView, FleetError> {
        let reason = reason.unwrap_or_else(|| "paused by an operator".into());
        check_reason(&reason).map_err(invalid("reason"))?;
        let mut book = self.book();
        let mut dep = live_deployment(&book, id, "pause", |s| *s == DeploymentState::Active)?;
        dep.status = DeploymentState::Paused {
            reason: reason.clone(),
            automatic: false,
        };
        let detail = json!({"reason": reason, "automatic": false});
        self.commit(&mut book, dep, actor, "deployment.pause", detail, now)?;
        Ok(self.deployment_view(&book.deployments[id]))
    }

    /// Resumes a paused deployment (audited as `deployment.resume`). The current phase's
    /// counts become the baseline: only failures after the resume count toward the next
    /// automatic pause.
    pub fn resume(
        &self,
        id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<DeploymentView, FleetError> {
        let mut book = self.book();
        let mut dep = live_deployment(&book, id, "resume", |s| {
            matches!(s, DeploymentState::Paused { .. })
        })?;
        let was = dep.status.clone();
        dep.status = DeploymentState::Active;
        dep.baseline = dep.counts.get(dep.phase).copied().unwrap_or_default();
        let detail = json!({"was": was, "baseline": dep.baseline});
        self.commit(&mut book, dep, actor, "deployment.resume", detail, now)?;
        Ok(self.deployment_view(&book.deployments[id]))
    }

    /// Aborts a running deployment for good (audited as `deployment.abort`): no further
    /// directives, not even to devices whose update is running.
    pub fn abort(
        &self,
        id: &str,
        reason: Option<String>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<DeploymentView, FleetError> {
        let reason = reason.unwrap_or_else(|| "aborted by an operator".into());
        check_reason(&reason).map_err(invalid("reason"))?;
        let mut book = self.book();
        let mut dep = live_deployment(&book, id, "abort", |_| true)?;
        dep.status = DeploymentState::Aborted {
            reason: reason.clone(),
        };
        dep.finished_at = Some(now);
        let detail = json!({"reason": reason});
        self.commit(&mut book, dep, actor, "deployment.abort", detail, now)?;
        Ok(self.deployment_view(&book.deployments[id]))
    }

    /// Aborts every running deployment of `release` (it was withdrawn); each abort is
    /// audited with `actor`. Returns the ids aborted.
    pub fn abort_release(
        &self,
        release: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, FleetError> {
        let mut book = self.book();
        let ids: Vec<String> = book
            .deployments
            .values()
            .filter(|d| d.is_live() && d.release == release)
            .map(|d| d.id.clone())
            .collect();
        for id in &ids {
            let mut dep = book.deployments[id].clone();
            let reason = format!("release {release} was withdrawn");
            dep.status = DeploymentState::Aborted {
                reason: reason.clone(),
            };
            dep.finished_at = Some(now);
            let detail = json!({"reason": reason, "withdrawn": release});
            self.commit(&mut book, dep, actor, "deployment.abort", detail, now)?;
            tracing::warn!(deployment = %id, %release, "deployment aborted: release withdrawn");
        }
        Ok(ids)
    }

    /// Stores `dep` with an audit entry (one atomic, durable batch), then updates the book
    /// and the poll path's snapshot. A deployment that stops running gets its targeted
    /// counts frozen and leaves the index.
    pub(super) fn commit(
        &self,
        book: &mut Book,
        mut dep: Deployment,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), FleetError> {
        dep.updated_at = now;
        let ending = !dep.is_live()
            && book
                .deployments
                .get(&dep.id)
                .is_some_and(Deployment::is_live);
        if ending {
            dep.targeted = self.index.targeted(&dep.id);
        }
        let ops = vec![Op::put_json(DEPLOYMENTS_TREE, dep.id.as_bytes(), &dep)?];
        self.audit
            .append_with(ops, actor, action, &dep.id, detail, now)?;
        if ending {
            self.index.remove_deployment(&dep.id);
            book.sets.remove(&dep.id);
            book.last_failed.remove(&dep.id);
        }
        book.deployments.insert(dep.id.clone(), dep);
        self.install_live(book);
        Ok(())
    }
}

/// A copy of the running deployment `id`, if `allowed` accepts its state.
fn live_deployment(
    book: &Book,
    id: &str,
    action: &'static str,
    allowed: impl Fn(&DeploymentState) -> bool,
) -> Result<Deployment, FleetError> {
    let dep = book
        .deployments
        .get(id)
        .ok_or_else(|| FleetError::NoDeployment(id.to_owned()))?;
    if !dep.is_live() || !allowed(&dep.status) {
        return Err(FleetError::Transition {
            id: id.to_owned(),
            state: dep.state_name(),
            action,
        });
    }
    Ok(dep.clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::deployments::testing::{group, publish, spec};

    #[test]
    fn requests_naming_missing_things_are_refused() {
        let (state, _dir) = crate::devices::testing::state();
        let t0 = Utc::now();
        publish(&state, "fw-2", "2.0.0");
        let missing_group =
            state
                .fleet
                .create_deployment(&state.repo, spec(&[(100, 0)], 50, 1), "op", t0);
        assert!(matches!(missing_group, Err(FleetError::UnknownGroup(_))));
        group(&state);
        let mut s = spec(&[(100, 0)], 50, 1);
        s.release = "nope".into();
        assert!(matches!(
            state.fleet.create_deployment(&state.repo, s, "op", t0),
            Err(FleetError::UnknownRelease(_))
        ));
        assert!(matches!(
            state
                .fleet
                .create_deployment(&state.repo, spec(&[(50, 0), (40, 0)], 50, 1), "op", t0),
            Err(FleetError::Invalid { .. })
        ));
        let again = GroupSpec {
            name: "beta".into(),
            devices: Some(vec!["x".into()]),
            filter: None,
        };
        assert!(matches!(
            state.fleet.create_group(again, "op", t0),
            Err(FleetError::GroupExists(_))
        ));
        assert!(matches!(
            state.fleet.delete_group("nope", "op", t0),
            Err(FleetError::NoGroup(_))
        ));
    }
}
