#!/usr/bin/env python3
"""Fetch one target from a TUF repository with python-tuf's ngclient (the reference client).

usage: ngclient_fetch.py URL TRUSTED_ROOT CACHE_DIR TARGET OUT_FILE [CAFILE]
                         [--client-cert CERT --client-key KEY]

  URL           repository base: metadata at URL/metadata/, targets at URL/targets/
  TRUSTED_ROOT  the root.json to bootstrap from (the trust anchor; pass it every run)
  CACHE_DIR     ngclient's metadata cache (created; one per repository, reusable)
  TARGET        target path as named in targets metadata, e.g. firmware/app.bin
  OUT_FILE      where the verified target is written
  CAFILE        PEM bundle that the server's certificate must chain to (HTTPS)
  --client-cert/--client-key  PEM certificate and key presented for mutual TLS

On success prints one JSON line to stdout and exits 0:
  {"target", "length", "sha256", "custom", "root_version", "timestamp_version",
   "snapshot_version", "targets_version"}
On failure prints "<ExceptionClass>: <message>" as the last line of stderr and exits 1;
exit 3 means the refresh succeeded but TARGET is not in any reachable targets metadata
(stderr "TargetNotFound: ..."); exit 2 is a usage error.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator

import urllib3
from tuf.api import exceptions
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

USER_AGENT = "ota-interop-ngclient"


class TlsFetcher(FetcherInterface):
    """urllib3 fetcher with an explicit CA bundle and an optional client certificate.

    Mirrors tuf's own Urllib3Fetcher: HTTP status >= 400 becomes DownloadHTTPError with
    the status (ngclient needs 404/403 on N.root.json to end the root chain), timeouts
    become SlowRetrievalError, anything else propagates.
    """

    def __init__(self, ca_file: str | None, cert: str | None, key: str | None,
                 timeout: int = 30, chunk_size: int = 400_000):
        self._timeout = timeout
        self._chunk = chunk_size
        kwargs: dict = {"headers": {"User-Agent": USER_AGENT}, "retries": False}
        if ca_file:
            kwargs.update(ca_certs=ca_file, cert_reqs="CERT_REQUIRED")
        if cert:
            kwargs.update(cert_file=cert, key_file=key)
        self._pool = urllib3.PoolManager(**kwargs)

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            resp = self._pool.request("GET", url, preload_content=False,
                                      timeout=urllib3.Timeout(self._timeout))
        except urllib3.exceptions.TimeoutError as e:
            raise exceptions.SlowRetrievalError(f"timeout fetching {url}") from e
        except urllib3.exceptions.MaxRetryError as e:
            if isinstance(e.reason, urllib3.exceptions.TimeoutError):
                raise exceptions.SlowRetrievalError(f"timeout fetching {url}") from e
            raise
        if resp.status >= 400:
            resp.close()
            raise exceptions.DownloadHTTPError(f"HTTP {resp.status} for {url}", resp.status)
        return self._chunks(resp)

    def _chunks(self, resp: urllib3.response.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from resp.stream(self._chunk)
        except urllib3.exceptions.TimeoutError as e:
            raise exceptions.SlowRetrievalError("timeout while streaming") from e
        finally:
            resp.release_conn()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="python-tuf ngclient: refresh and fetch a target")
    p.add_argument("url")
    p.add_argument("trusted_root")
    p.add_argument("cache_dir")
    p.add_argument("target")
    p.add_argument("out_file")
    p.add_argument("cafile", nargs="?")
    p.add_argument("--client-cert")
    p.add_argument("--client-key")
    args = p.parse_args(argv)
    if bool(args.client_cert) != bool(args.client_key):
        p.error("--client-cert and --client-key go together")
    return args


def cached_version(md_dir: str, role: str) -> int | None:
    """Version of the metadata ngclient persisted for `role`, if any."""
    path = os.path.join(md_dir, f"{role}.json")
    if not os.path.exists(path):
        return None
    return Metadata.from_file(path).signed.version


def fetch(args: argparse.Namespace) -> int:
    md_dir = os.path.join(args.cache_dir, "metadata")
    os.makedirs(md_dir, exist_ok=True)
    with open(args.trusted_root, "rb") as f:
        bootstrap = f.read()
    # tuf 7 walks forward from the bootstrap root through CACHE_DIR's root_history
    # before asking the server, so trust gained by earlier runs is kept.
    base = args.url.rstrip("/")
    fetcher = None
    if args.cafile or args.client_cert:
        fetcher = TlsFetcher(args.cafile, args.client_cert, args.client_key)
    updater = Updater(
        metadata_dir=md_dir,
        metadata_base_url=f"{base}/metadata/",
        target_base_url=f"{base}/targets/",
        fetcher=fetcher,
        config=UpdaterConfig(app_user_agent=USER_AGENT),
        bootstrap=bootstrap,
    )
    updater.refresh()
    info = updater.get_targetinfo(args.target)
    if info is None:
        print(f"TargetNotFound: {args.target!r} is not in any reachable targets metadata",
              file=sys.stderr)
        return 3
    out_dir = os.path.dirname(os.path.abspath(args.out_file))
    os.makedirs(out_dir, exist_ok=True)
    updater.download_target(info, filepath=args.out_file)

    # ngclient verified length and hashes; hash again so the report is about the file.
    with open(args.out_file, "rb") as f:
        data = f.read()
    report = {
        "target": args.target,
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "custom": info.custom,
        "root_version": cached_version(md_dir, "root"),
        "timestamp_version": cached_version(md_dir, "timestamp"),
        "snapshot_version": cached_version(md_dir, "snapshot"),
        "targets_version": cached_version(md_dir, "targets"),
    }
    print(json.dumps(report, sort_keys=True))
    return 0


def causes(e: BaseException) -> str:
    """' (caused by X: ...)' for each chained cause: ngclient wraps TLS and connection
    errors in a bare DownloadError."""
    parts = []
    cause = e.__cause__ or e.__context__
    while cause is not None and len(parts) < 4:
        part = f" (caused by {type(cause).__name__}: {cause})"
        if not parts or parts[-1] != part:
            parts.append(part)
        cause = cause.__cause__ or cause.__context__
    return "".join(parts).replace("\n", " ")


def main() -> int:
    args = parse_args(sys.argv[1:])
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    try:
        return fetch(args)
    except Exception as e:  # noqa: BLE001 - the class name is the result
        print(f"{type(e).__name__}: {e}{causes(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
