"""TLS contexts from GOST's ``tls`` options, and the self-signed certificate GOST makes at start-up.

Client side, as GOST does (go-gost/x internal/util/tls, LoadClientConfig):
  * ``secure: true``  -> full verification: chain against ``caFile`` (else the system store) and the
    name ``serverName`` (else the node's host) against the certificate.
  * ``secure: false`` (the default) -> no verification at all, *unless* ``caFile`` is given: then the
    chain is still checked against that CA but the name is not (GOST's VerifyConnection hook).
  * SNI is sent either way (``serverName`` or the node host; never for IP literals, per RFC 6066).
  * ``certFile``/``keyFile`` on a client present a client certificate.
Server side: ``certFile``/``keyFile``, else a self-signed ECDSA P-256 certificate generated once per
process (GOST generates one too); ``caFile`` on a server requires and verifies client certificates.

Contexts are cached per options (and per the files' mtimes, so a rotated certificate is picked up).
Callers: ``net.transports`` (tls / wss client and server), tests. Never opens sockets.
"""

from __future__ import annotations

import datetime
import functools
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tungo_sidecar.config.model import TLSOptions
from tungo_sidecar.errors import ConfigError

#: Name written into the generated certificate (GOST's clients do not verify it by default).
SELF_SIGNED_NAME = "tungo"


def _cache_key(options: TLSOptions | None) -> tuple[TLSOptions, float, float, float]:
    """The options and their files' mtimes: a rotated certificate or CA makes a new context."""
    options = options or TLSOptions()
    return options, _mtime(options.ca_file), _mtime(options.cert_file), _mtime(options.key_file)


def _mtime(path: str | None) -> float:
    if not path:
        return 0.0
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0  # missing: the load below reports it with the file name


def client_context(options: TLSOptions | None) -> ssl.SSLContext:
    """The client SSLContext for ``options`` (``None`` means GOST's defaults: no verification)."""
    return _client_context(*_cache_key(options))


@functools.lru_cache(maxsize=64)
def _client_context(options: TLSOptions, *_mtimes: float) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.secure:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_ca(ctx, options.ca_file, system_default=True)
    elif options.ca_file:
        # GOST: a CA without `secure` still verifies the chain, but not the name.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_ca(ctx, options.ca_file, system_default=False)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if options.cert_file or options.key_file:
        _load_pair(ctx, options.cert_file, options.key_file)
    return ctx


def server_hostname(options: TLSOptions | None, node_host: str) -> str | None:
    """The name sent as SNI and verified: ``serverName`` or the node host (None if neither)."""
    name = (options.server_name if options else None) or node_host
    return name or None


def server_context(options: TLSOptions | None) -> ssl.SSLContext:
    """The server SSLContext: given cert/key, else the per-process self-signed certificate."""
    return _server_context(*_cache_key(options))


@functools.lru_cache(maxsize=64)
def _server_context(options: TLSOptions, *_mtimes: float) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.cert_file or options.key_file:
        _load_pair(ctx, options.cert_file, options.key_file)
    else:
        cert_pem, key_pem = self_signed_pem()
        _load_pem_pair(ctx, cert_pem, key_pem)
    if options.ca_file:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_ca(ctx, options.ca_file, system_default=False)
    return ctx


def _load_ca(ctx: ssl.SSLContext, ca_file: str | None, *, system_default: bool) -> None:
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls caFile {ca_file!r}: cannot load: {exc}") from exc
    elif system_default:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)


def _load_pair(ctx: ssl.SSLContext, cert_file: str | None, key_file: str | None) -> None:
    if not cert_file or not key_file:
        raise ConfigError("tls: certFile and keyFile must be given together")
    try:
        ctx.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls certFile {cert_file!r} / keyFile {key_file!r}: cannot load: {exc}") from exc


def _load_pem_pair(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # The ssl module loads chains from files only; the files live just long enough to be read.
    with tempfile.TemporaryDirectory(prefix="tungo-tls-") as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        ctx.load_cert_chain(certfile=cert_path, keyfile=key_path)


@functools.cache
def self_signed_pem() -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) of this process's self-signed server certificate.

    ECDSA P-256: small and fast to sign with (handshakes per second matter on a relay server).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SELF_SIGNED_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SELF_SIGNED_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem
