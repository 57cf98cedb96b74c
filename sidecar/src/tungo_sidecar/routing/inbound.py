"""Replies to inbound connections leave the way the connection came: the nftables ruleset, as data.

Owns the *decision* of which packets get a mark so that the capture (``routing.plan``) leaves them
alone; ``routing.netfilter`` owns applying it (``nft -f -``). ``routing.hooks.Capture`` calls
``make_inbound`` next to ``make_plan``; tests compare rendered rulesets with golden files. Pure: never
runs ``nft``, opens a socket or reads the kernel's state.

The problem it solves. The capture sends every *unmarked* packet whose destination it covers into the
TUN. Replies to connections that were opened *towards* the pod — the kubelet's startupProbe/livenessProbe
from the node's address to the sidecar's ``/readyz``, ingress or NodePort traffic to the app — are
locally generated and unmarked too, so with a default route captured they went into the TUN: the probe
never got its SYN-ACK and the pod never started.

The fix is conntrack's memory of who opened a connection (wg-quick solves the same problem for its own
fwmark the same way). In table ``inet tungo`` (both families at once):

* ``prerouting`` (filter, priority mangle): the first packet of a connection that arrives on any
  interface but the TUN and ``lo`` gives the connection the ct mark ``M``. For TCP only a real SYN does:
  conntrack also "picks up" connections from their middle (``nf_conntrack_tcp_loose``), e.g. a pod's
  own outbound connection opened before the ruleset existed, whose next reply would otherwise mark it
  as inbound and steer the pod's own packets around the TUN. The TUN is skipped because connections
  arriving on it are tungo's own NAT'd flows, which must keep going back into it; ``lo`` because local
  traffic is delivered by the local table whatever its mark. Packets of marked connections also get
  the packet mark ``M`` (only when they have none: another tool's mark on an inbound packet is not
  ours to change), so a strict reverse-path filter can use it — see ``routing.netfilter``.
* ``output`` (type *route*, priority mangle): every locally generated packet of a connection with ct
  mark ``M`` — SYN-ACKs, data, RSTs, UDP replies, ICMP errors related to it — gets the packet mark
  ``M``. A ``route`` chain makes the kernel look the route up again when the mark changed, and ``M`` is
  exactly the mark the capture rule ``not fwmark M lookup T`` lets through: the reply goes out by the
  ``main`` table, where the connection came from. It overrides any mark the replying socket set: a
  reply steered anywhere else would not reach the peer that opened the connection.

* ``table arp tungo``, ``input``: incoming ARP packets get the packet mark ``M`` too. The kernel
  answers an ARP request only after a reverse-path check of its sender address, which is the peer's
  own (a node answers "who has <pod IP>, tell <node IP>"): with a strict ``rp_filter`` and the peer's
  address captured, the pod would never even answer its neighbour. Only that check reads the mark.

``net.ipv4.tcp_fwmark_accept`` is not needed: every reply packet is re-marked (and re-routed) in
``output``, whatever mark the accepted socket has. Connections the pod opens itself get their conntrack
entry in ``output``, never pass ``prerouting`` as new, and stay captured. ``M`` is the plan's fwmark
(the service's ``so_mark`` or ``routing.plan.FWMARK``) for the ct mark too: one number to grep for. A
pod in which another tool sets ct marks on inbound connections (Istio's TPROXY mode uses 0x539 on its
own) should give tungo a distinct ``so_mark``; the ct mark of a connection is set once, when it is new.

UDP servers: a reply is recognised by conntrack only if it comes from the address the request was
sent to. A socket bound to the wildcard address that answers with a plain ``sendto`` gets the source
address of the route lookup — with a default route into the TUN, the TUN's own — so its reply is a new
flow, captured like any other. Servers bound to the pod's address, connected UDP sockets and servers
using ``IP_PKTINFO`` (as DNS and QUIC servers on multi-homed hosts do) answer correctly.

The tables belong to tungo alone and hold nothing else, so applying means "replace the whole tables"
in one ``nft`` transaction (``add table`` + ``delete table`` + the table: atomic, idempotent, correct
after a crash that left an older version) and the teardown is "delete the tables". After a SIGKILL
they stay until the next start replaces them: harmless, they only send replies where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from tungo_sidecar.errors import ConfigError
from tungo_sidecar.routing.plan import FWMARK

#: ``table inet tungo`` (``inet``: IPv4 and IPv6 with one ruleset) and ``table arp tungo``. One fixed
#: name per network namespace, like the routing plan's table: a restart, whatever its TUN's name,
#: replaces them.
NFT_TABLE = "tungo"
#: "mangle" (-150): after conntrack (-200) has attached the connection to the packet, which the
#: ``ct`` expressions need, and where marks that affect routing are traditionally set.
NFT_PRIORITY = "mangle"
# nft reads these specially inside an interface name string: '"' ends it, '\' escapes, '*' is a wildcard.
_NFT_SPECIAL = '"\\*'


@dataclass(frozen=True, slots=True)
class NftRule:
    """One rule: nft statement text and why it is there (rendered as the rule's ``comment``)."""

    statement: str
    comment: str

    def render(self) -> str:
        return f'{self.statement} comment "{self.comment}"'


@dataclass(frozen=True, slots=True)
class NftChain:
    """A base chain: ``type T hook H priority P; policy accept;`` and its rules, in order."""

    name: str
    type: str
    hook: str
    rules: tuple[NftRule, ...]
    priority: str = NFT_PRIORITY

    def render(self) -> list[str]:
        lines = [
            f"\tchain {self.name} {{",
            f"\t\ttype {self.type} hook {self.hook} priority {self.priority}; policy accept;",
        ]
        lines.extend(f"\t\t{rule.render()}" for rule in self.rules)
        lines.append("\t}")
        return lines


@dataclass(frozen=True, slots=True)
class NftTable:
    """``table FAMILY NAME`` and its chains."""

    family: str
    name: str
    chains: tuple[NftChain, ...]

    def render(self) -> list[str]:
        lines = [f"table {self.family} {self.name} {{"]
        for i, chain in enumerate(self.chains):
            if i:
                lines.append("")
            lines.extend(chain.render())
        lines.append("}")
        return lines


@dataclass(frozen=True, slots=True)
class InboundRuleset:
    """The ``tungo`` tables. ``render()`` is the ``nft -f`` script that (re)places them in one
    transaction, ``render_teardown()`` the one that removes them (already gone is fine)."""

    tun: str
    mark: int
    tables: tuple[NftTable, ...]

    def _delete(self) -> list[str]:
        # "add" makes the "delete" succeed when a table does not exist yet; all of it runs in one
        # transaction with what follows, so no packet ever sees a table half-built or missing.
        lines = []
        for table in self.tables:
            lines += [f"add table {table.family} {table.name}", f"delete table {table.family} {table.name}"]
        return lines

    def render(self) -> str:
        lines = self._delete()
        for table in self.tables:
            lines.extend(table.render())
        return "\n".join(lines) + "\n"

    def render_teardown(self) -> str:
        return "\n".join(self._delete()) + "\n"


def make_inbound(tun: str, *, mark: int = FWMARK) -> InboundRuleset:
    """The ruleset keeping replies of connections opened towards the pod (not through TUN ``tun``)
    out of the capture whose rule lets mark ``mark`` through. ConfigError on a bad mark or a name nft
    cannot quote."""
    if not 0 < mark <= 0xFFFFFFFF:
        raise ConfigError(f"routing: fwmark {mark:#x}: must be a non-zero 32-bit value")
    if not tun or any(c in tun for c in _NFT_SPECIAL) or not tun.isprintable():
        raise ConfigError(f"routing: TUN name {tun!r}: cannot be matched by nftables (no '\"', '\\' or '*')")
    m = f"{mark:#x}"
    prerouting = NftChain(
        "prerouting",
        "filter",
        "prerouting",
        (
            NftRule(f'iifname {{ "lo", "{tun}" }} return', "tungo flows and local traffic stay as they are"),
            NftRule(
                f"ct state new meta l4proto != tcp ct mark set {m}",
                "a connection opened towards the pod: its replies leave by main",
            ),
            NftRule(
                f"ct state new tcp flags & (fin | syn | rst | ack) == syn ct mark set {m}",
                "TCP: only a real SYN opens one, not a mid-stream pickup",
            ),
            NftRule(
                f"ct mark {m} meta mark 0 meta mark set {m}",
                "for a strict rp_filter with src_valid_mark",
            ),
        ),
    )
    output = NftChain(
        "output",
        "route",
        "output",
        (NftRule(f"ct mark {m} meta mark set {m}", "replies skip the capture: re-routed by main"),),
    )
    arp = NftChain(
        "input",
        "filter",
        "input",
        (NftRule(f"meta mark 0 meta mark set {m}", "the reply check of an ARP request's sender uses main"),),
        priority="filter",
    )
    return InboundRuleset(
        tun, mark, (NftTable("inet", NFT_TABLE, (prerouting, output)), NftTable("arp", NFT_TABLE, (arp,)))
    )
