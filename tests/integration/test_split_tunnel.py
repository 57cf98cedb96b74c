"""The split tunnel end to end: the real ``tungo`` CLI in a "pod" namespace, bypass rules and sniffing
deciding each flow — direct out of ``eth0``, through the relay+wss chain, or refused.

Lab (``tungo_sidecar.app.demo.Lab``): pod ─ eth0 ─ server namespace (relay+wss server, and a router
to the target) ─ target. The target's servers answer every request with the address they saw the
connection come from, so each flow says which way it went: the pod's own address (``POD4``) means
direct, the relay server's (``SRV_TGT4``) means through the chain. Test names (``*.split.test``) are
resolved only inside the lab: the relay server's namespace gets an ``/etc/netns/<ns>/hosts`` (which
``ip netns exec`` mounts over ``/etc/hosts``), removed with the namespace. The app in the pod always connects
to an address; the name travels in its HTTP Host header or TLS SNI, as a real client's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import cast

import pki
import pytest
import yaml

from tungo_sidecar.app import demo
from tungo_sidecar.app.demo import POD4, SRV_POD4, SRV_TGT4, TGT4, Lab, Proc

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root + TUN"),
]

DIRECT = "direct.split.test"
TUNNEL = "tunnel.split.test"
REFUSED = "refused.split.test"
NOWHERE = "nowhere.split.test"  # resolvable nowhere: only ``sniffing.fallback`` saves it
UNUSED4 = "198.19.20.99"  # no host has it: a flow there arrives only if the chain dials the *name*
RELAY = f"relay+wss://{demo.USER}:{demo.PASSWORD}@{SRV_POD4}:{demo.RELAY_PORT}"
TUN = f"tungo://:0?name=tungo&net={demo.TUN_NET}&mtu=1420&interface=eth0&route=0.0.0.0/0,::/0"
HEALTH = ["--health", f"{demo.LOOPBACK}:{demo.HEALTH_PORT}"]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as built:
        built.hosts(built.srv, dict.fromkeys((DIRECT, TUNNEL, REFUSED), TGT4))
        yield built


class SeenBy:
    """The target's servers: plain HTTP, HTTPS (a certificate for ``*.split.test``), a TCP service
    that speaks first (like SSH), a UDP echo and a DNS server; every answer names the peer address."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        ca = pki.make_ca(tmp)
        leaf = ca.issue(tmp, "target", ["*.split.test"])
        self.server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_tls.load_cert_chain(leaf.cert, leaf.key)
        self.client_tls = ssl.create_default_context(cafile=str(ca.cert_file))
        self.ports: dict[str, int] = {}
        self.udp_peers: list[str] = []
        self.dns_queries = 0
        self._closers: list[asyncio.AbstractServer | asyncio.BaseTransport] = []

    def _sock(self, kind: int, port: int = 0) -> socket.socket:
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((TGT4, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
            sock.setblocking(False)
            return sock

        return demo.in_netns(self.lab.tgt, make)

    async def __aenter__(self) -> SeenBy:
        loop = asyncio.get_running_loop()
        for name, tls in (("http", None), ("https", self.server_tls)):
            server = await asyncio.start_server(self._http, sock=self._sock(socket.SOCK_STREAM), ssl=tls)
            self.ports[name] = server.sockets[0].getsockname()[1]
            self._closers.append(server)
        banner = await asyncio.start_server(self._banner, sock=self._sock(socket.SOCK_STREAM))
        self.ports["banner"] = banner.sockets[0].getsockname()[1]
        self._closers.append(banner)
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._udp_echo), sock=self._sock(socket.SOCK_DGRAM)
        )
        self.ports["udp"] = udp.get_extra_info("sockname")[1]
        dns_server, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._dns), sock=self._sock(socket.SOCK_DGRAM, 53)
        )
        self._closers += [udp, dns_server]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for closer in self._closers:
            closer.close()

    @staticmethod
    async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = str(writer.get_extra_info("peername")[0]).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HELLO {writer.get_extra_info('peername')[0]}\n".encode())
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    def _udp_echo(self, data: bytes, peer: tuple[str, int]) -> bytes:
        self.udp_peers.append(peer[0])
        return data

    def _dns(self, query: bytes, peer: tuple[str, int]) -> bytes:
        self.dns_queries += 1
        return dns_answer(query, TGT4)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, answer: Callable[[bytes, tuple[str, int]], bytes]) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.answer(data, addr), addr)


def dns_query(name: str, qid: int = 0x4242) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!2H", 1, 1)


def dns_answer(query: bytes, address: str) -> bytes:
    """An authoritative answer to ``query`` (one A question): a CNAME to ``edge.<name>``, then its A."""
    qid = struct.unpack("!H", query[:2])[0]
    question = query[12:]
    name_end = question.index(b"\x00") + 1
    qname = question[:name_end]
    edge = b"\x04edge" + qname
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, len(edge)) + edge
    a_record = edge + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton(address)
    return struct.pack("!6H", qid, 0x8180, 1, 2, 0, 0) + question[: name_end + 4] + cname + a_record


async def fetch(
    lab: Lab, seen: SeenBy, host: str, address: str = TGT4, *, https: bool = False, pause: float = 0.0
) -> str:
    """One request from the pod to ``address`` for ``host``; the peer address the target saw. With
    ``pause``, the request's first two bytes go alone and the rest that much later."""
    port = seen.ports["https" if https else "http"]
    sock = lab.socket(lab.pod, socket.AF_INET, socket.SOCK_STREAM)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=seen.client_tls if https else None, server_hostname=host if https else None
    )
    try:
        request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        if pause:
            writer.write(request[:2])
            await writer.drain()
            await asyncio.sleep(pause)
            request = request[2:]
        writer.write(request)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    return body.decode()


async def outcome(lab: Lab, seen: SeenBy, host: str, address: str = TGT4) -> str:
    try:
        return await asyncio.wait_for(fetch(lab, seen, host, address), 10)
    except (ConnectionResetError, ConnectionRefusedError, asyncio.IncompleteReadError) as exc:
        return type(exc).__name__
    except AssertionError:
        return "bad answer"


async def banner(lab: Lab, seen: SeenBy) -> str:
    reader, writer = await demo.connect(lab, lab.pod, TGT4, seen.ports["banner"])
    try:
        return (await asyncio.wait_for(reader.readline(), 10)).decode().split()[1]
    finally:
        writer.close()


async def udp_echo(lab: Lab, seen: SeenBy, port: int, payload: bytes) -> bytes:
    sock = lab.socket(lab.pod, socket.AF_INET, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (TGT4, port))
        await loop.sock_sendall(sock, payload)
        return await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
    finally:
        sock.close()


async def start(lab: Lab, *args: str) -> Proc:
    lab.tungo(lab.srv, "server", "-D", *demo.server_command())
    await demo.wait_listening(lab, lab.pod, SRV_POD4, demo.RELAY_PORT)
    pod = lab.tungo(lab.pod, "pod", "-D", *args, *HEALTH)
    await demo.wait_ready(lab, pod)
    return pod


def stopped_stats(pod: Proc) -> dict[str, object]:
    assert pod.stop(signal.SIGTERM) == 0, pod.output()[-3000:]
    stats = demo.engine_stats(pod.output())
    assert stats is not None
    return stats


@pytest.fixture
async def seen(lab: Lab, tmp_path: Path) -> AsyncIterator[SeenBy]:
    async with SeenBy(lab, tmp_path) as servers:
        yield servers


async def test_seed_command_line_splits_by_sniffed_name(lab: Lab, seen: SeenBy) -> None:
    # The seed's command (plus the lab's routes, and a service bypass to show the refusing scope).
    pod = await start(
        lab, "-L", f"{TUN}&sniffing=true&bypass={REFUSED}", "-F", f"{RELAY}?interface=eth0&bypass={DIRECT}"
    )
    # HTTP Host and TLS SNI: the bypassed name leaves from the pod's own address, the rest via the relay.
    assert await fetch(lab, seen, DIRECT) == POD4
    assert await fetch(lab, seen, DIRECT, https=True) == POD4
    assert await fetch(lab, seen, TUNNEL) == SRV_TGT4
    assert await fetch(lab, seen, TUNNEL, https=True) == SRV_TGT4
    # The chain is asked for the name: the relay server resolves it, whatever address the app chose.
    assert await fetch(lab, seen, TUNNEL, UNUSED4) == SRV_TGT4
    # A name nobody can resolve, without sniffing.fallback: the app's connection is reset.
    assert await outcome(lab, seen, NOWHERE) == "ConnectionResetError"
    # The service's own bypass refuses: reset, and the target never hears of it.
    assert await outcome(lab, seen, REFUSED) in ("ConnectionResetError", "IncompleteReadError")
    # A server that speaks first sends no name: after sniffing.timeout it is routed by address (chain).
    assert await banner(lab, seen) == SRV_TGT4
    # An app that stalls mid-head is not held past sniffing.timeout (300 ms): routed by address, and
    # its bytes, the two read while sniffing and the rest, reach the target unchanged (it answers 200).
    assert await fetch(lab, seen, DIRECT, pause=1.0) == SRV_TGT4

    stats = stopped_stats(pod)
    assert stats["route_refused"] == 1 and stats["route_direct"] == 2, stats
    assert stats["tcp_sniffed"] == 7, stats  # every request above named its host; the banner did not
    log = pod.output()
    assert f"hop 'hop-0' bypass 'bypass-0': matched '{DIRECT}'" in log
    assert f"service bypass 'bypass-1': matched '{REFUSED}'" in log
    assert "sniffing tcp (HTTP Host, TLS SNI; waits 300 ms)" in log


async def test_yaml_whitelist_from_a_file_with_fallback(lab: Lab, seen: SeenBy, tmp_path: Path) -> None:
    listed = tmp_path / "tunnelled.txt"
    listed.write_text(
        f"# names that must keep the tunnel\n{TUNNEL}  # the app\n.nowhere.split.test\nbad name\n"
    )
    config = {
        "services": [
            {
                "name": "tun",
                "addr": ":0",
                "handler": {
                    "type": "tungo",
                    "chain": "chain-0",
                    "metadata": {"sniffing": True, "sniffing.timeout": "1s", "sniffing.fallback": True},
                },
                "listener": {
                    "type": "tungo",
                    "metadata": {"name": "tungo", "net": demo.TUN_NET, "route": "0.0.0.0/0,::/0"},
                },
                "metadata": {"interface": "eth0"},
            }
        ],
        "chains": [
            {
                "name": "chain-0",
                "hops": [
                    {
                        "name": "hop-0",
                        "bypass": "bypass-0",
                        "nodes": [
                            {
                                "name": "node-0",
                                "addr": f"{SRV_POD4}:{demo.RELAY_PORT}",
                                "connector": {
                                    "type": "relay",
                                    "auth": {"username": demo.USER, "password": demo.PASSWORD},
                                },
                                "dialer": {"type": "wss"},
                                "metadata": {"interface": "eth0"},
                            }
                        ],
                    }
                ],
            }
        ],
        "bypasses": [{"name": "bypass-0", "whitelist": True, "file": {"path": str(listed)}}],
    }
    path = tmp_path / "tungo.yaml"
    path.write_text(yaml.safe_dump(config))
    pod = await start(lab, "-C", str(path))
    # Whitelist: only the listed names keep the chain; everything else, named or not, goes direct.
    assert await fetch(lab, seen, TUNNEL, https=True) == SRV_TGT4
    assert await fetch(lab, seen, DIRECT) == POD4
    assert await banner(lab, seen) == POD4
    # Listed but unresolvable at the far end: sniffing.fallback dials the address on the same route.
    assert await fetch(lab, seen, NOWHERE) == SRV_TGT4

    stats = stopped_stats(pod)
    assert stats["route_fallbacks"] == 1 and stats["route_chain"] == 2, stats
    log = pod.output()
    assert f'"{listed}:4: bad pattern "bad name"' in log or f"{listed}:4" in log, log[-3000:]
    assert "no whitelist entry matched" in log


async def test_dns_answers_name_later_udp_flows(lab: Lab, seen: SeenBy) -> None:
    pod = await start(lab, "-L", f"{TUN}&sniffing.udp=true", "-F", f"{RELAY}?interface=eth0&bypass=.{DIRECT}")
    # Before any DNS answer the address has no name: the UDP flow takes the chain.
    assert await udp_echo(lab, seen, seen.ports["udp"], b"one") == b"one"
    # The pod asks the target's DNS server (through the tunnel); the answer (a CNAME, then an A record
    # for edge.direct.split.test) teaches tungo which name the target's address belongs to.
    answer = await udp_echo(lab, seen, 53, dns_query(DIRECT))
    assert socket.inet_aton(TGT4) in answer and seen.dns_queries == 1
    # A new UDP flow to that address now matches ".direct.split.test" and leaves directly.
    assert await udp_echo(lab, seen, seen.ports["udp"], b"two") == b"two"
    assert seen.udp_peers == [SRV_TGT4, POD4], seen.udp_peers
    # TCP too, without any HTTP/TLS sniffing: the address alone carries the name now.
    assert await banner(lab, seen) == POD4

    stats = stopped_stats(pod)
    assert stats["dns_answers_learnt"] == 1 and stats["flows_named_by_dns"] == 2, stats
