//! Test support: a complete [`AppState`] over a [`MemoryStore`], for route unit tests.

#![allow(clippy::unwrap_used)] // test support may unwrap (docs/HELPERS.md)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{Duration, Utc};
use ota_common::api::{OplogRecord, PollRequest};
use ota_common::keys::SigningKey;
use ota_common::metadata::{RoleType, Root};
use ota_common::signed::sign_role;
use serde_json::json;

use super::{DeviceConfig, DeviceStatus, Devices};
use crate::app::{AppParts, AppState};
use crate::audit::AuditLog;
use crate::auth::Tokens;
use crate::blobs::BlobStore;
use crate::identity::PeerIdentity;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::oplog_chain::{head_after, ChainHead};
use crate::pki::DevPki;
use crate::repo::{OnlineKeys, RepoPolicy, Repository};
use crate::serve::TransportMetrics;
use crate::store::memory::MemoryStore;
use crate::store::Store;

/// A fresh state (dev mode, with a device CA) and the directory holding its files.
pub(crate) fn state() -> (AppState, tempfile::TempDir) {
    let (parts, dir) = parts();
    (AppState::new(parts), dir)
}

/// The parts of [`state`], for a test that changes one before sharing them.
pub(crate) fn parts() -> (AppParts, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let now = Utc::now();
    let root_key = SigningKey::generate();
    let (snapshot, timestamp, targets) = (
        SigningKey::generate(),
        SigningKey::generate(),
        SigningKey::generate(),
    );
    let mut root = Root::new(1, now + Duration::days(365));
    for (role, key) in [
        (RoleType::Root, &root_key),
        (RoleType::Snapshot, &snapshot),
        (RoleType::Timestamp, &timestamp),
        (RoleType::Targets, &targets),
    ] {
        root.set_role(role, &[key.public()], 1).unwrap();
    }
    let root_bytes = sign_role(&root, &[&root_key]).unwrap();
    let keys = OnlineKeys {
        snapshot,
        timestamp,
        targets: Some(targets),
    };
    let policy = RepoPolicy::default();
    Repository::initialize(store.as_ref(), &[root_bytes], None, &keys, &policy, now).unwrap();
    let repo = Repository::open(Arc::clone(&store), keys, policy).unwrap();
    let pki = DevPki::load_or_create(&dir.path().join("pki")).unwrap();
    let audit = Arc::new(AuditLog::new(Arc::clone(&store)));
    let devices = Arc::new(Devices::open(Arc::clone(&store), DeviceConfig::default()).unwrap());
    let parts = AppParts {
        repo: Arc::new(repo),
        blobs: BlobStore::open(&dir.path().join("blobs")).unwrap(),
        store: Arc::clone(&store),
        audit: Arc::clone(&audit),
        tokens: Tokens::new(Arc::clone(&store)),
        metrics: Arc::new(Metrics::default()),
        transport: Arc::new(TransportMetrics::new()),
        device_ca: Some(Arc::new(pki)),
        limits: Limits::default(),
        dev_mode: true,
        devices: Arc::clone(&devices),
        fleet: Arc::new(
            crate::deployments::Fleet::open(
                Arc::clone(&store),
                audit,
                devices,
                crate::deployments::FleetConfig::default(),
                now,
            )
            .unwrap(),
        ),
    };
    (parts, dir)
}

/// A registry and audit log over a fresh memory store.
pub(crate) fn registry() -> (Arc<dyn Store>, Devices, AuditLog) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let devices = Devices::open(Arc::clone(&store), DeviceConfig::default()).unwrap();
    let audit = AuditLog::new(Arc::clone(&store));
    (store, devices, audit)
}

/// The identity of a device certificate.
pub(crate) fn ident(id: &str, fp: &str) -> PeerIdentity {
    PeerIdentity {
        device_id: id.into(),
        cert_sha256: fp.into(),
    }
}

/// A poll from board `hw` running 1.0.0 on slot a.
pub(crate) fn req(hw: &str) -> PollRequest {
    PollRequest {
        hardware_id: hw.into(),
        current_version: Some("1.0.0".into()),
        active_slot: Some("a".into()),
        agent_version: None,
        attributes: BTreeMap::new(),
    }
}

/// A peer address.
pub(crate) fn peer() -> SocketAddr {
    "192.0.2.1:4000".parse().unwrap()
}

/// [`registry`] with device `d1` registered (pending) by a poll.
pub(crate) fn reporting_registry() -> (Arc<dyn Store>, Devices, AuditLog) {
    let (store, devices, audit) = registry();
    devices
        .poll(&ident("d1", "F"), &req("hw"), peer(), Utc::now())
        .unwrap();
    (store, devices, audit)
}

/// Accepts `d1`.
pub(crate) fn accept(d: &Devices, audit: &AuditLog) {
    d.decide("d1", DeviceStatus::Accepted, audit, "op", Utc::now())
        .unwrap();
}

/// An intact operation log of `n` records.
pub(crate) fn oplog_records(n: u64) -> Vec<OplogRecord> {
    let mut head = ChainHead::genesis();
    (0..n)
        .map(|i| {
            let r = OplogRecord::next(
                &head,
                "2025-01-01T00:00:00.000Z".into(),
                "poll".into(),
                json!({"i": i}),
            );
            head = head_after(&r);
            r
        })
        .collect()
}
