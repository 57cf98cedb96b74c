"""Loopback targets and a handler server for tests: real sockets on 127.0.0.1, closed on exit.

``echo_tcp`` / ``echo_udp`` are what a proxied flow reaches; ``handler_server`` runs one of tungo's
server handlers (socks5, http, relay) on a real listening socket and records what it raised, so a test
can assert that a good exchange left no failure behind; ``dial`` opens a client stream to either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from tungo_sidecar.net.handlers import Handler
from tungo_sidecar.net.stream import SocketStream
from tungo_sidecar.proto.address import Address

LOCAL = "127.0.0.1"


@contextlib.asynccontextmanager
async def echo_tcp(read_size: int = 256 * 1024) -> AsyncIterator[Address]:
    """A TCP server that sends back what it reads and closes at EOF."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(read_size):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, LOCAL, 0)
    try:
        yield Address(LOCAL, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def _tagged(data: bytes) -> bytes:
    return b"echo:" + data


class _EchoUDP(asyncio.DatagramProtocol):
    def __init__(self, reply: Callable[[bytes], bytes]) -> None:
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(self.reply(data), addr)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def echo_udp(reply: Callable[[bytes], bytes] = _tagged) -> AsyncIterator[Address]:
    """A UDP socket answering each datagram with ``reply(datagram)`` (default: ``b"echo:" + it``)."""
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _EchoUDP(reply), local_addr=(LOCAL, 0)
    )
    try:
        yield Address(LOCAL, transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def handler_server(handler: Handler) -> AsyncIterator[tuple[Address, list[BaseException]]]:
    """``handler`` behind a real listening socket; yields its address and the errors it raised.

    Handlers still running on exit (a client the test left open) are cancelled and awaited: asyncio's
    server does neither, and a handler left pending fails later, inside some other test.
    """
    failures: list[BaseException] = []
    running: set[asyncio.Task[Any]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running.add(task)
        stream = SocketStream(reader, writer)
        peer = stream.peername
        try:
            await handler.handle(stream, f"{peer[0]}:{peer[1]}" if peer else "?")
        except Exception as exc:
            failures.append(exc)
        finally:
            await stream.close()
            running.discard(task)

    server = await asyncio.start_server(run, LOCAL, 0)
    try:
        yield Address(LOCAL, server.sockets[0].getsockname()[1]), failures
    finally:
        server.close()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await server.wait_closed()


async def dial(addr: Address) -> SocketStream:
    reader, writer = await asyncio.open_connection(addr.host, addr.port)
    return SocketStream(reader, writer)
