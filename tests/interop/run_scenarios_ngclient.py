#!/usr/bin/env python3
"""Check every scenario from make_repos.py against python-tuf's ngclient.

usage: run_scenarios_ngclient.py [--tls] [REPOS_DIR]

Without REPOS_DIR, runs make_repos.py into a temporary folder first. Each scenario folder
is served by http.server on 127.0.0.1 port 0 (a fresh server and port per scenario) and
ngclient_fetch.py is run for every target in expect.json (and every absent target):
  error null  -> each target downloads, and its length, sha256, custom fields and the
                 final root version match expect.json; each absent target exits 3
  error kind  -> each target fails (exit 1) with expect.json's ngclient_exception
With --tls the server speaks HTTPS and requires a client certificate (mutual TLS, PKI
from tls_pki.py); fetches pass CAFILE and --client-cert/--client-key, and one extra fetch
per scenario without the client certificate must fail.
Exits 0 when every scenario matches, 1 otherwise; prints one line per check.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import ssl
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
FETCH = os.path.join(HERE, "ngclient_fetch.py")
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
from tls_pki import make_pki  # noqa: E402 - sibling script, not a package


class QuietHandler(SimpleHTTPRequestHandler):
    """Static files; logs each request to stderr only when INTEROP_VERBOSE is set."""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if os.environ.get("INTEROP_VERBOSE"):
            super().log_message(format, *args)


class Server:
    """http.server on 127.0.0.1:0 serving one folder from a background thread."""

    def __init__(self, root: str, pki: dict[str, str] | None = None):
        handler = functools.partial(QuietHandler, directory=root)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.scheme = "http"
        if pki:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
            ctx.load_verify_locations(pki["ca"])
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def run_fetch(url: str, repo: str, cache: str, target: str, out: str,
              tls: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, FETCH, url, os.path.join(repo, "trusted_root.json"), cache, target,
           out, *tls]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def check_scenario(repo: str, work: str, pki: dict[str, str] | None) -> list[str]:
    """Run the scenario; return a list of failures (empty when ngclient matches expect)."""
    with open(os.path.join(repo, "expect.json")) as f:
        expect = json.load(f)
    failures: list[str] = []
    tls: list[str] = []
    if pki:
        tls = [pki["ca"], "--client-cert", pki["client_cert"], "--client-key", pki["client_key"]]
    with Server(repo, pki) as srv:
        url = f"{srv.scheme}://127.0.0.1:{srv.port}"
        print(f"  serving {os.path.basename(repo)} at {url}")
        if pki:
            # Without a client certificate the server must refuse the handshake.
            name = next(iter(sorted(expect["targets"])))
            res = run_fetch(url, repo, os.path.join(work, "cache-nocert"), name,
                            os.path.join(work, "out-nocert"), [pki["ca"]])
            if res.returncode != 1:
                failures.append(f"{name} without client cert: want exit 1, got "
                                f"{res.returncode}")
            else:
                print(f"    ok   {name} without client cert refused: "
                      f"{last_line(res.stderr)[:100]}")
        for i, (name, want) in enumerate(sorted(expect["targets"].items())):
            # A fresh cache per target so every fetch runs the whole workflow from root 1.
            cache = os.path.join(work, f"cache-{i}")
            out = os.path.join(work, f"out-{i}")
            res = run_fetch(url, repo, cache, name, out, tls)
            if expect["error"] is None:
                if res.returncode != 0:
                    failures.append(f"{name}: exit {res.returncode}: {last_line(res.stderr)}")
                    continue
                got = json.loads(last_line(res.stdout))
                for field, want_value in (("length", want["length"]), ("sha256", want["sha256"]),
                                          ("custom", want.get("custom")),
                                          ("root_version", expect["root_version"])):
                    if got[field] != want_value:
                        failures.append(f"{name}: {field} {got[field]!r} != {want_value!r}")
                print(f"    ok   {name} ({got['length']} bytes, root v{got['root_version']})")
            else:
                want_exc = expect["ngclient_exception"]
                got_line = last_line(res.stderr)
                if res.returncode != 1 or not got_line.startswith(f"{want_exc}:"):
                    failures.append(f"{name}: want exit 1 with {want_exc}, got exit "
                                    f"{res.returncode}: {got_line or last_line(res.stdout)}")
                else:
                    print(f"    ok   {name} refused: {got_line}")
        for j, name in enumerate(expect["absent_targets"]):
            cache = os.path.join(work, f"cache-absent-{j}")
            res = run_fetch(url, repo, cache, name, os.path.join(work, f"absent-{j}"), tls)
            if res.returncode != 3:
                failures.append(f"{name}: want exit 3 (not found), got exit {res.returncode}: "
                                f"{last_line(res.stderr) or last_line(res.stdout)}")
            else:
                print(f"    ok   {name} not found")
    return failures


def main() -> int:
    p = argparse.ArgumentParser(description="check make_repos.py scenarios with ngclient")
    p.add_argument("--tls", action="store_true", help="serve HTTPS with mutual TLS")
    p.add_argument("repos", nargs="?", help="folder written by make_repos.py")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ota-interop-") as tmp:
        pki = make_pki(os.path.join(tmp, "pki")) if args.tls else None
        repos = args.repos or os.path.join(tmp, "repos")
        if not args.repos:
            subprocess.run([sys.executable, os.path.join(HERE, "make_repos.py"), repos],
                           check=True, stdout=subprocess.DEVNULL)
        names = sorted(d for d in os.listdir(repos)
                       if os.path.isfile(os.path.join(repos, d, "expect.json")))
        if not names:
            print(f"no scenarios (folders with expect.json) in {repos}", file=sys.stderr)
            return 1
        bad = 0
        for name in names:
            print(f"{name}:")
            work = os.path.join(tmp, "work", name)
            os.makedirs(work)
            failures = check_scenario(os.path.join(repos, name), work, pki)
            for f in failures:
                print(f"    FAIL {f}")
            bad += bool(failures)
        print(f"{len(names) - bad}/{len(names)} scenarios match expect.json")
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
