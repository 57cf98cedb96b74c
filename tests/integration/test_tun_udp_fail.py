"""UDP edge cases through the TUN engine on a real kernel: fail-closed ICMP answers and hostile fragments.

The engine runs with ``--fail-udp-port 9`` (UDP dials to port 9 fail as with a chain that is down) and
``--frag-timeout 0.5``. What is checked is what the app's own kernel does with the engine's answers:
a connected socket gets the error (at once, not after its own timeout), and the ICMP carries the
code the engine chose. Hostile fragment sequences are written onto the TUN from the pod (an
AF_PACKET socket on the device, as the fuzz test does) and must be counted by reason, leave nothing
held behind, and not disturb a real 60,000-byte exchange.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from tun_netns import TunPod, in_netns, sh, start_tun_pod, stop_tun_pod

pytestmark = pytest.mark.netns

FAIL_PORT = 9
TUN4, TUN6 = "192.168.123.1", "fd00:123::1"
LINK_LOCAL4 = "169.254.77.9"
#: The runner's service bypass (``--refuse``): flows to these are refused by the route policy.
REFUSED = "169.254.0.0/16,fe80::/10"
IP_RECVERR, IPV6_RECVERR = 11, 25
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
ETH_P_ALL = 0x0003


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunPod]:
    extra = ("--fail-udp-port", str(FAIL_PORT), "--frag-timeout", "0.5", "--refuse", REFUSED)
    tun_pod, namespaces = start_tun_pod(tmp_path_factory.mktemp("tunfail"), extra_args=extra)
    try:
        sh("ip", "-n", tun_pod.pod, "route", "add", LINK_LOCAL4 + "/32", "dev", tun_pod.tun, "table", "123")
        sh("ip", "-n", tun_pod.pod, "link", "set", tun_pod.tun, "txqueuelen", "20000")
        yield tun_pod
    finally:
        stop_tun_pod(tun_pod, namespaces)


def _connected(pod: TunPod, address: tuple[Any, ...], *, recverr: bool = False) -> socket.socket:
    def make() -> socket.socket:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if recverr:
            level, option = (
                (socket.IPPROTO_IP, IP_RECVERR)
                if family == socket.AF_INET
                else (socket.IPPROTO_IPV6, IPV6_RECVERR)
            )
            sock.setsockopt(level, option, 1)
        sock.connect(address)
        sock.settimeout(3)
        return sock

    return in_netns(pod.pod, make)


def _error_after_send(sock: socket.socket, count: int = 1) -> tuple[int, float, int]:
    """Send up to ``count`` datagrams, then wait: the errno the socket reports, how long that took, and
    how many datagrams were sent (the error may already fail a later ``send``: it came that fast)."""
    started = time.monotonic()
    sent = 0
    with pytest.raises(OSError) as caught:
        for index in range(count):
            sock.send(b"query %d" % index)
            sent += 1
        sock.recv(100)
    assert not isinstance(caught.value, TimeoutError), "no ICMP error reached the socket"
    return caught.value.errno or 0, time.monotonic() - started, sent


def _icmp_counter(pod: TunPod, v6: bool) -> int:
    """The pod kernel's count of destination unreachable messages received (/proc/net/snmp[6])."""
    if v6:
        text = sh("ip", "netns", "exec", pod.pod, "cat", "/proc/net/snmp6")
        return int(
            next(line.split()[1] for line in text.splitlines() if line.startswith("Icmp6InDestUnreachs"))
        )
    lines = [
        line.split() for line in sh("ip", "netns", "exec", pod.pod, "cat", "/proc/net/snmp").splitlines()
    ]
    names, values = (row for row in lines if row[0] == "Icmp:")
    return int(values[names.index("InDestUnreachs")])


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_chain_down_host_unreachable_reaches_a_recverr_socket_at_once(pod: TunPod, family: str) -> None:
    v6 = family == "v6"
    target = pod.target6 if v6 else pod.target4
    before, icmp_before = pod.fresh_stats(), _icmp_counter(pod, v6)
    with _connected(pod, (target, FAIL_PORT), recverr=True) as sock:
        code, elapsed, sent = _error_after_send(sock, count=5)
        assert code == errno.EHOSTUNREACH and elapsed < 1.0, (code, elapsed)
        # The error queue says what came: ICMP type 3 code 1 / ICMPv6 type 1 code 3 (address
        # unreachable), from the target address, about our datagram.
        _, ancillary, _, _ = sock.recvmsg(2048, 512, MSG_ERRQUEUE)
    ((level, kind, data),) = ancillary
    assert (level, kind) == ((socket.IPPROTO_IPV6, IPV6_RECVERR) if v6 else (socket.IPPROTO_IP, IP_RECVERR))
    ee_errno, origin, icmp_type, icmp_code = struct.unpack_from("=IBBB", data)
    assert ee_errno == errno.EHOSTUNREACH
    assert (origin, icmp_type, icmp_code) == ((SO_EE_ORIGIN_ICMP6, 1, 3) if v6 else (SO_EE_ORIGIN_ICMP, 3, 1))
    offender = data[16 + 8 : 16 + 24] if v6 else data[16 + 4 : 16 + 8]
    assert ipaddress.ip_address(offender) == ipaddress.ip_address(target)

    after = pod.fresh_stats()
    failures = after["udp_dial_failures"] - before["udp_dial_failures"]
    assert failures >= 1  # the datagrams may reach the engine in one read batch or several
    assert after["udp_icmp_sent"] - before["udp_icmp_sent"] == failures  # one answer per failed flow
    assert after["udp_dropped_dial_failed"] - before["udp_dropped_dial_failed"] == sent  # every one
    assert _icmp_counter(pod, v6) - icmp_before == failures  # the kernel took each one


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_chain_down_without_recverr_is_a_soft_error_the_kernel_only_counts(pod: TunPod, family: str) -> None:
    # Linux passes "host/address unreachable" to a connected UDP socket only with IP_RECVERR (RFC 1122
    # §4.2.3.9 calls them soft); the engine still answers (the counter moves), the socket times out.
    v6 = family == "v6"
    icmp_before = _icmp_counter(pod, v6)
    with _connected(pod, (pod.target6 if v6 else pod.target4, FAIL_PORT)) as sock:
        sock.settimeout(0.3)
        sock.send(b"soft")
        with pytest.raises(TimeoutError):
            sock.recv(100)
    assert _icmp_counter(pod, v6) - icmp_before == 1


def _link_local6(pod: TunPod) -> tuple[str, int, int, int]:
    index = in_netns(pod.pod, lambda: socket.if_nametoindex(pod.tun))
    return ("fe80::77", 5353, 0, index)


@pytest.mark.parametrize(("family", "expected"), [("v4", errno.EHOSTUNREACH), ("v6", errno.EACCES)])
def test_route_refusal_is_administratively_prohibited_a_hard_error(
    pod: TunPod, family: str, expected: int
) -> None:
    # The service bypass (``--refuse``) matches: refused by the route policy, answered with code 13
    # (IPv4) / ICMPv6 code 1 ("administratively prohibited"), which every connected socket gets.
    address = _link_local6(pod) if family == "v6" else (LINK_LOCAL4, 5353)
    before = pod.fresh_stats()
    with _connected(pod, address) as sock:
        code, elapsed, _ = _error_after_send(sock)
    assert code == expected and elapsed < 1.0, (code, elapsed)
    after = pod.fresh_stats()
    assert after["udp_icmp_sent"] - before["udp_icmp_sent"] == 1


def test_answers_are_rate_limited(pod: TunPod) -> None:
    # Last in this module: it drains the source's bucket (20, then 10/s) for the tests above.
    before = pod.fresh_stats()
    flows = 150
    started = time.monotonic()
    sockets = [_connected(pod, (pod.target4, FAIL_PORT)) for _ in range(flows)]
    try:
        for sock in sockets:
            sock.send(b"x")
        deadline = time.monotonic() + 5
        while True:
            stats = pod.fresh_stats()
            answered = stats["udp_icmp_sent"] - before["udp_icmp_sent"]
            limited = stats["udp_icmp_limited"] - before["udp_icmp_limited"]
            if answered + limited >= flows or time.monotonic() > deadline:
                break
        elapsed = time.monotonic() - started  # every flow was decided by then: the buckets refilled less
    finally:
        for sock in sockets:
            sock.close()
    assert answered + limited == flows
    assert answered <= 20 + 10 * elapsed + 1, (answered, elapsed)  # the burst + the refill meanwhile
    assert limited >= flows - answered > 0


# --- hostile fragments ----------------------------------------------------------------------------------
def _packet_socket(pod: TunPod) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((pod.tun, 0))
        return sock

    return in_netns(pod.pod, make)


def _frag4(pod: TunPod, ident: int, offset: int, data: bytes, more: bool) -> bytes:
    flags = "MF" if more else 0
    return bytes(IP(src=TUN4, dst=pod.target4, proto=17, id=ident, flags=flags, frag=offset // 8) / data)


def _frag6(pod: TunPod, ident: int, offset: int, data: bytes, more: bool) -> bytes:
    header = IPv6ExtHdrFragment(nh=17, id=ident, m=int(more), offset=offset // 8)
    return bytes(IPv6(src=TUN6, dst=pod.target6) / header / data)


def _first(data: bytes, dport: int = 7) -> bytes:
    return bytes(UDP(sport=40000, dport=dport, len=8 + 4000, chksum=0)) + data


def _storm(pod: TunPod, packets: list[bytes]) -> dict[str, int]:
    """Write ``packets``, wait until nothing is held any more, return the drop counts they caused."""
    before = pod.fresh_stats()
    with _packet_socket(pod) as sock:
        for pkt in packets:
            sock.send(pkt)
    deadline = time.monotonic() + 10
    while True:
        stats = pod.fresh_stats()
        done = sum(stats["drops"].values()) - sum(before["drops"].values()) >= len(packets)
        if (done and stats["frag_partials"] == 0) or time.monotonic() > deadline:
            break
    assert pod.alive()
    assert stats["flow_errors"] == before["flow_errors"]
    assert stats["udp_sessions"] == before["udp_sessions"]  # no hostile sequence made a datagram
    assert stats["frag_partials"] == 0 and stats["frag_bytes"] == 0
    return {name: stats["drops"][name] - before["drops"][name] for name in stats["drops"]}


Make = Callable[[TunPod, int, int, bytes, bool], bytes]


@pytest.mark.parametrize("make", [_frag4, _frag6], ids=["v4", "v6"])
def test_overlaps_are_dropped_whole(pod: TunPod, make: Make) -> None:
    packets = []
    for ident in range(1000, 1050):  # 50 datagrams: two fragments, then one overlapping both
        packets += [
            make(pod, ident, 0, _first(b"a" * 1000), True),
            make(pod, ident, 2008, b"c" * 1008, True),
            make(pod, ident, 1000, b"b" * 1016, True),  # [1000, 2016) overlaps [0, 1008) and [2008, ...)
        ]
    drops = _storm(pod, packets)
    assert drops["frag_overlap"] == 150, drops


@pytest.mark.parametrize("make", [_frag4, _frag6], ids=["v4", "v6"])
def test_too_many_fragments_and_never_completed(pod: TunPod, make: Make) -> None:
    packets = [make(pod, 2000, 0, _first(b""), True)]  # 8 bytes: the UDP header alone
    packets += [make(pod, 2000, 8 * i, b"f" * 8, True) for i in range(1, 140)]  # 140 > 128 per datagram
    packets += [make(pod, 3000 + i, 0, _first(b"n" * 992), True) for i in range(100)]  # first halves only
    drops = _storm(pod, packets)
    # 128 held + the 129th abandon the first datagram; the 11 after it start another, never completed.
    assert drops["frag_limit"] == 129, drops
    assert drops["frag_timeout"] == 11 + 100, drops


@pytest.mark.parametrize("make", [_frag4, _frag6], ids=["v4", "v6"])
def test_too_many_partial_datagrams_evict_the_oldest(pod: TunPod, make: Make) -> None:
    packets = [make(pod, 4000 + i, 0, _first(b"p" * 64), True) for i in range(400)]
    drops = _storm(pod, packets)
    # At most 256 partial datagrams: the 144 oldest make room. (Fewer only if the engine stalled for
    # the 0.5 s timeout in the middle of the burst, letting a sweep expire some first.)
    assert drops["frag_limit"] + drops["frag_timeout"] == 400, drops
    assert 100 <= drops["frag_limit"] <= 144, drops


def test_a_large_exchange_still_works_after_the_storms(pod: TunPod) -> None:
    def make_echo() -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        sock.settimeout(5)
        return sock

    with in_netns(pod.target, make_echo) as echo:
        port = echo.getsockname()[1]
        for target in (pod.target4, pod.target6):
            with _connected(pod, (target, port)) as sock:
                payload = bytes(range(256)) * 234
                sock.send(payload)
                data, peer = echo.recvfrom(65535)
                assert data == payload
                echo.sendto(data[::-1], peer)
                assert sock.recv(65535) == payload[::-1]
