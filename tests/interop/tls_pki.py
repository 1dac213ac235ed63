#!/usr/bin/env python3
"""Throwaway PKI for the HTTPS / mutual-TLS runs of the interop scripts.

usage: tls_pki.py OUTDIR
Writes OUTDIR/{ca.crt, server.crt, server.key, client.crt, client.key} (PEM): a CA,
a server certificate for 127.0.0.1 / localhost, and a client certificate, all P-256,
valid 2000-01-01 .. 2099-01-01 so neither a real nor a fixed clock rejects them.
"""
from __future__ import annotations

import ipaddress
import os
import sys
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOT_BEFORE = datetime(2000, 1, 1, tzinfo=timezone.utc)
NOT_AFTER = datetime(2099, 1, 1, tzinfo=timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: x509.Name, issuer_key, *, ca: bool,
          san: list[x509.GeneralName] | None = None, eku=None) -> x509.Certificate:
    b = (x509.CertificateBuilder()
         .subject_name(_name(subject)).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False)
    if not ca or issuer_key is not key:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def make_pki(out: str) -> dict[str, str]:
    """Write the PEM files; return their paths by name (ca, server_cert, ...)."""
    os.makedirs(out, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ota interop test CA", ca_key, _name("ota interop test CA"), ca_key, ca=True)
    paths = {"ca": os.path.join(out, "ca.crt")}
    _write(paths["ca"], ca.public_bytes(serialization.Encoding.PEM))
    leaves = {
        "server": ([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                   ExtendedKeyUsageOID.SERVER_AUTH),
        "client": (None, ExtendedKeyUsageOID.CLIENT_AUTH),
    }
    for who, (san, eku) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"ota interop {who}", key, ca.subject, ca_key, ca=False, san=san, eku=eku)
        paths[f"{who}_cert"] = os.path.join(out, f"{who}.crt")
        paths[f"{who}_key"] = os.path.join(out, f"{who}.key")
        _write(paths[f"{who}_cert"], cert.public_bytes(serialization.Encoding.PEM))
        _write(paths[f"{who}_key"], key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    for name, path in make_pki(sys.argv[1]).items():
        print(f"{name} {path}")
