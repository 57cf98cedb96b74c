"""Replies to inbound connections leave by ``main`` while a default route is captured (real kernel).

A "pod" namespace with an uplink ``up0`` to an "outside" namespace, a TUN held open by a child process
that reads it and reports the destination of every packet the kernel routed into it, and the
capture of ``0.0.0.0/0`` and ``::/0`` (``routing.hooks.Capture``). A server listens on :9190 in the pod
like the sidecar's ``/readyz``; the "kubelet" is a client in the outside namespace using an address
that is not on the pod's link and not excluded (like a node IP), so the pod's reply is captured unless
the inbound ruleset steers it. Without the ruleset the connection never completes (the SYN-ACK goes
into the TUN: counted); with it, TCP and UDP are answered on both families, while the pod's own
connections to that very address still go into the TUN. Teardown leaves no nftables table.

Then the real thing: the ``tungo`` CLI in ``app.demo``'s lab (pod / relay server / target), its
``/readyz`` probed from the target's addresses as a kubelet would, across a SIGKILL and a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import routing_netns as rn
from tun_netns import in_netns

from tungo_sidecar.app import demo
from tungo_sidecar.app.demo import Lab, Targets
from tungo_sidecar.config.model import Metadata
from tungo_sidecar.config.tun import TunSettings, parse_tun_settings
from tungo_sidecar.routing import netfilter
from tungo_sidecar.routing.hooks import Capture
from tungo_sidecar.routing.inbound import make_inbound
from tungo_sidecar.routing.plan import FWMARK

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and TUN"),
    pytest.mark.skipif(
        not os.path.exists("/usr/sbin/nft") and not os.path.exists("/usr/bin/nft"), reason="needs nft"
    ),
]

PORT = 9190
POD4, POD6 = rn.POD_UPLINK.split("/")[0], rn.POD_UPLINK6.split("/")[0]
# The "kubelet": addresses of the outside namespace that are off the pod's link (the reply needs the
# default route) and excluded from nothing. Documentation ranges, only ever inside these namespaces.
PEER4, PEER6 = "203.0.113.50", "2001:db8:50::50"
REFUSED_WAIT = 1.0  # how long a connect that should not complete is given


# The child playing tungo's TUN: opens it, then reads it; each line on stdin asks for the destinations
# of the packets read since the last question (one JSON list per answer). Bounded by a deadline.
_TUN_READER = r"""
import fcntl, ipaddress, json, os, select, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
IFF_TUN, IFF_NO_PI, TUNSETIFF = 0x0001, 0x1000, 0x400454CA
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", sys.argv[1].encode(), IFF_TUN | IFF_NO_PI))
print("READY", flush=True)
seen, deadline = [], time.monotonic() + 120
while time.monotonic() < deadline:
    ready, _, _ = select.select([fd, sys.stdin], [], [], 0.2)
    if fd in ready:
        packet = os.read(fd, 65535)
        if packet[0] >> 4 == 4:
            seen.append(str(ipaddress.IPv4Address(packet[16:20])))
        elif packet[0] >> 4 == 6:
            seen.append(str(ipaddress.IPv6Address(packet[24:40])))
    if sys.stdin in ready:
        if not sys.stdin.readline():
            break
        print(json.dumps(seen), flush=True)
        seen = []
"""


@dataclass
class Pod:
    ns: str
    outside: str
    reader: subprocess.Popen[str]

    def into_tun(self) -> list[str]:
        """Destinations of the packets routed into the TUN since the last call."""
        assert self.reader.stdin is not None and self.reader.stdout is not None
        self.reader.stdin.write("?\n")
        self.reader.stdin.flush()
        return list(json.loads(self.reader.stdout.readline()))


@contextlib.contextmanager
def tun_reader(ns: str) -> Iterator[subprocess.Popen[str]]:
    with rn.tun_child(ns, _TUN_READER, "tungo", ("192.168.123.1/24", "fd00:123::1/64"), stdin=True) as proc:
        yield proc


@pytest.fixture
def pod() -> Iterator[Pod]:
    with rn.pod_with_uplink() as up, tun_reader(up.ns) as reader:
        rn.ip(up.outside, "addr", "add", f"{PEER4}/32", "dev", "lo")
        rn.ip(up.outside, "-6", "addr", "add", f"{PEER6}/128", "dev", "lo", "nodad")
        yield Pod(up.ns, up.outside, reader)


def capture_settings() -> TunSettings:
    return parse_tun_settings(Metadata({"net": "192.168.123.1/24,fd00:123::1/64", "route": "0.0.0.0/0,::/0"}))


def routing_state(ns: str) -> list[str]:
    """Rules and routes, but link-local addresses (they appear once a device's DAD is over)."""
    return [line for line in rn.snapshot(ns).splitlines() if "local fe80:" not in line]


def nft_tables(ns: str) -> str:
    return rn.run("ip", "netns", "exec", ns, "nft", "list", "tables").strip()


def nft_ruleset(ns: str) -> str:
    return rn.run("ip", "netns", "exec", ns, "nft", "list", "ruleset")


def listening(ns: str, kind: int, host: str = "::") -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET if "." in host else socket.AF_INET6, kind)
        if host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, PORT))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sock.setblocking(False)
        return sock

    return in_netns(ns, make)


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)  # type: ignore[attr-defined]


async def _ready(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def readyz_server(ns: str, udp_hosts: tuple[str, ...]) -> AsyncIterator[None]:
    """A tiny HTTP server on [::]:9190 in ``ns`` (both families) and UDP echoes on ``udp_hosts``:9190.

    The UDP sockets are bound to the addresses they serve, as a UDP server on a multi-homed host must
    be (or use IP_PKTINFO): a wildcard-bound one answers from the address the route lookup picks, with
    a default route into the TUN the TUN's own, which is not the address the client asked.
    """
    server = await asyncio.start_server(_ready, sock=listening(ns, socket.SOCK_STREAM))
    loop = asyncio.get_running_loop()
    udp = [
        (await loop.create_datagram_endpoint(_UdpEcho, sock=listening(ns, socket.SOCK_DGRAM, host)))[0]
        for host in udp_hosts
    ]
    try:
        yield
    finally:
        for transport in udp:
            transport.close()
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)


def client_socket(ns: str, source: str, kind: int) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET, kind)
        sock.bind((source, 0))
        sock.setblocking(False)
        return sock

    return in_netns(ns, make)


async def probe(ns: str, source: str, host: str, wait: float = 5.0) -> str:
    """GET /readyz from ``source`` in ``ns``: the body, or "timeout"."""
    sock = client_socket(ns, source, socket.SOCK_STREAM)
    try:
        async with asyncio.timeout(wait):
            await asyncio.get_running_loop().sock_connect(sock, (host, PORT))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: pod\r\n\r\n")
            data = await reader.read()
            writer.close()
    except TimeoutError:
        sock.close()
        return "timeout"
    return data.partition(b"\r\n\r\n")[2].decode()


async def udp_ask(ns: str, source: str, host: str, port: int = PORT, wait: float = 5.0) -> bytes | None:
    sock = client_socket(ns, source, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, b"ping")
        async with asyncio.timeout(wait):
            return await loop.sock_recv(sock, 100)
    except TimeoutError:
        return None
    finally:
        sock.close()


async def test_probe_from_a_captured_address_fails_without_the_ruleset_and_works_with_it(pod: Pod) -> None:
    settings = capture_settings()
    before = routing_state(pod.ns)
    async with readyz_server(pod.ns, (POD4, POD6)):
        # The bug, shown: routes alone. The SYN arrives, the SYN-ACK is captured into the TUN.
        routes_only = Capture(settings, None, netns=pod.ns, inbound=False)
        await routes_only.start()
        try:
            pod.into_tun()
            assert await probe(pod.outside, PEER4, POD4, wait=REFUSED_WAIT) == "timeout"
            assert await udp_ask(pod.outside, PEER4, POD4, wait=REFUSED_WAIT / 2) is None
            # The SYN-ACK (and its retransmissions) and the UDP reply went into the TUN.
            assert pod.into_tun().count(PEER4) >= 2
        finally:
            await routes_only.stop()
        assert nft_tables(pod.ns) == ""

    # A fresh listener for the fix: closing this one drops the half-open connection above, whose
    # SYN-ACK retransmissions (1 s, 3 s, 7 s... later, unmarked) would otherwise reach the TUN
    # during the next phase and fail its "no reply went into the TUN" check at random.
    async with readyz_server(pod.ns, (POD4, POD6)):
        # The fix: the same capture with the inbound ruleset.
        capture = Capture(settings, None, netns=pod.ns)
        assert capture.inbound_rules == make_inbound("tungo", mark=FWMARK)
        await capture.start()
        try:
            assert nft_tables(pod.ns) == "table inet tungo\ntable arp tungo"
            pod.into_tun()
            for source, host in ((PEER4, POD4), (PEER6, POD6)):
                assert await probe(pod.outside, source, host) == "ok\n", source
                assert await udp_ask(pod.outside, source, host) == b"echo:ping", source
            # Ten probes in a row, as a kubelet would: every one answered.
            answers = await asyncio.gather(*(probe(pod.outside, PEER4, POD4) for _ in range(10)))
            assert answers == ["ok\n"] * 10
            assert pod.into_tun() == []  # no reply went into the TUN

            # The pod's own connections to the very same addresses are still captured.
            assert "dev tungo" in rn.route_get(pod.ns, PEER4)
            assert "dev tungo" in rn.route_get(pod.ns, PEER6)
            async with readyz_server(pod.outside, (PEER4, PEER6)):
                assert await probe(pod.ns, POD4, PEER4, wait=REFUSED_WAIT) == "timeout"
                assert await udp_ask(pod.ns, POD6, PEER6, wait=REFUSED_WAIT / 2) is None
            into = pod.into_tun()
            assert PEER4 in into and PEER6 in into, into  # the SYN and the datagram
        finally:
            await capture.stop()
    assert nft_tables(pod.ns) == ""
    assert routing_state(pod.ns) == before


async def test_apply_twice_restart_on_leftovers_and_exact_teardown(pod: Pod) -> None:
    ruleset = make_inbound("tungo")
    await netfilter.apply_inbound(ruleset, netns=pod.ns)
    once = nft_ruleset(pod.ns)
    await netfilter.apply_inbound(ruleset, netns=pod.ns)
    assert nft_ruleset(pod.ns) == once  # replaced, not duplicated
    assert once.count("table inet tungo") == 1 and once.count("table arp tungo") == 1
    assert once.count("ct mark set") == 2

    # A crashed run left its table (and an older, different one): a new start replaces it whole.
    await netfilter.apply_inbound(make_inbound("tun7", mark=0x99), netns=pod.ns)
    capture = Capture(capture_settings(), None, netns=pod.ns)
    await capture.start()
    assert nft_ruleset(pod.ns) == once
    async with readyz_server(pod.ns, (POD4, POD6)):
        assert await probe(pod.outside, PEER4, POD4) == "ok\n"
    await capture.stop()
    assert nft_tables(pod.ns) == ""
    await netfilter.remove_inbound(ruleset, netns=pod.ns)  # already gone: fine
    assert nft_tables(pod.ns) == ""
    # Another table in the namespace is not ours: untouched by apply and teardown.
    rn.run("ip", "netns", "exec", pod.ns, "nft", "add", "table", "ip", "other")
    await capture.start()
    await capture.stop()
    assert nft_tables(pod.ns) == "table ip other"


async def test_strict_rp_filter_gets_src_valid_mark(pod: Pod) -> None:
    sysctl = ("ip", "netns", "exec", pod.ns, "sysctl")
    rn.run(*sysctl, "-qw", "net.ipv4.conf.all.rp_filter=1")
    assert rn.run(*sysctl, "-n", "net.ipv4.conf.all.src_valid_mark").strip() == "0"
    capture = Capture(capture_settings(), None, netns=pod.ns)
    async with readyz_server(pod.ns, (POD4, POD6)):
        await capture.start()
        try:
            assert rn.run(*sysctl, "-n", "net.ipv4.conf.all.src_valid_mark").strip() == "1"
            assert await probe(pod.outside, PEER4, POD4) == "ok\n"
            # The control: without src_valid_mark the strict filter drops the probe on arrival.
            rn.run(*sysctl, "-qw", "net.ipv4.conf.all.src_valid_mark=0")
            assert await probe(pod.outside, PEER4, POD4, wait=REFUSED_WAIT) == "timeout"
        finally:
            await capture.stop()


async def test_loose_rp_filter_needs_nothing(pod: Pod) -> None:
    rn.run("ip", "netns", "exec", pod.ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2")
    result = await netfilter.fix_reverse_path("tungo", netns=pod.ns)
    assert result == netfilter.ReversePath((), "not needed")
    rn.run("ip", "netns", "exec", pod.ns, "sysctl", "-qw", "net.ipv4.conf.up0.rp_filter=1")
    rn.run("ip", "netns", "exec", pod.ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
    result = await netfilter.fix_reverse_path("tungo", netns=pod.ns)
    assert result == netfilter.ReversePath(("up0",), "set")
    assert rn.run("ip", "netns", "exec", pod.ns, "sysctl", "-n", "net.ipv4.conf.all.src_valid_mark") == "1\n"
    # The test process's own namespace was not touched (the work ran on a thread of its own).
    assert (await netfilter.fix_reverse_path("tungo", netns=pod.ns)).action == "already set"


# --- the real thing: the tungo CLI in a pod namespace, its /readyz probed like a kubelet would -----------
@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as built:
        yield built


def pod_args() -> list[str]:
    """The demo's pod command line, with /readyz on every address (a kubelet probes the pod IP)."""
    args = demo.pod_command()
    assert args[-2] == "--health"
    return [*args[:-1], f"0.0.0.0:{demo.HEALTH_PORT}"]


async def kubelet_probe(lab: Lab, host: str, wait: float = 5.0) -> str:
    """GET /readyz from the target namespace (off the pod's link, captured): "200", or the failure."""
    try:
        status, _ = await asyncio.wait_for(
            demo.http_get(lab, lab.tgt, host, demo.HEALTH_PORT, "/readyz"), wait
        )
    except TimeoutError:
        return "timeout"
    return str(status)


async def test_tungo_cli_readyz_answers_a_probe_from_a_captured_address(lab: Lab) -> None:
    async with Targets(lab, b"") as targets:
        lab.tungo(lab.srv, "server", *demo.server_command())
        await demo.wait_listening(lab, lab.pod, demo.SRV_POD4, demo.RELAY_PORT)

        # Without nft (not on PATH): the tunnel works, one warning says what breaks, and it does.
        pod = lab.spawn(
            lab.pod, "no-nft", [*demo.tungo_command(), *pod_args()], env={"PATH": "/usr/bin:/bin"}
        )
        await demo.wait_ready(lab, pod)
        assert "'nft' not found" in pod.output()
        assert await kubelet_probe(lab, demo.POD4, wait=REFUSED_WAIT) == "timeout"
        assert pod.stop(signal.SIGTERM) == 0

        # With it: the target's probe is answered (IPv4: the health port listens on 0.0.0.0), and the
        # pod's own connections to that very target still go through the tunnel (it sees the relay).
        pod = lab.tungo(lab.pod, "pod", *pod_args())
        await demo.wait_ready(lab, pod)
        assert nft_tables(lab.pod) == "table inet tungo\ntable arp tungo"
        assert await kubelet_probe(lab, demo.POD4) == "200"
        _, writer = await demo.connect(lab, lab.pod, demo.TGT4, targets.echo_port)
        writer.close()
        assert await demo.udp_round_trips(lab, lab.pod, demo.TGT6, targets.udp_port, count=2) == 2
        assert targets.peers and targets.peers <= {demo.SRV_TGT4, demo.SRV_TGT6}, targets.peers

        # SIGKILL leaves the tables (they only send replies back where they came from); a restart
        # replaces them (no duplicates), a clean stop removes them.
        pod.stop(signal.SIGKILL)
        rn.wait_gone(lab.pod, "tungo")
        left = nft_ruleset(lab.pod)
        assert left.count("table ") == 2
        pod = lab.tungo(lab.pod, "pod2", *pod_args())
        await demo.wait_ready(lab, pod)
        assert nft_ruleset(lab.pod) == left
        assert await kubelet_probe(lab, demo.POD4) == "200"
        assert pod.stop(signal.SIGTERM) == 0
    assert nft_tables(lab.pod) == ""
