"""TCP through the TUN engine on a real kernel: pod namespace → TUN → NAT → listener → dial → target.

The app side and the target side are sockets this test process opens inside the namespaces built by
``tun_pod`` (conftest.py); the engine runs in its own process inside the pod namespace.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import time

import pytest
from tun_netns import TunPod, connect, echo, in_netns, serve

pytestmark = pytest.mark.netns

SIZE = 32 * 1024 * 1024
DATA = random.Random(7).randbytes(SIZE)


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


async def test_ipv6echo(tun_pod: TunPod) -> None:
    payload = DATA[: 4 << 20]
    async with serve(tun_pod, echo, "::") as port:
        reader, writer = await connect(tun_pod, tun_pod.target6, port)
        # The task group owns the sender: a failed read cancels it instead of leaving it behind.
        async with asyncio.TaskGroup() as group:
            group.create_task(_send_all(writer, payload))
            got = await asyncio.wait_for(reader.readexactly(len(payload)), 15)
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

    async with serve(tun_pod, echo) as port:
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
