"""The ``tungo`` service: one ``-L tungo://...`` entry wired into a running TUN data plane.

Owns the start/stop order of the pieces others built, nothing more: ``TunSettings`` from the service
(``config.tun``) → the TUN device with offload (``tun.device``) → the engine serving it
(``tun.engine``) → the capture: routes with the first hop's relay addresses excluded, DNS, ``postUp``
(``routing.hooks.Capture``) → readiness flags. ``stop`` undoes it in reverse: ``postDown`` and the
route teardown, the engine, the device. ``app.runner`` builds it through ``TUN_SERVICE_FACTORY`` (set
by importing this module, which the runner does) and drives ``start``/``stop``.

Loop avoidance lives in one number: every socket this service opens itself — to the chain's first hop
(``ChainDialer(mark=M)``), bypassed direct dials (``DirectDialer(mark=M, interface=...)``) and the
readiness probe — carries the fwmark ``M`` the routing plan's ``not fwmark M`` rule lets through to the
pod's own table. ``M`` is the service's ``so_mark`` when given, else ``routing.plan.FWMARK``.

A failure anywhere in ``start`` undoes what was already done (routes, engine, device) before raising
one ``TunError`` (the CLI prints it as one line and exits 1). A SIGKILL gives no chance to undo: the
plan's ``unreachable`` twins keep captured destinations closed, and the next start re-applies the
same plan on top (replace semantics: no duplicates). Never decides routes, parses packets or speaks a
protocol itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from tungo_sidecar.app import health
from tungo_sidecar.chain.route import Policy
from tungo_sidecar.chain.select import first_node
from tungo_sidecar.config.model import ChainConfig, Config, Service
from tungo_sidecar.config.sniffing import SniffSettings
from tungo_sidecar.config.tun import TunSettings
from tungo_sidecar.config.validate import node_socket_options, service_socket_options
from tungo_sidecar.errors import TunError, TungoError
from tungo_sidecar.net import sockopts, transports
from tungo_sidecar.net.direct import DirectDialer
from tungo_sidecar.net.routed import RoutedDialer
from tungo_sidecar.net.router import ChainDialer
from tungo_sidecar.net.stream import Stream
from tungo_sidecar.proto.address import Address
from tungo_sidecar.routing.hooks import Capture
from tungo_sidecar.routing.plan import FWMARK
from tungo_sidecar.tun.device import TunDevice, open_tun_async
from tungo_sidecar.tun.engine import TunEngine

if TYPE_CHECKING:
    from tungo_sidecar.config.model import Node

log = logging.getLogger(__name__)

#: Seconds between two probes of the first hop while it answers, and while it does not. The probe is one
#: TCP connect plus the transport handshake (TLS, websocket upgrade): cheap for the server, and a chain
#: that comes back is noticed within the shorter interval.
PROBE_INTERVAL_OK = 10.0
PROBE_INTERVAL_DOWN = 2.0
#: One probe's budget: a node that takes longer than this to handshake is not "answering" for a probe.
PROBE_TIMEOUT = 5.0
#: A failed chain dial triggers a probe at once (readiness follows what apps see), but never more often.
PROBE_MIN_GAP = 0.5
#: How long ``start`` lets the engine run before trusting it is up (its listeners bind in the first step).
_ENGINE_SETTLE = 0.05


class ChainProbe:
    """Is the chain's first hop answering? A marked TCP connect plus its transport handshake, then close.

    No relay request is sent: the point is "the node is there and its TLS/websocket layer answers",
    which is what an app's first connection needs, at the cost of one handshake.
    """

    def __init__(self, chain: ChainConfig, *, mark: int, interface: str | None) -> None:
        hop = chain.hops[0]
        node = first_node(hop)
        options = node_socket_options(hop, node)
        self.node: Node = node
        self.addr = Address.parse(node.addr)
        self._mark = mark
        self._interface = interface or options.interface
        self._transport = transports.client_transport(node.dialer.type)

    async def __call__(self) -> None:
        """Return when the node answered; raise ``TungoError``/``OSError`` (or time out) otherwise."""
        async with asyncio.timeout(PROBE_TIMEOUT):
            stream: Stream = await sockopts.open_tcp(
                self.addr, mark=self._mark, interface=self._interface, timeout=PROBE_TIMEOUT
            )
            try:
                stream = await self._transport.handshake(stream, self.node.dialer, self.addr)
            finally:
                await stream.close()


class TunService:
    """A ``tungo`` service, runnable by ``app.runner``. ``engine``/``device`` exist once started."""

    def __init__(self, service: Service, config: Config, policy: Policy | None = None) -> None:
        self.config = service
        self.settings = TunSettings.from_service(service)
        self.sniffing = SniffSettings.from_metadata(service.handler.metadata)
        options = service_socket_options(service)
        self.mark = options.so_mark or FWMARK
        self.chain = config.chain(service.chain)
        first_hop_interface: str | None = None
        if self.chain is not None and self.chain.hops:
            hop = self.chain.hops[0]
            first_hop_interface = node_socket_options(hop, first_node(hop)).interface
        # Direct dials leave like the chain's own sockets do: the service's interface, else the first
        # hop's (GOST's ``-F ...?interface=eth0`` names the pod's uplink), else wherever ``main`` says.
        self.interface = self.settings.interface or options.interface or first_hop_interface
        self.direct = DirectDialer(mark=self.mark, interface=self.interface)
        self.probe: ChainProbe | None = None
        if self.chain is not None:
            self.probe = ChainProbe(self.chain, mark=self.mark, interface=None)
        self.dialer = RoutedDialer(
            policy if policy is not None else Policy(self.chain, this_link_direct=True),
            chain=ChainDialer(self.chain, mark=self.mark) if self.chain is not None else None,
            direct=self.direct,
            fallback=self.sniffing.fallback,
            on_chain_failure=self._dial_failed,
        )
        self.capture = Capture(self.settings, self.chain, fwmark=self.mark)
        self.device: TunDevice | None = None
        self.engine: TunEngine | None = None
        self._engine_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_now = asyncio.Event()
        self.ready_tun = health.ReadyFlag(False, "TUN device not open")
        self.ready_routes = health.ReadyFlag(False, "routes not applied")
        self.ready_chain = health.ReadyFlag(False, "no chain node answered yet")
        if self.chain is None:
            self.ready_chain.set()  # no chain: direct dials need no node to answer

    @property
    def name(self) -> str:
        return f"{self.config.name} (tungo {self.settings.name})"

    def register_readiness(self, readiness: health.Readiness) -> None:
        """Add this service's checks (TUN up, routes applied, a chain node answered) to ``/readyz``."""
        readiness.add(health.READY_TUN, self.ready_tun)
        readiness.add(health.READY_ROUTES, self.ready_routes)
        readiness.add(health.READY_CHAIN, self.ready_chain)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException as exc:
            await self._undo()
            if isinstance(exc, TungoError | asyncio.CancelledError):
                raise
            if isinstance(exc, Exception):
                raise TunError(f"tungo {self.settings.name}: start failed: {exc}") from exc
            raise

    async def _start(self) -> None:
        settings = self.settings
        first = self.probe.addr if self.probe is not None else None
        log.info(
            "tungo %s: starting: net %s, mtu %d, routes [%s], fwmark %#x, chain first hop %s%s, sniffing %s",
            settings.name,
            ", ".join(map(str, settings.nets)),
            settings.mtu,
            ", ".join(map(str, settings.routes)),
            self.mark,
            first if first is not None else "none (direct)",
            f", interface {self.interface}" if self.interface else "",
            _describe(self.sniffing),
        )
        self.device = await open_tun_async(settings.name, settings.mtu, settings.nets, offload=True)
        log.info(
            "tungo %s: device up (%s), offload %s",
            self.device.name,
            ", ".join(map(str, self.device.addresses)),
            "on" if self.device.vnet_hdr else "off (plain packets)",
        )
        self.ready_tun.set()
        self.engine = TunEngine(
            self.device, self.dialer, sniffing=self.sniffing, udp_timeout=settings.udp_timeout
        )
        # The engine serves before any route points at the device: no captured SYN waits unread.
        self._engine_task = asyncio.create_task(self.engine.run(), name=f"tungo {settings.name} engine")
        self._engine_task.add_done_callback(self._engine_ended)
        await asyncio.sleep(_ENGINE_SETTLE)
        if self._engine_task.done():
            self._engine_task.result()  # raises the engine's start-up error (a listener that cannot bind)
        applied = await self.capture.start()
        plan = self.capture.plan
        assert plan is not None
        log.info(
            "tungo %s: routes applied: %d step(s) (%d already in place), table %d, fwmark %#x%s",
            settings.name,
            len(applied.steps),
            applied.leftovers,
            plan.table,
            plan.fwmark,
            f", {len(applied.swept)} stale removed" if applied.swept else "",
        )
        for op in plan.operations:
            log.debug("tungo %s: %s", settings.name, op.render())
        self.ready_routes.set()
        if self.probe is not None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name=f"tungo {settings.name} probe")

    def learn_dns(self, payload: bytes) -> None:
        """A DNS answer seen elsewhere (the DNS service of the same process) fills the name map too."""
        if self.engine is not None:
            self.engine.learn_dns(payload)

    def _engine_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        reason = f"engine stopped: {exc}" if exc else "engine stopped"
        if self.device is not None:  # not a stop we asked for
            log.error("tungo %s: %s", self.settings.name, reason)
        self.ready_tun.clear(reason)

    def _dial_failed(self) -> None:
        self._probe_now.set()

    async def _probe_loop(self) -> None:
        assert self.probe is not None
        was_ok: bool | None = None
        while True:  # bounded by the service's life: cancelled in stop()
            try:
                await self.probe()
            except (TungoError, OSError, TimeoutError, EOFError) as exc:
                reason = f"first hop {self.probe.addr} did not answer: {exc or type(exc).__name__}"
                self.ready_chain.clear(reason)
                if was_ok is not False:
                    log.warning("tungo %s: %s", self.settings.name, reason)
                was_ok = False
            else:
                self.ready_chain.set()
                if was_ok is not True:
                    log.info("tungo %s: chain first hop %s answered", self.settings.name, self.probe.addr)
                was_ok = True
            await asyncio.sleep(PROBE_MIN_GAP)
            self._probe_now.clear()
            interval = (PROBE_INTERVAL_OK if was_ok else PROBE_INTERVAL_DOWN) - PROBE_MIN_GAP
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._probe_now.wait(), interval)

    async def stop(self) -> None:
        stats = None
        if self.engine is not None:
            stats = self.engine.stats.snapshot() | self.dialer.stats.snapshot()
        failure = await self._undo()
        if stats is not None:
            # One machine-readable line: the demo and the tests read the engine's counters from it.
            log.info("tungo %s: engine stats %s", self.settings.name, json.dumps(stats, sort_keys=True))
        log.info("tungo %s: stopped", self.settings.name)
        if failure is not None:
            raise failure

    async def _undo(self) -> TunError | None:
        """Undo whatever is in place, in reverse order; the first failure is returned, the rest logged."""
        failure: TunError | None = None
        self.ready_routes.clear("stopping")
        self.ready_tun.clear("stopping")
        for task in (self._probe_task, self._engine_task):
            if task is not None and not task.done():
                task.cancel()
        try:
            await self.capture.stop()  # postDown, then the routes and rules
        except TunError as exc:
            log.error("%s", exc)
            failure = exc
        for task in (self._probe_task, self._engine_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._probe_task = self._engine_task = None
        device, self.device = self.device, None
        if device is not None:
            device.close()
        return failure


def _describe(sniffing: SniffSettings) -> str:
    parts = []
    if sniffing.tcp:
        fallback = ", fallback" if sniffing.fallback else ""
        parts.append(f"tcp (HTTP Host, TLS SNI; waits {sniffing.timeout * 1000:g} ms{fallback})")
    if sniffing.udp:
        parts.append("udp (names from DNS answers)")
    return " + ".join(parts) if parts else "off"


def make_tun_service(service: Service, config: Config, policy: Policy) -> TunService:
    """``app.runner.TUN_SERVICE_FACTORY``: the TUN service builds its own dialers around ``policy``,
    with its routing mark, which the runner's generic ones do not carry."""
    return TunService(service, config, policy)
