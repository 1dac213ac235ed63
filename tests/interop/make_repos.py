#!/usr/bin/env python3
"""Build TUF repositories with python-tuf's Metadata API for ota's interop tests.

usage: make_repos.py OUTDIR

Writes one folder per scenario under OUTDIR (see SCENARIOS at the bottom). Each holds:
  metadata/1.root.json .. N.root.json    every root version (consistent snapshots)
  metadata/timestamp.json                never version-prefixed
  metadata/V.snapshot.json, V.targets.json, V.<delegated-role>.json
  targets/[dir/]<sha256>.<basename>      hash-prefixed target files
  trusted_root.json                      version-1 root, the client's trust anchor
  expect.json                            what a correct client must conclude

Keys are fresh each run; the structure, names, versions and expiry dates are fixed.
Every expiry is FAR (2099) except where expiry is the point (PAST, 2000-01-01), so a
client may be run with the fixed clock NOW (2026-01-01T00:00:00Z) or the real one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from datetime import datetime, timezone

from securesystemslib.signer import CryptoSigner, Signature
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

NOW = "2026-01-01T00:00:00Z"
FAR = datetime(2099, 1, 1, tzinfo=timezone.utc)
PAST = datetime(2000, 1, 1, tzinfo=timezone.utc)
TOP_ROLES = ("root", "timestamp", "snapshot", "targets")
SER = JSONSerializer(compact=False)


def new_key(kind: str) -> CryptoSigner:
    """A fresh signer: ed25519, ecdsa (ecdsa-sha2-nistp256) or rsa (rsassa-pss-sha256)."""
    if kind == "ed25519":
        return CryptoSigner.generate_ed25519()
    if kind == "ecdsa":
        return CryptoSigner.generate_ecdsa()
    if kind == "rsa":
        return CryptoSigner.generate_rsa()
    raise ValueError(f"unknown key kind {kind!r}")


def sign(md: Metadata, signers: list[CryptoSigner]) -> None:
    """Replace md's signatures with one from each signer."""
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)


def make_root(version: int, keys: dict[str, list[CryptoSigner]],
              thresholds: dict[str, int] | None = None, expires: datetime = FAR) -> Metadata[Root]:
    """An unsigned root listing `keys` per top-level role (threshold 1 unless given)."""
    root = Metadata(Root(version=version, expires=expires, consistent_snapshot=True))
    for role in TOP_ROLES:
        for s in keys[role]:
            root.signed.add_key(s.public_key, role)
        root.signed.roles[role].threshold = (thresholds or {}).get(role, 1)
    return root


def payload(name: str, size: int = 1500) -> bytes:
    """Deterministic target contents, distinct per name."""
    seed = hashlib.sha256(name.encode()).digest()
    out = bytearray()
    while len(out) < size:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return bytes(out[:size])


class Repo:
    """One scenario's repository: fill the fields, then write()."""

    def __init__(self, outdir: str, name: str, description: str):
        self.name = name
        self.description = description
        self.dir = os.path.join(outdir, name)
        # Signed roots in version order; roots[0] is the client's trust anchor.
        self.roots: list[Metadata[Root]] = []
        # Signers that sign each role's metadata (top-level and delegated).
        self.signers: dict[str, list[CryptoSigner]] = {}
        # Targets metadata by role name, in the order they are written.
        self.roles: dict[str, Metadata[Targets]] = {"targets": Metadata(Targets(expires=FAR))}
        self.files: dict[str, bytes] = {}      # target path -> contents
        self.owner: dict[str, str] = {}        # target path -> role that lists it
        self.absent: list[str] = []            # names a correct client must not find
        self.meta_hashes = False               # put length+hashes into timestamp/snapshot meta
        self.timestamp_expires = FAR
        self.snapshot_claimed = 1              # version timestamp names (and the file name)
        self.snapshot_actual = 1               # version written inside that file
        self.expect_error: dict | None = None

    # -- building
    def top_keys(self, kinds: dict[str, list[str]]) -> dict[str, list[CryptoSigner]]:
        """Generate keys per top-level role from kind names; they sign their roles."""
        keys = {role: [new_key(k) for k in kinds[role]] for role in TOP_ROLES}
        self.signers.update(keys)
        return keys

    def add_target(self, name: str, custom: dict | None = None, role: str = "targets",
                   data: bytes | None = None) -> None:
        data = payload(name) if data is None else data
        tf = TargetFile.from_data(name, data, ["sha256"])
        if custom is not None:
            tf.unrecognized_fields["custom"] = custom
        self.roles[role].signed.targets[name] = tf
        self.files[name] = data
        self.owner[name] = role

    def delegate(self, delegator: str, name: str, paths: list[str], kind: str = "ed25519",
                 terminating: bool = False) -> None:
        """Delegate `paths` from `delegator` to a new role `name` with one fresh key."""
        signer = new_key(kind)
        parent = self.roles[delegator].signed
        if parent.delegations is None:
            parent.delegations = Delegations(keys={}, roles={})
        parent.delegations.roles[name] = DelegatedRole(
            name=name, keyids=[], threshold=1, terminating=terminating, paths=paths)
        parent.add_key(signer.public_key, name)
        self.signers[name] = [signer]
        self.roles[name] = Metadata(Targets(expires=FAR))

    # -- writing
    def _meta(self, version: int, data: bytes) -> MetaFile:
        if not self.meta_hashes:
            return MetaFile(version=version)
        return MetaFile(version=version, length=len(data),
                        hashes={"sha256": hashlib.sha256(data).hexdigest()})

    def _put(self, rel: str, data: bytes) -> None:
        path = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def write(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "metadata"))
        os.makedirs(os.path.join(self.dir, "targets"))
        for root in self.roots:
            self._put(f"metadata/{root.signed.version}.root.json", root.to_bytes(SER))
        self._put("trusted_root.json", self.roots[0].to_bytes(SER))

        snapshot = Metadata(Snapshot(version=self.snapshot_actual, expires=FAR))
        for role, md in self.roles.items():
            sign(md, self.signers[role])
            data = md.to_bytes(SER)
            self._put(f"metadata/{md.signed.version}.{role}.json", data)
            snapshot.signed.meta[f"{role}.json"] = self._meta(md.signed.version, data)
        sign(snapshot, self.signers["snapshot"])
        snap_data = snapshot.to_bytes(SER)
        self._put(f"metadata/{self.snapshot_claimed}.snapshot.json", snap_data)

        timestamp = Metadata(Timestamp(expires=self.timestamp_expires))
        timestamp.signed.snapshot_meta = self._meta(self.snapshot_claimed, snap_data)
        sign(timestamp, self.signers["timestamp"])
        self._put("metadata/timestamp.json", timestamp.to_bytes(SER))

        expect_targets = {}
        for name, data in self.files.items():
            # Absent names are still served, so a client that wrongly finds one succeeds
            # visibly instead of failing for an unrelated reason.
            tf = self.roles[self.owner[name]].signed.targets[name]
            sha = tf.hashes["sha256"]
            head, sep, base = name.rpartition("/")
            self._put(f"targets/{head}{sep}{sha}.{base}", data)
            entry = {"length": tf.length, "sha256": sha, "role": self.owner[name],
                     "path": f"targets/{head}{sep}{sha}.{base}"}
            if "custom" in tf.unrecognized_fields:
                entry["custom"] = tf.unrecognized_fields["custom"]
            if name not in self.absent:
                expect_targets[name] = entry

        err = self.expect_error or {}
        expect = {
            "scenario": self.name,
            "description": self.description,
            "now": NOW,
            "trusted_root": "trusted_root.json",
            "root_version": self.roots[-1].signed.version,
            "targets": expect_targets,
            "absent_targets": self.absent,
            "error": err.get("kind"),
            "error_role": err.get("role"),
            "error_stage": err.get("stage"),
            "ngclient_exception": err.get("ngclient"),
        }
        self._put("expect.json", (json.dumps(expect, indent=2, sort_keys=True) + "\n").encode())

    # -- tampering after write()
    def rewrite(self, rel: str, change) -> None:
        """Load metadata file `rel`, let `change(md)` alter it, write it back as is."""
        path = os.path.join(self.dir, rel)
        md = Metadata.from_file(path)
        change(md)
        md.to_file(path, SER)


    def corrupt_target_files(self) -> None:
        """Flip one bit in the middle of every served target file (length unchanged)."""
        for name, data in self.files.items():
            sha = self.roles[self.owner[name]].signed.targets[name].hashes["sha256"]
            head, sep, base = name.rpartition("/")
            bad = bytearray(data)
            bad[len(bad) // 2] ^= 0x01
            self._put(f"targets/{head}{sep}{sha}.{base}", bytes(bad))


def simple(outdir: str, name: str, description: str, kind: str) -> Repo:
    """All four top-level roles with one `kind` key each and one target."""
    r = Repo(outdir, name, description)
    keys = r.top_keys({role: [kind] for role in TOP_ROLES})
    root = make_root(1, keys)
    sign(root, keys["root"])
    r.roots.append(root)
    r.add_target(f"{name}.bin", custom={"version": "1.0.0", "hardware_ids": ["hw-a"]})
    return r


def ed25519_basic(out: str) -> Repo:
    r = simple(out, "ed25519_basic",
               "ed25519 keys, one target with custom fields; timestamp and snapshot meta "
               "carry length and sha256", "ed25519")
    r.roles["targets"].signed.targets.clear()
    r.files.clear()
    r.add_target("firmware-1.2.0.bin", custom={"version": "1.2.0", "hardware_ids": ["hw-a"]})
    r.meta_hashes = True
    return r


def ecdsa_keys(out: str) -> Repo:
    return simple(out, "ecdsa_keys", "every role signed with one ecdsa-sha2-nistp256 key",
                  "ecdsa")


def rsa_keys(out: str) -> Repo:
    return simple(out, "rsa_keys", "every role signed with one rsassa-pss-sha256 key "
                  "(RSA 3072)", "rsa")


def mixed_threshold(out: str) -> Repo:
    r = Repo(out, "mixed_threshold",
             "root 2-of-3 over ed25519+ecdsa+rsa keys, signed by the ecdsa and rsa keys only; "
             "targets 2-of-2 (ed25519+ecdsa)")
    keys = r.top_keys({"root": ["ed25519", "ecdsa", "rsa"], "timestamp": ["ed25519"],
                       "snapshot": ["ecdsa"], "targets": ["ed25519", "ecdsa"]})
    root = make_root(1, keys, {"root": 2, "targets": 2})
    sign(root, keys["root"][1:])
    r.roots.append(root)
    r.add_target("mixed.bin", custom={"version": "2.0.0", "hardware_ids": ["hw-a", "hw-b"]})
    return r


def delegations(out: str) -> Repo:
    r = Repo(out, "delegations",
             "targets delegates firmware/* to firmware and apps/* to apps (terminating), then "
             "* to fallback; firmware delegates firmware/beta/* to firmware-beta. "
             "apps/hidden.bin exists only in fallback and must not be found (apps is "
             "terminating); firmware/extra.bin is found in fallback (firmware is not).")
    keys = r.top_keys({role: ["ed25519"] for role in TOP_ROLES})
    root = make_root(1, keys)
    sign(root, keys["root"])
    r.roots.append(root)
    # python-tuf's '*' never matches '/': a pattern matches only names with as many
    # path components, so firmware must also claim firmware/beta/* to reach its child.
    r.delegate("targets", "firmware", ["firmware/*", "firmware/beta/*"])
    r.delegate("targets", "apps", ["apps/*"], kind="ecdsa", terminating=True)
    r.delegate("targets", "fallback", ["*", "*/*"])
    r.delegate("firmware", "firmware-beta", ["firmware/beta/*"])
    r.add_target("top.bin", custom={"version": "1.0.0", "hardware_ids": ["hw-a"]})
    r.add_target("firmware/fw-1.0.bin", role="firmware",
                 custom={"version": "1.0.0", "hardware_ids": ["hw-a"]})
    r.add_target("firmware/beta/fw-1.1-beta.bin", role="firmware-beta",
                 custom={"version": "1.1.0-beta.1", "hardware_ids": ["hw-a"]})
    r.add_target("apps/app.bin", role="apps")
    r.add_target("firmware/extra.bin", role="fallback")
    # Listed only by fallback: unreachable because apps/* stops at terminating apps.
    r.add_target("apps/hidden.bin", role="fallback")
    r.absent = ["apps/hidden.bin", "firmware/missing.bin"]
    r.meta_hashes = True
    return r


def root_rotation(out: str) -> Repo:
    r = Repo(out, "root_rotation",
             "roots 1->2->3: each version replaces the root key and the timestamp key and is "
             "signed by the previous and the new root key. Root 1 expired in 2000: only the "
             "final root's expiry counts. The client bootstraps from 1 and ends at 3.")
    keys = r.top_keys({role: ["ed25519"] for role in TOP_ROLES})
    prev_root_keys = keys["root"]
    root = make_root(1, keys, expires=PAST)
    sign(root, keys["root"])
    r.roots.append(root)
    for version, kind in ((2, "ecdsa"), (3, "ed25519")):
        keys = dict(keys, root=[new_key(kind)], timestamp=[new_key("ed25519")])
        root = make_root(version, keys)
        sign(root, prev_root_keys + keys["root"])
        r.roots.append(root)
        prev_root_keys = keys["root"]
    r.signers.update(keys)
    r.add_target("rotated.bin", custom={"version": "3.0.0", "hardware_ids": ["hw-a"]})
    return r


def bad_signature(out: str) -> Repo:
    r = simple(out, "bad_signature", "timestamp.json's signature has its bytes flipped",
               "ed25519")
    r.expect_error = {"kind": "threshold_not_met", "role": "timestamp", "stage": "refresh",
                      "ngclient": "UnsignedMetadataError"}
    return r


def flip_signatures(md: Metadata) -> None:
    for keyid, sig in list(md.signatures.items()):
        raw = bytes(b ^ 0xFF for b in bytes.fromhex(sig.signature))
        md.signatures[keyid] = Signature(keyid, raw.hex())


def expired_timestamp(out: str) -> Repo:
    r = simple(out, "expired_timestamp", "timestamp.json expired on 2000-01-01", "ed25519")
    r.timestamp_expires = PAST
    r.expect_error = {"kind": "expired", "role": "timestamp", "stage": "refresh",
                      "ngclient": "ExpiredMetadataError"}
    return r


def threshold_not_met(out: str) -> Repo:
    r = Repo(out, "threshold_not_met",
             "root requires 2 targets signatures; targets.json is signed by one of the two keys")
    keys = r.top_keys({"root": ["ed25519"], "timestamp": ["ed25519"],
                       "snapshot": ["ed25519"], "targets": ["ed25519", "ed25519"]})
    root = make_root(1, keys, {"targets": 2})
    sign(root, keys["root"])
    r.roots.append(root)
    r.signers["targets"] = keys["targets"][:1]
    r.add_target("threshold.bin")
    r.expect_error = {"kind": "threshold_not_met", "role": "targets", "stage": "refresh",
                      "ngclient": "UnsignedMetadataError"}
    return r


def snapshot_version_mismatch(out: str) -> Repo:
    r = simple(out, "snapshot_version_mismatch",
               "timestamp names snapshot version 2; 2.snapshot.json says version 3", "ed25519")
    r.snapshot_claimed, r.snapshot_actual = 2, 3
    r.expect_error = {"kind": "version_mismatch", "role": "snapshot", "stage": "refresh",
                      "ngclient": "BadVersionNumberError"}
    return r


def target_hash_mismatch(out: str) -> Repo:
    r = simple(out, "target_hash_mismatch",
               "the target file's bytes were altered after signing (same length)", "ed25519")
    r.expect_error = {"kind": "hash_mismatch", "role": None, "stage": "download",
                      "ngclient": "LengthOrHashMismatchError"}
    return r


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    plain = [ed25519_basic, ecdsa_keys, rsa_keys, mixed_threshold, delegations, root_rotation,
             expired_timestamp, threshold_not_met, snapshot_version_mismatch]
    for build in plain:
        build(out).write()

    r = bad_signature(out)
    r.write()
    r.rewrite("metadata/timestamp.json", flip_signatures)

    r = target_hash_mismatch(out)
    r.write()
    r.corrupt_target_files()

    names = sorted(d for d in os.listdir(out) if os.path.isfile(os.path.join(out, d, "expect.json")))
    print(json.dumps({"now": NOW, "scenarios": names}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
