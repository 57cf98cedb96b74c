"""UDP through the TUN engine on a real kernel: per-flow sessions, replies written back, idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
from tun_netns import TunPod, in_netns, start_tun_pod, stop_tun_pod

pytestmark = pytest.mark.netns


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)


@contextlib.asynccontextmanager
async def udp_echo(tun_pod: TunPod) -> AsyncIterator[int]:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        sock.setblocking(False)
        return sock

    sock = in_netns(tun_pod.target, make)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(_Echo, sock=sock)
    try:
        yield sock.getsockname()[1]
    finally:
        transport.close()


def _client(tun_pod: TunPod, host: str) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        return sock

    return in_netns(tun_pod.pod, make)


async def _exchange(sock: socket.socket, host: str, port: int, payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, payload, (host, port))
    return await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)


@pytest.mark.parametrize("family", ["v4", "v6"])
async def test_udp_echo(tun_pod: TunPod, family: str) -> None:
    host = tun_pod.target4 if family == "v4" else tun_pod.target6
    before = tun_pod.fresh_stats()
    async with udp_echo(tun_pod) as port:
        with _client(tun_pod, host) as sock:
            # Up to a full MTU (1420) of IPv6 + UDP, then datagrams the app's kernel fragments (reassembled
            # by the engine) whose replies the engine writes back as fragments (reassembled by the kernel).
            for index, size in enumerate((0, 1, 100, 1352, 4000, 60000)):
                payload = (bytes([index]) + bytes(range(256)) * 235)[
                    :size
                ]  # varied bytes: a misplaced fragment shows
                assert await _exchange(sock, host, port, payload) == b"echo:" + payload
    after = tun_pod.fresh_stats()
    assert after["udp_sessions"] - before["udp_sessions"] == 1  # one flow, one session
    assert after["udp_datagrams_down"] - before["udp_datagrams_down"] == 6
    assert after["udp_reassembled"] - before["udp_reassembled"] == 2  # 4,000 and 60,000 bytes
    assert after["udp_replies_fragmented"] - before["udp_replies_fragmented"] == 2
    assert after["frag_partials"] == 0 and after["frag_bytes"] == 0
    assert sum(after["drops"].values()) - sum(before["drops"].values()) <= 5  # the kernel's own (MLD...)


async def test_udp_flows_are_separate_sessions(tun_pod: TunPod) -> None:
    before = tun_pod.fresh_stats()
    async with udp_echo(tun_pod) as port:
        clients = [_client(tun_pod, tun_pod.target4) for _ in range(10)]
        try:
            replies = await asyncio.gather(
                *(_exchange(sock, tun_pod.target4, port, b"n%d" % i) for i, sock in enumerate(clients))
            )
        finally:
            for sock in clients:
                sock.close()
    assert replies == [b"echo:n%d" % i for i in range(10)]
    assert tun_pod.fresh_stats()["udp_sessions"] - before["udp_sessions"] == 10


@pytest.fixture
def short_timeout_pod(tmp_path: Path) -> Iterator[TunPod]:
    pod, namespaces = start_tun_pod(tmp_path, extra_args=("--udp-timeout", "0.5"))
    try:
        yield pod
    finally:
        stop_tun_pod(pod, namespaces)


async def test_udp_session_idle_timeout(short_timeout_pod: TunPod) -> None:
    pod = short_timeout_pod
    async with udp_echo(pod) as port:
        with _client(pod, pod.target4) as sock:
            assert await _exchange(sock, pod.target4, port, b"a") == b"echo:a"
            assert pod.fresh_stats()["udp_active"] == 1
            for _ in range(50):  # up to ~5 s for a 0.5 s timeout
                if not pod.fresh_stats()["udp_active"]:
                    break
                await asyncio.sleep(0.1)
            assert pod.stats()["udp_active"] == 0
            # A later datagram of the same flow opens a new session and still gets its answer.
            assert await _exchange(sock, pod.target4, port, b"b") == b"echo:b"
            assert pod.fresh_stats()["udp_sessions"] == 2
