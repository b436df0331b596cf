"""The mesh CA and each process's certificate (URI SAN `spiffe://leadmesh/<name>`).

Created under `var/pki/` on first start; never overwritten. Private keys are written 0600.
Also makes the gateway's self-signed development certificate for HTTPS.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SPIFFE_PREFIX = "spiffe://leadmesh/"
# Every process of the mesh, plus `operator` for the command line.
MESH_NAMES = ("gateway", "identity", "vault", "runner", "retention", "operator")
LEAF_DAYS = 397
CA_DAYS = 3650


@dataclass(frozen=True)
class MeshCertificate:
    name: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes


def ensure_mesh_pki(pki_dir: Path, names: tuple[str, ...] = MESH_NAMES) -> None:
    pki_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pki_dir, 0o700)
    ca_cert_path, ca_key_path = pki_dir / "ca.pem", pki_dir / "ca.key"
    if not ca_cert_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leadmesh mesh CA")])
        cert = (
            _builder(name, name, key.public_key(), CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write_key(ca_key_path, key)
        ca_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    for service in names:
        if not (pki_dir / f"{service}.pem").exists():
            _issue(pki_dir, service, ca_cert, ca_key)


def load_mesh_certificate(pki_dir: Path, name: str) -> MeshCertificate:
    return MeshCertificate(
        name=name,
        cert_pem=(pki_dir / f"{name}.pem").read_bytes(),
        key_pem=(pki_dir / f"{name}.key").read_bytes(),
        ca_pem=(pki_dir / "ca.pem").read_bytes(),
    )


def spiffe_name(cert_pem: bytes) -> str | None:
    """The mesh name in a certificate's `spiffe://leadmesh/<name>` URI SAN, if any."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(SPIFFE_PREFIX):
            return uri.removeprefix(SPIFFE_PREFIX)
    return None


def ensure_self_signed(cert_path: Path, key_path: Path, hostnames: list[str]) -> None:
    """A development HTTPS certificate for the gateway, when no real one is configured."""
    if cert_path.exists() and key_path.exists():
        return
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    cert = (
        _builder(name, name, key.public_key(), LEAF_DAYS)
        .add_extension(x509.SubjectAlternativeName(_alt_names(hostnames)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(pki_dir: Path, service: str, ca_cert: x509.Certificate, ca_key) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "leadmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, service),
        ]
    )
    # DNS names cover one machine (localhost) and Compose (the service's own host name).
    alt = [x509.UniformResourceIdentifier(SPIFFE_PREFIX + service)]
    alt += _alt_names(["localhost", service, "127.0.0.1", "::1"])
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), LEAF_DAYS)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki_dir / f"{service}.key", key)
    (pki_dir / f"{service}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject, issuer, public_key, days: int) -> x509.CertificateBuilder:
    now = datetime.now(UTC)  # certificate validity is wall time, not the service clock
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _alt_names(hostnames: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_key(path: Path, key) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
