//! Phased rollouts with real processes: a server in `rollout = "deployments"` mode (devices
//! install only what a deployment sends them) and real `ota-agent` devices polling it.
//!
//! - A 3-phase deployment to 8 devices reaches them phase by phase, in order, and
//!   completes with every device committed.
//! - Devices whose health gate fails make the failure detector pause the deployment on its
//!   own, with a reason, and the pause is in the audit log.
//!
//! `Lab::start` takes no server configuration, so each test builds its own lab from the
//! same parts (`ServerProcess::start_dev` with extra TOML, `AgentProcess::create`).

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use std::time::Duration;

use agent_harness::{image, AgentProcess, DeviceOptions, HW};
use harness::{json_body, ServerProcess};
use serde_json::{json, Value};

/// Deployments drive the devices; a fast tick so phases move within the test.
const CONFIG: &str = "[devices]\nrollout = \"deployments\"\n\n[fleet]\ntick_millis = 200\n";
/// Time for the server's tick between rounds.
const TICK_WAIT: Duration = Duration::from_millis(300);
/// No minimum wait: the phases must still gate the rollout, because a phase that reaches
/// devices waits until at least one of them has started before it can advance.
const MIN_WAIT_SECS: u64 = 0;

/// A server in deployments mode and the root its devices trust.
struct RolloutLab {
    server: ServerProcess,
    root: Vec<u8>,
    tmp: tempfile::TempDir,
}

impl RolloutLab {
    async fn start() -> RolloutLab {
        let tmp = tempfile::tempdir().unwrap();
        let server = ServerProcess::start_dev(&tmp.path().join("server"), Some(CONFIG));
        server.wait_healthy().await;
        let root = server.metadata("1.root.json").await.unwrap();
        RolloutLab { server, root, tmp }
    }

    /// Devices `prefix-0..n`, preauthorized (accepted on first contact).
    async fn devices(&self, prefix: &str, n: usize, opts: &DeviceOptions) -> Vec<AgentProcess> {
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        let (status, body) = self
            .post("/api/v1/devices/preauthorize", json!({ "ids": ids }))
            .await;
        assert_eq!(status, 200, "preauthorize: {body}");
        ids.iter()
            .map(|id| {
                let (cert, key) = self.server.issue_device(id);
                AgentProcess::create(
                    &self.tmp.path().join("devices").join(id),
                    id,
                    &self.server.base_url(),
                    &self.server.ca_path(),
                    (&cert, &key),
                    &self.root,
                    opts.clone(),
                )
            })
            .collect()
    }

    async fn publish(&self, name: &str, version: &str) {
        let sha = self
            .server
            .upload(image(&format!("fw {version}"), 64 * 1024))
            .await;
        self.server
            .publish_release(name, &sha, version, &[HW])
            .await;
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self
            .server
            .client()
            .get(self.server.url(path))
            .bearer_auth(self.server.admin_token())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = json_body(resp).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .server
            .client()
            .post(self.server.url(path))
            .bearer_auth(self.server.admin_token())
            .json(&body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), json_body(resp).await)
    }

    /// A static group of `devices` and a deployment of `release` to it; returns its id.
    async fn deploy(
        &self,
        group: &str,
        devices: &[AgentProcess],
        release: &str,
        percents: &[u8],
        min_devices: u64,
    ) -> String {
        let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
        let (status, body) = self
            .post("/api/v1/groups", json!({"name": group, "devices": ids}))
            .await;
        assert_eq!(status, 201, "create group: {body}");
        assert_eq!(body["member_count"], devices.len(), "{body}");
        let phases: Vec<Value> = percents
            .iter()
            .map(|p| json!({"percent": p, "min_wait_secs": MIN_WAIT_SECS}))
            .collect();
        let (status, body) = self
            .post(
                "/api/v1/deployments",
                json!({
                    "release": release,
                    "group": group,
                    "phases": phases,
                    "failure_threshold_percent": 50,
                    "min_devices": min_devices,
                }),
            )
            .await;
        assert_eq!(status, 201, "create deployment: {body}");
        assert_eq!(body["state"], "active", "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    fn log(&self) -> String {
        self.server.log()
    }
}

/// One poll-install-boot cycle of a device, as far as it goes this round. Returns whether
/// it committed this round.
fn step(dev: &AgentProcess) -> bool {
    let run = dev.once();
    match run.kind() {
        "up_to_date" => false,
        "reboot_requested" => {
            dev.simulate_boot();
            let after = dev.once();
            match after.kind() {
                "committed" => true,
                "rolled_back" => {
                    if after.outcome["reboot"] == true {
                        dev.simulate_boot();
                    }
                    false
                }
                _ => panic!("{}: after boot: {after}", dev.id),
            }
        }
        "rolled_back" => {
            if run.outcome["reboot"] == true {
                dev.simulate_boot();
            }
            false
        }
        "failed" if run.outcome["retry_soon"] == true => false,
        _ => panic!("{}: unexpected outcome: {run}", dev.id),
    }
}

fn running(dev: &AgentProcess) -> Option<String> {
    dev.status_json()["highest_committed"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn a_phased_deployment_reaches_the_fleet_phase_by_phase() {
    let lab = RolloutLab::start().await;
    let devices = lab.devices("fleet", 8, &DeviceOptions::default()).await;
    lab.publish("fw-2.0.0.img", "2.0.0").await;

    // No deployment yet: the server holds every device on what it runs (this first
    // contact also registers them, so the group counts them).
    for dev in &devices {
        dev.once().expect("up_to_date");
    }

    let id = lab
        .deploy("all", &devices, "fw-2.0.0.img", &[25, 50, 100], 2)
        .await;
    let mut phases_seen = Vec::new();
    let mut updated_per_round = Vec::new();
    let mut updated = vec![false; devices.len()];
    let mut completed = false;
    for _round in 0..30 {
        let before = lab.get(&format!("/api/v1/deployments/{id}")).await;
        phases_seen.push(before["phase"].as_u64().unwrap());
        // Committed devices poll too: their polls tell the server what they run now.
        for (i, dev) in devices.iter().enumerate() {
            if step(dev) {
                assert!(!updated[i], "{} installed twice", dev.id);
                updated[i] = true;
            }
        }
        updated_per_round.push(updated.iter().filter(|u| **u).count());
        tokio::time::sleep(TICK_WAIT).await;
        let d = lab.get(&format!("/api/v1/deployments/{id}")).await;
        phases_seen.push(d["phase"].as_u64().unwrap());
        assert!(
            d["state"] == "active" || d["state"] == "completed",
            "the deployment stopped: {d:#}\n{}",
            lab.log()
        );
        if d["state"] == "completed" {
            completed = true;
            break;
        }
    }
    let d = lab.get(&format!("/api/v1/deployments/{id}")).await;
    assert!(
        completed,
        "not completed after 30 rounds (updated per round {updated_per_round:?}): {d:#}\n{}",
        lab.log()
    );
    assert!(
        phases_seen.windows(2).all(|w| w[0] <= w[1]),
        "phases went backwards: {phases_seen:?}"
    );
    assert_eq!(phases_seen.last(), Some(&2), "{phases_seen:?}");
    assert_eq!(phases_seen.first(), Some(&0), "{phases_seen:?}");
    // The phases gated the rollout: some round ended with part of the fleet updated.
    assert!(
        updated_per_round
            .iter()
            .any(|n| *n > 0 && *n < devices.len()),
        "every device updated at once: {updated_per_round:?}"
    );
    assert!(
        updated_per_round.windows(2).all(|w| w[0] <= w[1]),
        "{updated_per_round:?}"
    );
    for dev in &devices {
        assert_eq!(running(dev).as_deref(), Some("2.0.0"), "{}", dev.id);
    }
    let succeeded: u64 = d["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["succeeded"].as_u64().unwrap())
        .sum();
    assert_eq!(succeeded, 8, "{d:#}");
    assert!(d["finished_at"].is_string(), "{d:#}");
    // A committed device is not sent anything again.
    devices[0].once().expect("up_to_date");
}

#[tokio::test]
async fn failing_health_gates_pause_the_deployment_automatically() {
    let lab = RolloutLab::start().await;
    let opts = DeviceOptions {
        health_commands: vec![vec!["false".into()]],
        ..DeviceOptions::default()
    };
    let devices = lab.devices("sick", 4, &opts).await;
    lab.publish("fw-2.0.0.img", "2.0.0").await;
    for dev in &devices {
        dev.once().expect("up_to_date");
    }
    let id = lab
        .deploy("sick", &devices, "fw-2.0.0.img", &[50, 100], 2)
        .await;

    let mut paused = None;
    for _round in 0..10 {
        for dev in &devices {
            step(dev);
        }
        tokio::time::sleep(TICK_WAIT).await;
        let d = lab.get(&format!("/api/v1/deployments/{id}")).await;
        assert_ne!(d["state"], "completed", "{d:#}");
        if d["state"] == "paused" {
            paused = Some(d);
            break;
        }
    }
    let d = paused.unwrap_or_else(|| panic!("never paused\n{}", lab.log()));
    assert_eq!(d["status"]["automatic"], true, "{d:#}");
    let reason = d["status"]["reason"].as_str().unwrap();
    assert!(reason.contains("threshold"), "{reason}");
    let failed: u64 = d["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["failed"].as_u64().unwrap())
        .sum();
    assert!(failed >= 2, "{d:#}");
    for dev in &devices {
        assert_eq!(running(dev), None, "{} committed a failing image", dev.id);
    }

    let audit = lab.get("/api/v1/audit?limit=1000").await;
    let pause = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "deployment.pause" && e["subject"] == id.as_str())
        .unwrap_or_else(|| panic!("no pause in the audit log: {audit:#}"));
    assert_eq!(pause["actor"], "server", "{pause:#}");
    assert_eq!(pause["detail"]["automatic"], true, "{pause:#}");
}
