"""The DNS service on loopback: fake upstream servers that record who asked what, real UDP and TCP
clients. Split routing, bypass, truncation and the TCP retry, the budget against dead or lying
upstreams, and the bounds a bad client meets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import dnswire as w
import pytest

from tungo_sidecar.config.dns import DnsSettings
from tungo_sidecar.config.url import build_config
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.net import dnsserver
from tungo_sidecar.net.direct import DirectDialer
from tungo_sidecar.net.dnsserver import DnsService
from tungo_sidecar.rules.bypass import compile_bypass
from tungo_sidecar.rules.matchers import Pattern

LOOP = "127.0.0.1"
CLUSTER_IP, EXTERNAL_IP = "10.96.0.1", "192.0.2.1"


external = w.external_resolver(EXTERNAL_IP)


def cluster(message: bytes, network: str) -> bytes:
    return w.answer(message, w.a_record(CLUSTER_IP))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOP, 0))
        return int(sock.getsockname()[1])


@dataclass
class Lab:
    service: DnsService
    external: w.FakeDns
    cluster: w.FakeDns
    answers: list[bytes]

    @property
    def addr(self) -> tuple[str, int]:
        return LOOP, self.service.port

    async def udp(self, message: bytes, wait: float = 5.0) -> bytes:
        with w.udp_socket() as sock:
            return await w.ask_udp(sock, self.addr, message, wait)

    async def tcp(self, *messages: bytes, wait: float = 5.0) -> list[bytes]:
        with w.tcp_socket() as sock:
            return await w.ask_tcp(sock, self.addr, *messages, wait=wait)


Start = Callable[..., Awaitable[Lab]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """start(query="...", upstreams=..., bypass=...) -> a running DNS service between two fake servers."""
    running: list[tuple[DnsService, w.FakeDns, w.FakeDns]] = []

    async def make(query: str = "", *, upstream: str = "", bypass: tuple[str, ...] = ()) -> Lab:
        ext = await w.FakeDns(external, w.bind_socket(LOOP)).__aenter__()
        loc = await w.FakeDns(cluster, w.bind_socket(LOOP)).__aenter__()
        upstreams = upstream or f"udp://{LOOP}:{ext.port}"
        url = (
            f"dns://{LOOP}:0?dns={upstreams}&dns.local=udp://{LOOP}:{loc.port}"
            f"&dns.localDomains=cluster.local&dns.localNets=10.96.0.0/12{query}"
        )
        service_config = build_config([url]).services[0]
        answers: list[bytes] = []
        bypasses = [compile_bypass("deny", [Pattern(p) for p in bypass], reverse=False)[0]] if bypass else []
        service = DnsService(
            service_config,
            DnsSettings.from_service(service_config),
            dialer=DirectDialer(),
            direct=DirectDialer(),
            bypasses=bypasses,
            on_answer=answers.append,
        )
        await service.start()
        running.append((service, ext, loc))
        return Lab(service, ext, loc, answers)

    yield make
    for service, ext, loc in running:
        await service.stop()
        await ext.__aexit__()
        await loc.__aexit__()


async def test_cluster_names_go_local_and_the_rest_upstream(start: Start) -> None:
    lab = await start()
    assert w.addresses(await lab.udp(w.query("x.svc.cluster.local"))) == [CLUSTER_IP]
    assert w.addresses(await lab.udp(w.query("www.example.test", qid=1))) == [EXTERNAL_IP]
    answers = await lab.tcp(w.query("y.cluster.local", qid=2), w.query("other.test", qid=3))
    assert [w.addresses(a) for a in answers] == [[CLUSTER_IP], [EXTERNAL_IP]]
    ptr = await lab.udp(w.query("10.0.96.10.in-addr.arpa", w.PTR, qid=4))
    assert w.header(ptr).id == 4
    assert lab.cluster.names() == {"x.svc.cluster.local", "y.cluster.local", "10.0.96.10.in-addr.arpa"}
    assert lab.external.names() == {"www.example.test", "other.test"}
    assert len(lab.answers) == 5 and w.addresses(lab.answers[0]) == [CLUSTER_IP]  # the TUN's name map hook
    stats = lab.service.stats
    assert (stats.dns_local, stats.dns_forwarded, stats.dns_udp_queries, stats.dns_tcp_queries) == (
        3,
        2,
        3,
        2,
    )


async def test_a_bypassed_name_gets_an_empty_answer_and_is_never_forwarded(start: Start) -> None:
    lab = await start(bypass=(".blocked.test",))
    reply = await lab.udp(w.query("ads.blocked.test", edns=1232))
    head = w.header(reply)
    assert (head.rcode, head.ancount, head.arcount, head.qr) == (w.NOERROR, 0, 1, True)
    assert lab.external.seen == [] and lab.service.stats.dns_bypassed == 1


async def test_malformed_queries(start: Start) -> None:
    lab = await start()
    formerr = await lab.udp(b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\x05ab")
    assert (w.header(formerr).id, w.header(formerr).rcode, w.header(formerr).qdcount) == (
        0x1234,
        w.FORMERR,
        0,
    )
    notimp = await lab.udp(b"\x00\x07\x28\x00" + b"\x00" * 8)  # UPDATE
    assert w.header(notimp).rcode == w.NOTIMP
    with pytest.raises(TimeoutError):  # no header to answer: dropped
        await lab.udp(b"\x00\x01\x02", wait=0.3)
    with pytest.raises(TimeoutError):  # a response sent to the server: dropped (no reflection)
        await lab.udp(w.answer(w.query("x.test")), wait=0.3)
    oversized = await lab.udp(w.query("x.test") + b"\x00" * 5000)
    assert w.header(oversized).rcode == w.FORMERR
    # Over TCP a bad query is answered and the connection goes on; a response ends it.
    bad, good = await lab.tcp(b"\x00\x09\x01\x00\x00\x00" + b"\x00" * 6, w.query("ok.test", qid=10))
    assert w.header(bad).rcode == w.FORMERR and w.addresses(good) == [EXTERNAL_IP]
    with pytest.raises(EOFError, match="closed after 0 answers"):
        await lab.tcp(w.answer(w.query("x.test")))
    assert lab.service.stats.dns_malformed == 7 and lab.external.names() == {"ok.test"}


async def test_large_answers_are_cut_for_udp_and_whole_over_tcp(start: Start) -> None:
    lab = await start()
    cut = await lab.udp(w.query("big.example.test"))
    head = w.header(cut)
    assert head.tc and head.ancount == 0 and len(cut) <= 512 and w.qname(cut) == "big.example.test"
    (full,) = await lab.tcp(w.query("big.example.test"))
    assert not w.header(full).tc and w.header(full).ancount == 10 and len(full) > 2000
    # A client that said it takes 4096 over UDP gets the whole answer there.
    assert w.header(await lab.udp(w.query("big.example.test", edns=4096))).ancount == 10
    # The name map hook saw every whole answer, never a cut one.
    assert all(w.header(a).ancount == 10 for a in lab.answers)
    assert lab.service.stats.dns_truncated == 1


async def test_a_truncated_udp_upstream_answer_is_fetched_again_over_tcp_for_a_tcp_client(
    start: Start,
) -> None:
    lab = await start()
    assert w.header(await lab.udp(w.query("tc.example.test"))).tc  # a UDP client gets the TC answer
    (full,) = await lab.tcp(w.query("tc.example.test", qid=5))
    assert w.header(full).ancount == 10 and not w.header(full).tc and w.header(full).id == 5
    assert [s.network for s in lab.external.seen] == ["udp", "udp", "tcp"]
    assert lab.service.stats.dns_tcp_retries == 1


async def test_a_tcp_upstream(start: Start) -> None:
    lab = await start()
    tcp_lab = await start(upstream=f"tcp://{LOOP}:{lab.external.port}")
    assert w.addresses(await tcp_lab.udp(w.query("via.tcp.test"))) == [EXTERNAL_IP]
    assert [s.network for s in lab.external.seen] == ["tcp"]


async def test_a_silent_upstream_gets_servfail_within_the_budget(start: Start) -> None:
    lab = await start("&timeout=200ms&dns.budget=500ms")
    started = time.monotonic()
    reply = await lab.udp(w.query("silent.example.test"))
    elapsed = time.monotonic() - started
    assert w.header(reply).rcode == w.SERVFAIL and 0.35 < elapsed < 0.9, elapsed
    assert len(lab.external.seen) == 2  # tried twice (two rounds), each 200 ms, then SERVFAIL
    assert lab.service.stats.dns_servfail == 1


async def test_a_refusing_upstream_gets_servfail_at_once(start: Start) -> None:
    lab = await start(upstream=f"udp://{LOOP}:{free_port()},tcp://{LOOP}:{free_port()}")
    started = time.monotonic()
    assert w.header(await lab.udp(w.query("x.test"))).rcode == w.SERVFAIL
    assert time.monotonic() - started < 0.5


async def test_servers_are_tried_in_order(start: Start) -> None:
    first = await start()
    dead = f"udp://{LOOP}:{free_port()}"
    lab = await start(upstream=f"{dead},udp://{LOOP}:{first.external.port}")
    assert w.addresses(await lab.udp(w.query("second.test"))) == [EXTERNAL_IP]
    assert first.external.names() == {"second.test"}


async def test_a_servfail_answer_moves_on_to_the_next_server_and_is_the_last_resort(start: Start) -> None:
    failing = await w.FakeDns(lambda m, n: w.answer(m, rcode=w.SERVFAIL), w.bind_socket(LOOP)).__aenter__()
    try:
        good = await start()
        lab = await start(upstream=f"udp://{LOOP}:{failing.port},udp://{LOOP}:{good.external.port}")
        assert w.addresses(await lab.udp(w.query("x.test"))) == [EXTERNAL_IP]
        alone = await start(upstream=f"udp://{LOOP}:{failing.port}")
        reply = await alone.udp(w.query("y.test", qid=9))
        assert w.header(reply).rcode == w.SERVFAIL and w.header(reply).id == 9
        assert len([s for s in failing.seen if s.name == "y.test"]) == 2  # both rounds
    finally:
        await failing.__aexit__()


async def test_stray_and_forged_datagrams_are_ignored(start: Start) -> None:
    def liar(message: bytes, network: str) -> bytes:
        return w.answer(w.query("other.test", qid=int.from_bytes(message[:2], "big")), w.a_record("6.6.6.6"))

    lying = await w.FakeDns(liar, w.bind_socket(LOOP)).__aenter__()
    try:
        lab = await start("&timeout=200ms&dns.budget=300ms", upstream=f"udp://{LOOP}:{lying.port}")
        assert w.header(await lab.udp(w.query("x.test"))).rcode == w.SERVFAIL  # wrong question: not ours
        assert lab.answers == []
    finally:
        await lying.__aexit__()


async def test_tcp_clients_that_stall_or_send_garbage_are_closed(start: Start) -> None:
    lab = await start("&readTimeout=300ms")
    loop = asyncio.get_running_loop()
    for payload in (b"\x00\x00", b"\x20\x00", b"\x00\x40" + b"x" * 10, b""):
        with w.tcp_socket() as sock:
            await loop.sock_connect(sock, lab.addr)
            await loop.sock_sendall(sock, payload)
            started = time.monotonic()
            assert await asyncio.wait_for(loop.sock_recv(sock, 100), 3) == b""  # closed
            waited = time.monotonic() - started
            # A bad length prefix is cut at once; silence and a stalled message after readTimeout.
            assert waited < (0.25 if payload[:2] in (b"\x00\x00", b"\x20\x00") else 1.5), (payload, waited)


async def test_pending_queries_per_connection_are_bounded(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dnsserver, "MAX_PENDING_PER_CONNECTION", 2)
    lab = await start("&timeout=300ms&dns.budget=300ms")
    queries = [w.query(f"silent.{i}.test", qid=i) for i in range(4)]
    task = asyncio.create_task(lab.tcp(*queries))
    await asyncio.sleep(0.15)
    assert len(lab.external.seen) == 2  # two slots: the other queries wait unread
    answers = await task
    assert sorted(w.header(a).id for a in answers) == [0, 1, 2, 3]
    assert all(w.header(a).rcode == w.SERVFAIL for a in answers)


async def test_udp_queries_in_flight_are_bounded(start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dnsserver, "MAX_INFLIGHT_UDP", 1)
    lab = await start("&timeout=500ms&dns.budget=500ms")
    slow = asyncio.create_task(lab.udp(w.query("silent.test", qid=1)))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    busy = await lab.udp(w.query("x.test", qid=2))
    assert w.header(busy).rcode == w.SERVFAIL and time.monotonic() - started < 0.2
    assert w.header(await slow).rcode == w.SERVFAIL
    assert lab.service.stats.dns_busy == 1


async def test_pipelined_answers_come_back_as_they_complete(start: Start) -> None:
    lab = await start("&timeout=300ms&dns.budget=300ms")
    answers = await lab.tcp(w.query("silent.test", qid=1), w.query("fast.test", qid=2))
    assert [w.header(a).id for a in answers] == [2, 1]  # RFC 7766 §7: out of order, by ID


async def test_stop_ends_queries_in_flight(start: Start) -> None:
    lab = await start("&timeout=5s&dns.budget=5s")
    with w.udp_socket() as sock:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, lab.addr)
        await loop.sock_sendall(sock, w.query("silent.test"))
        await asyncio.sleep(0.1)
        assert len(lab.service._udp_tasks) == 1
        started = time.monotonic()
        await lab.service.stop()
        assert time.monotonic() - started < 1 and not lab.service._udp_tasks and lab.service.bound == []


async def test_modes_and_a_port_in_use(start: Start) -> None:
    lab = await start("&mode=udp")
    assert [kind for kind, _, _ in lab.service.bound] == ["udp"]
    busy = build_config([f"dns://{LOOP}:{lab.service.port}?dns=1.1.1.1"]).services[0]
    service = DnsService(busy, DnsSettings.from_service(busy), dialer=DirectDialer(), direct=DirectDialer())
    with pytest.raises(ConfigError, match="cannot listen on"):
        await service.start()
    assert service.bound == []
