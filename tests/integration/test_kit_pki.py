"""The mesh CA on disk: made once, never overwritten, keys private, names in the certificates."""

from __future__ import annotations

from services.kit.pki import ensure_mesh_pki, load_mesh_certificate, spiffe_name


def test_mesh_certificates_carry_their_spiffe_name(tmp_path):
    ensure_mesh_pki(tmp_path / "pki")
    first = load_mesh_certificate(tmp_path / "pki", "vault")
    ensure_mesh_pki(tmp_path / "pki")  # idempotent: never overwrites
    assert load_mesh_certificate(tmp_path / "pki", "vault").cert_pem == first.cert_pem
    assert spiffe_name(first.cert_pem) == "vault"
    assert (tmp_path / "pki" / "vault.key").stat().st_mode & 0o077 == 0
