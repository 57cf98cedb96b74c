"""Split DNS end to end: the real ``tungo`` CLI in a "pod" namespace runs the TUN (capturing everything)
and a ``dns://`` service on 127.0.0.1:53; cluster names go straight to a cluster-DNS stand-in, every
other name through the relay+wss chain to an "external" resolver.

Lab (``tungo_sidecar.app.demo.Lab``): pod ─ eth0 ─ server namespace (relay+wss server; the cluster-DNS
stand-in on ``10.96.0.10``, an address of its loopback that the pod reaches through its default route,
as a pod reaches a cluster service) ─ target (the external resolver on ``TGT4:53``). Each fake DNS
server records the address every query came from: the stand-in must see only the pod's own address (a
direct dial, marked so that the TUN does not capture it: unmarked, it would go through the relay and
arrive from 10.96.0.10 itself) and only cluster names; the external resolver must see only the relay
server's address and never a cluster name.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import dnswire as w
import pytest

from tungo_sidecar.app import demo
from tungo_sidecar.app.demo import POD4, SRV_POD4, SRV_TGT4, TGT4, Lab, Proc

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root + TUN"),
]

#: The cluster DNS stand-in, kube-dns's usual ClusterIP. The pod reaches it through its default route,
#: which the TUN's ``route=0.0.0.0/0`` captures (and no ``exclude`` keeps out): only the DNS service's
#: mark keeps its queries direct. Unmarked, they would reach it through the relay, from 10.96.0.10.
CLUSTER_DNS = "10.96.0.10"
CLUSTER_ANSWER, EXTERNAL_ANSWER = "10.96.0.1", "198.19.20.80"
RELAY = f"relay+wss://{demo.USER}:{demo.PASSWORD}@{SRV_POD4}:{demo.RELAY_PORT}?interface=eth0"
TUN = f"tungo://:0?name=tungo&net={demo.TUN_NET}&mtu=1420&interface=eth0&route=0.0.0.0/0,::/0"
DNS = (
    f"dns://127.0.0.1:53?dns=udp://{TGT4}:53&dns.local=udp://{CLUSTER_DNS}:53"
    "&dns.localDomains=cluster.local&bypass=.blocked.test&timeout=1s&dns.budget=2s"
)
#: The same external resolver with a short budget (its silent.* names never get an answer)...
BUDGET = f"dns://127.0.0.1:5301?dns=udp://{TGT4}:53&timeout=300ms&dns.budget=1s"
#: ...and over TCP through the relay.
OVER_TCP = f"dns://127.0.0.1:5302?dns=tcp://{TGT4}:53"


external = w.external_resolver(EXTERNAL_ANSWER)


def in_ns(ns: str, host: str) -> Callable[[int, int], socket.socket]:
    make = w.bind_socket(host)
    return lambda kind, port: demo.in_netns(ns, lambda: make(kind, port))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as built:
        demo.sh("ip", "-n", built.srv, "addr", "add", f"{CLUSTER_DNS}/32", "dev", "lo")
        yield built


@pytest.fixture
async def servers(lab: Lab) -> AsyncIterator[tuple[w.FakeDns, w.FakeDns]]:
    stand_in = w.FakeDns(
        lambda m, n: w.answer(m, w.a_record(CLUSTER_ANSWER)), in_ns(lab.srv, CLUSTER_DNS), port=53
    )
    upstream = w.FakeDns(external, in_ns(lab.tgt, TGT4), port=53)
    async with stand_in, upstream:
        yield stand_in, upstream


async def start(lab: Lab, *args: str) -> Proc:
    lab.tungo(lab.srv, "server", *demo.server_command())
    await demo.wait_listening(lab, lab.pod, SRV_POD4, demo.RELAY_PORT)
    pod = lab.tungo(lab.pod, "pod", "-D", *args, "--health", f"{demo.LOOPBACK}:{demo.HEALTH_PORT}")
    await demo.wait_ready(lab, pod)
    return pod


async def udp(lab: Lab, message: bytes, port: int = 53) -> bytes:
    with lab.socket(lab.pod, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return await w.ask_udp(sock, (demo.LOOPBACK, port), message, wait=10)


async def tcp(lab: Lab, *messages: bytes, port: int = 53) -> list[bytes]:
    with lab.socket(lab.pod, socket.AF_INET, socket.SOCK_STREAM) as sock:
        return await w.ask_tcp(sock, (demo.LOOPBACK, port), *messages, wait=10)


def dns_stats(output: str, service: str) -> dict[str, int]:
    for line in output.splitlines():
        _, sep, rest = line.partition(f"dns {service}: stats ")
        if sep:
            return dict(json.loads(rest))
    raise AssertionError(f"no stats line for {service}")


async def test_cluster_names_stay_in_the_cluster_and_the_rest_goes_through_the_relay(
    lab: Lab, servers: tuple[w.FakeDns, w.FakeDns]
) -> None:
    stand_in, upstream = servers
    pod = await start(lab, "-L", TUN, "-L", DNS, "-L", BUDGET, "-L", OVER_TCP, "-F", RELAY)

    # A cluster name: answered by the stand-in, which saw the pod's own address (direct, marked).
    assert w.addresses(await udp(lab, w.query("x.svc.cluster.local"))) == [CLUSTER_ANSWER]
    (over_tcp,) = await tcp(lab, w.query("y.ns.svc.cluster.local", qid=2))
    assert w.addresses(over_tcp) == [CLUSTER_ANSWER]
    # Any other name: answered by the external resolver, which saw only the relay server's address.
    assert w.addresses(await udp(lab, w.query("www.example.test", qid=3))) == [EXTERNAL_ANSWER]
    # A bypassed name: an empty answer, and neither server hears of it.
    blocked = await udp(lab, w.query("ads.blocked.test", qid=4))
    assert (w.header(blocked).rcode, w.header(blocked).ancount) == (w.NOERROR, 0)
    # A malformed query: FORMERR, nothing forwarded.
    formerr = await udp(lab, b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\x05ab")
    assert (w.header(formerr).id, w.header(formerr).rcode) == (0x1234, w.FORMERR)
    # An answer larger than 512 bytes to a client without EDNS: TC set; over TCP the whole answer.
    cut = await udp(lab, w.query("big.example.test", qid=5))
    assert w.header(cut).tc and w.header(cut).ancount == 0 and len(cut) <= 512
    (whole,) = await tcp(lab, w.query("big.example.test", qid=6))
    assert w.header(whole).ancount == 10 and not w.header(whole).tc
    # A resolver that truncates over UDP: a TCP client gets the answer fetched again over TCP (relay).
    (refetched,) = await tcp(lab, w.query("tc.example.test", qid=7))
    assert w.header(refetched).ancount == 10
    # A dead upstream: SERVFAIL within the service's 1 s budget, no hang.
    started = time.monotonic()
    servfail = await udp(lab, w.query("silent.example.test", qid=8), port=5301)
    assert w.header(servfail).rcode == w.SERVFAIL and time.monotonic() - started < 1.8
    # A tcp:// upstream, through the relay as a TCP stream.
    assert w.addresses(await udp(lab, w.query("via-tcp.example.test", qid=9), port=5302)) == [EXTERNAL_ANSWER]

    assert stand_in.peers() == {POD4}, stand_in.seen
    assert stand_in.names() == {"x.svc.cluster.local", "y.ns.svc.cluster.local"}
    assert upstream.peers() == {SRV_TGT4}, upstream.seen
    assert not any(name.endswith("cluster.local") or "blocked" in name for name in upstream.names())
    assert {s.network for s in upstream.seen if s.name == "tc.example.test"} == {"udp", "tcp"}
    assert [s.network for s in upstream.seen if s.name == "via-tcp.example.test"] == ["tcp"]

    assert pod.stop(signal.SIGTERM) == 0, pod.output()[-3000:]
    stats = dns_stats(pod.output(), "service-1")
    assert stats["dns_local"] == 2 and stats["dns_bypassed"] == 1 and stats["dns_malformed"] == 1, stats
    assert stats["dns_truncated"] == 1 and stats["dns_tcp_retries"] == 1 and stats["dns_servfail"] == 0, stats
    assert dns_stats(pod.output(), "service-2")["dns_servfail"] == 1
    # The TUN saw none of it: the DNS service's own sockets carry its mark.
    engine = demo.engine_stats(pod.output())
    assert engine is not None and engine["route_chain"] == 0 and engine["route_direct"] == 0, engine


async def test_the_dns_service_alone_with_a_chain(lab: Lab, servers: tuple[w.FakeDns, w.FakeDns]) -> None:
    # GOST's own command, no TUN: every name through the relay, nothing local.
    stand_in, upstream = servers
    pod = await start(lab, "-L", f"dns://127.0.0.1:53?dns=udp://{TGT4}:53", "-F", RELAY)
    answers = await asyncio.gather(*(udp(lab, w.query(f"n{i}.example.test", qid=i)) for i in range(20)))
    assert [w.header(a).id for a in answers] == list(range(20))
    assert all(w.addresses(a) == [EXTERNAL_ANSWER] for a in answers)
    assert upstream.peers() == {SRV_TGT4} and len(upstream.seen) == 20 and stand_in.seen == []
    assert pod.stop(signal.SIGTERM) == 0, pod.output()[-3000:]
