"""The routing executor: applies a ``routing.plan.Plan`` to the kernel with pyroute2, and undoes it.

Owns every netlink write the sidecar makes for routes and rules (the TUN device's own address and link
state belong to ``tun/``). The runner calls ``apply_plan`` once the TUN is up and ``teardown`` on exit
(from a thread: pyroute2's synchronous ``IPRoute`` cannot run inside a running asyncio loop, hence the
``*_async`` wrappers). It never decides *what* to change — that is the plan's job — and never touches
routes or rules the plan does not name.

Idempotent, because the sidecar may be killed and restarted on top of its own leftovers (DESIGN.md §3):
routes are written with NLM_F_REPLACE semantics (a second apply overwrites, never duplicates); rules
have no replace in netlink, so they are added with NLM_F_EXCL and EEXIST means "already there" (the
kernel compares every field, so this is exactly our rule). Each step records whether it found the
kernel already in that state, which tells a restart from a first start in the logs.

A kernel older than 4.17 does not know the ``ipproto``/``dport`` selectors of the excluded ports' rules
and drops them without an error, which would leave a bare ``lookup main`` in front of the capture: the
TUN would capture nothing. So the first such rule of each family is read back before the plan goes on
(before that family's capture rule exists); without its selectors it is a TunError, rolled back.

A restart may also come with a *different* plan (the config changed while the sidecar was down): the
table is ours alone, so before applying, every route in it and every rule at our priorities that the
new plan does not contain is removed ("swept") — otherwise a stale ``unreachable`` twin would keep
blocking a destination the new config no longer captures. Only rules shaped like ours count: a rule with
a selector we never write (a source, an interface, a source port...) belongs to someone else.

``teardown`` removes exactly what an ``apply_plan`` reported, in reverse, treating "already gone"
(ESRCH/ENOENT: e.g. the TUN vanished and took its routes with it) as success. A failure in the middle of
``apply_plan`` undoes the steps already taken before raising ``TunError``: a half-applied capture
(rules without routes, or the reverse) never stays behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any, Literal

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from tungo_sidecar.config.tun import PortRange
from tungo_sidecar.errors import TunError
from tungo_sidecar.proto.address import Address
from tungo_sidecar.routing.plan import (
    MAIN_TABLE,
    RTPROT_STATIC,
    RULE_PRIORITY_CAPTURE,
    RULE_PRIORITY_EXCLUDE_PORTS,
    RULE_PRIORITY_MAIN,
    AddRoute,
    AddRule,
    Family,
    IPAddress,
    IPProto,
    Operation,
    Plan,
    RouteType,
)

log = logging.getLogger(__name__)

_AF = {4: 2, 6: 10}  # AF_INET, AF_INET6: netlink wants the numbers.
# FIB_RULE_INVERT from linux/fib_rules.h: the "not" in "not fwmark M".
_FIB_RULE_INVERT = 0x2
_FULL_MASK = 0xFFFFFFFF
# Routes we write carry "proto static" (RTPROT_STATIC), as `ip route` does for routes added by hand.
_RTPROT_STATIC = RTPROT_STATIC
_RT_SCOPE_LINK = 253
_RT_SCOPE_NOWHERE = 255
_GONE = (errno.ESRCH, errno.ENOENT)
_IPPROTO: dict[IPProto, int] = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_IPPROTO_NAMES: dict[int, IPProto] = {number: name for name, number in _IPPROTO.items()}
_FR_ACT_TO_TBL = 1  # "lookup T", the only action our rules have
# Rule selectors we never write: a rule carrying one is someone else's, even at our priorities.
_FOREIGN_SELECTORS = (
    "FRA_SRC",
    "FRA_DST",
    "FRA_IIFNAME",
    "FRA_OIFNAME",
    "FRA_GOTO",
    "FRA_FLOW",
    "FRA_TUN_ID",
    "FRA_SUPPRESS_IFGROUP",
    "FRA_L3MDEV",
    "FRA_UID_RANGE",
    "FRA_SPORT_RANGE",
)
# Where `ip netns add` (and pyroute2) keep named namespaces.
_NETNS_RUN_DIR = "/run/netns"

Outcome = Literal["added", "replaced", "already present"]


@dataclass(frozen=True, slots=True)
class Step:
    """One operation done, and what the kernel had before: new, overwritten, or identical already."""

    op: Operation
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``apply_plan`` did, in order; ``teardown`` undoes exactly this."""

    steps: tuple[Step, ...]
    swept: tuple[str, ...] = ()  # stale leftovers of an earlier, different plan that were removed

    @property
    def leftovers(self) -> int:
        """How many steps found the kernel already (partly) in place: >0 means a previous run's state."""
        return sum(1 for s in self.steps if s.outcome != "added")


@contextmanager
def netlink(netns: str | None = None) -> Iterator[Any]:
    """An rtnetlink socket in the current network namespace, or in the named one (tests, tooling)."""
    if netns and not os.path.exists(os.path.join(_NETNS_RUN_DIR, netns)):
        # Checked first: pyroute2 leaks its helper sockets when NetNS() fails half-way.
        raise TunError(f"routing: cannot open netlink in netns {netns!r}: no such namespace")
    try:
        # flags=0: join an existing namespace only; pyroute2 would otherwise create a mistyped one.
        ipr = NetNS(netns, flags=0) if netns else IPRoute()
    except (OSError, NetlinkError) as exc:
        raise TunError(
            f"routing: cannot open netlink{f' in netns {netns!r}' if netns else ''}: {exc}"
        ) from exc
    try:
        yield ipr
    finally:
        ipr.close()


def apply_plan(plan: Plan, ipr: Any) -> Applied:
    """Apply every operation of ``plan`` through ``ipr`` (IPRoute or NetNS); TunError after a rollback."""
    try:
        swept = _sweep(ipr, plan)
    except (NetlinkError, OSError) as exc:
        raise TunError(
            f"routing: cannot remove stale routes/rules of table {plan.table}: {_describe(exc)}"
        ) from exc
    for line in swept:
        log.info("routing: removed a stale leftover: %s", line)
    done: list[Step] = []
    ifindex: dict[str, int] = {}
    confirmed: set[Family] = set()  # families whose port rules were read back with their selectors
    for op in plan.operations:
        try:
            outcome = _apply_route(ipr, op, ifindex) if isinstance(op, AddRoute) else _apply_rule(ipr, op)
            done.append(Step(op, outcome))  # before the check: a rule that fails it is undone too
            if isinstance(op, AddRule) and op.dport is not None and op.family not in confirmed:
                _confirm_selectors(ipr, op)
                confirmed.add(op.family)
        except (NetlinkError, OSError, TunError) as exc:
            undo_errors = _undo(ipr, done)
            what = op.render()
            detail = exc if isinstance(exc, TunError) else _describe(exc)
            extra = f"; rollback also failed: {'; '.join(undo_errors)}" if undo_errors else ""
            raise TunError(f"routing: {what}: {detail}{extra}") from exc
    applied = Applied(tuple(done), tuple(swept))
    if applied.leftovers:
        log.info(
            "routing: %d of %d steps were already in place (restart after a crash?)",
            applied.leftovers,
            len(done),
        )
    return applied


def teardown(applied: Applied, ipr: Any) -> None:
    """Undo ``applied`` in reverse; already-gone is fine; TunError listing what could not be removed."""
    errors = _undo(ipr, list(applied.steps))
    if errors:
        raise TunError("routing: teardown left state behind: " + "; ".join(errors))


async def apply_plan_async(plan: Plan, netns: str | None = None) -> Applied:
    """``apply_plan`` on a fresh netlink socket, in a worker thread (safe to await from the runner)."""

    def run() -> Applied:
        with netlink(netns) as ipr:
            return apply_plan(plan, ipr)

    return await asyncio.to_thread(run)


async def teardown_async(applied: Applied, netns: str | None = None) -> None:
    def run() -> None:
        with netlink(netns) as ipr:
            teardown(applied, ipr)

    await asyncio.to_thread(run)


async def resolve_relay_addresses(hosts: Iterable[Address]) -> tuple[IPAddress, ...]:
    """The IP addresses of ``hosts`` (``routing.plan.relay_hosts``), for ``make_plan(relay_addresses=)``.

    Resolved once, before the capture is applied. A name that does not resolve is a TunError: without
    its address the plan could not keep the relay's own traffic (from other processes) out of the TUN.
    """
    loop = asyncio.get_running_loop()
    found: list[IPAddress] = []
    for host in hosts:
        literal = host.ip
        if literal is not None:
            candidates: list[IPAddress] = [literal]
        else:
            try:
                infos = await loop.getaddrinfo(host.host, host.port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
                raise TunError(f"routing: cannot resolve relay node {host}: {exc}") from exc
            # Scoped IPv6 literals ("fe80::1%eth0") lose their scope: routes are per destination.
            candidates = [ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        for ip in candidates:
            if ip not in found:
                found.append(ip)
    return tuple(found)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"{errno.errorcode.get(exc.code, exc.code)} ({exc})"
    return str(exc)


def _route_args(op: AddRoute) -> dict[str, Any]:
    args: dict[str, Any] = {
        "family": _AF[op.family],
        "dst": str(op.dst),
        "table": op.table,
        "priority": op.metric,
        "type": op.type,
    }
    if op.gateway is not None:
        args["gateway"] = str(op.gateway)
    return args


def _lookup(ipr: Any, dev: str, cache: dict[str, int]) -> int:
    if dev not in cache:
        found = ipr.link_lookup(ifname=dev)
        if not found:
            raise TunError(f"device {dev!r} does not exist")
        cache[dev] = int(found[0])
    return cache[dev]


def _apply_route(ipr: Any, op: AddRoute, ifindex: dict[str, int]) -> Outcome:
    args = _route_args(op)
    args["proto"] = _RTPROT_STATIC
    if op.dev is not None:
        args["oif"] = _lookup(ipr, op.dev, ifindex)
        if op.gateway is None:
            # As ip(8) does: a device route without a gateway reaches its destinations on-link.
            args["scope"] = _RT_SCOPE_LINK
    try:
        # "add" (create + exclusive) first only to learn whether it existed; "replace" makes it ours.
        ipr.route("add", **args)
        return "added"
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
    ipr.route("replace", **args)
    return "replaced"


def _rule_args(op: AddRule) -> dict[str, Any]:
    args: dict[str, Any] = {"family": _AF[op.family], "priority": op.priority, "table": op.table}
    if op.fwmark is not None:
        args["fwmark"] = op.fwmark
        args["fwmask"] = _FULL_MASK
    if op.invert:
        args["flags"] = _FIB_RULE_INVERT
    if op.suppress_prefixlength is not None:
        # pyroute2 spells the attribute "suppress_prefixlen"; its "suppress_prefixlength" alias drops a 0.
        args["suppress_prefixlen"] = op.suppress_prefixlength
    # FRA_IP_PROTO and FRA_DPORT_RANGE; pyroute2 encodes a port range from "FIRST:LAST" (not "-").
    if op.ip_proto is not None:
        args["ip_proto"] = _IPPROTO[op.ip_proto]
    if op.dport is not None:
        args["dport_range"] = f"{op.dport.first}:{op.dport.last}"
    if op.protocol is not None:
        # FRA_PROTOCOL: on a delete, it keeps the kernel from taking someone else's rule for ours.
        args["protocol"] = op.protocol
    return args


def _apply_rule(ipr: Any, op: AddRule) -> Outcome:
    try:
        ipr.rule("add", **_rule_args(op))
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return "already present"
        raise
    return "added"


def _confirm_selectors(ipr: Any, op: AddRule) -> None:
    """TunError unless the kernel holds ``op`` with every selector (Linux < 4.17 silently drops them).

    The protocol does not count: an identical rule someone else added makes ours "already present"
    (the kernel's duplicate check ignores it), and its selectors are in place all the same."""
    wanted = dataclasses.replace(op, protocol=None)
    found = (_rule_from_msg(op.family, msg) for msg in ipr.get_rules(family=_AF[op.family]))
    if not any(rule is not None and dataclasses.replace(rule, protocol=None) == wanted for rule in found):
        raise TunError(
            "the kernel dropped the rule's ipproto/dport selectors (excludePorts needs Linux 4.17 or later)"
        )


_RTN_NAMES: dict[int, RouteType] = {1: "unicast", 7: "unreachable", 9: "throw"}
_NO_SUPPRESS = 0xFFFFFFFF  # what the kernel reports for "no suppress_prefixlength"


def _sweep(ipr: Any, plan: Plan) -> list[str]:
    """Remove what an earlier plan left in our table and at our rule priorities but this plan lacks."""
    wanted_routes = {(op.dst, op.metric, op.type) for op in plan.operations if isinstance(op, AddRoute)}
    wanted_rules = {op for op in plan.operations if isinstance(op, AddRule)}
    swept: list[str] = []
    families: tuple[Family, ...] = (4, 6)
    for family in families:
        for msg in ipr.get_rules(family=_AF[family]):
            rule = _rule_from_msg(family, msg)
            if rule is None or rule in wanted_rules or not _shaped_like_ours(rule, plan.table):
                continue
            _delete(ipr, rule)
            swept.append(rule.render("del"))
    for family in families:
        for msg in ipr.get_routes(family=_AF[family], table=plan.table):
            route = _route_from_msg(family, msg, plan.table)
            if route is None or (route.dst, route.metric, route.type) in wanted_routes:
                continue
            _delete(ipr, route)
            swept.append(route.render("del"))
    return swept


def _shaped_like_ours(rule: AddRule, table: int) -> bool:
    """At one of our priorities and built like a rule some plan of ours makes (for the sweep)."""
    if rule.priority == RULE_PRIORITY_EXCLUDE_PORTS:
        return (
            rule.table == MAIN_TABLE
            and rule.ip_proto is not None
            and rule.dport is not None
            and rule.fwmark is None
            and not rule.invert
            and rule.suppress_prefixlength is None
            and rule.protocol == RTPROT_STATIC
        )
    return rule.table == table or rule.suppress_prefixlength is not None


def _rule_from_msg(family: Family, msg: Any) -> AddRule | None:
    """The kernel's rule as an AddRule, or None: not at our priorities, or with selectors we never use."""
    priority = msg.get_attr("FRA_PRIORITY")
    if priority not in (RULE_PRIORITY_EXCLUDE_PORTS, RULE_PRIORITY_MAIN, RULE_PRIORITY_CAPTURE):
        return None
    if (
        msg["action"] != _FR_ACT_TO_TBL
        or msg["src_len"]
        or msg["dst_len"]
        or msg["tos"]
        or any(msg.get_attr(name) is not None for name in _FOREIGN_SELECTORS)
    ):
        return None
    fwmark = msg.get_attr("FRA_FWMARK")
    if fwmark is not None and msg.get_attr("FRA_FWMASK") not in (None, _FULL_MASK):
        return None  # a masked mark: ours always match the whole mark
    proto_number = msg.get_attr("FRA_IP_PROTO")
    ip_proto = _IPPROTO_NAMES.get(proto_number) if proto_number else None
    if proto_number and ip_proto is None:
        return None  # a protocol we never exclude (sctp, icmp...)
    table = msg.get_attr("FRA_TABLE") or msg["table"]
    suppress = msg.get_attr("FRA_SUPPRESS_PREFIXLEN")
    return AddRule(
        family,
        int(priority),
        int(table),
        fwmark=fwmark,
        invert=bool(msg["flags"] & _FIB_RULE_INVERT),
        suppress_prefixlength=None if suppress in (None, _NO_SUPPRESS) else int(suppress),
        ip_proto=ip_proto,
        dport=_port_range(msg.get_attr("FRA_DPORT_RANGE")),
        protocol=msg.get_attr("FRA_PROTOCOL") or None,
    )


def _port_range(value: str | None) -> PortRange | None:
    # pyroute2 decodes FRA_DPORT_RANGE as "FIRST:LAST".
    if value is None:
        return None
    first, _, last = value.partition(":")
    return PortRange(int(first), int(last or first))


def _route_from_msg(family: Family, msg: Any, table: int) -> AddRoute | None:
    if (msg.get_attr("RTA_TABLE") or msg["table"]) != table or msg["type"] not in _RTN_NAMES:
        return None
    dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == 4 else "::")
    return AddRoute(
        ip_network(f"{dst}/{msg['dst_len']}"),
        table,
        int(msg.get_attr("RTA_PRIORITY") or 0),
        type=_RTN_NAMES[msg["type"]],
    )


def _delete(ipr: Any, op: Operation) -> None:
    try:
        if isinstance(op, AddRoute):
            ipr.route("del", scope=_RT_SCOPE_NOWHERE, **_route_args(op))
        else:
            ipr.rule("del", **_rule_args(op))
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise


def _undo(ipr: Any, steps: list[Step]) -> list[str]:
    """Remove ``steps`` in reverse; returns the failures (already-gone is not one)."""
    errors: list[str] = []
    for step in reversed(steps):
        op = step.op
        try:
            # No oif: the device may be gone already; dst + table + metric + type name our route.
            _delete(ipr, op)
        except NetlinkError as exc:
            errors.append(f"{op.render('del')}: {_describe(exc)}")
        except OSError as exc:
            errors.append(f"{op.render('del')}: {exc}")
    return errors
