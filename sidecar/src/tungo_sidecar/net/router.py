"""The chain dialer: reaches targets through the hops of a ``ChainConfig`` (or a decided part of them).

For each flow: open a TCP socket to hop 1's node (marked with SO_MARK, optionally bound to an
interface, so it never loops into the TUN), run hop 1's transport handshake (tls, ws, wss...), ask
hop 1's connector for hop 2's node, run hop 2's transport handshake inside that tunnel, and so on;
the last hop's connector asks for the target itself (TCP stream or UDP session).

Called by ``net.routed.RoutedDialer`` with the path ``chain.route`` decided (a hop bypass may end it
early, node bypasses may leave fewer nodes), and as a plain ``FlowDialer`` (every hop) where no rules
apply. Which node of a hop is used is ``chain.select``'s pure choice; this module never decides
whether a flow takes the chain and never parses protocol bytes (connectors do). Failures are
``DialError`` (naming the hop and node), a relay status error or ``ProxyRefusedError``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tungo_sidecar import errors
from tungo_sidecar.chain.route import HopStep
from tungo_sidecar.chain.select import first_eligible
from tungo_sidecar.config.model import ChainConfig, Node
from tungo_sidecar.config.validate import node_socket_options
from tungo_sidecar.net import sockopts, transports
from tungo_sidecar.net.connectors import Connector, HopContext, make_connector
from tungo_sidecar.net.stream import Datagrams, Stream
from tungo_sidecar.proto.address import Address

log = logging.getLogger(__name__)

#: Picks the node of a hop that carries the next flow, among those the route left eligible.
NodeSelector = Callable[[HopStep], Node]
#: The hops a dial goes through, each with its eligible nodes (``chain.route.Decision.path``).
Path = Sequence[HopStep]


@dataclass(frozen=True, slots=True)
class _PreparedNode:
    """A node with what every dial needs parsed once: its address, connector and transport."""

    node: Node
    addr: Address
    connector: Connector
    transport: transports.ClientTransport


def _prepare(node: Node) -> _PreparedNode:
    try:
        addr = Address.parse(node.addr)
    except ValueError as exc:
        raise errors.ConfigError(f"node {node.name!r}: bad address {node.addr!r}: {exc}") from exc
    return _PreparedNode(
        node, addr, make_connector(node.connector), transports.client_transport(node.dialer.type)
    )


class ChainDialer:
    """Dials through ``chain``'s hops. Config errors (unknown connector/dialer, bad address) raise
    ``ConfigError`` at construction, not on the first flow. ``mark``/``interface`` given here override
    the first node's own ``so_mark``/``interface``."""

    def __init__(
        self,
        chain: ChainConfig,
        *,
        mark: int | None = None,
        interface: str | None = None,
        select: NodeSelector = first_eligible,
        connect_timeout: float = sockopts.DEFAULT_TIMEOUT,
    ) -> None:
        if not chain.hops:
            raise errors.ConfigError(f"chain {chain.name!r} has no hops")
        self.chain = chain
        self._mark = mark
        self._interface = interface
        self._select = select
        self._timeout = connect_timeout
        self._prepared: dict[int, _PreparedNode] = {}
        #: Every hop with every node: the path of a dial no rule shortened.
        self.full_path: tuple[HopStep, ...] = tuple(HopStep(hop, hop.nodes) for hop in chain.hops)
        for step in self.full_path:
            for node in step.hop.nodes:
                self._prepared[id(node)] = _prepare(node)
            select(step)  # an empty hop fails now

    def _node(self, step: HopStep) -> _PreparedNode:
        node = self._select(step)
        prepared = self._prepared.get(id(node))
        return prepared if prepared is not None else _prepare(node)

    async def _through_hops(self, path: Path | None) -> tuple[Stream, _PreparedNode, HopContext]:
        """A stream to the last node of ``path``, every transport handshake done, ready for its connector."""
        steps = path if path else self.full_path
        hops = [self._node(step) for step in steps]
        first = hops[0]
        # The node's own options (GOST's interface / so_mark, inherited from its hop) unless the
        # builder imposes them (the TUN engine must mark every socket with its routing mark).
        options = node_socket_options(steps[0].hop, first.node)
        mark = self._mark if self._mark is not None else (options.so_mark or None)
        interface = self._interface or options.interface
        stream: Stream = await sockopts.open_tcp(
            first.addr, mark=mark, interface=interface, timeout=self._timeout
        )
        try:
            stream = await first.transport.handshake(stream, first.node.dialer, first.addr)
            for previous, node in itertools.pairwise(hops):
                try:
                    stream = await previous.connector.connect_tcp(stream, node.addr)
                except (OSError, EOFError) as exc:
                    raise errors.DialError(f"hop {previous.node.name!r} → {node.addr}: {exc}") from exc
                stream = await node.transport.handshake(stream, node.node.dialer, node.addr)
        except BaseException:
            await stream.close()
            raise
        last = hops[-1]
        context = HopContext(last.addr, first_hop=len(hops) == 1, mark=mark, interface=interface)
        return stream, last, context

    async def dial_tcp(self, target: Address, path: Path | None = None) -> Stream:
        """A stream to ``target`` through ``path`` (default: every hop)."""
        stream, last, _ = await self._through_hops(path)
        try:
            return await last.connector.connect_tcp(stream, target)
        except BaseException as exc:
            await stream.close()
            if isinstance(exc, OSError | EOFError):
                raise errors.DialError(f"node {last.node.name!r} → {target}: {exc}") from exc
            raise

    async def dial_udp(self, target: Address, path: Path | None = None) -> Datagrams:
        """A UDP session with ``target`` through ``path`` (default: every hop)."""
        stream, last, context = await self._through_hops(path)
        try:
            if not last.connector.supports_udp:
                raise errors.DialError(
                    f"node {last.node.name!r}: connector {last.node.connector.type} has no UDP"
                )
            return await last.connector.connect_udp(stream, target, context)
        except BaseException as exc:
            await stream.close()
            if isinstance(exc, OSError | EOFError):
                raise errors.DialError(f"node {last.node.name!r} → {target} (udp): {exc}") from exc
            raise
