//! Shared setup of the in-process server tests.

use std::sync::Arc;

use chrono::{Duration, Utc};
use ota_common::keys::SigningKey;
use ota_common::metadata::{RoleType, Root};
use ota_common::signed::sign_role;
use ota_server::repo::{OnlineKeys, RepoPolicy, Repository};
use ota_server::store::Store;

/// A fresh repository in `store`: one key per role, the server holding the targets key.
pub fn repository(store: &Arc<dyn Store>) -> Repository {
    let now = Utc::now();
    let root_key = SigningKey::generate();
    let keys = OnlineKeys {
        snapshot: SigningKey::generate(),
        timestamp: SigningKey::generate(),
        targets: Some(SigningKey::generate()),
    };
    let mut root = Root::new(1, now + Duration::days(365));
    root.set_role(RoleType::Root, &[root_key.public()], 1)
        .unwrap();
    root.set_role(RoleType::Snapshot, &[keys.snapshot.public()], 1)
        .unwrap();
    root.set_role(RoleType::Timestamp, &[keys.timestamp.public()], 1)
        .unwrap();
    let targets_key = keys.targets.as_ref().unwrap().public();
    root.set_role(RoleType::Targets, &[targets_key], 1).unwrap();
    let root_bytes = sign_role(&root, &[&root_key]).unwrap();
    let policy = RepoPolicy::default();
    Repository::initialize(store.as_ref(), &[root_bytes], None, &keys, &policy, now).unwrap();
    Repository::open(Arc::clone(store), keys, policy).unwrap()
}
