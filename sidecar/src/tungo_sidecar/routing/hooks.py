"""Bringing the capture up and down: routes, DNS, then ``postUp``; ``postDown``, then the teardown.

Owns the order GOST follows on Linux (listener/tungo then service.Serve/Close): the TUN is up, routes
are applied, ``resolvectl dns NAME servers…`` runs when ``dns`` is set, then each ``postUp`` line; on the
way down each ``postDown`` line runs, then every route and rule is removed. One step of our own comes
first and goes last: the inbound ruleset (``routing.inbound``: replies to connections opened towards
the pod, such as the kubelet's probes, leave by ``main`` instead of the TUN), in place before any route
captures anything and removed after the last one is gone. The runner calls
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

import contextlib
import logging
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from tungo_sidecar.config.model import ChainConfig
from tungo_sidecar.config.tun import TunSettings, split_command
from tungo_sidecar.errors import ConfigError, TunError
from tungo_sidecar.routing import netfilter
from tungo_sidecar.routing.apply import Applied, apply_plan_async, resolve_relay_addresses, teardown_async
from tungo_sidecar.routing.inbound import InboundRuleset, make_inbound
from tungo_sidecar.routing.plan import FWMARK, IPNetwork, Plan, make_plan, relay_hosts
from tungo_sidecar.routing.process import run_process

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
        done = await run_process(argv, stdin=None, time_limit=hook_timeout)
    except TimeoutError:  # before OSError, of which it is a subclass
        raise TunError(f"{phase} {line!r}: still running after {hook_timeout:g}s, killed") from None
    except OSError as exc:
        raise TunError(f"{phase} {line!r}: cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
    stdout = done.stdout.decode(errors="replace")
    if stdout.strip():
        log.debug("%s: %s: %s", phase, line, stdout.strip())
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()
        why = f": {tail[-1][:_STDERR_TAIL]}" if tail else ""
        raise TunError(f"{phase} {line!r}: exit status {done.returncode}{why}")
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


async def apply_inbound(inbound: InboundRuleset, *, netns: str | None = None) -> bool:
    """The inbound ruleset and, where ``rp_filter`` is strict, ``src_valid_mark``; True if applied.

    Without ``nft`` it logs what that means and returns False: nothing leaks (the replies it would
    steer go into the TUN, where they die), so the tunnel itself still works as GOST's does. Any other
    nft failure is a TunError: the kernel refused a ruleset that should load, which needs a look.
    """
    try:
        await netfilter.apply_inbound(inbound, netns=netns)
    except netfilter.NftMissing as exc:
        log.warning(
            "%s: replies to connections opened towards this host from captured addresses (probes, "
            "ingress) will go into %s and fail",
            exc,
            inbound.tun,
        )
        return False
    log.info(
        "routing: nftables tables %s: replies to inbound connections leave by main (mark %#x)",
        ", ".join(f"{table.family} {table.name}" for table in inbound.tables),
        inbound.mark,
    )
    rp = await netfilter.fix_reverse_path(inbound.tun, netns=netns)
    if rp.action == "set":
        log.info(
            "routing: strict rp_filter on %s: set net.ipv4.conf.all.src_valid_mark=1", ", ".join(rp.strict)
        )
    elif rp.action.startswith("failed"):
        log.warning(
            "routing: strict rp_filter on %s and net.ipv4.conf.all.src_valid_mark is 0 (%s): IPv4 "
            "connections from captured addresses are dropped on arrival; set the pod sysctl "
            "net.ipv4.conf.all.src_valid_mark=1 or rp_filter=2",
            ", ".join(rp.strict) or "?",
            rp.action,
        )
    return True


async def remove_inbound(inbound: InboundRuleset, *, netns: str | None = None) -> None:
    """Delete the inbound table (gone already, or no ``nft``: nothing to do)."""
    with contextlib.suppress(netfilter.NftMissing):
        await netfilter.remove_inbound(inbound, netns=netns)


async def bring_up(
    settings: TunSettings,
    plan: Plan,
    *,
    inbound: InboundRuleset | None = None,
    netns: str | None = None,
    hook_timeout: float = HOOK_TIMEOUT,
    resolvectl: str | None = None,
    resolved_dir: Path = RESOLVED_DIR,
) -> Applied:
    """The inbound ruleset (when given), routes, DNS, postUp, in GOST's order; on any failure,
    everything applied is undone first."""
    if inbound is not None:
        await apply_inbound(inbound, netns=netns)
    try:
        applied = await apply_plan_async(plan, netns)
    except BaseException:
        if inbound is not None:
            await _undo_inbound(inbound, netns)
        raise
    try:
        await apply_dns(settings, resolvectl=resolvectl, resolved_dir=resolved_dir, hook_timeout=hook_timeout)
        await run_commands("postUp", settings.post_up, hook_timeout=hook_timeout)
    except BaseException:
        try:
            await teardown_async(applied, netns)
        except TunError as undo_exc:
            log.error("%s", undo_exc)
        if inbound is not None:
            await _undo_inbound(inbound, netns)
        raise
    return applied


async def _undo_inbound(inbound: InboundRuleset, netns: str | None) -> None:
    try:
        await remove_inbound(inbound, netns=netns)
    except TunError as exc:
        log.error("%s", exc)


async def bring_down(
    settings: TunSettings,
    applied: Applied,
    *,
    inbound: InboundRuleset | None = None,
    netns: str | None = None,
    hook_timeout: float = HOOK_TIMEOUT,
) -> None:
    """postDown, then the teardown, then the inbound ruleset — each happens even when an earlier step
    fails (the first error is raised afterwards, so the exit status still tells)."""
    failure: TunError | None = None
    try:
        await run_commands("postDown", settings.post_down, hook_timeout=hook_timeout)
    except TunError as exc:
        log.error("%s", exc)
        failure = exc
    try:
        await teardown_async(applied, netns)
    except TunError as exc:
        log.error("%s", exc)
        failure = failure or exc
    if inbound is not None:
        try:
            await remove_inbound(inbound, netns=netns)
        except TunError as exc:
            log.error("%s", exc)
            failure = failure or exc
    if failure is not None:
        raise failure


class Capture:
    """The whole routing side of one ``tungo`` service, for the TUN wiring: ``start`` once the TUN is
    up (resolve the chain's first-hop nodes, plan with their addresses excluded, ``bring_up``), ``stop``
    before the device closes (``bring_down``). ``fwmark`` must be the SO_MARK the service's dialers put
    on their sockets (the service's ``so_mark`` when set, else ``FWMARK``); the inbound ruleset marks
    replies to inbound connections with it too. ``inbound=False`` leaves nftables alone (tests of the
    routes alone). ``plan``, ``inbound_rules`` and ``applied`` are there for logs and readiness
    (``applied is not None`` means the routes are in place)."""

    def __init__(
        self,
        settings: TunSettings,
        chain: ChainConfig | None,
        *,
        fwmark: int = FWMARK,
        excluded: tuple[IPNetwork | str, ...] = (),
        netns: str | None = None,
        hook_timeout: float = HOOK_TIMEOUT,
        inbound: bool = True,
    ) -> None:
        self.settings = settings
        self.chain = chain
        self.fwmark = fwmark
        self.excluded = excluded
        self.netns = netns
        self.hook_timeout = hook_timeout
        self.plan: Plan | None = None
        self.inbound_rules: InboundRuleset | None = (
            make_inbound(settings.name, mark=fwmark) if inbound and settings.routes else None
        )
        self.applied: Applied | None = None

    async def start(self) -> Applied:
        if self.applied is not None:
            return self.applied
        relays = await resolve_relay_addresses(relay_hosts(self.chain))
        self.plan = make_plan(
            self.settings, fwmark=self.fwmark, excluded=self.excluded, relay_addresses=relays
        )
        self.applied = await bring_up(
            self.settings,
            self.plan,
            inbound=self.inbound_rules,
            netns=self.netns,
            hook_timeout=self.hook_timeout,
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
            await bring_down(
                self.settings,
                applied,
                inbound=self.inbound_rules,
                netns=self.netns,
                hook_timeout=self.hook_timeout,
            )
