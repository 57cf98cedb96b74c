"""The routed dialer: the one place a flow's decision turns into a dial — chain, direct, or refused.

``RoutedDialer.dial_tcp_flow`` / ``dial_udp_flow`` ask ``chain.route.Policy`` for the flow's decision,
count it, log one debug line (route, the rule and the bypass that decided it, the flow's name), then
dial: ``CHAIN`` through ``net.router.ChainDialer`` on the decided path (the sniffed name when there is
one, so the far end resolves it; with ``fallback`` the original address on the same path if that
fails), ``DIRECT`` through the direct dialer (marked, bound to the service's interface: a bypassed
flow never re-enters the TUN), ``REFUSE`` raises ``RouteRefusedError`` (the TUN answers RST / ICMP
"administratively prohibited", proxy handlers their protocol's "not allowed").

It is also a plain ``FlowDialer`` (``dial_tcp(target)``): the socks5/http/relay handlers dial through it,
so their services' and chains' bypasses apply to their clients' targets too. The TUN engine and those
handlers hold one each, built by ``app`` per service. Never parses bytes or matches patterns itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from tungo_sidecar import errors
from tungo_sidecar.chain.route import Decision, Flow, Policy, Route
from tungo_sidecar.net.dialer import FlowDialer
from tungo_sidecar.net.router import ChainDialer
from tungo_sidecar.net.stream import CHUNK, Datagrams, Stream, half_closes
from tungo_sidecar.proto.address import Address, Network

log = logging.getLogger(__name__)

#: With ``sniffing.fallback``, how long a dial of a sniffed name waits for the far end's first answer
#: before the flow goes on without one (a server that answers only after more of the request: the
#: rest of it waits in the kernel meanwhile, so this is kept short; nothing is lost either way).
FALLBACK_WAIT = 2.0


@dataclass(slots=True)
class RouteStats:
    """Decisions made, by route, and sniffed-name dials retried on the address (``sniffing.fallback``)."""

    decisions: dict[Route, int] = field(default_factory=lambda: dict.fromkeys(Route, 0))
    fallbacks: int = 0

    def snapshot(self) -> dict[str, int]:
        counts = {f"route_{route.value}": n for route, n in self.decisions.items()}
        return {**counts, "route_fallbacks": self.fallbacks}


class RoutedDialer:
    """Decides with ``policy`` and dials with ``chain`` (None: no ``-F``) or ``direct``."""

    def __init__(
        self,
        policy: Policy,
        *,
        chain: ChainDialer | None,
        direct: FlowDialer,
        fallback: bool = False,
        on_chain_failure: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy
        self.chain = chain
        self.direct = direct
        self.fallback = fallback
        self.stats = RouteStats()
        self._on_chain_failure = on_chain_failure

    def decide(self, flow: Flow) -> Decision:
        decision = self.policy.decide(flow)
        if decision.route is Route.CHAIN and self.chain is None:
            # A policy built without a chain never says CHAIN; a mismatch is a wiring bug: fail closed.
            decision = Decision(Route.REFUSE, reason="chain route but no chain dialer")
        self.stats.decisions[decision.route] += 1
        if log.isEnabledFor(logging.DEBUG):
            reason = f" [{decision.reason}]" if decision.reason else ""
            log.debug("route %s: %s%s", decision.route, flow, reason)
        return decision

    async def dial_tcp_flow(self, flow: Flow, first: bytes = b"") -> Stream:
        """A stream for ``flow`` with ``first`` (the bytes read while sniffing) already sent on it."""
        decision = self.decide(flow)
        if decision.route is Route.DIRECT:
            return await _sent(await self.direct.dial_tcp(flow.dst), first)
        chain = self._chain_for(flow, decision)
        target = flow.chain_target
        fallback = self.fallback and target != flow.dst
        try:
            stream = await _sent(await chain.dial_tcp(target, decision.path), first)
            if not fallback:
                return stream
            # A relay request is answered lazily (GOST's server sends its status with the target's first
            # bytes): whether the far end reached the name shows on the first read, so look at it now,
            # while ``first`` can still be replayed elsewhere.
            return await _first_answer(stream, FALLBACK_WAIT)
        except (errors.TungoError, OSError, EOFError) as exc:
            if not fallback or isinstance(exc, errors.RouteRefusedError):
                self._chain_failed()
                raise
            self.stats.fallbacks += 1
            log.debug("route chain: %s: the name failed (%s); dialling the address (fallback)", flow, exc)
        try:
            return await _sent(await chain.dial_tcp(flow.dst, decision.path), first)
        except (errors.TungoError, OSError):
            self._chain_failed()
            raise

    async def dial_udp_flow(self, flow: Flow) -> Datagrams:
        decision = self.decide(flow)
        if decision.route is Route.DIRECT:
            return await self.direct.dial_udp(flow.dst)
        chain = self._chain_for(flow, decision)
        try:
            return await chain.dial_udp(flow.chain_target, decision.path)
        except (errors.TungoError, OSError):
            self._chain_failed()
            raise

    # ``FlowDialer``: the proxy handlers' clients name their targets; no source, nothing sniffed.
    async def dial_tcp(self, target: Address) -> Stream:
        return await self.dial_tcp_flow(Flow(Network.TCP, None, target))

    async def dial_udp(self, target: Address) -> Datagrams:
        return await self.dial_udp_flow(Flow(Network.UDP, None, target))

    def _chain_for(self, flow: Flow, decision: Decision) -> ChainDialer:
        if decision.route is Route.REFUSE or self.chain is None:
            raise errors.RouteRefusedError(f"{flow}: refused by {decision.reason or 'policy'}")
        return self.chain

    def _chain_failed(self) -> None:
        # The TUN service probes the first hop at once: readiness follows what apps just saw.
        if self._on_chain_failure is not None:
            self._on_chain_failure()


async def _sent(stream: Stream, first: bytes) -> Stream:
    """``stream`` once ``first`` is written to it (closed if that fails)."""
    if first:
        try:
            await stream.write(first)
        except BaseException:
            await stream.close()
            raise
    return stream


async def _first_answer(stream: Stream, wait: float) -> Stream:
    """``stream`` once its first read answered, or failed (raised, stream closed), or ``wait`` passed.

    The read is never cancelled half-way (a relay or websocket reader must not lose its place): if it
    is still running when the wait ends, it is handed over and the stream's next read returns it."""
    read = asyncio.ensure_future(stream.read(CHUNK))
    await asyncio.wait([read], timeout=wait)
    if read.done():
        try:
            return _Answered(stream, read.result())
        except BaseException:
            await stream.close()
            raise
    return _Answered(stream, read)


class _Answered:
    """A ``Stream`` whose first read is one already made (its bytes, or the task still making it)."""

    __slots__ = ("_first", "_inner")

    def __init__(self, inner: Stream, first: bytes | asyncio.Future[bytes]) -> None:
        self._inner = inner
        self._first: bytes | asyncio.Future[bytes] | None = first

    @property
    def half_close(self) -> bool:
        return half_closes(self._inner)

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        first, self._first = self._first, None
        if first is None:
            return await self._inner.read(max_bytes)
        data = first if isinstance(first, bytes) else await first
        if len(data) > max_bytes:
            self._first = data[max_bytes:]
            data = data[:max_bytes]
        return data

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def write_eof(self) -> None:
        await self._inner.write_eof()

    async def close(self) -> None:
        if isinstance(self._first, asyncio.Future):
            self._first.cancel()
        await self._inner.close()
