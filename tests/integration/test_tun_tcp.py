"""TCP through the TUN engine on a real kernel: pod namespace → TUN → NAT → listener → dial → target.

The app side and the target side are sockets this test process opens inside the namespaces built by
``tun_pod`` (conftest.py); the engine runs in its own process inside the pod namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from tun_netns import TunPod, in_netns

pytestmark = pytest.mark.netns

SIZE = 32 * 1024 * 1024
DATA = random.Random(7).randbytes(SIZE)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@contextlib.asynccontextmanager
async def serve(tun_pod: TunPod, handler: Handler, host: str = "") -> AsyncIterator[int]:
    """A TCP server inside the target namespace; yields its port."""
    family = _family(host) if host else socket.AF_INET6

    def make() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        sock.listen(512)
        sock.setblocking(False)
        return sock

    sock = in_netns(tun_pod.target, make)
    server = await asyncio.start_server(handler, sock=sock, limit=256 * 1024)
    try:
        yield sock.getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)


async def connect(tun_pod: TunPod, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect from the pod namespace (the app's view: its traffic to ``host`` goes into the TUN)."""

    def make() -> socket.socket:
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    sock = in_netns(tun_pod.pod, make)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=256 * 1024)


async def _source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    (size,) = struct.unpack("!Q", await reader.readexactly(8))
    view = memoryview(DATA)[:size]
    for start in range(0, size, 1 << 20):
        writer.write(view[start : start + (1 << 20)])
        await writer.drain()
    writer.close()


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest = hashlib.sha256()
    total = 0
    while chunk := await reader.read(1 << 20):
        digest.update(chunk)
        total += len(chunk)
    writer.write(struct.pack("!Q", total) + digest.digest())  # after the client's half-close
    await writer.drain()
    writer.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(1 << 16):
        writer.write(chunk)
        await writer.drain()
    writer.close()


async def test_download_32mib_sha256(tun_pod: TunPod) -> None:
    async with serve(tun_pod, _source) as port:
        reader, writer = await connect(tun_pod, tun_pod.target4, port)
        started = time.monotonic()
        writer.write(struct.pack("!Q", SIZE))
        digest, total = hashlib.sha256(), 0
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
            digest.update(chunk)
            total += len(chunk)
        elapsed = time.monotonic() - started
        writer.close()
    assert total == SIZE
    assert digest.digest() == hashlib.sha256(DATA).digest()
    print(f"download {SIZE * 8 / elapsed / 1e6:.0f} Mbit/s")


async def test_upload_32mib_sha256_with_half_close(tun_pod: TunPod) -> None:
    async with serve(tun_pod, _sink) as port:
        reader, writer = await connect(tun_pod, tun_pod.target4, port)
        started = time.monotonic()
        view = memoryview(DATA)
        for start in range(0, SIZE, 1 << 20):
            writer.write(view[start : start + (1 << 20)])
            await writer.drain()
        writer.write_eof()  # half-close: the reply must still come back
        reply = await asyncio.wait_for(reader.readexactly(40), 10)
        elapsed = time.monotonic() - started
        writer.close()
    assert struct.unpack("!Q", reply[:8])[0] == SIZE
    assert reply[8:] == hashlib.sha256(DATA).digest()
    print(f"upload {SIZE * 8 / elapsed / 1e6:.0f} Mbit/s")


async def test_ipv6_echo(tun_pod: TunPod) -> None:
    payload = DATA[: 4 << 20]
    async with serve(tun_pod, _echo, "::") as port:
        reader, writer = await connect(tun_pod, tun_pod.target6, port)
        sender = asyncio.create_task(_send_all(writer, payload))
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 15)
        await sender
        writer.close()
    assert got == payload


async def _send_all(writer: asyncio.StreamWriter, payload: bytes) -> None:
    view = memoryview(payload)
    for start in range(0, len(payload), 1 << 16):
        writer.write(view[start : start + (1 << 16)])
        await writer.drain()
    writer.write_eof()


async def test_many_concurrent_flows(tun_pod: TunPod) -> None:
    before = tun_pod.fresh_stats()

    async def one(index: int, port: int) -> bytes:
        host = tun_pod.target4 if index % 2 else tun_pod.target6
        reader, writer = await connect(tun_pod, host, port)
        payload = DATA[index * 1000 : index * 1000 + 65536]
        writer.write(payload)
        writer.write_eof()
        got = await reader.read(-1)
        writer.close()
        assert got == payload
        return got

    async with serve(tun_pod, _echo) as port:
        results = await asyncio.wait_for(asyncio.gather(*(one(i, port) for i in range(100))), 60)
    assert len(results) == 100
    after = tun_pod.fresh_stats()
    assert after["tcp_flows"] - before["tcp_flows"] == 100
    assert after["tcp_dial_failures"] == before["tcp_dial_failures"]


async def test_dial_failure_answers_rst_fast(tun_pod: TunPod) -> None:
    # A port nothing listens on in the target: the upstream dial is refused, so must the app's connect.
    free = in_netns(tun_pod.target, _free_port)
    before = tun_pod.fresh_stats()
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(connect(tun_pod, tun_pod.target4, free), 5)
    assert time.monotonic() - started < 1.0
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(connect(tun_pod, tun_pod.target6, free), 5)
    after = tun_pod.fresh_stats()
    assert after["tcp_dial_failures"] - before["tcp_dial_failures"] == 2
    assert after["tcp_rst_sent"] - before["tcp_rst_sent"] == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


async def test_upstream_reset_reaches_the_app(tun_pod: TunPod) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with serve(tun_pod, reset) as port:
        reader, writer = await connect(tun_pod, tun_pod.target4, port)
        writer.write(b"hello")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 5)
        writer.close()


async def test_engine_survives_and_counts(tun_pod: TunPod) -> None:
    assert tun_pod.alive()
    stats = tun_pod.fresh_stats()
    assert stats["flow_errors"] <= stats["tcp_flows"]  # resets are counted there; no crash
    assert stats["packets_in"] > 0 and stats["packets_out"] > 0
