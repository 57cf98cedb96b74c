"""TLS contexts from GOST's options: who verifies what, the self-signed fallback, bad files."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tungo_sidecar.config.model import TLSOptions
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.net import tlsconf


def test_default_client_verifies_nothing() -> None:
    for options in (None, TLSOptions()):
        ctx = tlsconf.client_context(options)
        assert ctx.verify_mode == ssl.CERT_NONE
        assert not ctx.check_hostname


def test_secure_client_verifies_chain_and_name(pki) -> None:
    ctx = tlsconf.client_context(TLSOptions(secure=True, ca_file=str(pki.ca.cert_file)))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1  # only the given CA, not the system store


def test_secure_client_without_ca_uses_the_system_store() -> None:
    ctx = tlsconf.client_context(TLSOptions(secure=True))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_ca_without_secure_verifies_chain_but_not_name(pki) -> None:
    ctx = tlsconf.client_context(TLSOptions(ca_file=str(pki.ca.cert_file)))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not ctx.check_hostname


def test_server_hostname_prefers_server_name() -> None:
    assert tlsconf.server_hostname(TLSOptions(server_name="front.example"), "10.0.0.1") == "front.example"
    assert tlsconf.server_hostname(TLSOptions(), "relay.example") == "relay.example"
    assert tlsconf.server_hostname(None, "") is None


def test_contexts_are_cached() -> None:
    assert tlsconf.client_context(TLSOptions()) is tlsconf.client_context(TLSOptions())
    assert tlsconf.server_context(None) is tlsconf.server_context(TLSOptions())


def test_self_signed_certificate_is_made_once_and_valid() -> None:
    cert_pem, key_pem = tlsconf.self_signed_pem()
    assert tlsconf.self_signed_pem() == (cert_pem, key_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.subject == cert.issuer
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [tlsconf.SELF_SIGNED_NAME]
    assert b"PRIVATE KEY" in key_pem


def test_bad_ca_file_names_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus-ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"bogus-ca\.pem"):
        tlsconf.client_context(TLSOptions(secure=True, ca_file=str(bogus)))
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        tlsconf.client_context(TLSOptions(secure=True, ca_file=str(tmp_path / "missing.pem")))


def test_cert_without_key_is_a_config_error(pki) -> None:
    with pytest.raises(ConfigError, match="together"):
        tlsconf.server_context(TLSOptions(cert_file=str(pki.server.cert)))


def test_server_with_ca_requires_client_certificates(pki) -> None:
    options = TLSOptions(
        cert_file=str(pki.server.cert), key_file=str(pki.server.key), ca_file=str(pki.ca.cert_file)
    )
    assert tlsconf.server_context(options).verify_mode == ssl.CERT_REQUIRED


def test_rotated_certificate_is_reloaded(pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(pki.server.cert.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    options = TLSOptions(cert_file=str(cert), key_file=str(key))
    first = tlsconf.server_context(options)
    import os

    stat = cert.stat()
    os.utime(cert, (stat.st_atime, stat.st_mtime + 5))
    assert tlsconf.server_context(options) is not first
