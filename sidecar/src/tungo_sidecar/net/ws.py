"""Websocket transport (GOST's ``ws`` / ``wss``) over an already established ``Stream``.

RFC 6455 framing, masking and the opening handshake come from the ``websockets`` library's sans-I/O
protocol objects (``ClientProtocol`` / ``ServerProtocol``); this module only pumps bytes between them
and the inner stream, so it works on any hop of a chain (a socket, a TLS session, a relay tunnel).
Masking runs in websockets' C speedups (``websockets.speedups.apply_mask``).

Byte-stream semantics, as GOST's ``ws_util.Conn``: each ``write`` is sent as binary message(s),
``read`` returns the payloads of binary and text messages back to back; message boundaries mean
nothing. Pings are answered by the protocol object.

Half-close: a websocket has none. A close frame ends *both* directions (websockets echoes it and
stops sending; GOST's gorilla peer ends its relay on it), so ``write_eof`` sends nothing and keeps
the receiving direction open; ``close`` sends the close frame and closes the inner stream. GOST
peers usually end a session by closing the TCP/TLS connection without a close frame: EOF at a frame
boundary therefore reads as a clean EOF, EOF inside a frame as ``ProtocolError``.

Memory on the server side: websockets hands a message on only once it has all of it, so the first
message of a connection (the proxy request, before any authentication) is limited to
``FIRST_MESSAGE`` and the upgrade request head to ``MAX_REQUEST_HEAD``; later messages to
``MAX_MESSAGE``. gorilla (GOST) streams messages instead; re-implementing RFC 6455 framing to stream
is what this module exists not to do.

Handshake (go-gost/x dialer/ws and listener/ws): client ``GET <path>`` (metadata ``path``, default
``/ws``) with ``Host`` = metadata ``host`` or the node address ``host:port``, extra headers from
metadata ``header``; the server serves only its ``path`` (404 otherwise, as Go's ServeMux) and adds
its metadata ``header`` to the 101 response.

Callers: ``net.transports``. Never interprets the payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from websockets import frames as _frames
from websockets import utils as _ws_utils
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.frames import CLOSE, CONT, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from tungo_sidecar.errors import ConfigError, DialError, ProtocolError
from tungo_sidecar.net.stream import CHUNK, Stream

log = logging.getLogger(__name__)

#: Whether masking runs in websockets' C extension. The pure-Python fallback costs ~1.8 ns/byte on
#: every client frame, which would cap a wss tunnel far below the target; say so once, loudly.
SPEEDUPS = vars(_frames)["apply_mask"] is not _ws_utils.apply_mask  # the fallback lives in websockets.utils
if not SPEEDUPS:  # pragma: no cover - depends on the installed wheel
    log.warning("websockets C speedups unavailable: websocket masking runs in pure Python (slow)")


class _ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """The logger handed to websockets' protocol objects.

    Its per-connection INFO lines ("connection open", "connection closed") are demoted to DEBUG: a
    relay server logged two lines per tunnel, a flood at hundreds of tunnels a second and measurable
    time per connection. Errors and warnings pass unchanged; ``-D`` shows the demoted lines.

    And nothing secret reaches a log at any level: websockets' frame dump shows the first bytes of
    each data frame (a relay request's user and password in clear), and its handshake dump every
    header value (``Authorization: Bearer ...`` from a ws ``header`` option). Data frames are logged
    as their type and size only, header values other than the handshake's own as ``***``.
    """

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if args and isinstance(msg, str):
            args = _redacted(msg, args)
        super().log(level, msg, *args, **kwargs)


#: Handshake headers whose values are safe (and useful) in a debug log; any other value is redacted.
_LOGGABLE_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "user-agent",
        "server",
        "date",
        "content-type",
        "content-length",
    }
)


def _redacted(msg: str, args: tuple[object, ...]) -> tuple[object, ...]:
    if msg in ("< %s", "> %s") and isinstance(args[0], Frame) and args[0].opcode in _DATA:
        frame = args[0]
        return (f"{frame.opcode.name} [{len(frame.data)} bytes, content not logged]",)
    if msg in ("< %s: %s", "> %s: %s") and len(args) == 2 and str(args[0]).lower() not in _LOGGABLE_HEADERS:
        return (args[0], "***")
    return args


_protocol_log = _ConnectionLog(log, {})

#: GOST's default websocket path (dialer and listener).
DEFAULT_PATH = "/ws"

#: Largest message we accept. GOST (gorilla) writes one message per Write call, which its relay
#: makes with buffers far below this; 4 MiB bounds what one peer can make us buffer.
MAX_MESSAGE = 4 * 1024 * 1024

#: Largest *first* message a server accepts. websockets buffers a message whole before handing it
#: on, so with one limit any unauthenticated client could make the server hold 4 MiB (100 of them:
#: +415 MB RSS). The first message carries the proxy request (a relay request is < 1 KiB) and, from
#: GOST's and tungo's relay clients, the first data write behind it: tungo reads ``CHUNK`` (256 KiB) at
#: a time, GOST less. Later messages, sent once the handler has read this one, get ``MAX_MESSAGE``.
FIRST_MESSAGE = CHUNK + 4096

#: Largest upgrade request head a server reads (websockets alone allows 128 lines of 8 KiB each).
#: Browsers and GOST send well under 2 KiB; cookies or bearer tokens stay far below this.
MAX_REQUEST_HEAD = 64 * 1024

#: Largest message we send: writes above it are split. 1 MiB fits websockets' default max_size,
#: so any websockets-based peer accepts our frames, while staying far above the 64 KiB floor that
#: keeps per-frame Python overhead negligible.
MAX_SEND = 1024 * 1024

#: Headers the websocket handshake owns; configuring them would break the upgrade.
_RESERVED = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-accept",
        "sec-websocket-extensions",
    }
)

_DATA = (Opcode.TEXT, Opcode.BINARY, CONT)


class WebSocketStream:
    """A ``Stream`` carried as websocket binary messages over an inner ``Stream``."""

    __slots__ = ("_chunks", "_closed", "_eof", "_inner", "_offset", "_protocol", "_send_lock")

    #: ``write_eof`` sends nothing (see the module docstring); ``stream.half_closes`` reads this.
    half_close = False

    def __init__(self, inner: Stream, protocol: Protocol, pending: list[bytes] | None = None) -> None:
        self._inner = inner
        self._protocol = protocol
        self._chunks: deque[bytes] = deque(pending or ())
        self._offset = 0  # bytes of _chunks[0] already returned
        self._eof = False
        self._closed = False
        self._send_lock = asyncio.Lock()

    @property
    def protocol(self) -> Protocol:
        """The websockets protocol object (state, close code), for diagnostics."""
        return self._protocol

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self._eof:
                return b""
            await self._receive()
        chunk = chunks[0]
        start = self._offset
        if start == 0 and len(chunk) <= max_bytes:
            chunks.popleft()  # the common case: a whole payload, no copy
            return chunk
        # Small reads (protocol headers) slice only what they return: no quadratic re-copying.
        end = start + max_bytes
        if end >= len(chunk):
            chunks.popleft()
            self._offset = 0
        else:
            self._offset = end
        return chunk[start:end]

    async def _receive(self) -> None:
        """Read from the inner stream once and turn what arrived into payload chunks."""
        protocol = self._protocol
        data = await self._inner.read(CHUNK)
        if data:
            protocol.receive_data(data)
        else:
            # A GOST peer closes without a close frame: fine between frames, data loss inside one.
            truncated = bool(protocol.reader.buffer) or protocol.current_size is not None
            protocol.receive_eof()
            self._eof = True
            if truncated and protocol.close_rcvd is None:
                raise ProtocolError("websocket: connection closed in the middle of a frame")
        for event in protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode in _DATA:
                    if event.data:
                        payload = event.data
                        self._chunks.append(payload if type(payload) is bytes else bytes(payload))
                elif event.opcode is CLOSE:
                    self._eof = True
        await self._flush_replies()
        exc = protocol.parser_exc
        if exc is not None and not isinstance(exc, EOFError):
            self._eof = True
            raise ProtocolError(f"websocket: {exc}") from exc

    async def _flush_replies(self) -> None:
        """Send what the protocol answers by itself (pongs, the echoed close frame), best effort.

        A peer that closed (or reset) right after its close frame makes the echo fail, but the data
        frames that came before it are still ours to deliver: raising from read() would lose the end
        of a transfer. A really broken connection shows again on the next inner read or write.
        """
        with contextlib.suppress(OSError):
            await self._flush()

    async def _flush(self) -> None:
        # Under the lock so frames from read() (pongs) and write() never interleave on the wire.
        async with self._send_lock:
            outgoing = self._protocol.data_to_send()
            # b"" is websockets' "half-close TCP now"; we close the inner stream in close() instead.
            outgoing = [chunk for chunk in outgoing if chunk]
            if not outgoing:
                return
            await self._inner.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    async def write(self, data: bytes) -> None:
        protocol = self._protocol
        if self._closed or protocol.state is not OPEN:
            raise ConnectionResetError("websocket is closed")
        size = len(data)
        if size <= MAX_SEND:
            protocol.send_binary(data)
        else:
            view = memoryview(data)
            for start in range(0, size, MAX_SEND):
                protocol.send_binary(view[start : start + MAX_SEND])
        await self._flush()

    async def write_eof(self) -> None:
        """No-op: a close frame would end both directions (see the module docstring)."""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._protocol.state is OPEN:
                self._protocol.send_close(1000)
                async with asyncio.timeout(1.0):
                    await self._flush()
        except (OSError, TimeoutError, ProtocolError, DialError):
            pass  # the peer is gone already; closing the inner stream is all that is left
        finally:
            await self._inner.close()


class _ServerProtocol(ServerProtocol):
    """websockets' server protocol with a smaller limit for the first message (``FIRST_MESSAGE``).

    The limit is checked on each frame header before its payload is read, so a client announcing a
    bigger first message is refused (close 1009) before it can make us buffer it."""

    def __init__(self, *, first_message: int, max_message: int, logger: _ConnectionLog) -> None:
        super().__init__(max_size=min(first_message, max_message), logger=logger)
        self._max_message = max_message
        # websockets >= 14 names the limit max_message_size (max_size before).
        self._limit_name = "max_message_size" if hasattr(self, "max_message_size") else "max_size"

    def recv_frame(self, frame: Frame) -> None:
        super().recv_frame(frame)
        if frame.fin and frame.opcode in _DATA:
            setattr(self, self._limit_name, self._max_message)


def check_headers(headers: Mapping[str, object] | None, what: str) -> None:
    """ConfigError when configured headers would override the ones the upgrade owns."""
    _header_items(headers, what)


def _header_items(headers: Mapping[str, object] | None, what: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key, value in (headers or {}).items():
        if str(key).lower() in _RESERVED:
            raise ConfigError(f"{what} header {key!r} is set by the websocket handshake itself")
        items.append((str(key), str(value)))
    return items


def _frames_to_chunks(events: list[object], chunks: list[bytes]) -> bool:
    """Collect data frames that arrived with the handshake; True if a close frame was among them."""
    closed = False
    for event in events:
        if isinstance(event, Frame):
            if event.opcode in _DATA and event.data:
                chunks.append(bytes(event.data))
            elif event.opcode is CLOSE:
                closed = True
    return closed


async def client_handshake(
    inner: Stream,
    *,
    host: str,
    path: str = DEFAULT_PATH,
    headers: Mapping[str, object] | None = None,
    secure: bool = False,
    max_message: int = MAX_MESSAGE,
) -> WebSocketStream:
    """Open a websocket over ``inner``. Bound it with ``asyncio.timeout``; failures raise DialError."""
    if not path.startswith("/"):
        path = "/" + path
    try:
        uri = parse_uri(("wss" if secure else "ws") + "://tungo.invalid" + path)
    except Exception as exc:
        raise ConfigError(f"ws path {path!r}: {exc}") from exc
    protocol = ClientProtocol(uri, max_size=max_message, logger=_protocol_log)
    request: Request = protocol.connect()
    del request.headers["Host"]
    request.headers["Host"] = host
    for key, value in _header_items(headers, "ws"):
        if key.lower() == "host":
            del request.headers["Host"]
        request.headers[key] = value
    protocol.send_request(request)
    stream = WebSocketStream(inner, protocol)
    await stream._flush()

    chunks: list[bytes] = []
    while True:
        data = await inner.read(CHUNK)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        response = next((e for e in events if isinstance(e, Response)), None)
        if response is not None or protocol.handshake_exc is not None:
            break
        if not data:
            raise DialError(f"ws {host}{path}: connection closed before the handshake response")
    failure = protocol.handshake_exc
    if failure is not None or response is None:
        if isinstance(failure, InvalidStatus):
            status = failure.response.status_code
            raise DialError(
                f"ws {host}{path}: server answered HTTP {status}, not a websocket upgrade"
            ) from failure
        raise DialError(f"ws {host}{path}: bad handshake response: {failure}") from failure
    closed = _frames_to_chunks(list(events[events.index(response) + 1 :]), chunks)
    stream._chunks.extend(chunks)
    stream._eof = closed
    await stream._flush_replies()  # a ping that came with the 101 is answered now, not at the first read
    return stream


async def server_handshake(
    inner: Stream,
    *,
    path: str = DEFAULT_PATH,
    headers: Mapping[str, object] | None = None,
    max_message: int = MAX_MESSAGE,
    peer: object = None,
) -> WebSocketStream:
    """Accept a websocket over ``inner`` on ``path``. Bound it with ``asyncio.timeout``.

    A wrong path gets 404, a non-websocket request 400/426, garbage nothing (websockets closes):
    each raises ``ProtocolError`` after the answer is sent.
    """
    extra = _header_items(headers, "ws listener")
    protocol = _ServerProtocol(first_message=FIRST_MESSAGE, max_message=max_message, logger=_protocol_log)
    stream = WebSocketStream(inner, protocol)
    request: Request | None = None
    events: list[object] = []
    head = 0
    while request is None:
        data = await inner.read(CHUNK)
        head += len(data)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        events = list(protocol.events_received())
        request = next((e for e in events if isinstance(e, Request)), None)
        if request is None and protocol.handshake_exc is not None:
            await stream._flush()  # 414/431 for oversized heads; nothing for garbage
            raise ProtocolError(f"ws from {peer}: not an HTTP request: {protocol.handshake_exc}")
        if request is None and not data:
            raise ProtocolError(f"ws from {peer}: connection closed before the handshake request")
        if request is None and head > MAX_REQUEST_HEAD:
            protocol.send_response(protocol.reject(431, "Request header fields too large\n"))
            await stream._flush_replies()
            raise ProtocolError(f"ws from {peer}: upgrade request head over {MAX_REQUEST_HEAD} bytes: 431")
    asked = request.path.partition("?")[0]
    if asked != path:
        protocol.send_response(protocol.reject(404, "404 page not found\n"))
        await stream._flush()
        raise ProtocolError(f"ws from {peer}: path {request.path!r} is not served (only {path!r}): 404")
    response = protocol.accept(request)
    if response.status_code != 101:
        protocol.send_response(response)
        await stream._flush()
        exc = protocol.handshake_exc
        reason = exc if isinstance(exc, InvalidHandshake) else response.reason_phrase
        raise ProtocolError(f"ws from {peer}: bad upgrade request ({response.status_code}): {reason}")
    for key, value in extra:
        response.headers[key] = value
    protocol.send_response(response)
    await stream._flush()
    chunks: list[bytes] = []
    closed = _frames_to_chunks(events[events.index(request) + 1 :], chunks)
    stream._chunks.extend(chunks)
    stream._eof = closed
    await stream._flush_replies()  # pongs for pings pipelined behind the request
    return stream
