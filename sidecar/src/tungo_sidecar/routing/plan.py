"""The routing plan: which routes and rules capture traffic into the TUN, computed as data.

Owns the *decision* of what to change in the kernel; ``routing.apply`` owns *doing* it. The runner calls
``make_plan(settings, ...)`` once the TUN settings are parsed and hands the plan to the executor; tests
compare rendered plans with golden files. Pure: this module never imports pyroute2, opens a socket or
reads the kernel's state, so the same settings always give the same plan.

How a plan captures traffic without looping (DESIGN.md §3 "Loop avoidance"):

* Every captured destination (``route``/``routes``, including ``0.0.0.0/0`` and ``::/0``) goes into a
  dedicated table ``T``, never into ``main``: the pod's own routes (eth0, the CNI's gateway, cluster
  routes) stay exactly as they were and are what tungo's own sockets use.
* ``not fwmark M lookup T``: only unmarked traffic consults ``T``. Every socket tungo opens itself (to
  the relay server, bypassed direct dials) carries ``SO_MARK = M``, skips ``T`` and leaves through
  ``main``: the tunnel cannot carry its own packets.
* ``lookup main suppress_prefixlength 0`` just before it (as wg-quick does): a lookup in ``main`` whose
  answer is ``main``'s *default* route is ignored, any more specific answer wins. So the pod's link
  routes, the TUN's own subnet and cluster routes the CNI installed keep working even when ``T`` holds
  a default route; only the "everything else" traffic is captured. The one difference from GOST (which
  writes its routes into ``main`` and lets longest-prefix-match decide): a captured prefix that lies
  *inside* a non-default ``main`` route loses to it. Use ``excluded``/capture ranges accordingly.
* Excluded CIDRs (cluster pod/service ranges, node-local DNS) and the relay server's own addresses are
  ``throw`` routes in ``T``: the lookup in ``T`` stops there and continues with the next rule, i.e. the
  pod's ``main`` table. They carry the lowest metric so that, for the very same prefix, the exclusion wins.
* Excluded destination ports (``excludePorts``) cannot be routes: a route knows no ports. They are
  policy rules ``ipproto tcp|udp dport LO-HI lookup main`` (Linux ≥ 4.17), one per protocol and family,
  just before the two rules above: a packet to such a port takes ``main`` as a whole, default route
  included, exactly as if tungo were not there. They cannot take anything else: ``ipproto`` is always
  set (a rule with ``dport`` alone would also match ICMP, whose type and code the kernel keeps where a
  port would be), and a destination that ``main`` has no route for falls through to the next rule as
  before. tungo's own marked sockets end in ``main`` either way, so for them the rules change nothing.
  They carry ``protocol static`` (as our routes do): the kernel deletes the *first* rule matching the
  fields a request gives, treating the others as wildcards, so without it removing ours could remove
  someone else's ``from X ipproto tcp dport N lookup main`` at the same priority instead.

Fail closed (DESIGN.md §3 "Fail closed"): each captured route has an ``unreachable`` twin in ``T`` with a
higher metric. While tungo runs, the route through the TUN wins; when the TUN disappears (tungo killed,
even by SIGKILL: the kernel deletes a non-persistent TUN with its last file descriptor, and with it
every route through it) the ``unreachable`` route remains, the rules remain, and connecting to a
captured destination fails at once with EHOSTUNREACH instead of falling through to ``main`` and
leaving in clear. A restarted tungo re-applies the same plan (replace semantics, so no duplicates) and
takes the traffic back. We chose this over a persistent TUN device because it needs nothing from the
device's owner, works identically for IPv4 and IPv6, and fails immediately rather than after a connect
timeout into a device nobody reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Literal

from tungo_sidecar.config.model import ChainConfig
from tungo_sidecar.config.tun import PortRange, TunSettings
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.proto.address import Address

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Family = Literal[4, 6]
RouteType = Literal["unicast", "unreachable", "throw"]
IPProto = Literal["tcp", "udp"]

# The fwmark on every socket tungo opens itself (SO_MARK). 0x7475 is "tu" in ASCII: unlikely to collide
# with marks other tools in a pod set (Istio uses 0x539, Calico and Cilium use high or masked bits).
# Matched exactly (full mask): SO_MARK sets the whole mark on our own sockets, nothing else touches it.
FWMARK = 0x7475
# The dedicated routing table. Same number as the mark (wg-quick's habit: one value to grep for); any id
# other than 0/253/254/255 (unspec/default/main/local) works, and this one is far from the small ids
# CNI plugins and VPN tools allocate.
TABLE = 0x7475
# Rule priorities: after the local table (0) so local delivery always wins, before main (32766) so the
# capture is consulted first; the "main without its default" rule must come right before the capture,
# and the excluded ports' "main for these ports" rules right before both (one priority for all of
# them: whichever matches sends the packet to the same table, so their order does not matter).
RULE_PRIORITY_EXCLUDE_PORTS = 29799
RULE_PRIORITY_MAIN = 29800
RULE_PRIORITY_CAPTURE = 29801
# Route metrics inside TABLE: exclusions (throw) win ties, then the TUN route, then its fail-closed
# unreachable twin, which only matters once the TUN route is gone. Not 0 for exclusions: IPv6 turns
# metric 0 into its default 1024, which would lose to the capture.
METRIC_EXCLUDE = 1
METRIC_CAPTURE = 100
METRIC_FAIL_CLOSED = 65535
MAIN_TABLE = 254
# RTPROT_STATIC, "protocol static": what ip(8) calls routes and rules added by an administrator. On the
# excluded ports' rules it makes a delete request match ours only (see the module docstring).
RTPROT_STATIC = 4
_RESERVED_TABLES = (0, 253, 254, 255)
# Both transports a pod's applications use; the TUN engine captures exactly these two as well.
_EXCLUDED_PORT_PROTOS: tuple[IPProto, ...] = ("tcp", "udp")


@dataclass(frozen=True, slots=True)
class AddRoute:
    """A route in a table: through ``dev`` (optionally ``via`` a gateway), ``unreachable`` or ``throw``."""

    dst: IPNetwork
    table: int
    metric: int
    type: RouteType = "unicast"
    dev: str | None = None
    gateway: IPAddress | None = None

    @property
    def family(self) -> Family:
        return 4 if self.dst.version == 4 else 6

    def render(self, verb: str = "replace") -> str:
        words = [f"ip -{self.family} route {verb}"]
        if self.type != "unicast":
            words.append(self.type)
        words.append(str(self.dst))
        if self.gateway is not None:
            words.append(f"via {self.gateway}")
        if self.dev is not None:
            words.append(f"dev {self.dev}")
        words.append(f"table {self.table} metric {self.metric}")
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class AddRule:
    """A policy rule: ``[not] fwmark M lookup T``, ``lookup main suppress_prefixlength N`` or
    ``ipproto P dport LO-HI lookup main``."""

    family: Family
    priority: int
    table: int
    fwmark: int | None = None
    invert: bool = False
    suppress_prefixlength: int | None = None
    ip_proto: IPProto | None = None
    dport: PortRange | None = None
    protocol: int | None = None  # who installed it (FRA_PROTOCOL); None is the kernel's 0, "unspec"

    def render(self, verb: str = "add") -> str:
        words = [f"ip -{self.family} rule {verb} priority {self.priority}"]
        if self.invert:
            words.append("not")
        if self.fwmark is not None:
            words.append(f"fwmark {self.fwmark:#x}")
        if self.ip_proto is not None:
            words.append(f"ipproto {self.ip_proto}")
        if self.dport is not None:
            words.append(f"dport {self.dport}")
        words.append("lookup " + ("main" if self.table == MAIN_TABLE else str(self.table)))
        if self.suppress_prefixlength is not None:
            words.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        if self.protocol is not None:
            words.append("protocol " + ("static" if self.protocol == RTPROT_STATIC else str(self.protocol)))
        return " ".join(words)


Operation = AddRoute | AddRule


@dataclass(frozen=True, slots=True)
class Undo:
    """The removal of one operation; teardown is a sequence of these."""

    op: Operation

    def render(self) -> str:
        return self.op.render("del")


@dataclass(frozen=True, slots=True)
class Plan:
    """Operations in the order to apply them. Routes first, rules last: the table is complete
    (fail-closed twins and exclusions included) before any traffic is steered into it; within a family,
    the excluded ports' rules come before the capture rule, so those ports are never captured."""

    operations: tuple[Operation, ...]
    fwmark: int = FWMARK
    table: int = TABLE

    @property
    def teardown(self) -> tuple[Undo, ...]:
        """The reverse: rules go first, so no traffic is steered into a half-emptied table."""
        return tuple(Undo(op) for op in reversed(self.operations))

    def render(self) -> str:
        """Like the ``ip`` commands that would do the same; the golden files' format."""
        lines = ["# setup", *(op.render() for op in self.operations), "# teardown"]
        lines.extend(undo.render() for undo in self.teardown)
        return "\n".join(lines) + "\n"


def make_plan(
    settings: TunSettings,
    *,
    fwmark: int = FWMARK,
    table: int = TABLE,
    excluded: Iterable[IPNetwork | str] = (),
    relay_addresses: Iterable[IPAddress] = (),
) -> Plan:
    """The plan capturing ``settings.routes`` into the TUN ``settings.name``, excluding what must not be.

    ``excluded``: CIDRs that always bypass the TUN (cluster ranges, node-local DNS), added to the
    listener's own ``exclude`` (``settings.excluded``). ``relay_addresses``:
    the resolved addresses of the chain's first hop, which bypass it too. Both, like the listener's
    ``excludePorts`` (``settings.excluded_ports``), only matter for the families that have captured
    routes. ConfigError on a bad mark, table or CIDR.
    """
    if not 0 < fwmark <= 0xFFFFFFFF:
        raise ConfigError(f"routing: fwmark {fwmark:#x}: must be a non-zero 32-bit value")
    if not 0 < table <= 0xFFFFFFFF or table in _RESERVED_TABLES:
        raise ConfigError(f"routing: table {table}: reserved or out of range (not 0, 253, 254, 255)")
    exclusions = _exclusions((*settings.excluded, *excluded), relay_addresses)
    families: list[Family] = []
    for route in settings.routes:
        family: Family = 4 if route.dst.version == 4 else 6
        if family not in families:
            families.append(family)

    fail_closed = [AddRoute(r.dst, table, METRIC_FAIL_CLOSED, type="unreachable") for r in settings.routes]
    throws = [
        AddRoute(net, table, METRIC_EXCLUDE, type="throw") for net in exclusions if net.version in families
    ]
    captures = [
        AddRoute(r.dst, table, METRIC_CAPTURE, dev=settings.name, gateway=r.gateway) for r in settings.routes
    ]
    rules: list[AddRule] = []
    for family in sorted(families):
        for ports in settings.excluded_ports:
            rules.extend(
                AddRule(
                    family,
                    RULE_PRIORITY_EXCLUDE_PORTS,
                    MAIN_TABLE,
                    ip_proto=proto,
                    dport=ports,
                    protocol=RTPROT_STATIC,
                )
                for proto in _EXCLUDED_PORT_PROTOS
            )
        rules.append(AddRule(family, RULE_PRIORITY_MAIN, MAIN_TABLE, suppress_prefixlength=0))
        rules.append(AddRule(family, RULE_PRIORITY_CAPTURE, table, fwmark=fwmark, invert=True))
    return Plan((*fail_closed, *throws, *captures, *rules), fwmark=fwmark, table=table)


def relay_hosts(chain: ChainConfig | None) -> tuple[Address, ...]:
    """The addresses of every node of the chain's first hop: whichever the selector picks, tungo's
    first connection goes there, so each must bypass the TUN (for unmarked traffic too)."""
    if chain is None or not chain.hops:
        return ()
    hosts: list[Address] = []
    for node in chain.hops[0].nodes:
        try:
            addr = Address.parse(node.addr)
        except ValueError as exc:
            raise ConfigError(f"routing: node {node.name!r} addr {node.addr!r}: {exc}") from None
        if addr not in hosts:
            hosts.append(addr)
    return tuple(hosts)


def _exclusions(excluded: Iterable[IPNetwork | str], relay_addresses: Iterable[IPAddress]) -> list[IPNetwork]:
    nets: list[IPNetwork] = []
    for item in excluded:
        if isinstance(item, str):
            try:
                net = ip_network(item.strip(), strict=False)
            except ValueError:
                raise ConfigError(
                    f"routing: excluded {item!r}: expected a CIDR such as 10.96.0.0/12"
                ) from None
        else:
            net = item
        nets.append(net)
    nets.extend(ip_network(address) for address in relay_addresses)
    unique: list[IPNetwork] = []
    for net in nets:
        if net not in unique:
            unique.append(net)
    return unique
