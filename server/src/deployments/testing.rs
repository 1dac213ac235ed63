//! Test support for the fleet: releases, devices, groups and reports.

#![allow(clippy::unwrap_used)] // test support may unwrap (docs/HELPERS.md)

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ota_common::api::{PollRequest, StatusReport, UpdateState};
use ota_common::release::ReleaseInfo;
use sha2::{Digest, Sha256, Sha512};

use super::{DeploymentSpec, GroupFilter, GroupSpec};
use crate::app::AppState;
use crate::devices::testing::{ident, peer};
use crate::devices::DeviceStatus;
use crate::repo::publish::{BlobFacts, NewRelease};
use crate::rollout::PhaseSpec;

/// Publishes release `name` at `version` for board `hw` (development signing).
pub(crate) fn publish(state: &AppState, name: &str, version: &str) {
    let facts = BlobFacts {
        sha256: hex::encode(Sha256::digest(name.as_bytes())),
        sha512: hex::encode(Sha512::digest(name.as_bytes())),
        length: 10,
    };
    state.repo.record_blob(&facts).unwrap();
    let release = NewRelease {
        name: name.into(),
        blob: facts,
        info: ReleaseInfo {
            version: version.parse().unwrap(),
            hardware_ids: vec!["hw".into()],
            support_until: None,
            zstd: None,
        },
    };
    state.repo.publish_release(&release, Utc::now()).unwrap();
}

/// Registers and accepts `id` on board `hw` running `version`.
pub(crate) fn device(state: &AppState, id: &str, version: &str, at: DateTime<Utc>) {
    let req = PollRequest {
        hardware_id: "hw".into(),
        current_version: Some(version.into()),
        active_slot: None,
        agent_version: None,
        attributes: BTreeMap::from([("ring".to_string(), "beta".to_string())]),
    };
    state
        .devices
        .poll(&ident(id, "F"), &req, peer(), at)
        .unwrap();
    state
        .devices
        .decide(id, DeviceStatus::Accepted, &state.audit, "op", at)
        .unwrap();
}

pub(crate) fn report(n: u32, dep: &str, state: UpdateState) -> StatusReport {
    StatusReport {
        id: format!("r{n}"),
        target: "fw-2".into(),
        version: "2.0.0".into(),
        state,
        progress_bytes: None,
        total_bytes: None,
        detail: None,
        deployment: Some(dep.into()),
        at: Utc::now(),
    }
}

pub(crate) fn group(state: &AppState) {
    let spec = GroupSpec {
        name: "beta".into(),
        devices: None,
        filter: Some(GroupFilter {
            hardware_id: Some("hw".into()),
            attributes: BTreeMap::from([("ring".to_string(), "beta".to_string())]),
        }),
    };
    state.fleet.create_group(spec, "op", Utc::now()).unwrap();
}

pub(crate) fn spec(phases: &[(u8, u64)], threshold: u8, min_devices: u64) -> DeploymentSpec {
    DeploymentSpec {
        release: "fw-2".into(),
        group: "beta".into(),
        phases: phases
            .iter()
            .map(|&(percent, min_wait_secs)| PhaseSpec {
                percent,
                min_wait_secs,
            })
            .collect(),
        failure_threshold_percent: threshold,
        min_devices,
    }
}
