"""Websocket transport against real peers: our own server, and websockets' independent asyncio
client/server as the other end (interop), over loopback TCP and TLS."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import logging
import os
import socket
import termios
from typing import Any

import pytest
from streamtools import Forwarding, transfer
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.utils import accept_key

from tungo_sidecar.config.model import Metadata, Plugin, TLSOptions
from tungo_sidecar.errors import ConfigError, DialError, ProtocolError
from tungo_sidecar.net import ws
from tungo_sidecar.net.sockopts import open_tcp
from tungo_sidecar.net.stream import SocketStream, Stream
from tungo_sidecar.net.transports import CLIENT_TRANSPORTS, SERVER_TRANSPORTS
from tungo_sidecar.net.ws import WebSocketStream
from tungo_sidecar.proto.address import Address

LOCAL = "127.0.0.1"


def plugin(kind: str, pki: Any = None, **metadata: Any) -> Plugin:
    tls = TLSOptions(cert_file=str(pki.server.cert), key_file=str(pki.server.key)) if pki else None
    return Plugin(kind, tls=tls, metadata=Metadata(metadata))


def acceptor(kind: str, server_plugin: Plugin) -> Any:
    async def accept(raw: SocketStream) -> Stream:
        return await SERVER_TRANSPORTS[kind].accept(raw, server_plugin)

    return accept


async def dial(kind: str, port: int, client_plugin: Plugin | None = None) -> Stream:
    raw = await open_tcp(Address(LOCAL, port), timeout=2)
    try:
        return await CLIENT_TRANSPORTS[kind].handshake(
            raw, client_plugin or Plugin(kind), Address(LOCAL, port)
        )
    except BaseException:
        await raw.close()
        raise


async def read_all(stream: Stream, max_bytes: int = 1 << 20) -> bytes:
    out = b""
    async with asyncio.timeout(5):
        while data := await stream.read(max_bytes):
            out += data
    return out


def test_masking_runs_in_the_c_speedups() -> None:
    assert ws.SPEEDUPS


async def test_registry_has_ws_and_wss() -> None:
    assert CLIENT_TRANSPORTS["ws"].info.websocket and not CLIENT_TRANSPORTS["ws"].info.tls
    assert CLIENT_TRANSPORTS["wss"].info.websocket and CLIENT_TRANSPORTS["wss"].info.tls
    assert not CLIENT_TRANSPORTS["wss"].info.half_close


@pytest.mark.parametrize("kind", ["ws", "wss"])
async def test_big_transfer_with_hash(kind: str, start_server, pki) -> None:
    server = await start_server(acceptor(kind, plugin(kind, pki if kind == "wss" else None)))
    client_plugin = Plugin(kind, tls=TLSOptions(secure=True, ca_file=str(pki.ca.cert_file)))
    stream = await dial(kind, server.port, client_plugin)
    assert isinstance(stream, WebSocketStream)
    await transfer(stream, 16 * 1024 * 1024)
    # One write far above MAX_SEND is split into several messages and still arrives whole.
    big = os.urandom(3 * ws.MAX_SEND + 5)
    await stream.write(big)
    got = b""
    async with asyncio.timeout(5):
        while len(got) < len(big):
            got += await stream.read()
    assert got == big
    await stream.close()


async def test_client_request_matches_gost_defaults() -> None:
    seen: dict[str, Any] = {}

    async def handler(connection: ServerConnection) -> None:
        seen["path"] = connection.request.path
        seen["headers"] = connection.request.headers
        await connection.send(b"hi")

    async with ws_serve(handler, LOCAL, 0) as server:
        port = server.sockets[0].getsockname()[1]
        stream = await dial("ws", port)
        assert await read_all(stream) == b"hi"
        await stream.close()
        assert seen["path"] == "/ws"
        assert seen["headers"]["Host"] == f"{LOCAL}:{port}"  # GOST: the node address, port included
        assert "User-Agent" not in seen["headers"]
        assert "Sec-WebSocket-Extensions" not in seen["headers"]  # no compression, as GOST's default

        custom = plugin("ws", path="/tunnel?x=1", host="cdn.example", header={"X-Token": "t0k"})
        stream = await dial("ws", port, custom)
        assert await read_all(stream) == b"hi"
        await stream.close()
        assert seen["path"] == "/tunnel?x=1"
        assert seen["headers"]["Host"] == "cdn.example"
        assert seen["headers"]["X-Token"] == "t0k"


async def test_reserved_header_is_a_config_error(start_server) -> None:
    server = await start_server(acceptor("ws", plugin("ws")))
    with pytest.raises(ConfigError, match="Upgrade"):
        await dial("ws", server.port, plugin("ws", header={"Upgrade": "h2c"}))


async def test_reads_reassemble_across_messages_and_ignore_boundaries() -> None:
    async def handler(connection: ServerConnection) -> None:
        await connection.send(b"ab")
        await connection.send("cd")  # text payloads count as bytes too
        await connection.send([b"ef", b"gh"])  # one fragmented message
        await connection.send(b"ijklmnop")
        await connection.close()

    async with ws_serve(handler, LOCAL, 0) as server:
        stream = await dial("ws", server.sockets[0].getsockname()[1])
        first = await stream.read(1)
        rest = await read_all(stream, max_bytes=3)
        assert first + rest == b"abcdefghijklmnop"
        await stream.close()


async def test_small_reads_walk_a_big_payload_in_order() -> None:
    payload = os.urandom(200_000)

    async def handler(connection: ServerConnection) -> None:
        await connection.send(payload)
        await connection.close()

    async with ws_serve(handler, LOCAL, 0) as server:
        stream = await dial("ws", server.sockets[0].getsockname()[1])
        parts = [await stream.read(7) for _ in range(3)]
        assert all(len(part) == 7 for part in parts)
        rest = await read_all(stream, max_bytes=65536)
        assert b"".join(parts) + rest == payload
        await stream.close()


async def test_pings_are_answered_while_reading() -> None:
    pong_latency: list[float] = []

    async def handler(connection: ServerConnection) -> None:
        waiter = await connection.ping(b"are you there")
        async with asyncio.timeout(2):
            pong_latency.append(await waiter)
        await connection.send(b"done")
        await connection.close()

    async with ws_serve(handler, LOCAL, 0, ping_interval=None) as server:
        stream = await dial("ws", server.sockets[0].getsockname()[1])
        assert await read_all(stream) == b"done"
        await stream.close()
    assert len(pong_latency) == 1


async def test_our_server_with_the_websockets_client(start_server) -> None:
    server = await start_server(acceptor("ws", plugin("ws", path="/relay", header={"X-Served-By": "tungo"})))
    async with ws_connect(f"ws://{LOCAL}:{server.port}/relay?token=1") as client:
        assert client.response is not None
        assert client.response.headers["X-Served-By"] == "tungo"
        await client.send(b"x" * 100_000)
        echoed = b""
        while len(echoed) < 100_000:
            message = await client.recv()
            assert isinstance(message, bytes)
            echoed += message
        assert echoed == b"x" * 100_000
    # The client's close frame ends our side's reads cleanly: the echo handler returned normally.
    async with asyncio.timeout(2):
        while not server.served:  # noqa: ASYNC110 (the fixture records, it has no event to wait on)
            await asyncio.sleep(0.01)
    assert not server.errors


async def test_wrong_path_gets_404(start_server) -> None:
    server = await start_server(acceptor("ws", plugin("ws")))
    with pytest.raises(DialError, match="HTTP 404"):
        await dial("ws", server.port, plugin("ws", path="/nope"))
    assert len(server.errors) == 1 and isinstance(server.errors[0], ProtocolError)
    assert "404" in str(server.errors[0]) and "/nope" in str(server.errors[0])


async def test_plain_http_request_is_refused(start_server) -> None:
    server = await start_server(acceptor("ws", plugin("ws")))
    reader, writer = await asyncio.open_connection(LOCAL, server.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 426") or answer.startswith(b"HTTP/1.1 400")
    assert isinstance(server.errors[0], ProtocolError)


async def test_garbage_does_not_kill_the_server(start_server) -> None:
    server = await start_server(acceptor("ws", plugin("ws", handshakeTimeout="300ms")))
    # Random bytes; a TLS-looking head with no line end (waits for a line until the handshake
    # timeout); a request line without an HTTP version.
    for junk in (os.urandom(4096), b"\x16\x03\x01\x02\x00" + b"\x01" * 200, b"GET /ws\r\n\r\n"):
        reader, writer = await asyncio.open_connection(LOCAL, server.port)
        writer.write(junk)
        await writer.drain()
        async with asyncio.timeout(5):
            await reader.read()  # the server drops us
        writer.close()
    stream = await dial("ws", server.port)
    await stream.write(b"still serving")
    assert await stream.read() == b"still serving"
    await stream.close()
    assert len(server.errors) == 3 and all(isinstance(e, ProtocolError) for e in server.errors)


async def test_garbage_frames_after_the_handshake_are_a_protocol_error(start_server) -> None:
    received: list[BaseException] = []
    failed = asyncio.Event()

    async def handler(stream: Stream) -> None:
        try:
            await stream.read()
        except ProtocolError as exc:
            received.append(exc)
            failed.set()

    server = await start_server(acceptor("ws", plugin("ws")), handler)
    raw = await open_tcp(Address(LOCAL, server.port), timeout=2)
    stream = await CLIENT_TRANSPORTS["ws"].handshake(raw, Plugin("ws"), Address(LOCAL, server.port))
    await raw.write(b"\x82\x05hello")  # unmasked client frame: forbidden by RFC 6455
    async with asyncio.timeout(5):
        await failed.wait()
    assert "mask" in str(received[0])
    await stream.close()


async def _accept_upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, after_upgrade: bytes = b""
) -> None:
    """Answer the client's upgrade request by hand with a 101, then write ``after_upgrade``."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n" + after_upgrade
    )


async def _raw_ws_server(after_upgrade: bytes) -> tuple[asyncio.Server, int]:
    """A hand-rolled peer (no websockets server) that upgrades, sends ``after_upgrade``, closes TCP."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept_upgrade(reader, writer, after_upgrade)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, LOCAL, 0)
    return server, server.sockets[0].getsockname()[1]


async def test_tcp_close_between_frames_is_a_clean_eof() -> None:
    # GOST (gorilla) closes the connection without a close frame: that is the normal end.
    server, port = await _raw_ws_server(b"\x82\x03abc" + b"\x82\x02de")
    async with server:
        stream = await dial("ws", port)
        assert await read_all(stream) == b"abcde"
        await stream.close()


async def test_tcp_close_inside_a_frame_is_a_protocol_error() -> None:
    server, port = await _raw_ws_server(b"\x82\x7e\x01\x00" + b"x" * 10)  # promises 256 bytes
    async with server:
        stream = await dial("ws", port)
        with pytest.raises(ProtocolError, match="middle of a frame"):
            await read_all(stream)
        await stream.close()


async def test_oversized_message_is_refused() -> None:
    async def handler(connection: ServerConnection) -> None:
        await connection.send(b"x" * (ws.MAX_MESSAGE + 1))
        await asyncio.sleep(1)

    async with ws_serve(handler, LOCAL, 0, max_size=None) as server:
        stream = await dial("ws", server.sockets[0].getsockname()[1])
        with pytest.raises(ProtocolError, match="exceeds limit"):
            await read_all(stream)
        await stream.close()


async def test_write_eof_keeps_the_response_direction_open(start_server) -> None:
    server = await start_server(acceptor("ws", plugin("ws")))
    stream = await dial("ws", server.port)
    await stream.write(b"request")
    await stream.write_eof()  # no close frame: the peer keeps sending
    assert await stream.read() == b"request"
    await stream.write(b"more")  # and we may even keep writing: nothing was closed
    assert await stream.read() == b"more"
    await stream.close()


async def test_close_frame_ends_the_peer_reads(start_server) -> None:
    ended = asyncio.Event()

    async def handler(stream: Stream) -> None:
        assert await stream.read() == b"bye"
        assert await stream.read() == b""  # our client's close frame
        ended.set()

    server = await start_server(acceptor("ws", plugin("ws")), handler)
    stream = await dial("ws", server.port)
    await stream.write(b"bye")
    await stream.close()
    async with asyncio.timeout(2):
        await ended.wait()
    with pytest.raises(ConnectionResetError):
        await stream.write(b"after close")


async def test_handshake_timeout(start_server) -> None:
    async def silent(raw: SocketStream) -> Stream:
        await asyncio.sleep(3)
        return raw

    server = await start_server(silent)
    with pytest.raises(DialError, match=r"timed out after 0\.2s"):
        await dial("ws", server.port, plugin("ws", handshakeTimeout="200ms"))


async def test_data_sent_with_the_101_is_not_lost() -> None:
    server, port = await _raw_ws_server(b"\x82\x05early")
    async with server:
        stream = await dial("ws", port)
        assert await read_all(stream) == b"early"
        await stream.close()


async def test_wss_nested_inside_another_tunnel(start_server, pki) -> None:
    # wss as hop 2: TLS and websocket both run over a Stream that is not a socket.
    server_plugin = plugin("wss", pki)

    async def accept(raw: SocketStream) -> Stream:
        return await SERVER_TRANSPORTS["wss"].accept(Forwarding(raw), server_plugin)

    server = await start_server(accept)
    raw = await open_tcp(Address(LOCAL, server.port), timeout=2)
    client_plugin = Plugin(
        "wss", tls=TLSOptions(secure=True, ca_file=str(pki.ca.cert_file), server_name="tungo.test")
    )
    stream = await CLIENT_TRANSPORTS["wss"].handshake(
        Forwarding(raw), client_plugin, Address(LOCAL, server.port)
    )
    await transfer(stream, 4 * 1024 * 1024)
    await stream.close()
    assert not server.errors


async def test_wss_with_the_wrong_ca_fails(start_server, pki) -> None:
    server = await start_server(acceptor("wss", plugin("wss", pki)))
    with pytest.raises(DialError, match="certificate verification failed"):
        await dial(
            "wss",
            server.port,
            Plugin("wss", tls=TLSOptions(secure=True, ca_file=str(pki.other_ca.cert_file))),
        )


def test_client_key_is_random_per_connection() -> None:
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    keys = {ClientProtocol(parse_uri("ws://x/ws")).key for _ in range(4)}
    assert len(keys) == 4 and all(len(base64.b64decode(k)) == 16 for k in keys)


async def test_data_before_the_peers_close_frame_survives_a_failed_close_echo() -> None:
    # Regression: the peer sends its last data frames and a close frame and is gone before our
    # echo of the close frame can be written. The failed echo (ConnectionResetError from the inner
    # stream) escaped read() while the data frames were still buffered: the end of a transfer was lost.
    messages = [os.urandom(20_000) for _ in range(3)]
    go, sent = asyncio.Event(), asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept_upgrade(reader, writer)
        await go.wait()  # after the handshake: these frames reach read(), not the handshake
        frames = b"".join(b"\x82\x7e" + len(m).to_bytes(2, "big") + m for m in messages)
        writer.write(frames + b"\x88\x02\x03\xe8")  # binary messages, then close (1000)
        await writer.drain()
        writer.close()
        sent.set()

    server = await asyncio.start_server(handle, LOCAL, 0)
    async with server:
        raw = await open_tcp(Address(LOCAL, server.sockets[0].getsockname()[1]), timeout=2)
        stream = await ws.client_handshake(raw, host="test")
        sock = raw.writer.get_extra_info("socket")
        go.set()
        async with asyncio.timeout(5):
            await sent.wait()
        # Once our event loop has taken every byte off the socket into the inner stream (a TLS
        # transport would also close itself at the peer's EOF here, as in the wss demo)...
        for _ in range(500):
            if fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0") == b"\0\0\0\0":
                break
            await asyncio.sleep(0.01)
        # ...make every write of ours fail, as if the peer had reset the connection.
        sock.shutdown(socket.SHUT_WR)
        assert await read_all(stream) == b"".join(messages)
        await stream.close()


async def test_per_connection_lines_are_debug_not_info(start_server, caplog) -> None:
    # websockets logs "connection open" / "connection closed" at INFO: two lines per tunnel on a relay
    # server. They are demoted to DEBUG (still there with -D); nothing of ours is logged at INFO.
    caplog.set_level(logging.DEBUG, logger="tungo_sidecar.net.ws")
    server = await start_server(acceptor("ws", plugin("ws")))
    stream = await dial("ws", server.port)
    await stream.write(b"ping")
    assert await stream.read() == b"ping"
    await stream.close()
    await asyncio.sleep(0.05)
    ours = [r for r in caplog.records if r.name == "tungo_sidecar.net.ws"]
    assert "connection open" in [r.getMessage() for r in ours]
    assert [r.getMessage() for r in ours if r.levelno >= logging.INFO] == []


async def test_debug_logs_never_show_frame_contents_or_header_secrets(
    start_server, caplog: pytest.LogCaptureFixture
) -> None:
    # A relay request's first frame carries the user and password in clear; a ws header option may
    # carry a bearer token. Both sides' -D dumps must show neither (issue 12, item 7).
    caplog.set_level(logging.DEBUG, "tungo_sidecar.net.ws")

    async def echo(raw: SocketStream) -> Stream:
        stream = await SERVER_TRANSPORTS["ws"].accept(raw, Plugin("ws"))
        await stream.write(await stream.read())
        return stream

    server = await start_server(echo)
    secret = b"relay-user:correct-horse-battery"
    custom = plugin("ws", header={"Authorization": "Bearer s3cr3t-t0ken"})
    stream = await dial("ws", server.port, custom)
    await stream.write(secret)
    assert await stream.read() == secret
    await stream.close()
    text = caplog.text
    assert "BINARY [32 bytes, content not logged]" in text  # the dump is still there, minus content
    assert "Authorization: ***" in text and "Upgrade: websocket" in text
    for leak in ("s3cr3t", "correct", "horse", secret.hex()[:12], "72 65 6c 61"):
        assert leak not in text, leak


async def _upgraded(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-rolled client (so it can misbehave) past a successful upgrade to our server."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _masked_header(size: int) -> bytes:
    """A client BINARY frame header announcing ``size`` payload bytes (mask key zero: no-op mask)."""
    return b"\x82" + bytes([0x80 | 127]) + size.to_bytes(8, "big") + b"\0\0\0\0"


async def test_a_big_first_message_is_refused_at_its_header(start_server) -> None:
    # Issue 12, item 1: websockets buffers a message whole, so before any authentication a client
    # could make the server hold ws.MAX_MESSAGE (4 MiB) per connection. The first message is limited
    # to FIRST_MESSAGE and refused as soon as its header announces more: nothing of it is buffered.
    server = await start_server(acceptor("ws", plugin("ws")))
    reader, writer = await _upgraded(server.port)
    writer.write(_masked_header(ws.FIRST_MESSAGE + 1) + b"only the start")
    async with asyncio.timeout(2):
        answer = await reader.read(64)
    writer.close()
    assert answer[:1] == b"\x88", answer  # a close frame...
    assert answer[2:4] == (1009).to_bytes(2, "big"), answer  # ...1009: message too big


async def test_a_first_message_within_the_limit_and_big_later_ones_pass(start_server) -> None:
    server = await start_server(acceptor("ws", plugin("ws")))
    stream = await dial("ws", server.port)
    first = os.urandom(ws.FIRST_MESSAGE - 1024)  # a relay request with tungo's biggest first write
    later = os.urandom(2 * 1024 * 1024)  # over FIRST_MESSAGE, under MAX_MESSAGE
    for payload in (first, later):
        await stream.write(payload)
        received = b""
        async with asyncio.timeout(5):
            while len(received) < len(payload):
                received += await stream.read()
        assert received == payload
    await stream.close()


async def test_an_oversized_upgrade_head_gets_431(start_server) -> None:
    # websockets alone reads up to 128 header lines of 8 KiB each (1 MiB) before answering.
    server = await start_server(acceptor("ws", plugin("ws")))
    reader, writer = await asyncio.open_connection(LOCAL, server.port)
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 1000) for i in range(100))
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" + filler)
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert "431" in str(server.errors[0])
