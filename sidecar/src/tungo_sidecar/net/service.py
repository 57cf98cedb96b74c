"""A listening proxy service: accept TCP, run the listener's transport handshake, hand over to the handler.

``ProxyService`` is what one ``-L handler+listener://addr`` (or one YAML ``services`` entry) becomes:
``net.sockopts.listen_tcp`` accepts, the server transport (tcp, tls, ws, wss) wraps the stream, and
the handler (relay, socks5, http) serves it. Built and run by ``app.runner``.

Every failure of one client is logged here as ONE line and never reaches other clients or the loop's
exception handler; a connection that closes without sending a byte (a TCP health check, a port scan)
is a DEBUG line on every listener and handler kind, not a warning. Connection tasks are owned by the
listener: ``stop`` drains (see below), so nothing outlives the service.

Limits, from the service's metadata (or its listener's; the URL query sets both):

* ``maxConns``: sessions open at once on this service; beyond it new connections are reset at once
  and counted. Default: 40% of the open-file limit (``sockopts.default_max_conns``).
* ``maxHandshakes``: connections still in their handshake, i.e. from accept until the first bytes of
  the proxy request reach the handler (after TLS and the websocket upgrade); beyond it new
  connections are reset at once and counted. Default 256. This bounds what unauthenticated clients
  can hold: an idle one costs a few KiB.
* ``handshakeTimeout`` (GOST's listener option, default 10 s): bounds the transport handshake of
  every listener kind as a whole (TLS and websocket upgrade together for wss); the handlers' own
  ``readTimeout`` (default 15 s) bounds the proxy request.
* ``gracePeriod``: on stop (SIGTERM/SIGINT), the listener closes at once (new connections are
  refused), open sessions may finish for up to this long, then the rest are reset (RST) so a cut
  download is an error at the client, not a clean end. Default 5 s (Istio's drain default; well
  inside Kubernetes' 30 s terminationGracePeriodSeconds); 0 resets at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from tungo_sidecar import errors
from tungo_sidecar.config.model import Metadata, Service
from tungo_sidecar.net import sockopts, transports
from tungo_sidecar.net.handlers import Handler
from tungo_sidecar.net.stream import CHUNK, SocketStream, Stream, half_closes
from tungo_sidecar.proto.address import Address

log = logging.getLogger(__name__)

#: Default ``gracePeriod``: how long open sessions may finish on stop before they are reset.
DEFAULT_GRACE_PERIOD = 5.0


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


@dataclass(frozen=True, slots=True)
class Limits:
    """A service's connection limits (see the module docstring); ``max_conns`` None: the default."""

    max_conns: int | None = None
    max_handshakes: int = sockopts.DEFAULT_MAX_HANDSHAKES
    handshake_timeout: float = transports.DEFAULT_HANDSHAKE_TIMEOUT
    grace_period: float = DEFAULT_GRACE_PERIOD


def _metadata_with(service: Service, key: str) -> Metadata | None:
    for metadata in (service.metadata, service.listener.metadata):
        if key in metadata:
            return metadata
    return None


def _positive_int(service: Service, key: str) -> int | None:
    metadata = _metadata_with(service, key)
    if metadata is None:
        return None
    try:
        value = metadata.get_int(key)
    except errors.ConfigError:
        value = None
    if value is None or value < 1:
        raise errors.ConfigError(f"metadata {key!r}: expected a positive number, got {metadata[key]!r}")
    return value


def _duration(service: Service, key: str, default: float) -> float:
    metadata = _metadata_with(service, key)
    if metadata is None:
        return default
    try:
        value = metadata.get_duration(key)
    except errors.ConfigError:
        value = None
    if value is None or value < 0:
        raise errors.ConfigError(f"metadata {key!r}: expected a duration (e.g. 5s), got {metadata[key]!r}")
    return value


def limits(service: Service) -> Limits:
    """The ``Limits`` of ``service`` from its metadata; ConfigError naming the service on a bad value."""
    try:
        return Limits(
            max_conns=_positive_int(service, "maxConns"),
            max_handshakes=_positive_int(service, "maxHandshakes") or sockopts.DEFAULT_MAX_HANDSHAKES,
            handshake_timeout=transports.handshake_timeout(service.listener),
            grace_period=_duration(service, "gracePeriod", DEFAULT_GRACE_PERIOD),
        )
    except errors.ConfigError as exc:
        raise errors.ConfigError(f"service {service.name!r}: {exc}") from None


class _FirstData:
    """The transport's stream as the handler sees it: calls ``on_data`` when the first bytes reach
    the handler (the connection then leaves its handshake). Everything else passes through; the
    socket's addresses are offered as ``SocketStream`` offers them."""

    __slots__ = ("_inner", "_on_data", "_raw")

    def __init__(self, inner: Stream, raw: SocketStream, on_data: Callable[[], None]) -> None:
        self._inner = inner
        self._raw = raw
        self._on_data: Callable[[], None] | None = on_data

    @property
    def half_close(self) -> bool:
        return half_closes(self._inner)

    @property
    def peername(self) -> tuple[str, int] | None:
        return self._raw.peername

    @property
    def sockname(self) -> tuple[str, int] | None:
        return self._raw.sockname

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        data = await self._inner.read(max_bytes)
        if data and self._on_data is not None:
            on_data, self._on_data = self._on_data, None
            on_data()
        return data

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def write_eof(self) -> None:
        await self._inner.write_eof()

    async def close(self) -> None:
        await self._inner.close()


def _received(raw: SocketStream) -> int:
    reader = raw.reader
    return reader.received if isinstance(reader, sockopts.ChunkReader) else 1


class ProxyService:
    """One listening service. ``start`` binds (errors surface at once), ``stop`` drains and tears down."""

    def __init__(self, config: Service, handler: Handler) -> None:
        self.config = config
        self._handler = handler
        self._transport = transports.server_transport(config.listener.type)
        self._addr = listen_address(config)
        self.limits = limits(config)
        self._listener: sockopts.TCPListener | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def listener(self) -> sockopts.TCPListener | None:
        """The running listener (its ``stats`` count refusals and accept errors); None when stopped."""
        return self._listener

    @property
    def bound(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually listened on (port 0 resolved)."""
        if self._listener is None:
            return []
        return [sock.getsockname()[:2] for sock in self._listener.sockets]

    @property
    def port(self) -> int:
        return self.bound[0][1]

    async def start(self) -> None:
        try:
            self._listener = await sockopts.listen_tcp(
                self._addr.host or None,
                self._addr.port,
                self._serve,
                label=f"service {self.name}",
                max_conns=self.limits.max_conns,
                max_handshakes=self.limits.max_handshakes,
            )
        except OSError as exc:
            raise errors.ConfigError(
                f"service {self.name!r}: cannot listen on {self.config.addr}: {exc}"
            ) from exc
        log.info(
            "service %s: %s+%s listening on %s (maxConns %d, maxHandshakes %d)",
            self.name,
            self.config.handler.type,
            self.config.listener.type,
            ", ".join(f"{host}:{port}" for host, port in self.bound),
            self._listener.max_conns,
            self.limits.max_handshakes,
        )

    async def _serve(self, raw: SocketStream) -> None:
        listener = self._listener
        peer = raw.peername
        client = f"{peer[0]}:{peer[1]}" if peer else "?"

        def handshake_done() -> None:
            if listener is not None:
                listener.handshake_done(raw)

        try:
            timeout = self.limits.handshake_timeout
            try:
                async with asyncio.timeout(timeout):
                    stream = await self._transport.accept(raw, self.config.listener)
            except TimeoutError:
                raise errors.ProtocolError(
                    f"{self.config.listener.type} from {client}: handshake not done within {timeout:g}s"
                ) from None
            if stream is raw and isinstance(raw.reader, sockopts.ChunkReader):
                raw.reader.on_first_data(handshake_done)
                handler_stream: Stream = raw
            else:
                handler_stream = _FirstData(stream, raw, handshake_done)
            try:
                await self._handler.handle(handler_stream, client)
            finally:
                if stream is not raw:
                    await stream.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not _received(raw):
                # A TCP health check or a port scan: connected and closed without a byte.
                log.debug("service %s: client %s: closed without sending a byte (%s)", self.name, client, exc)
            else:
                log.warning("service %s: client %s: %s", self.name, client, describe(exc))

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening (new connections are refused), let open sessions finish for up to ``grace``
        seconds (default: the ``gracePeriod`` option), then reset the rest and wait for them."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        grace = self.limits.grace_period if grace is None else grace
        if listener.sessions:
            log.info(
                "service %s: stopping: %d session(s) open, draining for up to %gs",
                self.name,
                listener.sessions,
                grace,
            )
        reset = await listener.drain(grace)
        if reset:
            log.warning(
                "service %s: %d session(s) still open after the %gs grace period: reset",
                self.name,
                reset,
                grace,
            )

    async def serve(self) -> None:
        """Start (if not yet), then run until cancelled; always stops on the way out."""
        if self._listener is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
