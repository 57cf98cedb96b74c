"""Network namespaces for the routing tests: unique names, always deleted, and kernel state snapshots.

A "pod" namespace gets an uplink (a veth pair to an "outside" namespace holding its default route), so
traffic that is *not* captured visibly leaves through ``up0`` — the path a leak would take — and a
TUN device that is either persistent (``ip tuntap``) or held open by a child process that a test can
SIGKILL, exactly like a crashed tungo. Used by tests/integration/test_routing*.py only.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_counter = itertools.count()

# Addresses of the uplink: TEST-NET-2 style private space, never routed anywhere real.
POD_UPLINK = "198.18.0.2/24"
OUT_UPLINK = "198.18.0.1/24"
POD_UPLINK6 = "fd9e::2/64"
OUT_UPLINK6 = "fd9e::1/64"


def run(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def ip(ns: str, *args: str, check: bool = True) -> str:
    return run("ip", "-n", ns, *args, check=check)


def unique_name(prefix: str) -> str:
    # Short (netns names become /run/netns files; veth names are limited to 15 chars elsewhere).
    return f"{prefix}{os.getpid() % 100000}x{next(_counter)}"


@contextmanager
def netns(prefix: str = "tgr") -> Iterator[str]:
    name = unique_name(prefix)
    run("ip", "netns", "add", name)
    try:
        ip(name, "link", "set", "lo", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


@dataclass
class Pod:
    ns: str
    outside: str


@contextmanager
def pod_with_uplink() -> Iterator[Pod]:
    """A pod namespace whose main table sends everything out through veth ``up0`` to ``outside``."""
    with netns("tgp") as pod, netns("tgo") as outside:
        ip(pod, "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", outside)
        # No IPv6 autoconfiguration chatter on the uplink: its packet counter must only count leaks.
        run("ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv6.conf.up0.accept_ra=0")
        ip(pod, "addr", "add", POD_UPLINK, "dev", "up0")
        ip(pod, "-6", "addr", "add", POD_UPLINK6, "dev", "up0", "nodad")
        ip(outside, "addr", "add", OUT_UPLINK, "dev", "out0")
        ip(outside, "-6", "addr", "add", OUT_UPLINK6, "dev", "out0", "nodad")
        ip(pod, "link", "set", "up0", "up")
        ip(outside, "link", "set", "out0", "up")
        ip(outside, "link", "set", "lo", "up")
        ip(pod, "route", "add", "default", "via", OUT_UPLINK.split("/", maxsplit=1)[0])
        ip(pod, "-6", "route", "add", "default", "via", OUT_UPLINK6.split("/", maxsplit=1)[0])
        yield Pod(pod, outside)


def add_tun(ns: str, name: str = "tungo", addrs: tuple[str, ...] = ("192.168.123.1/24",)) -> None:
    """A persistent TUN (nobody reads it): routes through it install, like a live tungo's."""
    ip(ns, "tuntap", "add", "dev", name, "mode", "tun")
    configure_tun(ns, name, addrs)


def configure_tun(ns: str, name: str, addrs: tuple[str, ...]) -> None:
    for addr in addrs:
        extra = ("nodad",) if ":" in addr else ()
        ip(ns, "addr", "add", addr, "dev", name, *extra)
    ip(ns, "link", "set", name, "up")


# The child that plays tungo: opens a non-persistent TUN (the kernel deletes it with the last fd),
# says READY and sleeps. Test-only code; the real device belongs to tun/.
_TUN_HOLDER = r"""
import fcntl, os, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
IFF_TUN, IFF_NO_PI, TUNSETIFF = 0x0001, 0x1000, 0x400454CA
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", sys.argv[1].encode(), IFF_TUN | IFF_NO_PI))
print("READY", flush=True)
deadline = time.monotonic() + 120  # bounded: a leaked holder still goes away on its own
while time.monotonic() < deadline:
    time.sleep(0.5)
"""


@contextmanager
def tun_child(
    ns: str, script: str, name: str, addrs: tuple[str, ...], *, stdin: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """A Python child inside ``ns`` running ``script`` (which opens TUN ``argv[1]`` and prints READY);
    the TUN is then configured with ``addrs``. SIGKILLed and reaped on exit, even after a failure."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script, name],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "READY", (
            f"TUN child failed: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
        configure_tun(ns, name, addrs)
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream:
                stream.close()


@contextmanager
def tun_holder(ns: str, name: str = "tungo", addrs: tuple[str, ...] = ("192.168.123.1/24",)) -> Iterator[int]:
    """A child process inside ``ns`` holding TUN ``name`` open; yields its pid (SIGKILL it to crash)."""
    with tun_child(ns, _TUN_HOLDER, name, addrs) as proc:
        yield proc.pid


def wait_gone(ns: str, dev: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ip(ns, "link", "show", dev, check=False) == "":
            return
        time.sleep(0.05)
    raise AssertionError(f"device {dev} still exists in {ns}")


def snapshot(ns: str) -> str:
    """Every rule and route of both families, in a stable order: equal snapshots, equal kernel state."""
    parts = []
    for family in ("-4", "-6"):
        parts.append(ip(ns, family, "rule", "show"))
        routes = ip(ns, family, "route", "show", "table", "all").splitlines()
        parts.append("\n".join(sorted(routes)))
    return "\n".join(parts)


def route_get(ns: str, dst: str, *extra: str) -> str:
    """What the kernel would do with a packet to ``dst`` (``ip route get``), or its error text."""
    family = "-6" if ":" in dst else "-4"
    proc = subprocess.run(
        ["ip", "-n", ns, family, "route", "get", dst, *extra],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return (proc.stdout + proc.stderr).strip()


# Records the destination address of every IPv4/IPv6 frame arriving on a device until stdin closes.
# Test-only; bounded by a deadline like the TUN holder.
_SNIFFER = r"""
import ipaddress, select, socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.bind((sys.argv[1], 0))
print("READY", flush=True)
seen, deadline = [], time.monotonic() + 60
while time.monotonic() < deadline:
    ready, _, _ = select.select([s, sys.stdin], [], [], 0.2)
    if sys.stdin in ready:
        break
    if s in ready:
        frame = s.recv(65535)
        kind = frame[12:14]
        if kind == b"\x08\x00":
            seen.append(str(ipaddress.IPv4Address(frame[30:34])))
        elif kind == b"\x86\xdd":
            seen.append(str(ipaddress.IPv6Address(frame[38:54])))
print(" ".join(seen), flush=True)
"""


@contextmanager
def sniff(ns: str, dev: str) -> Iterator[list[str]]:
    """Destinations of the IP packets arriving on ``dev`` in ``ns`` while the block runs (filled after)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _SNIFFER, dev],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line.strip() == "READY", f"sniffer failed: {line!r}"
        yield seen
        proc.stdin.close()
        seen.extend(proc.stdout.readline().split())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
