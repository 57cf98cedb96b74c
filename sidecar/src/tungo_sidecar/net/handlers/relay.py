"""The GOST ``relay`` server handler: ``tungo -L relay+wss://user:pass@:8443`` answers as go-gost/x does.

Called by ``net.service`` with each accepted stream. Owns the server-side I/O around ``proto.relay``:
reads the request (data behind it in the same frame is kept for the target), checks credentials,
dials the target through the service's ``FlowDialer`` and relays TCP bytes or UDP datagrams.
It never parses bytes itself (the codec does) and never chooses a route (the dialer does).

Answers, as go-gost/x ``handler/relay``: wrong or missing credentials → 2 Unauthorized; no address
or an unsupported command → 1 BadRequest; a target it cannot dial → 7 NetworkUnreachable. A bad
version or a malformed header gets no answer (the connection is closed). The OK response is deferred
to the first bytes coming back (written in the same write) unless metadata ``nodelay`` is set.
UDP (the FUDP flag or a network feature of udp): ``LEN(2) | payload`` datagrams both ways,
reassembled across reads and websocket messages whatever their boundaries.

One refinement over GOST: when the upstream is itself a lazy relay hop that answers non-OK, the
client gets that status instead of a bare close (GOST's deferred OK would simply never come).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from tungo_sidecar import errors
from tungo_sidecar.config.model import Service
from tungo_sidecar.net.connectors.base import PrefixedStream
from tungo_sidecar.net.dialer import FlowDialer
from tungo_sidecar.net.handlers.base import first_completed, proxy_streams
from tungo_sidecar.net.stream import CHUNK, Datagrams, Stream, pipe
from tungo_sidecar.proto import relay
from tungo_sidecar.proto.address import Address

log = logging.getLogger(__name__)

#: GOST's default ``readTimeout`` for the request header: a client that connects and says nothing
#: must not hold a task and a socket forever.
DEFAULT_READ_TIMEOUT = 15.0

_OK = relay.Response.ok().encode()


class _ClientSide(PrefixedStream):
    """The client's stream with the request's leftover to replay and the OK response still owed."""

    __slots__ = ("_owed",)

    def __init__(self, inner: Stream, prefix: bytes, owed: bytes | None) -> None:
        super().__init__(inner, prefix)
        self._owed = owed

    async def write(self, data: bytes) -> None:
        if self._owed is not None:
            data, self._owed = self._owed + data, None
        await self._inner.write(data)

    async def write_eof(self) -> None:
        if self._owed is not None:
            await self.write(b"")
        await self._inner.write_eof()

    async def answer_instead(self, status: int) -> None:
        """Replace the owed OK with ``status`` (the upstream failed before any byte came back)."""
        if self._owed is not None:
            self._owed = None
            await self._inner.write(relay.Response(status).encode())


class RelayHandler:
    """``handler: relay``. Options: ``auth`` (one user), metadata ``nodelay``, ``readTimeout``."""

    def __init__(self, service: Service, dialer: FlowDialer) -> None:
        plugin = service.handler
        self._auth = plugin.auth
        self._nodelay = plugin.metadata.get_bool("nodelay")
        timeout = plugin.metadata.get_duration("readTimeout", DEFAULT_READ_TIMEOUT)
        self._read_timeout = timeout if timeout and timeout > 0 else DEFAULT_READ_TIMEOUT
        self._dialer = dialer

    async def handle(self, stream: Stream, client: str) -> None:
        received = await self._read_request(stream)
        if received is None:
            # Connected and closed without a byte: a health probe or port check (tungo's own chain
            # probe does exactly this every few seconds), not a broken client worth a warning.
            log.debug("relay: %s: closed without a request", client)
            return
        request, leftover = received
        if not self._authorized(request.auth):
            await _answer(stream, relay.Status.UNAUTHORIZED)
            user = request.auth.username if request.auth else ""
            raise errors.RelayUnauthorized(f"relay: {client}: wrong or missing credentials (user {user!r})")
        if request.cmd not in (0, relay.CMD_CONNECT):
            await _answer(stream, relay.Status.BAD_REQUEST)
            raise errors.RelayBadRequest(f"relay: {client}: unsupported command {request.cmd}")
        target = request.address
        if target is None:
            await _answer(stream, relay.Status.BAD_REQUEST)
            raise errors.RelayBadRequest(f"relay: {client}: request without a target address")
        if request.network_id == relay.NetworkID.UDP:
            await self._serve_udp(stream, leftover, target, client)
        elif request.network_id == relay.NetworkID.TCP:
            await self._serve_tcp(stream, leftover, target, client)
        else:
            await _answer(stream, relay.Status.BAD_REQUEST)
            raise errors.RelayBadRequest(f"relay: {client}: unsupported network {request.network_id.name}")

    async def _read_request(self, stream: Stream) -> tuple[relay.Request, bytes] | None:
        """The request and the bytes behind it; None when the client closed without sending a byte."""
        reader = relay.RequestReader()
        try:
            async with asyncio.timeout(self._read_timeout):
                while True:
                    chunk = await stream.read(CHUNK)
                    if not chunk and reader.buffered == 0:
                        return None
                    if not chunk:
                        raise errors.RelayProtocolError(
                            f"relay: client closed before a complete request ({reader.buffered} bytes)"
                        )
                    request = reader.feed(chunk)
                    if request is not None:
                        return request, reader.leftover
        except TimeoutError:
            raise errors.RelayProtocolError(
                f"relay: no complete request within {self._read_timeout:g}s"
            ) from None

    def _authorized(self, auth: relay.UserAuth | None) -> bool:
        if self._auth is None:
            return True
        if auth is None:
            return False
        # Compare both fields in constant time, and always both, so timing reveals neither.
        user_ok = hmac.compare_digest(auth.username.encode(), self._auth.username.encode())
        pass_ok = hmac.compare_digest(auth.password.encode(), self._auth.password.encode())
        return user_ok and pass_ok

    async def _dial_failed(self, stream: Stream, target: Address, exc: Exception) -> errors.DialError:
        # A bypass refusal is FORBIDDEN, as GOST's relay handler answers it; anything else unreachable.
        refused = isinstance(exc, errors.RouteRefusedError)
        await _answer(stream, relay.Status.FORBIDDEN if refused else relay.Status.NETWORK_UNREACHABLE)
        return errors.DialError(f"relay: cannot reach {target}: {exc}")

    async def _serve_tcp(self, stream: Stream, leftover: bytes, target: Address, client: str) -> None:
        try:
            upstream = await self._dialer.dial_tcp(target)
        except (errors.TungoError, OSError) as exc:
            raise await self._dial_failed(stream, target, exc) from exc
        if self._nodelay:
            await stream.write(_OK)
        side = _ClientSide(stream, leftover, None if self._nodelay else _OK)
        log.debug("relay: %s <-> %s (tcp)", client, target)
        try:
            await _splice_tcp(side, upstream)
        finally:
            await upstream.close()

    async def _serve_udp(self, stream: Stream, leftover: bytes, target: Address, client: str) -> None:
        try:
            upstream = await self._dialer.dial_udp(target)
        except (errors.TungoError, OSError) as exc:
            raise await self._dial_failed(stream, target, exc) from exc
        if self._nodelay:
            await stream.write(_OK)
        side = _ClientSide(stream, b"", None if self._nodelay else _OK)
        log.debug("relay: %s <-> %s (udp)", client, target)
        try:
            await first_completed(
                lambda: _client_to_datagrams(side, leftover, upstream),
                lambda: _datagrams_to_client(upstream, side),
            )
        finally:
            await upstream.close()


async def _splice_tcp(side: _ClientSide, upstream: Stream) -> None:
    """TCP: copy both ways (``proxy_streams``); an upstream relay refusal becomes our answer."""

    async def down() -> None:
        try:
            first = await upstream.read(CHUNK)
        except errors.RelayStatusError as exc:
            await side.answer_instead(exc.status)
            raise
        if not first:
            await side.write_eof()
            return
        await side.write(first)
        await pipe(upstream, side)

    await proxy_streams(side, upstream, down)


async def _client_to_datagrams(side: _ClientSide, leftover: bytes, upstream: Datagrams) -> None:
    reader = relay.DatagramReader()
    chunk = leftover
    while True:
        for payload in reader.feed(chunk):
            await upstream.send(payload)
        chunk = await side.read(CHUNK)
        if not chunk:
            if reader.buffered:
                raise errors.RelayProtocolError(f"relay: client cut a datagram ({reader.buffered} bytes)")
            return


async def _datagrams_to_client(upstream: Datagrams, side: _ClientSide) -> None:
    while True:
        try:
            payload = await upstream.recv()
        except EOFError:
            return
        except errors.RelayStatusError as exc:
            await side.answer_instead(exc.status)
            raise
        await side.write(relay.encode_datagram(payload))


async def _answer(stream: Stream, status: relay.Status) -> None:
    """Write a bare response; a client that already left is no reason for a second error."""
    with contextlib.suppress(OSError, errors.TungoError):
        await stream.write(relay.Response(status).encode())
