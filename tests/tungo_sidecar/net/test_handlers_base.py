"""proxy_streams over real sockets and transports: when a session ends, and what reaches the target.

The client's EOF must end the session when the upstream cannot pass a half-close on (TLS,
websocket): otherwise the target never hears of it and a target waiting for more pins the session,
its sockets and buffers (each relay+wss session kept ~300 KiB per process this way).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from streamtools import Forwarding

from tungo_sidecar.config.model import Plugin
from tungo_sidecar.net.connectors.base import PrefixedStream
from tungo_sidecar.net.handlers.base import proxy_streams
from tungo_sidecar.net.sockopts import open_tcp, serve_tcp
from tungo_sidecar.net.stream import SocketStream, Stream, half_closes
from tungo_sidecar.net.transports import CLIENT_TRANSPORTS, SERVER_TRANSPORTS
from tungo_sidecar.proto.address import Address

LOCAL = "127.0.0.1"


@contextlib.asynccontextmanager
async def client_pair() -> AsyncIterator[tuple[SocketStream, SocketStream]]:
    """(the proxy's side of a client connection, the client's own end), over loopback TCP."""
    accepted: asyncio.Queue[SocketStream] = asyncio.Queue()
    done = asyncio.Event()

    async def on_stream(stream: SocketStream) -> None:
        await accepted.put(stream)
        await done.wait()  # serve_tcp closes the stream when this returns

    server = await serve_tcp(LOCAL, 0, on_stream)
    try:
        client = await open_tcp(Address(LOCAL, server.sockets[0].getsockname()[1]), timeout=2)
        async with asyncio.timeout(2):
            side = await accepted.get()
        try:
            yield side, client
        finally:
            await client.close()
    finally:
        done.set()
        server.close()


@contextlib.asynccontextmanager
async def keepalive_target(kind: str) -> AsyncIterator[tuple[Stream, list[bytes], asyncio.Event]]:
    """An upstream over transport ``kind`` to a target that answers nothing and never closes first
    (a keep-alive server): yields (upstream, what the target received, set at the target's EOF)."""
    received: list[bytes] = []
    eof = asyncio.Event()

    async def on_stream(raw: SocketStream) -> None:
        stream = await SERVER_TRANSPORTS[kind].accept(raw, Plugin(kind))
        while data := await stream.read():
            received.append(data)
        eof.set()
        await stream.close()

    server = await serve_tcp(LOCAL, 0, on_stream)
    try:
        addr = Address(LOCAL, server.sockets[0].getsockname()[1])
        raw = await open_tcp(addr, timeout=2)
        upstream = await CLIENT_TRANSPORTS[kind].handshake(raw, Plugin(kind), addr)
        yield upstream, received, eof
    finally:
        server.close()


async def test_half_closes_tells_which_streams_carry_a_half_close() -> None:
    for kind, expected in (("tcp", True), ("tls", False), ("ws", False), ("wss", False)):
        async with keepalive_target(kind) as (upstream, _, _):
            assert half_closes(upstream) is expected, kind
            # Wrappers answer for their inner stream; a stream that does not say is assumed to.
            assert half_closes(PrefixedStream(upstream, b"x")) is expected, kind
            assert half_closes(Forwarding(upstream))
            await upstream.close()


async def test_client_eof_ends_the_session_when_upstream_cannot_half_close() -> None:
    for kind in ("ws", "wss", "tls"):
        async with client_pair() as (side, client), keepalive_target(kind) as (upstream, received, eof):
            session = asyncio.create_task(proxy_streams(side, upstream))
            await client.write(b"last words")
            await client.close()
            async with asyncio.timeout(5):  # before the fix: forever (the target never closes)
                await session
                await eof.wait()
            assert b"".join(received) == b"last words", kind


async def test_client_half_close_still_gets_the_answer_over_tcp() -> None:
    # A plain TCP upstream does carry the half-close: the target sees EOF and its answer comes back.
    async def answer_after_eof(raw: SocketStream) -> None:
        got = b""
        while data := await raw.read():
            got += data
        await raw.write(b"you said " + got)

    server = await serve_tcp(LOCAL, 0, answer_after_eof)
    try:
        upstream = await open_tcp(Address(LOCAL, server.sockets[0].getsockname()[1]), timeout=2)
        async with client_pair() as (side, client):
            session = asyncio.create_task(proxy_streams(side, upstream))
            await client.write(b"hello")
            await client.write_eof()
            async with asyncio.timeout(5):
                answer = b""
                while data := await client.read():
                    answer += data
                await session
        assert answer == b"you said hello"
    finally:
        server.close()
