"""Runs a parsed ``Config``: builds every service, starts them, serves until SIGTERM/SIGINT, stops cleanly.

Called by ``app.cli`` (``await run(config, health=...)``) and, through ``running``, by ``app.demo``.
Everything is built before anything starts, so a bad config fails with one ``ConfigError`` and nothing
listening; then all services bind (a port in use fails the same way), health is reported ready, and the
services run in their own owned tasks until a signal (or ``stop``) arrives. Shutdown closes the
listeners, cancels the sessions still open and waits for them. Never parses command lines or YAML
(``config`` does).

Proxy services (relay, socks5, http handlers) are ``net.service.ProxyService``s; each dials through a
``RoutedDialer``: its route policy (the service's bypass refuses, its chain's hop/node bypasses shorten
the route; ``app.bypasses`` compiles them once for all services), the ``ChainDialer`` of its ``chain``
(``-F``) and a ``DirectDialer``. The TUN data plane (handler/listener ``tungo``) plugs in through
``TUN_SERVICE_FACTORY`` (see ``_tun_service``) and builds its dialers with its own routing mark. A DNS
service (handler/listener ``dns``) is built by ``app.dns_service``, whose sockets carry the TUN's mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from tungo_sidecar.app import bypasses, dns_service, tun_service
from tungo_sidecar.app.health import HealthService
from tungo_sidecar.chain.route import Policy
from tungo_sidecar.config.model import Config, Service
from tungo_sidecar.config.validate import insecure_tls_nodes, service_socket_options
from tungo_sidecar.errors import ConfigError, TungoError
from tungo_sidecar.net import transports
from tungo_sidecar.net.direct import DirectDialer
from tungo_sidecar.net.dnsserver import DnsService
from tungo_sidecar.net.handlers import make_handler
from tungo_sidecar.net.routed import RoutedDialer
from tungo_sidecar.net.router import ChainDialer
from tungo_sidecar.net.service import ProxyService
from tungo_sidecar.proto.address import Address

log = logging.getLogger(__name__)

#: The handler/listener type of the TUN data plane service (``-L tungo://...``).
TUNGO = "tungo"


class Runnable(Protocol):
    """A service the runner drives: ``start`` binds or opens devices (errors surface at once),
    ``stop`` undoes everything ``start`` did and ends its sessions."""

    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class HealthReporter(Protocol):
    """What the runner tells the health endpoint (``app.health``): ready once every service runs."""

    def set_ready(self, ready: bool, reason: str = "") -> None: ...


#: Builds the TUN data plane service for a ``tungo`` service entry, given its route policy.
#: ``app.tun_service`` (tests may swap it); None means unsupported.
TunServiceFactory = Callable[[Service, Config, Policy], Runnable]
TUN_SERVICE_FACTORY: TunServiceFactory | None = tun_service.make_tun_service


def warn_insecure_tls(config: Config) -> None:
    """One start-up warning when any TLS node runs without server verification (GOST's default)."""
    nodes = insecure_tls_nodes(config)
    if nodes:
        log.warning(
            "TLS server verification is OFF for %s (GOST's default secure=false): anyone on the path can "
            "impersonate the server. Turn it on with ?secure=true&serverName=<name>[&caFile=<ca.pem>] on "
            "the -F URL, or tls: {secure: true, serverName: ..., caFile: ...} on the node in YAML.",
            ", ".join(nodes),
        )


def warn_unapplied(config: Config) -> None:
    """A loud start-up line for what the config declares and tungo does not apply yet: node selection.

    Every hop dials its first eligible node (node bypasses applied); GOST's ``selector`` strategies,
    ``maxFails``/``failTimeout`` and fail-over to the other nodes are not built yet."""
    for chain in config.chains:
        for hop in chain.hops:
            if len(hop.nodes) > 1:  # one node: nothing to select, maxFails/failTimeout change nothing
                strategy = f"selector strategy {hop.selector.strategy!r} " if hop.selector else ""
                log.warning(
                    "chain %s hop %s: %s%d nodes: tungo dials the first eligible node only "
                    "(no round-robin or fail-over yet); %s is used while it answers",
                    chain.name,
                    hop.name,
                    f"{strategy}is NOT applied; " if strategy else "",
                    len(hop.nodes),
                    hop.nodes[0].name,
                )


def _proxy(service: Service) -> bool:
    """A proxy service (a stream handler on a transport listener), not the TUN or a DNS service."""
    return not {TUNGO, dns_service.DNS} & {service.handler.type, service.listener.type}


def warn_open_proxies(config: Config) -> None:
    """One start-up warning per proxy service that takes anyone (no auth) on every address: GOST's
    behaviour, kept, but said out loud."""
    for service in config.services:
        if not _proxy(service) or service.handler.auth is not None:
            continue
        host, _, port = service.addr.rpartition(":")
        if host.strip("[]") in ("", "0.0.0.0", "::"):
            log.warning(
                "open proxy: service %s (%s) has no auth on %s:%s; anyone who reaches it can use it, "
                "including this host's loopback services (set user:pass in the -L URL or bind an address)",
                service.name,
                service.handler.type,
                host or "*",
                port,
            )


def check_transports(config: Config) -> None:
    """Load every listener's and dialer's TLS files and check their websocket options now, as
    ``nginx -t`` and GOST do: a missing certificate or CA is a start-up error, not a warning per
    client later."""
    for service in config.services:
        if _proxy(service):
            try:
                transports.validate(service.listener, server=True)
            except ConfigError as exc:
                raise ConfigError(f"service {service.name!r}: listener: {exc}") from None
    for chain in config.chains:
        for hop in chain.hops:
            for node in hop.nodes:
                try:
                    transports.validate(node.dialer, server=False)
                except ConfigError as exc:
                    raise ConfigError(f"chain {chain.name!r} node {node.name!r}: dialer: {exc}") from None


def dialer_for(service: Service, config: Config, policy: Policy) -> RoutedDialer:
    """A proxy service's dialer: ``policy`` over its ``-F`` chain and a direct dialer carrying the
    service's interface and mark."""
    chain = config.chain(service.chain)
    options = service_socket_options(service)
    return RoutedDialer(
        policy,
        chain=ChainDialer(chain) if chain is not None else None,
        direct=DirectDialer(mark=options.so_mark or None, interface=options.interface),
    )


def _tun_service(service: Service, config: Config, policy: Policy) -> Runnable:
    if TUN_SERVICE_FACTORY is None:
        raise ConfigError(f"service {service.name!r}: the tungo (TUN) service is not available in this build")
    return TUN_SERVICE_FACTORY(service, config, policy)


def build_services(config: Config) -> list[Runnable]:
    """Every service of ``config``, built but not started. ConfigError on the first bad one."""
    if not config.services:
        raise ConfigError("nothing to run: no service (give at least one -L or a services: entry)")
    check_transports(config)
    compiled = bypasses.compile_all(config)
    built: list[Runnable] = []
    for service in config.services:
        policy = bypasses.policy_for(service, config, compiled)
        if TUNGO in (service.handler.type, service.listener.type):
            built.append(_tun_service(service, config, policy))
        elif dns_service.DNS in (service.handler.type, service.listener.type):
            built.append(dns_service.make_dns_service(service, config, compiled))
        else:
            built.append(ProxyService(service, make_handler(service, dialer_for(service, config, policy))))
    _share_dns_answers(built)
    return built


def _share_dns_answers(built: list[Runnable]) -> None:
    """The DNS service's answers teach a TUN service that sniffs DNS (``sniffing.udp``) the names of
    the addresses it answered, as answers the TUN itself carries do: in a pod whose resolver is the
    DNS service, no answer crosses the TUN at all."""
    learners = [s for s in built if isinstance(s, tun_service.TunService) and s.sniffing.udp]
    for service in built:
        if isinstance(service, DnsService) and learners:
            service.on_answer = learners[0].learn_dns


async def run(
    config: Config,
    *,
    health: Address | None = None,
    reporter: HealthReporter | None = None,
    stop: asyncio.Event | None = None,
    started: Callable[[list[Runnable]], None] | None = None,
) -> None:
    """Run ``config`` until SIGTERM/SIGINT or until ``stop`` is set.

    ``health`` is where ``--health`` asks for /healthz and /readyz (served by ``app.health``);
    ``reporter`` receives readiness directly. ``started`` is called with the running services once
    all of them are up (tests and the demo read bound ports from it). Raises ``ConfigError`` before
    anything runs when the config or a bind fails; services already started are stopped again.
    """
    warn_insecure_tls(config)
    warn_unapplied(config)
    warn_open_proxies(config)
    services = build_services(config)
    if health is not None:
        endpoint = HealthService(health)
        for service in services:
            # Services with checks of their own (the TUN service: tun, routes, chain) add them to /readyz.
            register = getattr(service, "register_readiness", None)
            if callable(register):
                register(endpoint.readiness)
        services.insert(0, endpoint)  # up first, so /healthz answers while the rest starts
        reporter = reporter or endpoint
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # Not on the main thread (tests) or not on this platform: ``stop`` still works.
            loop.add_signal_handler(sig, _on_signal, sig, stop)
            handled.append(sig)
    running: list[Runnable] = []
    stop_errors: list[str] = []
    try:
        for service in services:
            await service.start()
            running.append(service)
        if reporter is not None:
            reporter.set_ready(True)
        if started is not None:
            started(running)
        log.info("tungo: %d service(s) running", len(running))
        await stop.wait()
    finally:
        if reporter is not None:
            reporter.set_ready(False, "shutting down")
        # Stop one by one in reverse order: a TUN service routes into proxy services, never the other
        # way, so it must be gone before the services it feeds. Every service is stopped whatever fails.
        for service in reversed(running):
            try:
                await service.stop()
            except Exception as exc:
                log.error("service %s: error while stopping: %s", service.name, exc)
                stop_errors.append(f"{service.name}: {exc}")
        for sig in handled:
            loop.remove_signal_handler(sig)
        log.info("tungo: stopped")
    # Reached only on a clean run: a failed stop (postDown, route teardown) must show in the exit status.
    if stop_errors:
        raise TungoError("error while stopping: " + "; ".join(stop_errors))


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[list[Runnable]]:
    """``run(config)`` in a task of the current loop, for the demo and tests that need bound ports.

    Yields the running services once all of them are up, or raises the start-up error instead (a bad
    config, a port in use); on exit stops them and waits, so an error while stopping surfaces here.
    """
    stop = asyncio.Event()
    up: asyncio.Future[list[Runnable]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(config, stop=stop, started=up.set_result), name="tungo runner")
    try:
        either: list[asyncio.Future[Any]] = [task, up]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not up.done():
            task.result()  # raises the start-up error
            raise TungoError("tungo: the runner returned before its services were up")
        yield up.result()
    finally:
        stop.set()
        await task


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if sig == signal.SIGHUP:
        # Its default action would kill the process and leave a TUN service's routes and nft tables
        # behind. Until reload exists, SIGHUP is acknowledged and changes nothing.
        log.warning("tungo: SIGHUP received: reloading the config is not supported yet; nothing changed")
        return
    if stop.is_set():
        return
    log.info("tungo: %s received, shutting down", sig.name)
    stop.set()
