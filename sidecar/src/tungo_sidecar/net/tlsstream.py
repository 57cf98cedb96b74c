"""TLS over any ``Stream`` (ssl.MemoryBIO): for hops that ride inside another hop's tunnel, and for
every server-side TLS listener.

The first client hop's TLS runs on the socket (``SocketStream.start_tls``, OpenSSL driven by asyncio).
From the second hop on, the "socket" is a relay tunnel or a websocket: there is no file descriptor,
so the TLS records are produced and consumed here through an ``ssl.SSLObject`` and two memory BIOs.
Listeners use this on their sockets too: asyncio's TLS transport keeps a 256 KiB receive buffer per
connection from the first moment, an unauthenticated idle client included; this keeps none between
reads (an idle connection costs the OpenSSL session state, a few KiB).

Half-close: like asyncio's TLS transport, ``write_eof`` is a no-op (TLS has no portable half-close);
``close`` sends close_notify. A peer vanishing without close_notify reads as EOF (GOST's peers close
that way), a corrupt record raises ``ProtocolError``.

Callers: ``net.transports``. Never touches sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from tungo_sidecar.errors import DialError, ProtocolError
from tungo_sidecar.net.stream import CHUNK, Stream

#: SSLObject.write takes any size, but one TLS record is 16 KiB; feeding big slices keeps the
#: per-call Python overhead small while the outgoing BIO is flushed once per write.
_WRITE_SLICE = 256 * 1024


class TLSStream:
    """A ``Stream`` of plaintext over a ``Stream`` of TLS records."""

    __slots__ = ("_closed", "_deferred", "_incoming", "_inner", "_outgoing", "_send_lock", "_sslobj")

    #: ``write_eof`` is a no-op (see the module docstring); ``stream.half_closes`` reads this.
    half_close = False

    def __init__(
        self, inner: Stream, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ):
        self._inner = inner
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._deferred: ssl.SSLError | None = None  # met while reading ahead, raised by the next read

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._sslobj

    async def handshake(self) -> None:
        """Run the TLS handshake; ssl errors propagate (the caller maps them to its error class)."""
        while True:
            try:
                self._sslobj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                await self._flush()
                return
            await self._flush()
            if not await self._fill():
                raise ConnectionResetError("peer closed the connection during the TLS handshake")

    async def _flush(self) -> None:
        async with self._send_lock:
            if self._outgoing.pending:
                await self._inner.write(self._outgoing.read())

    async def _fill(self) -> bool:
        """Feed the next records from the inner stream; False at EOF."""
        data = await self._inner.read(CHUNK)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        while True:
            try:
                if self._deferred is not None:
                    deferred, self._deferred = self._deferred, None
                    raise deferred
                data = self._sslobj.read(max_bytes)
                if len(data) < max_bytes and self._incoming.pending:
                    data = self._read_more(data, max_bytes)
                return data
            except ssl.SSLWantReadError:
                # Post-handshake messages (TLS 1.3 tickets, key updates) may need an answer.
                if self._outgoing.pending:
                    await self._flush()
                if not await self._fill():
                    return b""  # no close_notify: GOST peers end this way; treat as EOF
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise ProtocolError(f"tls: bad record from peer: {exc}") from exc

    def _read_more(self, first: bytes, max_bytes: int) -> bytes:
        """``first`` and the records already received behind it, up to ``max_bytes``.

        One ``SSLObject.read`` returns one TLS record (16 KiB at most); a bulk transfer read record by
        record costs a trip through every layer above per 16 KiB. asyncio's TLS transport also
        decrypts everything received before handing it on. An error or the end of the stream stops
        here and is raised by the next ``read`` (OpenSSL itself reports a failed record only once).
        """
        parts = [first]
        size = len(first)
        while size < max_bytes and self._incoming.pending:
            try:
                more = self._sslobj.read(max_bytes - size)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                self._deferred = exc
                break
            if not more:
                break
            parts.append(more)
            size += len(more)
        return first if len(parts) == 1 else b"".join(parts)

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("write on a closed TLS stream")
        view = memoryview(data)
        for start in range(0, len(view), _WRITE_SLICE):
            self._sslobj.write(view[start : start + _WRITE_SLICE])
        await self._flush()

    async def write_eof(self) -> None:
        """No-op: TLS has no half-close that GOST peers understand (asyncio's TLS transport agrees)."""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ssl.SSLError, OSError):
            self._sslobj.unwrap()  # queues close_notify; raises WantRead while waiting for the peer's
        with contextlib.suppress(OSError, ProtocolError, DialError):
            await self._flush()
        await self._inner.close()


async def wrap_client(
    inner: Stream, context: ssl.SSLContext, server_hostname: str | None, seconds: float
) -> TLSStream:
    """Handshake as a client over ``inner``; ssl/OS errors and timeouts propagate unchanged."""
    stream = TLSStream(inner, context, server_side=False, server_hostname=server_hostname)
    async with asyncio.timeout(seconds):
        await stream.handshake()
    return stream


async def wrap_server(inner: Stream, context: ssl.SSLContext, seconds: float) -> TLSStream:
    """Handshake as a server over ``inner``; ssl/OS errors and timeouts propagate unchanged."""
    stream = TLSStream(inner, context, server_side=True, server_hostname=None)
    async with asyncio.timeout(seconds):
        await stream.handshake()
    return stream
