"""Namespace helpers for the TUN integration tests (real kernel): unique names, always removed.

* ``in_netns(ns, fn)`` runs ``fn`` on a thread switched into namespace ``ns``: sockets it creates stay
  in that namespace, so one test process can act as the app (pod side) and as the target at once.
* ``start_tun_pod``/``stop_tun_pod``: a "pod" namespace running the TUN engine (tests/helpers/tun_runner.py
  under ``ip netns exec``) whose traffic to the target prefixes is captured by the TUN (own table,
  ``not fwmark`` rule), and a "target" namespace one veth away that the engine's marked direct dialer
  reaches. Addresses are documentation/benchmark space, only ever inside these namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tungo_sidecar.routing.netns import run_in_netns

T = TypeVar("T")
_counter = itertools.count()
RUNNER = Path(__file__).with_name("tun_runner.py")  # tests/helpers/tun_runner.py


def unique(prefix: str) -> str:
    """A short unique name (interface names are limited to 15 characters)."""
    return f"{prefix}{os.getpid() % 10000}{next(_counter)}"


def sh(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread inside network namespace ``ns`` and return its result."""
    return run_in_netns(ns, fn, wait=30)


class NetnsSet:
    """Creates namespaces and deletes every one of them on ``close`` (even after failures)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, prefix: str) -> str:
        name = unique(prefix)
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def close(self) -> None:
        for name in reversed(self.names):
            sh("ip", "netns", "del", name, check=False)
        self.names.clear()


@dataclass
class TunPod:
    pod: str
    target: str
    tun: str
    target4: str
    target6: str
    stats_path: Path
    proc: subprocess.Popen[str]
    ready: dict[str, Any]

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text())  # type: ignore[no-any-return]

    def fresh_stats(self, timeout: float = 2.0) -> dict[str, Any]:
        """Stats written after this call (the runner rewrites them every 0.2 s)."""
        before = self.stats_path.stat().st_mtime_ns
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if self.stats_path.stat().st_mtime_ns != before:
                return self.stats()
        raise AssertionError("the TUN runner stopped writing stats")

    def alive(self) -> bool:
        return self.proc.poll() is None


TUN_NET4 = "192.168.123.1/24"
TUN_NET6 = "fd00:123::1/64"
TARGET_NET4 = ("198.19.77.1/24", "198.19.77.2")
TARGET_NET6 = ("fd77::1/64", "fd77::2")
TUN_TABLE = "123"
MARK = "1"


def start_tun_pod(tmp: Path, *, extra_args: tuple[str, ...] = ()) -> tuple[TunPod, NetnsSet]:
    """Build the pod/target topology and start the engine; the caller must stop it (``stop_tun_pod``)."""
    namespaces = NetnsSet()
    proc: subprocess.Popen[str] | None = None
    try:
        pod, target = namespaces.add("tgpod"), namespaces.add("tgtgt")
        veth_pod, veth_tgt = unique("tgvp"), unique("tgvt")
        tun = unique("tgtun")
        peer = ("peer", "name", veth_tgt, "netns", target)
        sh("ip", "-n", pod, "link", "add", veth_pod, "type", "veth", *peer)
        sh("ip", "-n", pod, "addr", "add", TARGET_NET4[0], "dev", veth_pod)
        sh("ip", "-n", pod, "-6", "addr", "add", TARGET_NET6[0], "dev", veth_pod, "nodad")
        sh("ip", "-n", target, "addr", "add", TARGET_NET4[1] + "/24", "dev", veth_tgt)
        sh("ip", "-n", target, "-6", "addr", "add", TARGET_NET6[1] + "/64", "dev", veth_tgt, "nodad")
        sh("ip", "-n", pod, "link", "set", veth_pod, "up")
        sh("ip", "-n", target, "link", "set", veth_tgt, "up")
        stats_path = tmp / f"{tun}.json"
        proc = subprocess.Popen(
            [
                "ip", "netns", "exec", pod, sys.executable, str(RUNNER), "--name", tun,
                "--net", f"{TUN_NET4},{TUN_NET6}", "--mark", MARK, "--stats", str(stats_path), *extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            proc.kill()
            raise AssertionError(f"TUN runner failed: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        # Capture the target prefixes into the TUN, except the engine's own (marked) sockets.
        for family, prefix in (("-4", "198.19.77.0/24"), ("-6", "fd77::/64")):
            sh("ip", "-n", pod, family, "route", "add", prefix, "dev", tun, "table", TUN_TABLE)
            rule = ("not", "fwmark", MARK, "lookup", TUN_TABLE, "pref", "100")
            sh("ip", "-n", pod, family, "rule", "add", *rule)
        deadline = time.monotonic() + 5
        while not stats_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return (
            TunPod(pod, target, tun, TARGET_NET4[1], TARGET_NET6[1], stats_path, proc, json.loads(line[5:])),
            namespaces,
        )
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        namespaces.close()
        raise


def stop_tun_pod(tun_pod: TunPod, namespaces: NetnsSet) -> str:
    """Stop the engine (SIGTERM, then SIGKILL), delete the namespaces; returns the runner's stderr."""
    proc = tun_pod.proc
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.stderr.read() if proc.stderr else ""
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        namespaces.close()


# --- async socket helpers (run in the test's event loop) ---------------------------------------------
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@contextlib.asynccontextmanager
async def serve(tun_pod: TunPod, handler: Handler, host: str = "") -> AsyncIterator[int]:
    """A TCP server inside the target namespace; yields its port."""
    family = _family(host) if host else socket.AF_INET6

    def make() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        sock.listen(512)
        sock.setblocking(False)
        return sock

    sock = in_netns(tun_pod.target, make)
    server = await asyncio.start_server(handler, sock=sock, limit=256 * 1024)
    try:
        yield sock.getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)


async def connect(tun_pod: TunPod, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect from the pod namespace (the app's view: its traffic to ``host`` goes into the TUN)."""

    def make() -> socket.socket:
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    sock = in_netns(tun_pod.pod, make)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=256 * 1024)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(1 << 16):
        writer.write(chunk)
        await writer.drain()
    writer.close()
