"""Webhook certificates made with cryptography: verified as a TLS client would, and served by ssl."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store

from tungo_operator.webhook import app, certs


def test_serving_certificate_verifies_against_its_ca_for_the_service_name() -> None:
    names = certs.service_names("tungo-webhook", "tungo-system")
    assert "tungo-webhook.tungo-system.svc" in names
    bundle = certs.generate(names)
    ca = x509.load_pem_x509_certificate(bundle.ca_pem)
    leaf = x509.load_pem_x509_certificate(bundle.cert_pem)
    verifier = (
        PolicyBuilder().store(Store([ca])).build_server_verifier(DNSName("tungo-webhook.tungo-system.svc"))
    )
    chain = verifier.verify(leaf, [])
    assert chain[-1] == ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ip_names_become_ip_sans_and_validity_starts_before_now() -> None:
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    leaf = x509.load_pem_x509_certificate(
        certs.generate(["127.0.0.1", "localhost"], days=2, now=now).cert_pem
    )
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(DNSName) == ["localhost"]
    assert leaf.not_valid_before_utc < now < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(days=2)


def test_no_names_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        certs.generate([])


async def test_written_files_serve_tls_that_a_client_verifies(tmp_path: Path) -> None:
    ca, crt, key = certs.write(certs.generate(["127.0.0.1"]), tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(crt, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client_ctx = ssl.create_default_context(cafile=str(ca))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.close()
        # A client that does not trust our CA refuses the handshake.
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context())


def test_certs_command_writes_the_secret_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert app.main(["certs", "--service", "hook", "--namespace", "ns", "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert "tls.key" in capsys.readouterr().out
    leaf = x509.load_pem_x509_certificate((tmp_path / "o" / "tls.crt").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hook.ns.svc" in san.get_values_for_type(DNSName)
