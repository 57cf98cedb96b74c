"""How a flow reaches its target: the interfaces the TUN engine and every proxy handler dial through.

``FlowDialer`` is implemented by the chain dialer (through the configured hops), by the direct dialer
(a plain socket, marked with SO_MARK and optionally bound to an interface so it never loops back into
the TUN) and by ``net.routed.RoutedDialer``, which decides first and then uses one of the other two.
``FlowRouter`` is what the TUN engine needs: a dial per ``chain.route.Flow``, which carries what the
engine knows beyond the target (source, sniffed or DNS-learnt name).
"""

from __future__ import annotations

from typing import Protocol

from tungo_sidecar.chain.route import Flow
from tungo_sidecar.net.stream import Datagrams, Stream
from tungo_sidecar.proto.address import Address


class FlowDialer(Protocol):
    """Opens TCP streams and UDP sessions to targets. Failures raise ``DialError`` or a relay status."""

    async def dial_tcp(self, target: Address) -> Stream: ...

    async def dial_udp(self, target: Address) -> Datagrams: ...


class FlowRouter(Protocol):
    """Routes and dials whole flows; a refusal raises ``RouteRefusedError``."""

    async def dial_tcp_flow(self, flow: Flow, first: bytes = b"") -> Stream:
        """A stream for ``flow``, with ``first`` (bytes the app already sent) written to it."""
        ...

    async def dial_udp_flow(self, flow: Flow) -> Datagrams: ...
