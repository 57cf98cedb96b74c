"""The README's demo (``sudo ./scripts/demo``): tungo capturing a "pod" with a TUN, through relay+wss.

Builds three network namespaces joined by veth pairs, all addresses private to them::

    pod  eth0 198.18.10.2 ──── 198.18.10.1 srv  (relay+wss server) 198.19.20.1 ──── 198.19.20.2 eth0  tgt
         tungo (TUN "tungo",                     tungo -L relay+wss://...:8443        HTTP, UDP echo
         route 0.0.0.0/0, ::/0)                  (forwards, so a leak would arrive)

runs the real ``tungo`` command in the pod (``-L tungo://...`` ``-F relay+wss://...?interface=eth0``)
and in the server, waits for the pod's ``/readyz``, then — as an app inside the pod would — fetches a
page and a random blob over HTTP from the target (SHA-256 checked), uploads one, and sends UDP
"queries" (IPv4 and IPv6) to an echo server. Every byte goes TUN → relay+wss → server → target. It
prints a summary (bytes, Mbit/s, flows, the engine's counters), removes everything it made — also on
Ctrl-C, SIGTERM or a failure — and exits 0 when every check passed, 1 otherwise.

``Lab`` (the namespaces, processes started in them, sockets opened inside them) is also what
tests/integration/test_tun_service.py, test_demo.py and benchmarks/tun.py build on. ``--loopback``
keeps the earlier demo: socks5 → relay+wss → targets, all in this process on 127.0.0.1.

Needs root (namespaces, /dev/net/tun). Never touches the host's own namespace beyond creating and
deleting the namespaces it names (``tgd<pid>...``), and never sends traffic outside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tungo_sidecar.app import runner
from tungo_sidecar.config.model import Plugin
from tungo_sidecar.config.url import build_config
from tungo_sidecar.net import transports
from tungo_sidecar.net.connectors import HopContext, make_connector
from tungo_sidecar.net.service import ProxyService
from tungo_sidecar.net.stream import SocketStream
from tungo_sidecar.proto.address import Address
from tungo_sidecar.routing.netns import run_in_netns
from tungo_sidecar.routing.plan import TABLE

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
USER, PASSWORD = "demo", "secret"

# The lab's addresses: benchmarking space (RFC 2544, 198.18.0.0/15) and ULA prefixes, only ever
# configured inside the lab's own namespaces.
POD4, SRV_POD4 = "198.18.10.2", "198.18.10.1"
POD6, SRV_POD6 = "fd18:10::2", "fd18:10::1"
SRV_TGT4, TGT4 = "198.19.20.1", "198.19.20.2"
SRV_TGT6, TGT6 = "fd19:20::1", "fd19:20::2"
TUN_NET = "192.168.123.1/24,fd00:123::1/64"
RELAY_PORT = 8443
HEALTH_PORT = 9190
#: The split tunnel's two names: the first is the pod's bypass (direct out of eth0), the second is not.
#: Apps send them as HTTP Host headers; the target answers both (they resolve nowhere: no DNS needed).
DIRECT_NAME, TUNNEL_NAME = "direct.demo.test", "tunnel.demo.test"
#: Bounded waits: a step that has not happened by then has failed.
READY_TIMEOUT = 30.0
STEP_TIMEOUT = 60.0

#: ``ip netns exec NS`` mounts the files of ``/etc/netns/NS/`` over ``/etc`` (iproute2): a per-namespace
#: ``hosts`` file names the lab's hosts for the processes started in it, and nowhere else.
NETNS_ETC = Path("/etc/netns")

_NAME = re.compile(r"^tgd(\d+)x\d+(pod|srv|tgt)$")
_ids = itertools.count()


def tungo_command() -> list[str]:
    """The ``tungo`` console script next to this interpreter (a venv), else ``python -m`` the CLI."""
    script = Path(sys.executable).with_name("tungo")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tungo_sidecar.app.cli"]


def sh(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a short-lived thread switched into namespace ``ns``: sockets it creates live there,
    and keep working from any thread (a socket belongs to the namespace it was created in)."""
    return run_in_netns(ns, fn, wait=30)


@dataclass
class Proc:
    """A process the lab started inside a namespace; its output goes to ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal it (SIGTERM: a clean stop), wait, SIGKILL if it lingers; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        return int(self.popen.returncode)


@dataclass
class Lab:
    """The pod / server / target namespaces and what runs in them. Use as a context manager (or call
    ``close``): processes are stopped and namespaces deleted whatever happened."""

    workdir: Path
    prefix: str = field(default_factory=lambda: f"tgd{os.getpid()}x{next(_ids)}")
    procs: list[Proc] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def pod(self) -> str:
        return f"{self.prefix}pod"

    @property
    def srv(self) -> str:
        return f"{self.prefix}srv"

    @property
    def tgt(self) -> str:
        return f"{self.prefix}tgt"

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self) -> None:
        remove_stale_labs()
        for ns in (self.pod, self.srv, self.tgt):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Names are per namespace: the pod's uplink is "eth0", as in a real pod (and GOST's interface=eth0).
        for ns, peer in ((self.pod, "topod"), (self.tgt, "totgt")):
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", self.srv)
        for ns, dev in ((self.pod, "eth0"), (self.tgt, "eth0"), (self.srv, "topod"), (self.srv, "totgt")):
            # No router advertisements or DAD delays: the links must be usable at once and quiet.
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_ra=0")
        addrs = (
            (self.pod, "eth0", f"{POD4}/24", f"{POD6}/64"),
            (self.srv, "topod", f"{SRV_POD4}/24", f"{SRV_POD6}/64"),
            (self.srv, "totgt", f"{SRV_TGT4}/24", f"{SRV_TGT6}/64"),
            (self.tgt, "eth0", f"{TGT4}/24", f"{TGT6}/64"),
        )
        for ns, dev, v4, v6 in addrs:
            sh("ip", "-n", ns, "addr", "add", v4, "dev", dev)
            sh("ip", "-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", self.pod, "route", "add", "default", "via", SRV_POD4)
        sh("ip", "-n", self.pod, "-6", "route", "add", "default", "via", SRV_POD6)
        sh("ip", "-n", self.tgt, "route", "add", "default", "via", SRV_TGT4)
        sh("ip", "-n", self.tgt, "-6", "route", "add", "default", "via", SRV_TGT6)
        # The server routes between its two links: a packet leaking from the pod in clear would reach
        # the target, so "nothing arrived" in the tests means "nothing was sent", not "nothing routes".
        sh("ip", "netns", "exec", self.srv, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", self.srv, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        # The relay server resolves the names the pod's apps ask for (sniffed: the chain is asked for
        # the name, not the address); the target answers for both of the split tunnel's names.
        self.hosts(self.srv, {DIRECT_NAME: TGT4, TUNNEL_NAME: TGT4})

    def hosts(self, ns: str, names: dict[str, str]) -> None:
        """Make ``names`` (name -> address) resolvable by processes this lab starts in ``ns``."""
        folder = NETNS_ETC / ns
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost", *(f"{ip} {name}" for name, ip in names.items())]
        (folder / "hosts").write_text("\n".join(lines) + "\n")

    def spawn(self, ns: str, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        """Start ``argv`` inside ``ns`` (``ip netns exec`` execs it: the pid is the process itself)."""
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def tungo(self, ns: str, name: str, *args: str) -> Proc:
        return self.spawn(ns, name, [*tungo_command(), *args])

    def socket(self, ns: str, family: int, kind: int) -> socket.socket:
        """A non-blocking socket created inside ``ns``."""

        def make() -> socket.socket:
            sock = socket.socket(family, kind)
            sock.setblocking(False)
            return sock

        return in_netns(ns, make)

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                proc.stop(signal.SIGTERM, timeout=5)
        for ns in reversed(self.created):
            delete_namespace(ns)
        self.created.clear()


def remove_stale_labs() -> None:
    """Delete lab namespaces left by a demo or test that was killed (its pid is gone)."""
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split(" ", 1)[0]
        match = _NAME.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            delete_namespace(name)


def delete_namespace(ns: str) -> None:
    """Kill what still runs inside ``ns`` (only processes a lab started live there), then delete it:
    ``ip netns del`` alone would leave such processes running in an unnamed namespace."""
    for pid in sh("ip", "netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)
    sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


# --- app-side helpers (the demo, the tests and the benchmark act as apps inside the namespaces) -------
def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


Pipe = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(lab: Lab, ns: str, host: str, port: int) -> Pipe:
    sock = lab.socket(ns, family_of(host), socket.SOCK_STREAM)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


async def http_get(
    lab: Lab, ns: str, host: str, port: int, path: str, *, name: str | None = None
) -> tuple[int, bytes]:
    """A one-shot HTTP/1.1 GET from inside ``ns`` to ``host`` (``Host: name``, default ``host``)."""
    reader, writer = await connect(lab, ns, host, port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {name or host}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
    return status, body


async def wait_ready(lab: Lab, proc: Proc, port: int = HEALTH_PORT, within: float = READY_TIMEOUT) -> str:
    """Poll the pod's ``/readyz`` until 200; RuntimeError with its last answer (or the log) otherwise."""
    deadline = time.monotonic() + within
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}): {proc.output()[-2000:]}")
        try:
            status, body = await asyncio.wait_for(http_get(lab, lab.pod, LOOPBACK, port, "/readyz"), 2)
            last = f"{status} {body.decode(errors='replace').strip()}"
            if status == 200:
                return last
        except (OSError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name}: /readyz not 200 after {within:g}s (last: {last})")


async def wait_listening(lab: Lab, ns: str, host: str, port: int, within: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.wait_for(connect(lab, ns, host, port), 2)
            writer.close()
            return
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nothing listens on {host}:{port} (from {ns}) after {within:g}s"
                ) from None
            await asyncio.sleep(0.1)


def engine_stats(output: str) -> dict[str, Any] | None:
    """The engine counters a stopped ``tungo`` logged (``app.tun_service``: "engine stats {json}")."""
    found = None
    for line in output.splitlines():
        _, sep, rest = line.partition("engine stats ")
        if sep:
            with contextlib.suppress(ValueError):
                found = json.loads(rest)
    return found


class Targets:
    """The target namespace's servers, run by this process: HTTP (``/blob`` N random bytes, ``/`` a page,
    ``POST /sha256`` hashes the body), a TCP echo, a UDP echo — each on IPv4 and IPv6."""

    def __init__(self, lab: Lab, blob: bytes) -> None:
        self.lab = lab
        self.blob = blob
        self.http_port = 0
        self.echo_port = 0
        self.udp_port = 0
        self._servers: list[asyncio.Server] = []
        self._udp: list[asyncio.BaseTransport] = []
        self.connections = 0
        self.peers: set[str] = set()  # client addresses seen (IPv4-mapped IPv6 shown as IPv4)

    async def __aenter__(self) -> Targets:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _listener(self, kind: int) -> socket.socket:
        # One dual-stack socket per service: the same port answers on TGT4 and TGT6.
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET6, kind)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::", 0))
            if kind == socket.SOCK_STREAM:
                sock.listen(1024)
            sock.setblocking(False)
            return sock

        return in_netns(self.lab.tgt, make)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        http = self._listener(socket.SOCK_STREAM)
        self._servers.append(await asyncio.start_server(self._http, sock=http, limit=1 << 20))
        self.http_port = http.getsockname()[1]
        echo = self._listener(socket.SOCK_STREAM)
        self._servers.append(await asyncio.start_server(self._echo, sock=echo, limit=1 << 20))
        self.echo_port = echo.getsockname()[1]
        udp = self._listener(socket.SOCK_DGRAM)
        transport, _ = await loop.create_datagram_endpoint(_UdpEcho, sock=udp)
        self._udp.append(transport)
        self.udp_port = udp.getsockname()[1]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for transport in self._udp:
            transport.close()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()
        self._udp.clear()

    def _seen(self, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = str(writer.get_extra_info("peername")[0])
        self.peers.add(peer.removeprefix("::ffff:"))

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._seen(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            method, path = [*line.split(" "), "", ""][:2]
            if method == "POST" and path == "/sha256":
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                digest = hashlib.sha256()
                remaining = length
                while remaining:
                    chunk = await reader.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise EOFError("upload cut short")
                    digest.update(chunk)
                    remaining -= len(chunk)
                body = f"{length} {digest.hexdigest()}\n".encode()
            elif path == "/blob":
                body = self.blob
            elif path == "/peer":  # which address the request came from: the split tunnel's witness
                body = f"{writer.get_extra_info('peername')[0]}".removeprefix("::ffff:").encode()
            else:
                body = b"<h1>hello from the target namespace, through tungo</h1>\n"
            writer.write(_ok_head(len(body)))
            view = memoryview(body)
            for start in range(0, len(body), 1 << 20):
                writer.write(view[start : start + (1 << 20)])
                await writer.drain()
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._seen(writer)
        try:
            while chunk := await reader.read(1 << 18):
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


def _ok_head(length: int) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # A DNS-like answer: the query's first two bytes (its id), then its SHA-256, then the query.
        self.transport.sendto(data[:2] + hashlib.sha256(data).digest() + data, addr)  # type: ignore[attr-defined]


async def udp_round_trips(lab: Lab, ns: str, host: str, port: int, *, count: int, wait: float = 2.0) -> int:
    """Send ``count`` DNS-sized queries from ``ns``; how many came back with the right answer."""
    sock = lab.socket(ns, family_of(host), socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    ok = 0
    try:
        await loop.sock_connect(sock, (host, port))
        for i in range(count):
            query = i.to_bytes(2, "big") + os.urandom(30)
            await loop.sock_sendall(sock, query)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while True:
                        answer = await loop.sock_recv(sock, 2048)
                        if answer == query[:2] + hashlib.sha256(query).digest() + query:
                            ok += 1
                            break
    finally:
        sock.close()
    return ok


async def download(lab: Lab, ns: str, host: str, port: int) -> tuple[bytes, float]:
    """GET /blob from inside ``ns``; the body and the seconds the transfer took."""
    started = time.perf_counter()
    status, body = await http_get(lab, ns, host, port, "/blob")
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"GET /blob: status {status}")
    return body, elapsed


async def upload(lab: Lab, ns: str, host: str, port: int, data: bytes) -> tuple[str, float]:
    """POST ``data`` to /sha256 from inside ``ns``; the hash the target computed and the seconds."""
    reader, writer = await connect(lab, ns, host, port)
    started = time.perf_counter()
    try:
        writer.write(f"POST /sha256 HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        view = memoryview(data)
        for start in range(0, len(data), 1 << 20):
            writer.write(view[start : start + (1 << 20)])
            await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    elapsed = time.perf_counter() - started
    _, _, body = answer.partition(b"\r\n\r\n")
    length, _, digest = body.decode(errors="replace").strip().partition(" ")
    if length != str(len(data)):
        raise RuntimeError(f"upload: the target saw {length or '?'} bytes of {len(data)}")
    return digest, elapsed


def pod_command(
    *,
    relay: str = f"{SRV_POD4}:{RELAY_PORT}",
    routes: str = "0.0.0.0/0,::/0",
    extra_query: str = "",
    health: int = HEALTH_PORT,
    split: bool = False,
) -> list[str]:
    """The GOST-style command line the pod's tungo runs; ``split`` adds the seed's split tunnel
    (``sniffing=true`` on the TUN, ``bypass=DIRECT_NAME`` on the relay hop)."""
    sniffing, bypass = ("&sniffing=true", f"&bypass={DIRECT_NAME}") if split else ("", "")
    return [
        "-L",
        f"tungo://:0?name=tungo&net={TUN_NET}&mtu=1420&route={routes}{sniffing}{extra_query}",
        "-F",
        f"relay+wss://{USER}:{PASSWORD}@{relay}?interface=eth0{bypass}",
        "--health",
        f"{LOOPBACK}:{health}",
    ]


def server_command() -> list[str]:
    return ["-L", f"relay+wss://{USER}:{PASSWORD}@:{RELAY_PORT}"]


def _mbit(size: int, seconds: float) -> float:
    return size * 8 / seconds / 1e6 if seconds > 0 else 0.0


async def tun_demo(lab: Lab, size: int, upload_size: int, keep: float = 0.0) -> bool:
    """Everything after the namespaces exist; True when every check passed."""
    blob = os.urandom(size)
    ok = True
    async with Targets(lab, blob) as targets:
        server = lab.tungo(lab.srv, "server", *server_command())
        await wait_listening(lab, lab.pod, SRV_POD4, RELAY_PORT)
        pod_args = pod_command(split=True)
        pod = lab.tungo(lab.pod, "pod", *pod_args)
        print(f"namespaces   : pod {lab.pod}, relay server {lab.srv}, target {lab.tgt}")
        print(f"server       : tungo {' '.join(server_command()).replace(PASSWORD, '***')}")
        print(f"pod          : tungo {' '.join(pod_args).replace(PASSWORD, '***')}")
        ready = await wait_ready(lab, pod)
        print(f"readyz       : {' | '.join(ready.splitlines())}")

        status, page = await http_get(lab, lab.pod, TGT4, targets.http_port, "/")
        print(f"HTTP GET /   : {status} {page.decode(errors='replace').strip()}")
        ok &= status == 200

        body, down_s = await download(lab, lab.pod, TGT4, targets.http_port)
        got = hashlib.sha256(body).hexdigest()
        down_ok = got == hashlib.sha256(blob).hexdigest() and len(body) == size
        ok &= down_ok
        print(
            f"download     : {len(body):,} bytes in {down_s:.2f} s = {_mbit(len(body), down_s):,.0f} Mbit/s, "
            f"sha256 {got[:16]}... {'OK' if down_ok else 'MISMATCH'}"
        )
        data = os.urandom(upload_size)
        digest, up_s = await upload(lab, lab.pod, TGT6, targets.http_port, data)
        up_ok = digest == hashlib.sha256(data).hexdigest()
        ok &= up_ok
        print(
            f"upload (v6)  : {len(data):,} bytes in {up_s:.2f} s = {_mbit(len(data), up_s):,.0f} Mbit/s, "
            f"sha256 at the target {digest[:16]}... {'OK' if up_ok else 'MISMATCH'}"
        )
        udp4 = await udp_round_trips(lab, lab.pod, TGT4, targets.udp_port, count=20)
        udp6 = await udp_round_trips(lab, lab.pod, TGT6, targets.udp_port, count=20)
        ok &= udp4 == 20 and udp6 == 20
        print(f"UDP queries  : {udp4}/20 answered over IPv4, {udp6}/20 over IPv6 (relay UDP over wss)")
        from_relay = targets.peers <= {SRV_TGT4, SRV_TGT6}
        ok &= from_relay
        print(
            f"target saw   : {targets.connections} TCP connection(s) from {', '.join(sorted(targets.peers))}"
            f" ({'the relay server only' if from_relay else 'NOT only the relay server'})"
        )
        ok &= await _split_tunnel(lab, targets.http_port)
        if keep > 0:
            # The lab stays up so a person can look around; Ctrl-C ends it early, cleanly.
            print(f"keeping      : the lab for {keep:g} s (Ctrl-C to end now); try, in another shell:")
            print(f"  ip netns exec {lab.pod} ip rule; ip netns exec {lab.pod} ip route show table {TABLE}")
            print(f"  ip netns exec {lab.pod} curl -s http://{TGT4}:{targets.http_port}/")
            await asyncio.sleep(keep)

        pod_status = pod.stop(signal.SIGTERM)
        server.stop(signal.SIGTERM)
        stats = engine_stats(pod.output())
        if stats is None:
            ok = False
            print("engine       : no stats logged (tungo did not stop cleanly)")
        else:
            print(
                f"engine       : {stats['tcp_flows']} TCP flows, {stats['udp_sessions']} UDP sessions, "
                f"{stats['packets_in']:,} packets in / {stats['packets_out']:,} out, "
                f"{stats['tcp_dial_failures']} dial failures, {sum(stats['drops'].values())} dropped; "
                f"routes: {stats['route_direct']} direct, {stats['route_chain']} chain, "
                f"{stats['route_refused']} refused"
            )
        ok &= pod_status == 0
        leftovers = sh("ip", "-n", lab.pod, "rule", "show")
        clean = f"lookup {TABLE}" not in leftovers and "tungo" not in sh("ip", "-n", lab.pod, "link", "show")
        print(f"pod exit     : {pod_status}; routes, rules and TUN removed: {'yes' if clean else 'NO'}")
        ok &= clean
    return ok


async def _split_tunnel(lab: Lab, port: int) -> bool:
    """One request per name: the bypassed one must arrive from the pod itself, the other via the relay."""
    ok = True
    for name, expected, how in (
        (DIRECT_NAME, POD4, "the pod's own eth0: bypassed, direct"),
        (TUNNEL_NAME, SRV_TGT4, "the relay server: tunnelled"),
    ):
        status, body = await http_get(lab, lab.pod, TGT4, port, "/peer", name=name)
        seen = body.decode(errors="replace").strip()
        good = status == 200 and seen == expected
        ok &= good
        print(f"split tunnel : Host {name} -> target saw {seen} ({how}){'' if good else ' UNEXPECTED'}")
    return ok


# --- the earlier loopback demo (--loopback) ------------------------------------------------------------
@contextlib.asynccontextmanager
async def _tungo(services: Sequence[str], nodes: Sequence[str] = ()) -> AsyncIterator[int]:
    """``tungo -L ... [-F ...]`` running in this process; yields the first service's bound port."""
    async with runner.running(build_config(list(services), list(nodes))) as up:
        yield next(s.port for s in up if isinstance(s, ProxyService))


async def loopback_demo(size: int, transport: str = "wss") -> bool:
    """socks5 → relay+<transport> → an HTTP and a UDP target, all on 127.0.0.1 in this process."""
    if transport not in transports.CLIENT_TRANSPORTS:
        raise RuntimeError(f"transport {transport!r} is not available in this build")
    blob = os.urandom(size)
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(_serve_blob(blob), LOOPBACK, 0)
    http_port = server.sockets[0].getsockname()[1]
    udp, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=(LOOPBACK, 0))
    udp_target = Address(LOOPBACK, udp.get_extra_info("sockname")[1])
    try:
        async with _tungo([f"relay+{transport}://{USER}:{PASSWORD}@{LOOPBACK}:0"]) as relay_port:
            node = f"relay+{transport}://{USER}:{PASSWORD}@{LOOPBACK}:{relay_port}"
            async with _tungo([f"socks5://{LOOPBACK}:0"], [node]) as front:
                print(f"relay server : tungo -L relay+{transport}://{USER}:***@{LOOPBACK}:{relay_port}")
                print(
                    f"socks5 front : tungo -L socks5://{LOOPBACK}:{front} -F {node.replace(PASSWORD, '***')}"
                )
                connector = make_connector(Plugin("socks5"))
                reader, writer = await asyncio.open_connection(LOOPBACK, front)
                tunnel = await connector.connect_tcp(
                    SocketStream(reader, writer), Address(LOOPBACK, http_port)
                )
                started = time.perf_counter()
                await tunnel.write(b"GET / HTTP/1.1\r\nHost: target\r\n\r\n")
                data = bytearray()
                while chunk := await tunnel.read():
                    data += chunk
                seconds = time.perf_counter() - started
                await tunnel.close()
                reader, writer = await asyncio.open_connection(LOOPBACK, front)
                session = await connector.connect_udp(
                    SocketStream(reader, writer), udp_target, HopContext(Address(LOOPBACK, front))
                )
                udp_ok = 0
                try:
                    for i in range(20):
                        query = i.to_bytes(2, "big") + os.urandom(30)
                        await session.send(query)
                        async with asyncio.timeout(5):
                            if await session.recv() == query[:2] + hashlib.sha256(query).digest() + query:
                                udp_ok += 1
                finally:
                    await session.close()
    finally:
        udp.close()
        server.close()
    body = bytes(data).partition(b"\r\n\r\n")[2]
    good = hashlib.sha256(body).digest() == hashlib.sha256(blob).digest()
    print(f"HTTP GET     : {len(body):,} bytes in {seconds:.3f} s = {_mbit(len(body), seconds):,.0f} Mbit/s")
    print(f"sha256       : {'OK' if good else 'MISMATCH'}")
    print(f"UDP          : {udp_ok}/20 datagrams echoed through socks5 UDP ASSOCIATE -> relay+{transport}")
    return good and udp_ok == 20


def _serve_blob(blob: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(_ok_head(len(blob)))
            writer.write(blob)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return serve


# --- entry point ---------------------------------------------------------------------------------------
def _size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 65536, 64M or 1G")
    return int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2).upper()]


def _preflight() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices): run it as `sudo ./scripts/demo`"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (modprobe tun, or give the container the device)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    return None


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tungo_sidecar.app.demo",
        description="tungo in a network-namespace 'pod': TUN -> relay+wss -> a relay server -> a target.",
    )
    parser.add_argument("--size", type=_size, default=64 << 20, help="bytes to download (default 64M)")
    parser.add_argument("--upload", type=_size, default=16 << 20, help="bytes to upload (default 16M)")
    parser.add_argument(
        "--keep",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep the lab up this long after the checks",
    )
    parser.add_argument("--loopback", action="store_true", help="the earlier socks5 demo on 127.0.0.1")
    parser.add_argument(
        "--transport", default="wss", choices=("tcp", "tls", "ws", "wss"), help="--loopback's relay transport"
    )
    args = parser.parse_args(argv)
    # Line by line even into a pipe: the summary is what a person (or a test) watches as it happens.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.loopback:
        try:
            ok = asyncio.run(loopback_demo(args.size, args.transport))
        except Exception as exc:
            print(f"demo FAILED: {exc}", file=sys.stderr)
            return 1
        print("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1
    problem = _preflight()
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 1
    # SIGTERM (and a second Ctrl-C) unwind like the first Ctrl-C: the lab's cleanup always runs.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    ok = False
    with tempfile.TemporaryDirectory(prefix="tungo-demo-") as tmp:
        lab = Lab(Path(tmp))
        try:
            with lab:
                work = tun_demo(lab, args.size, args.upload, args.keep)
                ok = asyncio.run(asyncio.wait_for(work, STEP_TIMEOUT * 3 + args.keep))
        except KeyboardInterrupt:
            print("demo: interrupted; cleaned up", file=sys.stderr)
            return 130
        except Exception as exc:
            print(f"demo FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            for proc in lab.procs:
                tail = proc.output().strip().splitlines()[-5:]
                if tail:
                    print(f"--- {proc.name} (last lines)\n" + "\n".join(tail), file=sys.stderr)
            return 1
    print(f"cleanup      : namespaces {lab.prefix}pod/srv/tgt deleted")
    print("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
