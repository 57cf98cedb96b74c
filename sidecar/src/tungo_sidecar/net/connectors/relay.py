"""The GOST ``relay`` connector: TCP CONNECT and UDP over one relay stream, as go-gost/x sends them.

Called by the chain router for every hop whose connector is ``relay``. Owns the client-side I/O
around ``proto.relay``: the lazy header (the request rides on the first data write, the response is
read on the first read), ``nodelay`` (request written and response read before returning) and UDP
datagram framing. It never opens sockets and never decides where a flow goes.

Bytes on the wire, matching go-gost/x ``connector/relay``:

* TCP: ``request | first data`` in one write, then raw bytes both ways.
* UDP: ``request | LEN | payload`` in one write for the first datagram, then each later datagram as
  two writes, ``LEN`` then ``payload`` (over ws: two messages). The request carries the FUDP flag
  and a network feature (udp), as GOST's does.

One addition to GOST's behaviour, invisible on the wire to a GOST server: a lazy stream whose owner
reads before it writes (a server-speaks-first protocol: SSH, SMTP...) would wait forever for a
response to a request never sent, so after ``HEADER_FLUSH_DELAY`` without a write the request goes
out alone. A GOST server accepts the header with or without data behind it.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from typing import ClassVar

from tungo_sidecar import errors
from tungo_sidecar.config.model import Plugin
from tungo_sidecar.net.connectors.base import HopContext
from tungo_sidecar.net.stream import CHUNK, Stream, half_closes
from tungo_sidecar.proto import relay
from tungo_sidecar.proto.address import Address

#: How long a read waits for the first write to carry the lazy request before sending it alone.
#: Short enough that a server-first protocol barely notices, long enough that a client-first one
#: (nearly all: HTTP, TLS) has written by then and keeps the one-packet handshake.
HEADER_FLUSH_DELAY = 0.1


async def read_response(stream: Stream) -> tuple[relay.Response, bytes]:
    """Read one relay response header off ``stream``; return it with the bytes that followed it.

    Raises the mapped ``RelayStatusError`` on a non-OK status, ``RelayProtocolError`` on garbage or
    when the server closes before answering (what GOST does on a bad request version).
    """
    reader = relay.ResponseReader()
    while True:
        chunk = await stream.read(CHUNK)
        if not chunk:
            raise errors.RelayProtocolError(
                f"relay: server closed the connection before answering ({reader.buffered} bytes received)"
            )
        response = reader.feed(chunk)
        if response is not None:
            relay.raise_for_status(response)
            return response, reader.leftover


class _LazyHeader:
    """The request header a lazy client still owes the server, and the response it still has to read.

    Shared by the TCP stream and the UDP datagrams below. The header goes out exactly once: merged
    with the first write, or alone when a read has waited ``flush_delay`` (or at write_eof).
    """

    __slots__ = ("_flush_delay", "_inner", "_lock", "_pending", "_response_due", "_sent")

    def __init__(
        self, inner: Stream, pending: bytes | None, *, response_due: bool, flush_delay: float
    ) -> None:
        self._inner = inner
        self._pending = pending
        self._response_due = response_due
        self._flush_delay = flush_delay
        self._lock = asyncio.Lock()
        self._sent = asyncio.Event()
        if pending is None:
            self._sent.set()

    @property
    def pending(self) -> bool:
        return self._pending is not None

    @property
    def response_due(self) -> bool:
        return self._response_due

    async def write_first(self, data: bytes) -> bool:
        """Write ``header | data`` if the header is still owed; False if it already went out."""
        async with self._lock:
            if self._pending is None:
                return False
            header, self._pending = self._pending, None
            await self._inner.write(header + data)
            self._sent.set()
            return True

    async def flush(self) -> None:
        await self.write_first(b"")

    async def read_response(self) -> bytes:
        """Wait for the header to leave (flushing it alone after the delay), read the response,
        raise on non-OK; return the bytes that came behind it."""
        if not self._sent.is_set():
            try:
                async with asyncio.timeout(self._flush_delay):
                    await self._sent.wait()
            except TimeoutError:
                await self.flush()
        _, leftover = await read_response(self._inner)
        self._response_due = False
        return leftover


class RelayStream:
    """The TCP stream to a target through a relay node (lazy request/response unless ``nodelay``)."""

    __slots__ = ("_header", "_inner", "_leftover")

    def __init__(self, inner: Stream, header: _LazyHeader, leftover: bytes = b"") -> None:
        self._inner = inner
        self._header = header
        self._leftover = leftover

    @property
    def half_close(self) -> bool:
        return half_closes(self._inner)

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        if self._header.response_due:
            self._leftover += await self._header.read_response()
        if self._leftover:
            data, self._leftover = self._leftover[:max_bytes], self._leftover[max_bytes:]
            return data
        return await self._inner.read(max_bytes)

    async def write(self, data: bytes) -> None:
        if self._header.pending and await self._header.write_first(data):
            return
        await self._inner.write(data)

    async def write_eof(self) -> None:
        # The target must still be dialled when the client half-closes without sending anything.
        await self._header.flush()
        await self._inner.write_eof()

    async def close(self) -> None:
        await self._inner.close()


class RelayDatagrams:
    """A UDP session through a relay node: ``LEN(2) | payload`` datagrams on the relay stream."""

    __slots__ = ("_header", "_inner", "_queue", "_reader", "_send_lock")

    def __init__(self, inner: Stream, header: _LazyHeader, leftover: bytes = b"") -> None:
        self._inner = inner
        self._header = header
        self._reader = relay.DatagramReader()
        self._queue: collections.deque[bytes] = collections.deque(self._reader.feed(leftover))
        # A datagram after the first is two writes; concurrent senders must not interleave them.
        self._send_lock = asyncio.Lock()

    async def send(self, payload: bytes) -> None:
        if len(payload) > relay.MAX_DATAGRAM:
            raise ValueError(f"relay: datagram of {len(payload)} bytes exceeds {relay.MAX_DATAGRAM}")
        async with self._send_lock:
            if self._header.pending and await self._header.write_first(relay.encode_datagram(payload)):
                return
            # GOST's connector writes the length and the payload separately; match its bytes.
            await self._inner.write(struct.pack("!H", len(payload)))
            await self._inner.write(payload)

    async def recv(self) -> bytes:
        while not self._queue:
            if self._header.response_due:
                chunk = await self._header.read_response()
            else:
                chunk = await self._inner.read(CHUNK)
                if not chunk:
                    raise EOFError(
                        f"relay: UDP stream closed ({self._reader.buffered} bytes of a datagram cut)"
                    )
            self._queue.extend(self._reader.feed(chunk))
        return self._queue.popleft()

    async def close(self) -> None:
        await self._inner.close()


class RelayConnector:
    """``connector: relay``. Options: ``auth`` (user auth feature), metadata ``nodelay``."""

    supports_udp: ClassVar[bool] = True

    def __init__(self, plugin: Plugin, *, flush_delay: float = HEADER_FLUSH_DELAY) -> None:
        self._auth = relay.UserAuth(plugin.auth.username, plugin.auth.password) if plugin.auth else None
        self._nodelay = plugin.metadata.get_bool("nodelay")
        self._flush_delay = flush_delay

    async def _open(self, stream: Stream, request: relay.Request) -> tuple[_LazyHeader, bytes]:
        data = request.encode()
        if not self._nodelay:
            return _LazyHeader(stream, data, response_due=True, flush_delay=self._flush_delay), b""
        await stream.write(data)
        _, leftover = await read_response(stream)
        return _LazyHeader(stream, None, response_due=False, flush_delay=self._flush_delay), leftover

    async def connect_tcp(self, stream: Stream, target: Address) -> Stream:
        header, leftover = await self._open(stream, relay.Request.connect(target, auth=self._auth))
        return RelayStream(stream, header, leftover)

    async def connect_udp(self, stream: Stream, target: Address, hop: HopContext) -> RelayDatagrams:
        header, leftover = await self._open(stream, relay.Request.connect(target, udp=True, auth=self._auth))
        return RelayDatagrams(stream, header, leftover)
