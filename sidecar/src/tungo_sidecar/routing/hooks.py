"""Bringing the capture up and down: routes, DNS, then ``postUp``; ``postDown``, then the teardown.

Owns the order GOST follows on Linux (listener/tungo then service.Serve/Close): the TUN is up, routes
are applied, ``resolvectl dns NAME servers…`` runs when ``dns`` is set, then each ``postUp`` line; on the
way down each ``postDown`` line runs, then every route and rule is removed. The runner calls
``bring_up`` once the TUN device is up and ``bring_down`` before it closes the device — or, simpler,
``Capture`` (chain relay addresses resolved and excluded, plan made, brought up and down).

Hook lines run as GOST runs them: each split into argv like a POSIX shell would (GOST uses
google/shlex; Python's ``shlex`` with ``comments=True`` splits the same way: quotes, backslashes, ``#``
comments), executed directly — no shell, so no globbing, pipes or variables unless the line itself
calls ``sh -c``, in order, one at a time. Unlike GOST, which only logs a failing line, a line that
exits non-zero (or cannot start, or outlives ``HOOK_TIMEOUT``) is a ``TunError`` naming the line, its
status and its last stderr line, and ``bring_up`` then tears the routes down: a half-configured tunnel
must not look ready.

Never runs anything through a shell, and never leaves a hook process behind (killed on timeout).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from tungo_sidecar.config.model import ChainConfig
from tungo_sidecar.config.tun import TunSettings, split_command
from tungo_sidecar.errors import ConfigError, TunError
from tungo_sidecar.routing.apply import Applied, apply_plan_async, resolve_relay_addresses, teardown_async
from tungo_sidecar.routing.plan import FWMARK, IPNetwork, Plan, make_plan, relay_hosts

log = logging.getLogger(__name__)

# A hook that hangs would keep the sidecar (and, through its startupProbe, the whole pod) from ever
# becoming ready without saying why; 30 s is generous for `ip`/`iptables`/`resolvectl`-style commands.
HOOK_TIMEOUT = 30.0
# systemd-resolved's runtime directory: resolvectl without it only prints connection errors.
RESOLVED_DIR = Path("/run/systemd/resolve")
_STDERR_TAIL = 300


async def run_command(phase: str, line: str, *, hook_timeout: float = HOOK_TIMEOUT) -> str:
    """Run one line without a shell; its stdout, or TunError naming the line and why it failed."""
    try:
        argv = split_command(line)
    except ConfigError as exc:
        raise TunError(f"{phase} {exc}") from exc
    log.info("%s: %s", phase, line)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise TunError(f"{phase} {line!r}: cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), hook_timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise TunError(f"{phase} {line!r}: still running after {hook_timeout:g}s, killed") from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    stdout = out.decode(errors="replace")
    if stdout.strip():
        log.debug("%s: %s: %s", phase, line, stdout.strip())
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()
        why = f": {tail[-1][:_STDERR_TAIL]}" if tail else ""
        raise TunError(f"{phase} {line!r}: exit status {proc.returncode}{why}")
    return stdout


async def run_commands(phase: str, lines: Sequence[str], *, hook_timeout: float = HOOK_TIMEOUT) -> None:
    """Each line in order; the first failure stops the sequence with its TunError."""
    for line in lines:
        if line.strip():
            await run_command(phase, line, hook_timeout=hook_timeout)


async def apply_dns(
    settings: TunSettings,
    *,
    resolvectl: str | None = None,
    resolved_dir: Path = RESOLVED_DIR,
    hook_timeout: float = HOOK_TIMEOUT,
) -> bool:
    """GOST's ``resolvectl dns NAME servers…`` where systemd-resolved runs; True if DNS was applied.

    Elsewhere (a pod has neither resolvectl nor systemd-resolved) it logs one line and returns False:
    the pod's resolv.conf is the platform's business, and the TUN still captures DNS packets.
    """
    if not settings.dns:
        return False
    servers = [str(server) for server in settings.dns]
    tool, missing = _find_resolvectl(resolvectl, resolved_dir)
    if tool is None:
        log.warning(
            "dns: not applied (%s not found): servers %s are not set for %s",
            missing,
            " ".join(servers),
            settings.name,
        )
        return False
    await run_command("dns", shlex.join([tool, "dns", settings.name, *servers]), hook_timeout=hook_timeout)
    return True


def _find_resolvectl(resolvectl: str | None, resolved_dir: Path) -> tuple[str | None, str]:
    """The resolvectl to run, or None and what is missing (two stat calls: fine on the event loop)."""
    tool = resolvectl or shutil.which("resolvectl")
    if tool is None:
        return None, "resolvectl"
    if not resolved_dir.is_dir():
        return None, f"systemd-resolved ({resolved_dir})"
    return tool, ""


async def bring_up(
    settings: TunSettings,
    plan: Plan,
    *,
    netns: str | None = None,
    hook_timeout: float = HOOK_TIMEOUT,
    resolvectl: str | None = None,
    resolved_dir: Path = RESOLVED_DIR,
) -> Applied:
    """Routes, DNS, postUp, in GOST's order; on any failure, everything applied is undone first."""
    applied = await apply_plan_async(plan, netns)
    try:
        await apply_dns(settings, resolvectl=resolvectl, resolved_dir=resolved_dir, hook_timeout=hook_timeout)
        await run_commands("postUp", settings.post_up, hook_timeout=hook_timeout)
    except BaseException:
        try:
            await teardown_async(applied, netns)
        except TunError as undo_exc:
            log.error("%s", undo_exc)
        raise
    return applied


async def bring_down(
    settings: TunSettings, applied: Applied, *, netns: str | None = None, hook_timeout: float = HOOK_TIMEOUT
) -> None:
    """postDown, then the teardown — which happens even when a postDown line fails (that error is
    raised afterwards, so the exit status still tells)."""
    failure: TunError | None = None
    try:
        await run_commands("postDown", settings.post_down, hook_timeout=hook_timeout)
    except TunError as exc:
        log.error("%s", exc)
        failure = exc
    await teardown_async(applied, netns)
    if failure is not None:
        raise failure


class Capture:
    """The whole routing side of one ``tungo`` service, for the TUN wiring: ``start`` once the TUN is
    up (resolve the chain's first-hop nodes, plan with their addresses excluded, ``bring_up``), ``stop``
    before the device closes (``bring_down``). ``fwmark`` must be the SO_MARK the service's dialers put
    on their sockets (the service's ``so_mark`` when set, else ``FWMARK``). ``plan`` and ``applied`` are
    there for logs and readiness (``applied is not None`` means the routes are in place)."""

    def __init__(
        self,
        settings: TunSettings,
        chain: ChainConfig | None,
        *,
        fwmark: int = FWMARK,
        excluded: tuple[IPNetwork | str, ...] = (),
        netns: str | None = None,
        hook_timeout: float = HOOK_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.chain = chain
        self.fwmark = fwmark
        self.excluded = excluded
        self.netns = netns
        self.hook_timeout = hook_timeout
        self.plan: Plan | None = None
        self.applied: Applied | None = None

    async def start(self) -> Applied:
        if self.applied is not None:
            return self.applied
        relays = await resolve_relay_addresses(relay_hosts(self.chain))
        self.plan = make_plan(
            self.settings, fwmark=self.fwmark, excluded=self.excluded, relay_addresses=relays
        )
        self.applied = await bring_up(
            self.settings, self.plan, netns=self.netns, hook_timeout=self.hook_timeout
        )
        log.info(
            "routing: %d route(s) captured into %s (table %d, fwmark %#x), %d relay address(es) excluded",
            len(self.settings.routes),
            self.settings.name,
            self.plan.table,
            self.plan.fwmark,
            len(relays),
        )
        return self.applied

    async def stop(self) -> None:
        applied, self.applied = self.applied, None
        if applied is not None:
            await bring_down(self.settings, applied, netns=self.netns, hook_timeout=self.hook_timeout)
