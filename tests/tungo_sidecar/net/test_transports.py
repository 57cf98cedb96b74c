"""Transports over real loopback sockets with a real CA: tcp, tls (socket and nested), ws, wss."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from streamtools import Forwarding, transfer

from tungo_sidecar.config.model import Metadata, Plugin, TLSOptions
from tungo_sidecar.errors import ConfigError, DialError, ProtocolError
from tungo_sidecar.net import transports
from tungo_sidecar.net.sockopts import open_tcp
from tungo_sidecar.net.stream import SocketStream, Stream
from tungo_sidecar.net.transports import CLIENT_TRANSPORTS, SERVER_TRANSPORTS
from tungo_sidecar.proto.address import Address

LOCAL = "127.0.0.1"


def server_plugin(kind: str, pki: Any = None, **metadata: Any) -> Plugin:
    tls = TLSOptions(cert_file=str(pki.server.cert), key_file=str(pki.server.key)) if pki else None
    return Plugin(kind, tls=tls, metadata=Metadata(metadata))


def acceptor(kind: str, plugin: Plugin) -> Any:
    async def accept(raw: SocketStream) -> Stream:
        return await SERVER_TRANSPORTS[kind].accept(raw, plugin)

    return accept


async def dial(kind: str, port: int, plugin: Plugin | None = None, host: str = LOCAL) -> Stream:
    plugin = plugin or Plugin(kind)
    raw = await open_tcp(Address(LOCAL, port), timeout=2)
    try:
        return await CLIENT_TRANSPORTS[kind].handshake(raw, plugin, Address(host, port))
    except BaseException:
        await raw.close()
        raise


async def roundtrip(stream: Stream, payload: bytes = b"hello over the transport") -> None:
    try:
        await stream.write(payload)
        got = b""
        async with asyncio.timeout(5):
            while len(got) < len(payload):
                data = await stream.read()
                assert data, "unexpected EOF"
                got += data
        assert got == payload
    finally:
        await stream.close()


def test_registry_declares_capabilities() -> None:
    assert set(CLIENT_TRANSPORTS) == set(SERVER_TRANSPORTS) >= {"tcp", "tls"}
    for name, transport in CLIENT_TRANSPORTS.items():
        assert transport.info.name == name
        assert SERVER_TRANSPORTS[name].info == transport.info
        assert transport.info.nestable
    assert CLIENT_TRANSPORTS["tcp"].info.half_close
    assert CLIENT_TRANSPORTS["tls"].info.tls and not CLIENT_TRANSPORTS["tls"].info.half_close
    with pytest.raises(ConfigError, match="unknown dialer 'quic'"):
        transports.client_transport("quic")
    with pytest.raises(ConfigError, match="unknown listener 'kcp'"):
        transports.server_transport("kcp")


async def test_tcp_passes_the_stream_through(start_server) -> None:
    server = await start_server(acceptor("tcp", Plugin("tcp")))
    stream = await dial("tcp", server.port)
    assert isinstance(stream, SocketStream)
    await roundtrip(stream)


async def test_tls_verified_with_the_test_ca(start_server, pki) -> None:
    server = await start_server(acceptor("tls", server_plugin("tls", pki)))
    client = Plugin(
        "tls", tls=TLSOptions(secure=True, ca_file=str(pki.ca.cert_file), server_name="tungo.test")
    )
    stream = await dial("tls", server.port, client)
    assert isinstance(stream, SocketStream)
    assert stream.writer.get_extra_info("ssl_object").server_hostname == "tungo.test"
    await transfer(stream, 8 * 1024 * 1024)
    await stream.close()


async def test_tls_verifies_an_ip_node_without_server_name(start_server, pki) -> None:
    server = await start_server(acceptor("tls", server_plugin("tls", pki)))
    client = Plugin("tls", tls=TLSOptions(secure=True, ca_file=str(pki.ca.cert_file)))
    await roundtrip(await dial("tls", server.port, client))


async def test_tls_with_the_wrong_ca_fails_to_dial(start_server, pki) -> None:
    server = await start_server(acceptor("tls", server_plugin("tls", pki)))
    client = Plugin("tls", tls=TLSOptions(secure=True, ca_file=str(pki.other_ca.cert_file)))
    with pytest.raises(DialError, match=r"tls 127\.0\.0\.1:\d+: certificate verification failed"):
        await dial("tls", server.port, client)


async def test_tls_secure_checks_the_name(start_server, pki) -> None:
    server = await start_server(acceptor("tls", server_plugin("tls", pki)))
    client = Plugin(
        "tls", tls=TLSOptions(secure=True, ca_file=str(pki.ca.cert_file), server_name="evil.test")
    )
    with pytest.raises(DialError, match="certificate verification failed"):
        await dial("tls", server.port, client)
    # GOST: a caFile without `secure` checks the chain only, so the same wrong name passes...
    lax = Plugin("tls", tls=TLSOptions(ca_file=str(pki.ca.cert_file), server_name="evil.test"))
    await roundtrip(await dial("tls", server.port, lax))
    # ...but a chain from another CA does not.
    other = Plugin("tls", tls=TLSOptions(ca_file=str(pki.other_ca.cert_file)))
    with pytest.raises(DialError, match="certificate verification failed"):
        await dial("tls", server.port, other)


async def test_tls_insecure_by_default_against_the_self_signed_server(start_server) -> None:
    server = await start_server(acceptor("tls", Plugin("tls")))  # no cert: generated self-signed
    await roundtrip(await dial("tls", server.port, Plugin("tls")))
    # The same server fails a secure client: the self-signed certificate is trusted by nobody.
    with pytest.raises(DialError, match="certificate verification failed"):
        await dial("tls", server.port, Plugin("tls", tls=TLSOptions(secure=True)))


async def test_tls_client_certificate_required_by_a_server_ca(start_server, pki) -> None:
    options = TLSOptions(
        cert_file=str(pki.server.cert), key_file=str(pki.server.key), ca_file=str(pki.ca.cert_file)
    )
    server = await start_server(acceptor("tls", Plugin("tls", tls=options)))
    with_cert = TLSOptions(cert_file=str(pki.client.cert), key_file=str(pki.client.key))
    await roundtrip(await dial("tls", server.port, Plugin("tls", tls=with_cert)))
    # Without a client certificate the TLS 1.3 server rejects after the client's Finished: the dial
    # may complete but the first read fails or sees EOF; either way no data comes back.
    try:
        stream = await dial("tls", server.port, Plugin("tls"))
    except DialError:
        pass
    else:
        await stream.write(b"x")
        with pytest.raises((OSError, ProtocolError, AssertionError)):
            async with asyncio.timeout(5):
                assert await stream.read() == b"x"
        await stream.close()
    assert server.errors and all(isinstance(e, ProtocolError) for e in server.errors)


async def test_tls_nested_over_a_non_socket_stream(start_server, pki) -> None:
    # Server side also nested: the accepted socket is hidden behind a Forwarding wrapper.
    plugin = server_plugin("tls", pki)

    async def accept(raw: SocketStream) -> Stream:
        return await SERVER_TRANSPORTS["tls"].accept(Forwarding(raw), plugin)

    server = await start_server(accept)
    raw = await open_tcp(Address(LOCAL, server.port), timeout=2)
    client = Plugin(
        "tls", tls=TLSOptions(secure=True, ca_file=str(pki.ca.cert_file), server_name="localhost")
    )
    stream = await CLIENT_TRANSPORTS["tls"].handshake(Forwarding(raw), client, Address(LOCAL, server.port))
    assert not isinstance(stream, SocketStream)
    await transfer(stream, 4 * 1024 * 1024)
    await stream.close()
    assert not server.errors


async def test_tls_inside_tls(start_server, pki) -> None:
    # Hop 2's TLS rides inside hop 1's TLS session, as in a two-hop chain.
    plugin = server_plugin("tls", pki)

    async def accept(raw: SocketStream) -> Stream:
        outer = await SERVER_TRANSPORTS["tls"].accept(raw, plugin)
        return await SERVER_TRANSPORTS["tls"].accept(outer, plugin)

    server = await start_server(accept)
    client = Plugin(
        "tls", tls=TLSOptions(secure=True, ca_file=str(pki.ca.cert_file), server_name="tungo.test")
    )
    outer = await dial("tls", server.port, client)
    inner = await CLIENT_TRANSPORTS["tls"].handshake(outer, client, Address("tungo.test", 443))
    await transfer(inner, 2 * 1024 * 1024)
    await inner.close()


async def test_tls_garbage_is_a_protocol_error_and_the_server_keeps_serving(start_server, pki) -> None:
    server = await start_server(acceptor("tls", server_plugin("tls", pki)))
    reader, writer = await asyncio.open_connection(LOCAL, server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
    await writer.drain()
    async with asyncio.timeout(5):
        await reader.read()  # the server drops us
    writer.close()
    await roundtrip(await dial("tls", server.port, Plugin("tls")))
    assert len(server.errors) == 1 and isinstance(server.errors[0], ProtocolError)
    assert "handshake failed" in str(server.errors[0])


async def test_tls_handshake_timeout(start_server) -> None:
    async def silent(raw: SocketStream) -> Stream:
        await asyncio.sleep(3)
        return raw

    server = await start_server(silent)
    plugin = Plugin("tls", metadata=Metadata({"handshakeTimeout": "200ms"}))
    with pytest.raises(DialError, match=r"timed out after 0\.2s"):
        await dial("tls", server.port, plugin)


async def test_tls_server_times_out_a_silent_client(start_server, pki) -> None:
    server = await start_server(acceptor("tls", server_plugin("tls", pki, handshakeTimeout="200ms")))
    raw = await open_tcp(Address(LOCAL, server.port), timeout=2)
    try:
        async with asyncio.timeout(3):
            assert await raw.read() == b""  # the server gives up and closes
    finally:
        await raw.close()
    assert len(server.errors) == 1 and "timed out after 0.2s" in str(server.errors[0])


def test_validate_catches_bad_plugins_at_start_up(pki, tmp_path) -> None:
    transports.validate(
        Plugin("wss", metadata=Metadata({"path": "/x", "header": {"X-A": "1"}})), server=False
    )
    transports.validate(server_plugin("wss", pki), server=True)
    transports.validate(Plugin("tls"), server=True)  # self-signed fallback
    bad = [
        (Plugin("quic"), "unknown dialer"),
        (Plugin("ws", metadata=Metadata({"path": "ws"})), "must start with '/'"),
        (Plugin("ws", metadata=Metadata({"header": "X-A: 1"})), "expected a mapping"),
        (Plugin("wss", metadata=Metadata({"header": {"Sec-WebSocket-Key": "x"}})), "Sec-WebSocket-Key"),
        (Plugin("tls", metadata=Metadata({"handshakeTimeout": "soon"})), "bad duration"),
        (Plugin("tls", tls=TLSOptions(secure=True, ca_file=str(tmp_path / "nope.pem"))), "nope"),
    ]
    for plugin, message in bad:
        with pytest.raises(ConfigError, match=message):
            transports.validate(plugin, server=False)
    with pytest.raises(ConfigError, match="together"):
        transports.validate(Plugin("tls", tls=TLSOptions(key_file=str(pki.server.key))), server=True)
