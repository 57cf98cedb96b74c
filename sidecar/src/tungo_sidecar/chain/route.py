"""The route decision for one captured flow: through the chain, or direct.

Owns the ``Flow`` a TUN engine (or a proxy handler) describes and the pure function ``decide`` that
picks its path. Called once per new flow by ``tun.engine`` before any dial. It must stay pure: no I/O,
no clocks, no global state; everything it needs is in the ``Flow`` (addresses now; the sniffed host
name once sniffing lands) and, later, in the bypass rules bound with ``functools.partial``.

Documented exclusions (``Route.DIRECT`` today): destinations that only make sense on this host's own
link — loopback, link-local, multicast, the IPv4 limited broadcast and unspecified addresses. A chain
node far away cannot reach "this link", so sending them through it would only hide a failure.
Everything else goes through the chain: fail closed by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tungo_sidecar.proto.address import Address, Network


class Route(StrEnum):
    """Which dialer carries a flow."""

    CHAIN = "chain"
    DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Flow:
    """A flow as the engine saw its first packet: ``host`` is the sniffed name (HTTP Host, TLS SNI)."""

    network: Network
    src: Address
    dst: Address
    host: str | None = None


def decide(flow: Flow) -> Route:
    """The path ``flow`` takes; see the module docstring for the exclusions."""
    ip = flow.dst.ip
    if ip is None:
        # A sniffed name with no address is for the chain to resolve remotely (no local DNS leak).
        return Route.CHAIN
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return Route.DIRECT
    if ip.version == 4 and int(ip) == 0xFFFFFFFF:
        return Route.DIRECT
    return Route.CHAIN
