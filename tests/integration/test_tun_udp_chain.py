"""Oversized UDP and fail-closed ICMP through the real ``tungo`` CLI and a real relay+wss chain.

The demo's lab (``tungo_sidecar.app.demo.Lab``): the pod runs ``tungo -L tungo://... -F relay+wss://...``,
the server namespace runs the relay, the target answers UDP. Datagrams of 4,000 and 60,000 bytes leave
the app's kernel as fragments, are reassembled by the engine, cross the chain as one relay UDP frame,
and come back as fragments the app's kernel reassembles. Then the relay is killed: a new UDP flow's
dial fails, and the app's socket (IP_RECVERR) hears "host unreachable" at once.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tungo_sidecar.app import demo
from tungo_sidecar.app.demo import SRV_POD4, TGT4, TGT6, Lab, Targets

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root + TUN"),
]

IP_RECVERR, IPV6_RECVERR = 11, 25


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as built:
        yield built


async def _round_trip(lab: Lab, host: str, port: int, query: bytes) -> bytes:
    sock = lab.socket(lab.pod, demo.family_of(host), socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, query)
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
    finally:
        sock.close()


async def _refused_within(lab: Lab, host: str, port: int) -> tuple[int, float]:
    family = demo.family_of(host)
    sock = lab.socket(lab.pod, family, socket.SOCK_DGRAM)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        await loop.sock_connect(sock, (host, port))
        with pytest.raises(OSError) as caught:
            await loop.sock_sendall(sock, b"anyone there?")
            await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
        assert not isinstance(caught.value, TimeoutError), "no ICMP error reached the socket"
        return caught.value.errno or 0, time.monotonic() - started
    finally:
        sock.close()


async def test_oversized_datagrams_and_chain_down_icmp(lab: Lab) -> None:
    async with Targets(lab, b"") as targets:
        server = lab.tungo(lab.srv, "server", *demo.server_command())
        await demo.wait_listening(lab, lab.pod, SRV_POD4, demo.RELAY_PORT)
        pod = lab.tungo(lab.pod, "pod", *demo.pod_command())
        await demo.wait_ready(lab, pod)

        for host in (TGT4, TGT6):
            for size in (4000, 60000):
                query = os.urandom(size)
                answer = await _round_trip(lab, host, targets.udp_port, query)
                # The target's echo: the first two bytes, the query's SHA-256, the query.
                assert answer == query[:2] + hashlib.sha256(query).digest() + query, (host, size, len(answer))

        server.stop(signal.SIGKILL)
        for host in (TGT4, TGT6):
            code, seconds = await _refused_within(lab, host, targets.udp_port)
            assert code == errno.EHOSTUNREACH and seconds < 2.0, (host, code, seconds)

        assert pod.stop(signal.SIGTERM) == 0
        stats = demo.engine_stats(pod.output())
        assert stats is not None, pod.output()[-2000:]
        assert stats["udp_reassembled"] == 4 and stats["udp_replies_fragmented"] == 4, stats
        assert stats["udp_icmp_sent"] == 2 and stats["udp_dial_failures"] == 2, stats
        assert stats["frag_partials"] == 0 and stats["flow_errors"] == 0, stats
