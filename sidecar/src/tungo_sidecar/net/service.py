"""A listening proxy service: accept TCP, run the listener's transport handshake, hand over to the handler.

``ProxyService`` is what one ``-L handler+listener://addr`` (or one YAML ``services`` entry) becomes:
``net.sockopts.serve_tcp`` accepts, the server transport (tcp, tls, ws, wss) wraps the stream, and
the handler (relay, socks5, http) serves it. Built and run by ``app.runner``.

Every failure of one client is logged here as ONE line and never reaches other clients or the loop's
exception handler. Connection tasks are owned: ``stop`` closes the listener, cancels the sessions
still running and waits for them, so nothing outlives the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tungo_sidecar import errors
from tungo_sidecar.config.model import Service
from tungo_sidecar.net import sockopts, transports
from tungo_sidecar.net.handlers import Handler
from tungo_sidecar.net.stream import SocketStream
from tungo_sidecar.proto.address import Address

log = logging.getLogger(__name__)


def describe(exc: BaseException) -> str:
    """One line for a failed session: the leaf errors of a TaskGroup's ExceptionGroup, deduplicated."""
    if isinstance(exc, BaseExceptionGroup):
        parts: list[str] = []
        for inner in exc.exceptions:
            text = describe(inner)
            if text not in parts:
                parts.append(text)
        return "; ".join(parts)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError | EOFError | asyncio.IncompleteReadError) and not isinstance(
        exc, errors.TungoError
    ):
        return f"{type(exc).__name__}: {text}"
    return text


def listen_address(service: Service) -> Address:
    """``service.addr`` as host and port (``:8443`` listens on every address)."""
    try:
        return Address.parse(service.addr)
    except ValueError as exc:
        raise errors.ConfigError(
            f"service {service.name!r}: bad listen address {service.addr!r}: {exc}"
        ) from exc


class ProxyService:
    """One listening service. ``start`` binds (errors surface at once), ``stop`` tears down."""

    def __init__(self, config: Service, handler: Handler) -> None:
        self.config = config
        self._handler = handler
        self._transport = transports.server_transport(config.listener.type)
        self._addr = listen_address(config)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def bound(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually listened on (port 0 resolved)."""
        if self._server is None:
            return []
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    @property
    def port(self) -> int:
        return self.bound[0][1]

    async def start(self) -> None:
        try:
            self._server = await sockopts.serve_tcp(self._addr.host or None, self._addr.port, self._serve)
        except OSError as exc:
            raise errors.ConfigError(
                f"service {self.name!r}: cannot listen on {self.config.addr}: {exc}"
            ) from exc
        log.info(
            "service %s: %s+%s listening on %s",
            self.name,
            self.config.handler.type,
            self.config.listener.type,
            ", ".join(f"{host}:{port}" for host, port in self.bound),
        )

    async def _serve(self, raw: SocketStream) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        peer = raw.peername
        client = f"{peer[0]}:{peer[1]}" if peer else "?"
        try:
            stream = await self._transport.accept(raw, self.config.listener)
            try:
                await self._handler.handle(stream, client)
            finally:
                if stream is not raw:
                    await stream.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("service %s: client %s: %s", self.name, client, describe(exc))
        finally:
            self._sessions.discard(task)

    async def stop(self) -> None:
        """Stop listening, cancel the sessions still running and wait for them."""
        if self._server is not None:
            self._server.close()
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        if sessions:
            await asyncio.gather(*sessions, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def serve(self) -> None:
        """Start (if not yet), then run until cancelled; always stops on the way out."""
        if self._server is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
