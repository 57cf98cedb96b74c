"""The route decision for one flow: refused, direct, or through which hops of the chain.

Owns ``Flow`` (what the TUN engine or a proxy handler knows of a new flow), ``Decision`` and
``Policy``, the pure object that makes the decision with GOST's scopes (go-gost/x ``handler/tungo``,
``chain.Route``, ``hop.Select``):

* the **service's** bypass (``-L ...?bypass=``, ``services[].bypass``) *refuses* a flow it matches —
  GOST's handlers close such a connection; tungo answers the app with an RST / ICMP "administratively
  prohibited" like any refusal;
* a **hop's** bypass that matches ends the route before that hop (GOST's ``Route`` stops at a hop whose
  ``Select`` returns no node): the previous hop's node reaches the target itself, and a match on the
  first hop leaves no hop at all, a **direct** dial;
* a **node's** bypass takes that node out of its hop's candidates; a hop left with none ends the route
  there too.

Rules see the flow's name (``host``: sniffed HTTP Host / TLS SNI, or learnt from DNS) *and* its
address, so a domain whitelist still matches after sniffing (go-gost/gost#899 is GOST missing exactly
this). ``sniffing.fallback`` re-dials the original address on the *same* decision, never a new one made
without the name (which could turn a whitelisted flow direct).

For the TUN (``this_link_direct``), before any bypass of the chain: destinations that only make sense
on this host's own link — loopback, link-local, multicast, the IPv4 limited broadcast and unspecified
addresses — go direct. A chain node far away cannot reach "this link", so sending them through it
would only hide a failure. A proxy handler's client naming ``127.0.0.1`` means the far end's own
loopback (GOST sends it through the chain), so proxies keep them on the chain. Everything else goes
through the chain: fail closed by default.

Pure: no I/O, no clocks, no globals. Built once per service (``app``) from compiled ``rules.bypass``
objects; called once per new flow by ``net.routed`` before any dial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from tungo_sidecar.config.model import ChainConfig, Hop, Node
from tungo_sidecar.proto.address import Address, Network
from tungo_sidecar.rules.bypass import Bypass, Verdict
from tungo_sidecar.rules.group import check_group
from tungo_sidecar.rules.matchers import Target


class Route(StrEnum):
    """Where a flow goes."""

    CHAIN = "chain"
    DIRECT = "direct"
    REFUSE = "refused"


@dataclass(frozen=True, slots=True)
class Flow:
    """A new flow. ``host`` is a name for the rules (sniffed, or learnt from DNS); ``sniffed`` says it
    came from the flow's own first bytes, and then the chain is asked for the name (remote resolution,
    no DNS lookup here) instead of the address."""

    network: Network
    src: Address | None
    dst: Address
    host: str | None = None
    sniffed: bool = False

    @property
    def chain_target(self) -> Address:
        """What the chain's last hop is asked to reach: the sniffed name on the flow's port, else ``dst``."""
        if self.sniffed and self.host:
            return Address(self.host, self.dst.port)
        return self.dst

    def target(self) -> Target:
        """The flow as the rules see it: its name (if any), its address (if it has one), its port."""
        ip = self.dst.ip
        host = self.host if self.host else (self.dst.host if ip is None else None)
        return Target(host=host, ip=ip, port=self.dst.port)

    def __str__(self) -> str:
        name = f" ({self.host})" if self.host else ""
        return f"{self.network} {self.src or '?'} -> {self.dst}{name}"


@dataclass(frozen=True, slots=True)
class HopStep:
    """One hop of a decided path and the nodes of it still eligible (node bypasses applied)."""

    hop: Hop
    nodes: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """The route of one flow; ``path`` is non-empty exactly for ``CHAIN``; ``reason`` is for logs."""

    route: Route
    path: tuple[HopStep, ...] = ()
    reason: str = ""


def _local_only(flow: Flow) -> bool:
    ip = flow.dst.ip
    if ip is None:
        return False
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return True
    return ip.version == 4 and int(ip) == 0xFFFFFFFF


def _matched(verdict: Verdict, where: str) -> str:
    how = f"matched {verdict.pattern.text!r}" if verdict.pattern is not None else "no whitelist entry matched"
    origin = f" ({verdict.pattern.origin})" if verdict.pattern is not None and verdict.pattern.origin else ""
    return f"{where} bypass {verdict.rule!r}: {how}{origin}"


@dataclass(frozen=True, slots=True)
class _HopRules:
    hop: Hop
    bypasses: tuple[Bypass, ...]
    nodes: tuple[tuple[Node, tuple[Bypass, ...]], ...]


class Policy:
    """GOST's bypass scopes over one service and its chain; ``decide`` is called once per flow."""

    __slots__ = ("_hops", "_service", "_this_link_direct")

    def __init__(
        self,
        chain: ChainConfig | None,
        *,
        service_bypasses: tuple[str, ...] = (),
        bypasses: Mapping[str, Bypass] | None = None,
        this_link_direct: bool = False,
    ) -> None:
        """``bypasses`` holds the compiled bypass of every name the service, hops and nodes use."""
        found = bypasses or {}

        def group(names: tuple[str, ...]) -> tuple[Bypass, ...]:
            return tuple(found[name] for name in names)

        self._this_link_direct = this_link_direct
        self._service = group(service_bypasses)
        self._hops = tuple(
            _HopRules(hop, group(hop.bypasses), tuple((node, group(node.bypasses)) for node in hop.nodes))
            for hop in (chain.hops if chain is not None else ())
        )

    def decide(self, flow: Flow) -> Decision:
        target = flow.target()
        if self._service and (verdict := check_group(self._service, target)) is not None:
            return Decision(Route.REFUSE, reason=_matched(verdict, "service"))
        if self._this_link_direct and _local_only(flow):
            return Decision(Route.DIRECT, reason="an address of this host's own link")
        if not self._hops:
            return Decision(Route.DIRECT, reason="no chain")
        path: list[HopStep] = []
        reason = ""
        for rules in self._hops:
            if rules.bypasses and (verdict := check_group(rules.bypasses, target)) is not None:
                reason = _matched(verdict, f"hop {rules.hop.name!r}")
                break
            eligible = tuple(node for node, group in rules.nodes if check_group(group, target) is None)
            if not eligible:
                reason = f"hop {rules.hop.name!r}: every node's bypass matched"
                break
            path.append(HopStep(rules.hop, eligible))
        if not path:
            return Decision(Route.DIRECT, reason=reason)
        if reason:
            return Decision(Route.CHAIN, tuple(path), f"{len(path)} of {len(self._hops)} hops: {reason}")
        return Decision(Route.CHAIN, tuple(path))
