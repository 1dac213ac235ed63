//! A power cut at every step of the cycle: for each crash point the agent aborts there
//! (test hook), then runs on without the hook as a device would. Whatever the point, the
//! device ends committed on 2.0.0 in slot B with the signed bytes, its state and operation
//! log still open, every boot ran a verified image, and the floor is 2.0.0.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod agent_harness;
mod harness;

use agent_harness::{image, AgentProcess, DeviceOptions, Lab, CRASH_POINTS, POST_BOOT_POINTS};

/// The crash points as agent/src/cycle.rs declares them (`pub const CRASH_POINTS`), and
/// every `crash_point("...")` call in it.
fn declared_crash_points() -> (Vec<String>, Vec<String>) {
    let path = harness::workspace_root().join("agent/src/cycle.rs");
    let src = std::fs::read_to_string(&path).unwrap();
    let start = src
        .find("pub const CRASH_POINTS: &[&str] = &[")
        .expect("CRASH_POINTS in cycle.rs");
    let list = &src[start..];
    let list = &list[list.find('[').unwrap() + 1..];
    let list = &list[list.find('[').unwrap() + 1..list.find("];").unwrap()];
    let quoted = |s: &str| -> Vec<String> {
        s.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let declared = quoted(list);
    let called = src
        .match_indices("crash_point(\"")
        .map(|(i, _)| {
            let rest = &src[i + "crash_point(\"".len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect();
    (declared, called)
}

/// After the run: committed 2.0.0 in slot B with the right bytes, readable state.
fn assert_finished(dev: &AgentProcess, case: &str, img: &[u8], sha: &str) {
    assert_eq!(
        std::fs::read(&dev.slot_b).unwrap(),
        img,
        "{case}: slot B bytes"
    );
    // `status --json` opens the state and the oplog (whose chain is verified on open).
    let status = dev.status_json();
    assert_eq!(
        status["highest_committed"], "2.0.0",
        "{case}: floor: {status}"
    );
    assert_eq!(status["booted_slot"], "B", "{case}: {status}");
    assert_eq!(status["default_slot"], "B", "{case}: {status}");
    assert_eq!(
        status["trying"],
        serde_json::Value::Null,
        "{case}: {status}"
    );
    assert_eq!(
        status["pending"],
        serde_json::Value::Null,
        "{case}: {status}"
    );
    assert_eq!(status["slots"]["b"]["version"], "2.0.0", "{case}: {status}");
    assert_eq!(status["slots"]["b"]["sha256"], sha, "{case}: {status}");
    dev.assert_boots_verified(sha);
    assert!(
        dev.boots().iter().any(|b| b.slot == "B"),
        "{case}: never booted B"
    );
    let commits = dev.oplog().iter().filter(|r| r["kind"] == "commit").count();
    assert_eq!(commits, 1, "{case}: commit records");
}

/// The server holds the agent's whole operation log, its chain unbroken by the crash, and
/// the device's committed report.
async fn assert_server_has_the_log(lab: &Lab, dev: &AgentProcess, case: &str) {
    let detail = lab.device(&dev.id).await;
    let last = dev.oplog().last().unwrap().clone();
    assert_eq!(
        detail["oplog_head"]["seq"], last["seq"],
        "{case}: server oplog head vs the agent's last record"
    );
    assert_eq!(detail["oplog_head"]["hash"], last["hash"], "{case}");
    let anomalies = lab.anomaly_kinds(&dev.id).await;
    assert!(
        !anomalies.iter().any(|k| k == "oplog_chain_break"),
        "{case}: chain break on the server: {anomalies:?}"
    );
    let states = lab.status_states(&dev.id).await;
    assert!(
        states.iter().any(|s| s == "committed"),
        "{case}: no committed report: {states:?}"
    );
}

#[tokio::test]
async fn a_crash_at_any_step_ends_committed_on_a_verified_image() {
    let (declared, called) = declared_crash_points();
    assert_eq!(
        declared,
        CRASH_POINTS.to_vec(),
        "agent_harness::CRASH_POINTS is out of sync with agent/src/cycle.rs"
    );
    let mut called_sorted = called.clone();
    called_sorted.sort();
    let mut declared_sorted = declared.clone();
    declared_sorted.sort();
    assert_eq!(
        called_sorted, declared_sorted,
        "every crash_point() call is listed, and every listed point is called"
    );

    let lab = Lab::start().await;
    // Larger than one download checkpoint, so that `mid_download` is reached.
    let img = image("fw 2.0.0 matrix", 9 * 1024 * 1024 + 4321);
    let sha = lab.publish("fw-2.0.0.img", img.clone(), "2.0.0").await;
    let ids: Vec<String> = CRASH_POINTS
        .iter()
        .map(|p| format!("crash-{}", p.replace('_', "-")))
        .chain(["crash-power-cut-after-try-once".to_string()])
        .collect();
    lab.preauthorize(&ids).await;

    let mut covered = Vec::new();
    for (point, id) in CRASH_POINTS.iter().zip(&ids) {
        let dev = lab.new_device(id, DeviceOptions::default());
        if POST_BOOT_POINTS.contains(point) {
            let run = dev.once();
            assert_eq!(
                run.expect("reboot_requested")["slot"],
                "B",
                "{point}: {run}"
            );
            assert_eq!(dev.simulate_boot(), "B", "{point}");
        }
        dev.crash_at(point);
        let runs = dev.run_until_committed(8);
        let last = runs.last().unwrap();
        if *point == "after_commit" {
            // The commit was durable before the crash: the next cycle finds nothing to do.
            assert_eq!(last.kind(), "up_to_date", "{point}: {last}");
        } else {
            assert_eq!(last.outcome["outcome"], "committed", "{point}: {last}");
            assert_eq!(last.outcome["version"], "2.0.0", "{point}: {last}");
        }
        assert_finished(&dev, point, &img, &sha);
        assert_server_has_the_log(&lab, &dev, point).await;
        covered.push(point.to_string());
    }

    // A power cut right after the bootloader switch, and the device reboots before the
    // agent runs again: it boots B (verified before the switch) and commits from there.
    let case = "after_try_once + reboot before the agent runs";
    let dev = lab.new_device(ids.last().unwrap(), DeviceOptions::default());
    dev.crash_at("after_try_once");
    assert_eq!(dev.simulate_boot(), "B", "{case}");
    let runs = dev.run_until_committed(8);
    assert_eq!(runs.last().unwrap().kind(), "committed", "{case}");
    assert_eq!(
        runs.len(),
        1,
        "{case}: committed on the first run after the boot"
    );
    assert_finished(&dev, case, &img, &sha);
    assert_server_has_the_log(&lab, &dev, case).await;
    covered.push(case.to_string());

    println!("crash points covered ({}):", covered.len());
    for c in &covered {
        println!("  {c}");
    }
    assert_eq!(covered.len(), CRASH_POINTS.len() + 1);
    assert!(covered.len() >= 11, "covered {}", covered.len());
}
