//! Shared helpers for the end-to-end tests: a temporary workspace and the real binary.
//!
//! Every command runs with `OTA_KEYS_INSECURE_FAST_KDF=1` (cheap Argon2 for new keys: tests
//! only), a passphrase file, and a fixed `--now`, so that results do not depend on the clock.

#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)

use std::fs;
use std::path::PathBuf;
use std::process::Output;

use assert_cmd::Command;
use tempfile::TempDir;

pub const NOW: &str = "2030-01-01T00:00:00Z";
pub const PASS: &str = "pass.txt";

pub struct Workspace {
    pub dir: TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PASS), "correct horse battery staple\n").unwrap();
        Workspace { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &[u8]) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, content).unwrap();
        p
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    /// The binary in the workspace, without passphrase or time options.
    pub fn bare(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ota-keys"));
        c.current_dir(self.dir.path())
            .env("OTA_KEYS_INSECURE_FAST_KDF", "1")
            .env_remove("OTA_KEY_PASSPHRASE")
            .env_remove("OTA_REPO")
            .env_remove("OTA_KEYS_DIR");
        c
    }

    pub fn run_with(&self, pass_file: &str, now: &str, args: &[&str]) -> Output {
        self.bare()
            .args(["--passphrase-file", pass_file, "--now", now])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_at(NOW, args)
    }

    pub fn ok_at(&self, now: &str, args: &[&str]) -> String {
        let out = self.run_with(PASS, now, args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "ota-keys {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs and requires failure; returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        self.fail_with(PASS, NOW, args)
    }

    pub fn fail_with(&self, pass_file: &str, now: &str, args: &[&str]) -> String {
        let out = self.run_with(pass_file, now, args);
        assert!(
            !out.status.success(),
            "ota-keys {args:?} should have failed\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// Key ids of the key files with `label`, sorted.
    pub fn key_ids(&self, label: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let Ok(entries) = fs::read_dir(self.path("keys")) else {
            return ids;
        };
        for e in entries {
            let p = e.unwrap().path();
            if !p.to_string_lossy().ends_with(".key.json") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            if v["label"] == label {
                ids.push(v["keyid"].as_str().unwrap().to_string());
            }
        }
        ids.sort();
        ids
    }

    /// A metadata file as JSON.
    pub fn metadata(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.read(&format!("repo/metadata/{name}"))).unwrap()
    }
}
