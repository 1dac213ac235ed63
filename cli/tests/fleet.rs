//! `ota groups …`, `ota deployments …` and the fleet part of `ota status` against a real
//! development server.

#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

mod support;

use serde_json::Value;
use support::{expect_fail, expect_ok, write_image, Server};

const EXIT_AUTH: i32 = 5;
const EXIT_CONFLICT: i32 = 6;

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

#[test]
fn groups_and_a_phased_deployment_from_create_to_abort() {
    let server = Server::start();
    let image = server.path("fw.bin");
    write_image(&image, 10_000);
    server.ok(&[
        "publish",
        image.to_str().unwrap(),
        "--name",
        "fw-2.0.0.bin",
        "--version",
        "2.0.0",
        "--hardware-id",
        "board-x",
    ]);
    server.ok(&["devices", "preauthorize", "dev-1", "dev-2"]);

    // Groups: a static one for the deployment, a dynamic one to list and delete.
    let created = json(&server.ok(&[
        "groups", "create", "canary", "--device", "dev-1", "--device", "dev-2", "--json",
    ]));
    assert_eq!(created["kind"], "static", "{created:#}");
    let out = server.ok(&[
        "groups",
        "create",
        "boards",
        "--hardware-id",
        "board-x",
        "--attr",
        "site=lab",
    ]);
    assert!(out.contains("created dynamic group boards"), "{out}");
    let list = json(&server.ok(&["groups", "list", "--json"]));
    let names: Vec<&str> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["boards", "canary"], "{list:#}");
    let shown = json(&server.ok(&["groups", "show", "canary", "--json"]));
    assert_eq!(shown["devices"], serde_json::json!(["dev-1", "dev-2"]));
    let text = server.ok(&["groups", "show", "boards"]);
    assert!(text.contains("hardware_id=board-x site=lab"), "{text}");
    let table = server.ok(&["groups", "list"]);
    assert!(
        table.contains("canary") && table.contains("MEMBERS"),
        "{table}"
    );

    // A 2-phase deployment of the published release.
    let d = json(&server.ok(&[
        "deployments",
        "create",
        "--release",
        "fw-2.0.0.bin",
        "--group",
        "canary",
        "--phases",
        "50,100",
        "--failure-threshold",
        "30",
        "--min-devices",
        "1",
        "--json",
    ]));
    let id = d["id"].as_str().unwrap().to_string();
    assert_eq!(d["state"], "active", "{d:#}");
    assert_eq!(d["version"], "2.0.0");
    assert_eq!(d["failure_threshold_percent"], 30);
    let percents: Vec<u64> = d["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["percent"].as_u64().unwrap())
        .collect();
    assert_eq!(percents, [50, 100]);

    let list = json(&server.ok(&["deployments", "list", "--json"]));
    assert_eq!(list["deployments"][0]["id"], id.as_str(), "{list:#}");
    let shown = json(&server.ok(&["deployments", "show", &id, "--json"]));
    assert_eq!(shown["group"], "canary");
    let text = server.ok(&["deployments", "show", &id]);
    for needle in [
        "PERCENT",
        "TARGETED",
        "STARTED",
        "SUCCEEDED",
        "FAILED",
        "50%",
        "100%",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // The group is in use: it cannot be deleted under the deployment.
    let out = server
        .ota()
        .args(["groups", "delete", "canary"])
        .output()
        .unwrap();
    expect_fail(&["groups", "delete", "canary"], &out, EXIT_CONFLICT);

    // Pause with a reason, resume, abort.
    let paused = json(&server.ok(&[
        "deployments",
        "pause",
        &id,
        "--reason",
        "watching metrics",
        "--json",
    ]));
    assert_eq!(paused["state"], "paused", "{paused:#}");
    assert_eq!(paused["status"]["reason"], "watching metrics");
    assert_eq!(paused["status"]["automatic"], false);
    let out = server.ok(&["deployments", "resume", &id]);
    assert!(out.contains("active"), "{out}");
    let out = server.ok(&["deployments", "abort", &id, "--reason", "bad build"]);
    assert!(out.contains("aborted: bad build"), "{out}");
    let shown = json(&server.ok(&["deployments", "show", &id, "--json"]));
    assert_eq!(shown["state"], "aborted");
    assert!(shown["finished_at"].is_string(), "{shown:#}");
    // Finished: no further transitions.
    let out = server
        .ota()
        .args(["deployments", "resume", &id])
        .output()
        .unwrap();
    expect_fail(&["deployments", "resume"], &out, EXIT_CONFLICT);

    // A viewer may look but not change anything.
    let viewer = server.ok(&["tokens", "create", "--name", "v", "--role", "viewer"]);
    let out = server
        .ota_bare()
        .env("OTA_TOKEN", viewer.trim())
        .args(["deployments", "list", "--json"])
        .output()
        .unwrap();
    expect_ok(&["deployments", "list"], &out);
    for args in [
        &["deployments", "pause", id.as_str()][..],
        &["groups", "create", "v-group", "--device", "dev-1"],
        &["groups", "delete", "boards"],
    ] {
        let out = server
            .ota_bare()
            .env("OTA_TOKEN", viewer.trim())
            .args(args)
            .output()
            .unwrap();
        let stderr = expect_fail(args, &out, EXIT_AUTH);
        assert!(stderr.to_lowercase().contains("viewer"), "{stderr}");
    }

    // Deleting works once nothing runs on the group.
    let out = server.ok(&["groups", "delete", "canary"]);
    assert!(out.contains("deleted group canary"), "{out}");
    let audit = server.ok(&["audit", "--json"]);
    for action in ["pause", "resume", "abort"] {
        assert!(audit.contains(action), "{action} not audited:\n{audit}");
    }

    // Status carries the fleet summary.
    let status = json(&server.ok(&["status", "--json"]));
    assert!(status["fleet"]["by_update_state"].is_object(), "{status:#}");
    let text = server.ok(&["status"]);
    assert!(
        text.contains("versions:") && text.contains("updates:"),
        "{text}"
    );
}
