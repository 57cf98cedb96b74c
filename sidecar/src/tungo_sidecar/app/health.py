"""The health endpoint: ``/healthz`` (the process serves) and ``/readyz`` (the tunnel is usable).

Owns one small aiohttp server on the ``--health`` address and the ``Readiness`` registry behind it.
The runner starts ``HealthService`` first, like any other service, and reports through ``set_ready``;
the TUN wiring registers its own checks (``READY_TUN``, ``READY_ROUTES``, ``READY_CHAIN``) as flags it
sets, or as callables evaluated per request. A pod's startupProbe waits on ``/readyz``, so apps start
only once traffic can actually flow; ``/healthz`` is the livenessProbe and stays 200 while the event
loop answers at all (a wedged loop fails it, which is the point).

``/readyz`` is 200 only when every registered check passes, else 503 with a plain-text body listing
each check that is not ready and why. A check that raises or takes longer than ``CHECK_TIMEOUT``
counts as not ready (and says so) rather than hanging the probe. Never binds anything but the given
address, and never does I/O of its own beyond answering these two paths (anything else is 404).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from tungo_sidecar.errors import ConfigError
from tungo_sidecar.proto.address import Address

log = logging.getLogger(__name__)

# The names the runner and the TUN wiring use; /readyz lists them in registration order.
READY_SERVICES = "services"
READY_TUN = "tun"
READY_ROUTES = "routes"
READY_CHAIN = "chain"
# A probe has its own timeout (kubelet default 1 s): a check must answer well within it.
CHECK_TIMEOUT = 0.5

CheckResult = bool | tuple[bool, str]
Check = Callable[[], CheckResult | Awaitable[CheckResult]]


@dataclass(slots=True)
class ReadyFlag:
    """A readiness condition someone sets: ``set()`` when it holds, ``clear(reason)`` when it stops."""

    ok: bool = False
    reason: str = "not yet"

    def set(self) -> None:
        self.ok, self.reason = True, ""

    def clear(self, reason: str) -> None:
        self.ok, self.reason = False, reason

    def __call__(self) -> tuple[bool, str]:
        return self.ok, self.reason


class Readiness:
    """Named readiness checks; ready when all of them pass (and there is at least one)."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        """Register ``check`` (returns bool or (bool, reason)) under a unique name. Async checks are
        bounded by CHECK_TIMEOUT; sync ones must be instant (a flag, an attribute)."""
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} is registered twice")
        self._checks[name] = check

    def flag(self, name: str, reason: str = "not yet") -> ReadyFlag:
        """Register and return a flag that starts not ready."""
        flag = ReadyFlag(False, reason)
        self.add(name, flag)
        return flag

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._checks)

    async def evaluate(self) -> list[tuple[str, bool, str]]:
        """Every check's (name, ok, reason), evaluated concurrently, each bounded by CHECK_TIMEOUT."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._one(self._checks[n]) for n in names))
        return [(n, ok, reason) for n, (ok, reason) in zip(names, results, strict=True)]

    @staticmethod
    async def _one(check: Check) -> tuple[bool, str]:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, CHECK_TIMEOUT)
        except TimeoutError:
            return False, f"check did not answer within {CHECK_TIMEOUT:g}s"
        except Exception as exc:  # a broken check is a not-ready check, never a broken probe
            return False, f"check failed: {type(exc).__name__}: {exc}"
        if isinstance(result, tuple):
            ok, reason = result
            return bool(ok), reason if not ok else ""
        return bool(result), "" if result else "not ready"


def _any_address_socket(port: int) -> socket.socket:
    """A listening socket on every address: IPv6 ``::`` accepting IPv4 too, or ``0.0.0.0`` without IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        else:
            sock.bind(("0.0.0.0", port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HealthService:
    """The HTTP endpoint, runnable by ``app.runner`` (``name``/``start``/``stop``) and its reporter.

    ``set_ready`` drives the ``services`` flag (the runner's "every service runs"); other checks come
    from ``readiness``. ``port`` is the bound port once started (useful with port 0).
    """

    def __init__(self, addr: Address, readiness: Readiness | None = None) -> None:
        self.addr = addr
        self.readiness = readiness if readiness is not None else Readiness()
        self._services = self.readiness.flag(READY_SERVICES, "starting")
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def name(self) -> str:
        return f"health@{self.addr.host or '*'}:{self.addr.port}"

    def set_ready(self, ready: bool, reason: str = "") -> None:
        if ready:
            self._services.set()
        else:
            self._services.clear(reason or "not ready")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            if self.addr.host:
                site: web.BaseSite = web.TCPSite(
                    runner, host=self.addr.host, port=self.addr.port, reuse_address=True
                )
            else:
                # Host "" means every address, as GOST's ":port" does: one dual-stack socket, so IPv4
                # and IPv6 probes reach the same port (separate sockets would differ with port 0).
                site = web.SockSite(runner, _any_address_socket(self.addr.port))
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"--health {self.addr.host}:{self.addr.port}: cannot listen: {exc.strerror}"
            ) from exc
        self._runner = runner
        addresses = runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info(
            "health: /healthz and /readyz on %s", self.name if self.port is None else f"port {self.port}"
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        results = await self.readiness.evaluate()
        failing = [f"{name}: {reason}" for name, ok, reason in results if not ok]
        if not results:
            failing = ["no readiness checks registered"]
        if failing:
            return web.Response(status=503, text="not ready\n" + "".join(f"{line}\n" for line in failing))
        return web.Response(text="ready\n" + "".join(f"{name}: ok\n" for name, _, _ in results))
