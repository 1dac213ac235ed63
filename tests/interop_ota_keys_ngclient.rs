//! Interop, our side first: a repository made by `ota-keys` (root 2-of-3, a release, then a
//! timestamp key rotation in a new root) is read by python-tuf's ngclient, the reference TUF
//! client, from a plain local HTTP server.

mod harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use harness::{build_workspace_bin, python_with_tuf, sha256_hex, workspace_root};

struct HttpServer {
    child: Child,
    port: u16,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `python -m http.server` on 127.0.0.1, port 0, serving `dir`.
fn serve(python: &Path, dir: &Path) -> HttpServer {
    let mut child = Command::new(python)
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python http.server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read banner");
    // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
    let port = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    HttpServer { child, port }
}

fn ota_keys(repo: &Path, keys: &Path, pass: &Path, args: &[&str]) {
    let bin = build_workspace_bin("ota-keys", "ota-keys");
    let out = Command::new(bin)
        .env("OTA_KEYS_INSECURE_FAST_KDF", "1")
        .arg("--repo")
        .arg(repo)
        .arg("--keys-dir")
        .arg(keys)
        .arg("--passphrase-file")
        .arg(pass)
        .args(args)
        .output()
        .expect("run ota-keys");
    assert!(
        out.status.success(),
        "ota-keys {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ngclient(
    python: &Path,
    url: &str,
    root: &Path,
    cache: &Path,
    target: &str,
    out: &Path,
) -> serde_json::Value {
    let script = workspace_root().join("tests/interop/ngclient_fetch.py");
    let res = Command::new(python)
        .arg(script)
        .arg(url)
        .arg(root)
        .arg(cache)
        .arg(target)
        .arg(out)
        .output()
        .expect("run ngclient_fetch.py");
    assert!(
        res.status.success(),
        "python-tuf refused the ota-keys repository:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    serde_json::from_slice(&res.stdout).expect("ngclient_fetch prints JSON")
}

#[test]
fn python_tuf_reads_a_repository_made_by_ota_keys() {
    let python = python_with_tuf();
    let tmp = tempfile::tempdir().unwrap();
    let (repo, keys, pass) = (
        tmp.path().join("repo"),
        tmp.path().join("keys"),
        tmp.path().join("pass"),
    );
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    ota_keys(
        &repo,
        &keys,
        &pass,
        &["init", "--root-keys", "3", "--root-threshold", "2"],
    );
    let image: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let image_path = tmp.path().join("fw.bin");
    std::fs::write(&image_path, &image).unwrap();
    ota_keys(
        &repo,
        &keys,
        &pass,
        &[
            "add-target",
            "--name",
            "firmware/fw-1.0.0.bin",
            "--version",
            "1.0.0",
            "--hardware-id",
            "board-a",
            image_path.to_str().unwrap(),
        ],
    );
    let trusted_root: PathBuf = repo.join("metadata/1.root.json");
    assert!(trusted_root.is_file(), "ota-keys init wrote no 1.root.json");

    let http = serve(&python, &repo);
    let url = format!("http://127.0.0.1:{}", http.port);
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out.bin");
    let got = ngclient(
        &python,
        &url,
        &trusted_root,
        &cache,
        "firmware/fw-1.0.0.bin",
        &out,
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        image,
        "downloaded bytes differ"
    );
    assert_eq!(got["sha256"], sha256_hex(&image));
    assert_eq!(got["custom"]["version"], "1.0.0");
    assert_eq!(got["root_version"], 1);

    // Rotate the timestamp key in root v2 (signed by 2 of 3 old root keys and the new
    // root); ngclient walks the root chain from its cached v1 and still verifies.
    ota_keys(&repo, &keys, &pass, &["rotate-key", "timestamp"]);
    let got = ngclient(
        &python,
        &url,
        &trusted_root,
        &cache,
        "firmware/fw-1.0.0.bin",
        &out,
    );
    assert_eq!(
        got["root_version"], 2,
        "ngclient did not follow the rotated root: {got}"
    );
}
