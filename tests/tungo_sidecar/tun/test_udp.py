"""tun.udp: fail-closed ICMP answers (codes, quoting, rate limit, pending drops) and fragmented replies.

The sessions run on a real event loop; packets the flows write are parsed back with scapy. Replies come
from a real UDP echo socket on loopback.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror, defragment
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6, IPv6ExtHdrFragment, defragment6

from tungo_sidecar import errors
from tungo_sidecar.net.stream import Datagrams
from tungo_sidecar.proto import packet
from tungo_sidecar.proto.packet import Unreachable
from tungo_sidecar.tun.nat import TunStats
from tungo_sidecar.tun.udp import ErrorLimiter, UdpFlows, UdpSession, unreachable_reason


# --- pure parts -------------------------------------------------------------------------------------
def test_limiter_bursts_then_refills_per_source() -> None:
    limiter = ErrorLimiter(rate=2.0, burst=3.0, global_rate=1000, global_burst=1000)
    assert [limiter.allow(b"a", 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow(b"b", 0.0)  # another source has its own bucket
    assert not limiter.allow(b"a", 0.4)  # 0.8 tokens
    assert limiter.allow(b"a", 0.5)  # 1.0 token
    assert [limiter.allow(b"a", 100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_limiter_global_bucket_bounds_many_sources() -> None:
    limiter = ErrorLimiter(rate=10, burst=10, global_rate=5, global_burst=5, max_sources=4)
    allowed = sum(limiter.allow(bytes([i]), 0.0) for i in range(100))
    assert allowed == 5  # 100 sources, each with a full bucket: the global one decides
    assert limiter.sources == 4  # the table stays bounded
    assert sum(limiter.allow(bytes([i]), 1.0) for i in range(100)) == 5


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (errors.RouteRefusedError("direct, no dialer"), Unreachable.PROHIBITED),
        (errors.RelayForbidden(), Unreachable.PROHIBITED),
        (errors.RelayUnauthorized(), Unreachable.PROHIBITED),
        (errors.RelayNetworkUnreachable(), Unreachable.NET),
        (errors.RelayHostUnreachable(), Unreachable.HOST),
        (errors.DialError("connection refused"), Unreachable.HOST),
        (TimeoutError(), Unreachable.HOST),
        (OSError(113, "No route to host"), Unreachable.HOST),
    ],
)
def test_unreachable_reason(exc: BaseException, reason: Unreachable) -> None:
    assert unreachable_reason(exc) is reason


def test_unreachable_reason_follows_the_cause_chain() -> None:
    try:
        try:
            raise errors.RelayForbidden()
        except errors.RelayForbidden as inner:
            raise errors.DialError("chain hop 2 failed") from inner
    except errors.DialError as outer:
        assert unreachable_reason(outer) is Unreachable.PROHIBITED


# --- sessions on a real loop -------------------------------------------------------------------------
class Harness:
    """UdpFlows whose written packets are collected and whose tasks run on the test's loop."""

    def __init__(self, dial: Any, *, header: bytes = b"", mtu: int = 65535, **kwargs: Any) -> None:
        self.written: list[bytes] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stats = TunStats()
        self.flows = UdpFlows(
            write_packet=lambda data: self.written.append(bytes(data)),
            header=header,
            dial=dial,
            spawn=self._spawn,
            stats=self.stats,
            timeout=5.0,
            dial_timeout=2.0,
            mtu=mtu,
            **kwargs,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    def feed(self, raw: bytes, header: bytes = b"") -> None:
        buf = bytearray(header + raw)
        hl = len(header)
        l4 = packet.ip_l4_offset(buf, hl, len(buf))
        assert l4 > 0
        self.flows.on_packet(buf, hl, l4, len(buf))

    async def settle(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 5)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _refusing(exc: BaseException) -> Any:
    async def dial(session: UdpSession) -> Datagrams:
        await asyncio.sleep(0.05)  # long enough for more datagrams to queue meanwhile
        raise exc

    return dial


async def test_failed_dial_answers_host_unreachable_v4_and_drops_the_queue() -> None:
    harness = Harness(_refusing(errors.DialError("chain down")))
    first = bytes(IP(src="192.168.123.1", dst="198.19.77.2", id=5) / UDP(sport=40000, dport=53) / b"q1")
    harness.feed(first)
    for index in range(4):
        harness.feed(
            bytes(IP(src="192.168.123.1", dst="198.19.77.2") / UDP(sport=40000, dport=53) / (b"%d" % index))
        )
    await harness.settle()
    (error,) = harness.written
    pkt = IP(error)
    assert (pkt.src, pkt.dst, pkt[ICMP].type, pkt[ICMP].code) == ("198.19.77.2", "192.168.123.1", 3, 1)
    assert error[28:] == first  # the flow's first packet, quoted whole
    assert (pkt[IPerror].id, pkt[UDPerror].sport) == (5, 40000)
    stats = harness.stats
    assert (stats.udp_dial_failures, stats.udp_icmp_sent, stats.udp_dropped_dial_failed) == (1, 1, 5)
    assert harness.flows.sessions == {}


async def test_route_refusal_is_administratively_prohibited_v6_with_vnet_header() -> None:
    header = packet.VNET_HDR_PLAIN
    harness = Harness(_refusing(errors.RouteRefusedError("direct but no direct dialer")), header=header)
    first = bytes(IPv6(src="fd00:123::1", dst="fd77::2") / UDP(sport=40000, dport=443) / (b"x" * 2000))
    harness.feed(first, header)
    await harness.settle()
    (error,) = harness.written
    assert error[:10] == header
    pkt = IPv6(error[10:])
    assert (pkt.src, pkt.dst) == ("fd77::2", "fd00:123::1")
    assert (pkt[ICMPv6DestUnreach].type, pkt[ICMPv6DestUnreach].code) == (1, 1)
    assert len(error) - 10 == 1280 and error[10 + 48 :] == first[:1232]
    again = pkt.copy()
    del again[ICMPv6DestUnreach].cksum
    assert IPv6(bytes(again))[ICMPv6DestUnreach].cksum == pkt[ICMPv6DestUnreach].cksum


async def test_answers_are_rate_limited_and_never_sent_for_multicast() -> None:
    limiter = ErrorLimiter(rate=0.001, burst=3, global_rate=1000, global_burst=1000)
    harness = Harness(_refusing(errors.DialError("down")), limiter=limiter)
    for port in range(1000, 1010):  # ten flows from one source
        harness.feed(bytes(IP(src="192.168.123.1", dst="198.19.77.2") / UDP(sport=port, dport=53)))
    harness.feed(bytes(IP(src="192.168.123.1", dst="239.1.2.3") / UDP(sport=5, dport=5)))
    await harness.settle()
    assert len(harness.written) == 3
    assert harness.stats.udp_icmp_sent == 3 and harness.stats.udp_icmp_limited == 8
    assert harness.stats.udp_dial_failures == 11


async def test_cancelled_dial_sends_nothing() -> None:
    async def hang(session: UdpSession) -> Datagrams:
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    harness = Harness(hang)
    harness.feed(bytes(IP(src="192.168.123.1", dst="198.19.77.2") / UDP(sport=1, dport=2)))
    await asyncio.sleep(0.01)
    await harness.close()
    assert harness.written == [] and harness.stats.udp_icmp_sent == 0


class _SocketDatagrams:
    """A connected UDP socket on loopback as ``Datagrams``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def send(self, payload: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, payload)

    async def recv(self) -> bytes:
        return await asyncio.get_running_loop().sock_recv(self.sock, 65535)

    async def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("v6", [False, True])
async def test_replies_larger_than_the_mtu_are_fragmented(v6: bool) -> None:
    family, host = (socket.AF_INET6, "::1") if v6 else (socket.AF_INET, "127.0.0.1")
    echo = socket.socket(family, socket.SOCK_DGRAM)
    echo.bind((host, 0))
    echo.setblocking(False)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, peer = await loop.sock_recvfrom(echo, 65535)
            await loop.sock_sendto(echo, data * 2, peer)

    async def dial(session: UdpSession) -> Datagrams:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(echo.getsockname()[:2])
        return _SocketDatagrams(sock)

    server = asyncio.get_running_loop().create_task(serve())
    harness = Harness(dial, mtu=1420)
    try:
        l3 = IPv6(src="fd00:123::1", dst="fd77::2") if v6 else IP(src="192.168.123.1", dst="198.19.77.2")
        payload = bytes(range(256)) * 117  # 29,952 bytes -> a 59,904-byte reply
        harness.feed(bytes(l3 / UDP(sport=40000, dport=7) / b"small"))
        harness.feed(bytes(l3 / UDP(sport=40000, dport=7) / payload))
        for _ in range(200):
            if harness.stats.udp_datagrams_down == 2:
                break
            await asyncio.sleep(0.01)
        assert harness.stats.udp_datagrams_down == 2
    finally:
        await harness.close()
        server.cancel()
        echo.close()
    small, *pieces = harness.written
    assert all(len(piece) <= 1420 for piece in pieces) and len(pieces) == (44 if v6 else 43)
    assert harness.stats.udp_replies_fragmented == 1
    if v6:
        assert IPv6(small)[UDP].payload.load == b"smallsmall"
        parsed = [IPv6(piece) for piece in pieces]
        assert len({frag[IPv6ExtHdrFragment].id for frag in parsed}) == 1
        whole = defragment6(parsed)
        assert (whole.src, whole.dst) == ("fd77::2", "fd00:123::1")
    else:
        assert IP(small)[UDP].payload.load == b"smallsmall"
        whole = defragment([IP(piece) for piece in pieces])[0]
        assert (whole.src, whole.dst) == ("198.19.77.2", "192.168.123.1")
    assert (whole[UDP].sport, whole[UDP].dport) == (7, 40000)
    assert bytes(whole[UDP].payload) == payload * 2
    again = whole.copy()
    del again[UDP].chksum
    assert type(whole)(bytes(again))[UDP].chksum == whole[UDP].chksum
