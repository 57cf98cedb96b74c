"""The inbound executor: puts ``routing.inbound``'s nftables table in place with ``nft``, removes it,
and makes a strict reverse-path filter honour its marks.

Owns every nftables write the sidecar makes and the one sysctl that goes with it. ``routing.hooks``
calls ``apply_inbound`` before the capture's routes go in and ``remove_inbound`` after they are gone. It
never decides *what* the ruleset says (``routing.inbound`` does) and never touches another table.

Why the ``nft`` binary and not pyroute2's nftables module: nft is the reference implementation of the
nf_tables netlink encoding and the only stable interface to it; one ``nft -f -`` is one kernel
transaction, so "replace the table" is atomic; and the applied ruleset can be read back in the same
language it is written in. pyroute2's nftables support is marked experimental and would have us
hand-encode ``ct``/``meta``/``cmp`` expressions. The cost is one Debian package (``nftables``) in the
image; where it is missing, ``NftMissing`` says so and ``routing.hooks`` logs what that means.

The reverse-path filter. An inbound packet from an address the capture covers is checked (with
``rp_filter`` = 1, "strict") against the route back to its source: without help that route is the
TUN, the packet came in on ``eth0``, and the kernel drops it before any socket sees it. With
``net.ipv4.conf.all.src_valid_mark`` = 1 the check uses the packet's mark, which the ruleset's
prerouting chain sets, and the route back is ``main``'s (wg-quick sets the same sysctl for the same
reason). ``fix_reverse_path`` sets it only where strict filtering is in effect — loose (2) and off (0)
need nothing — and leaves it set on teardown: it only lets marks the pod's own rules set count.
In a container ``/proc/sys`` is often read-only; then a warning names the pod-level fix.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tungo_sidecar.errors import TunError
from tungo_sidecar.routing.inbound import InboundRuleset
from tungo_sidecar.routing.netns import run_in_netns
from tungo_sidecar.routing.process import run_process

log = logging.getLogger(__name__)
T = TypeVar("T")

#: One ``nft`` run: it loads a handful of rules; anything slower than this is stuck.
NFT_TIMEOUT = 10.0
_SYSCTL_CONF = Path("/proc/sys/net/ipv4/conf")
_STDERR_TAIL = 400


class NftMissing(TunError):
    """No ``nft`` binary: the inbound ruleset cannot be applied."""


@dataclass(frozen=True, slots=True)
class ReversePath:
    """What ``fix_reverse_path`` found and did. ``strict``: the interfaces filtering strictly;
    ``action``: "not needed", "already set", "set" or "failed: <why>"."""

    strict: tuple[str, ...]
    action: str


def find_nft(nft: str | None = None) -> str:
    """The ``nft`` to run (``nft`` given, else from PATH); NftMissing if there is none."""
    found = nft or shutil.which("nft")
    if found is None:
        raise NftMissing("routing: 'nft' not found (Debian package nftables)")
    return found


async def run_nft(script: str, *, netns: str | None = None, nft: str | None = None) -> str:
    """Run ``nft -f -`` on ``script`` (in ``netns`` when given); its stdout, or TunError with its error."""
    argv = [find_nft(nft), "-f", "-"]
    if netns:
        # Tests and tooling only; `ip netns exec` says clearly when the namespace does not exist.
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        done = await run_process(argv, stdin=script.encode(), time_limit=NFT_TIMEOUT)
    except TimeoutError:  # before OSError, of which it is a subclass
        raise TunError(f"routing: nft still running after {NFT_TIMEOUT:g}s, killed") from None
    except OSError as exc:
        raise TunError(f"routing: cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        # nft prints the offending line and a caret under it: the first line says what went wrong.
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        why = lines[0][:_STDERR_TAIL] if lines else "no message"
        raise TunError(f"routing: nft exit status {done.returncode}: {why}")
    return done.stdout.decode(errors="replace")


async def apply_inbound(ruleset: InboundRuleset, *, netns: str | None = None, nft: str | None = None) -> None:
    """Put ``ruleset``'s table in place, replacing any earlier version atomically."""
    await run_nft(ruleset.render(), netns=netns, nft=nft)


async def remove_inbound(
    ruleset: InboundRuleset, *, netns: str | None = None, nft: str | None = None
) -> None:
    """Delete ``ruleset``'s table; already gone is fine."""
    await run_nft(ruleset.render_teardown(), netns=netns, nft=nft)


async def fix_reverse_path(tun: str, *, netns: str | None = None, conf: Path = _SYSCTL_CONF) -> ReversePath:
    """Where ``rp_filter`` is strict on an interface other than ``tun``/``lo``, set
    ``net.ipv4.conf.all.src_valid_mark`` = 1 so the check honours the inbound marks; see the module."""
    return await asyncio.to_thread(_in_netns, netns, lambda: _fix_reverse_path(tun, conf))


def _fix_reverse_path(tun: str, conf: Path) -> ReversePath:
    try:
        everywhere = _read_int(conf / "all" / "rp_filter")
        strict: list[str] = []
        for entry in sorted(conf.iterdir()):
            if entry.name in ("all", "lo", tun):
                continue
            # The kernel uses the larger of "all" and the interface's own value: 1 strict, 2 loose.
            # "default" stands for interfaces created later (a CNI adding one after us).
            if max(everywhere, _read_int(entry / "rp_filter")) == 1:
                strict.append(entry.name)
        if not strict:
            return ReversePath((), "not needed")
        target = conf / "all" / "src_valid_mark"
        if _read_int(target) == 1:
            return ReversePath(tuple(strict), "already set")
    except OSError as exc:
        return ReversePath((), f"failed: cannot read {exc.filename}: {exc.strerror}")
    try:
        target.write_text("1\n")
    except OSError as exc:
        return ReversePath(tuple(strict), f"failed: cannot write {target}: {exc.strerror}")
    return ReversePath(tuple(strict), "set")


def _read_int(path: Path) -> int:
    return int(path.read_text().strip() or "0")


def _in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` here, or inside ``netns`` (its ``/proc/sys/net`` is then that namespace's)."""
    if not netns:
        return fn()
    try:
        return run_in_netns(netns, fn)
    except Exception as exc:
        raise TunError(f"routing: in netns {netns!r}: {exc}") from exc
