"""How a flow reaches its target: the one interface the TUN engine and every proxy handler dial through.

``FlowDialer`` is implemented by the chain router (through the configured hops) and by the direct
dialer (a plain socket, marked with SO_MARK and optionally bound to an interface so it never loops
back into the TUN). Callers never care which one they hold: the route decision is made before.
"""

from __future__ import annotations

from typing import Protocol

from tungo_sidecar.net.stream import Datagrams, Stream
from tungo_sidecar.proto.address import Address


class FlowDialer(Protocol):
    """Opens TCP streams and UDP sessions to targets. Failures raise ``DialError`` or a relay status."""

    async def dial_tcp(self, target: Address) -> Stream: ...

    async def dial_udp(self, target: Address) -> Datagrams: ...
