"""The relay connector against a raw TCP peer on loopback that checks and answers the exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tungo_sidecar import errors
from tungo_sidecar.config.model import Auth, Metadata, Plugin
from tungo_sidecar.net.connectors import HopContext, make_connector
from tungo_sidecar.net.connectors.relay import RelayConnector
from tungo_sidecar.net.stream import SocketStream
from tungo_sidecar.proto import relay
from tungo_sidecar.proto.address import Address

TARGET = Address("93.184.216.34", 443)
HOP = HopContext(node=Address("127.0.0.1", 1))

Peer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_peer(peer: Peer) -> AsyncIterator[SocketStream]:
    """A real TCP server running ``peer`` for one connection; yields the client's stream to it."""
    failures: list[BaseException] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await peer(reader, writer)
        except BaseException as exc:
            failures.append(exc)
            raise
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stream = SocketStream(reader, writer)
    try:
        yield stream
    finally:
        await stream.close()
        server.close()
        await server.wait_closed()
    if failures:
        raise failures[0]


def plugin(**metadata: object) -> Plugin:
    return Plugin("relay", metadata=Metadata(metadata))


async def test_lazy_tcp_request_rides_on_first_write_and_deferred_response_is_read() -> None:
    request = relay.Request.connect(TARGET).encode()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Nothing may arrive before the client's first write.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await reader.read(1)
        got = await reader.readexactly(len(request) + 5)
        assert got == request + b"hello"
        writer.write(relay.Response.ok().encode() + b"world")  # deferred: header with first data
        await writer.drain()
        assert await reader.read() == b""

    async with raw_peer(peer) as stream:
        tunnel = await RelayConnector(plugin()).connect_tcp(stream, TARGET)
        await asyncio.sleep(0.08)
        await tunnel.write(b"hello")
        assert await tunnel.read() == b"world"
        await tunnel.write_eof()


async def test_immediate_response_before_data_is_accepted() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(len(relay.Request.connect(TARGET).encode()))
        assert relay.Request.decode(header).address == TARGET
        writer.write(relay.Response.ok().encode())  # immediate, alone
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"late data")
        await writer.drain()

    async with raw_peer(peer) as stream:
        tunnel = await RelayConnector(plugin()).connect_tcp(stream, TARGET)
        await tunnel.write(b"")
        assert await tunnel.read() == b"late data"


async def test_auth_feature_is_sent_before_address() -> None:
    auth = Plugin("relay", auth=Auth("user", "pass"))
    expected = relay.Request.connect(TARGET, auth=relay.UserAuth("user", "pass")).encode()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(len(expected) + 1) == expected + b"x"
        writer.write(relay.Response.ok().encode())
        await writer.drain()

    async with raw_peer(peer) as stream:
        tunnel = await make_connector(auth).connect_tcp(stream, TARGET)
        await tunnel.write(b"x")
        assert await tunnel.read() == b""
    assert expected.index(b"\x01\x00\x0a") < expected.index(b"\x02\x00\x07")


@pytest.mark.parametrize("status", list(errors.RELAY_STATUS_ERRORS))
async def test_non_ok_status_raises_the_mapped_error(status: int) -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(relay.Response(status).encode())
        await writer.drain()

    async with raw_peer(peer) as stream:
        tunnel = await RelayConnector(plugin()).connect_tcp(stream, TARGET)
        await tunnel.write(b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises(errors.RELAY_STATUS_ERRORS[status]) as info:
            await tunnel.read()
        assert info.value.status == status


async def test_server_closing_without_answer_is_a_protocol_error() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(b"\x01\x00")  # half a header, then gone

    async with raw_peer(peer) as stream:
        tunnel = await RelayConnector(plugin()).connect_tcp(stream, TARGET)
        await tunnel.write(b"x")
        with pytest.raises(errors.RelayProtocolError, match="closed the connection before answering"):
            await tunnel.read()


async def test_wrong_version_response_is_a_protocol_error() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    async with raw_peer(peer) as stream:
        tunnel = await RelayConnector(plugin()).connect_tcp(stream, TARGET)
        await tunnel.write(b"x")
        with pytest.raises(errors.RelayProtocolError, match="bad version"):
            await tunnel.read()


async def test_server_first_protocol_gets_the_header_alone_after_the_flush_delay() -> None:
    request = relay.Request.connect(TARGET).encode()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(len(request)) == request
        writer.write(relay.Response.ok().encode() + b"SSH-2.0-banner\r\n")
        await writer.drain()
        assert await reader.readexactly(5) == b"hello"

    async with raw_peer(peer) as stream:
        tunnel = await RelayConnector(plugin(), flush_delay=0.02).connect_tcp(stream, TARGET)
        async with asyncio.timeout(2):
            assert await tunnel.read() == b"SSH-2.0-banner\r\n"
        await tunnel.write(b"hello")


async def test_write_eof_without_data_still_sends_the_request() -> None:
    request = relay.Request.connect(TARGET).encode()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.read() == request  # header then EOF
        writer.write(relay.Response.ok().encode())
        await writer.drain()

    async with raw_peer(peer) as stream:
        tunnel = await RelayConnector(plugin()).connect_tcp(stream, TARGET)
        await tunnel.write_eof()
        assert await tunnel.read() == b""


async def test_nodelay_writes_request_and_reads_response_before_returning() -> None:
    request = relay.Request.connect(TARGET).encode()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(len(request)) == request
        writer.write(relay.Response.ok().encode() + b"early")
        await writer.drain()
        assert await reader.readexactly(4) == b"data"

    async with raw_peer(peer) as stream:
        tunnel = await RelayConnector(plugin(nodelay="true")).connect_tcp(stream, TARGET)
        assert await tunnel.read() == b"early"  # bytes behind the response are kept
        await tunnel.write(b"data")


async def test_nodelay_refusal_raises_at_connect() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(relay.Response(relay.Status.FORBIDDEN).encode())
        await writer.drain()

    async with raw_peer(peer) as stream:
        with pytest.raises(errors.RelayForbidden):
            await RelayConnector(plugin(nodelay=True)).connect_tcp(stream, TARGET)


async def test_udp_bytes_match_gost_first_datagram_merged_then_length_and_payload() -> None:
    dns = Address("2001:db8::1", 53)
    request = relay.Request.connect(dns, udp=True).encode()
    assert request[1] == relay.CMD_CONNECT | relay.FLAG_UDP

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(len(request) + 2 + 3)
        assert first == request + b"\x00\x03one"
        assert await reader.readexactly(2 + 5) == b"\x00\x05three"
        # Deferred OK with the first reply, then a reply split across writes (reassembly).
        writer.write(relay.Response.ok().encode() + b"\x00\x02ok\x00")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"\x04pong")
        await writer.drain()

    async with raw_peer(peer) as stream:
        session = await RelayConnector(plugin()).connect_udp(stream, dns, HOP)
        await session.send(b"one")
        await session.send(b"three")
        assert await session.recv() == b"ok"
        assert await session.recv() == b"pong"
        with pytest.raises(EOFError):
            await session.recv()
        with pytest.raises(ValueError, match="exceeds"):
            await session.send(b"x" * 65536)


async def test_udp_request_carries_network_feature_and_flag() -> None:
    request = relay.Request.decode(relay.Request.connect(TARGET, udp=True).encode())
    assert request.udp and request.network_feature == relay.NetworkID.UDP
    assert isinstance(request.features[0], relay.NetworkFeature)


def test_unknown_connector_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="unknown connector 'nope'"):
        make_connector(Plugin("nope"))


def test_length_prefix_is_big_endian() -> None:
    assert struct.pack("!H", 258) == b"\x01\x02"
