"""The byte-stream and datagram interfaces every transport, connector and handler speaks.

A ``Stream`` is an ordered, reliable byte pipe (a TCP socket, a TLS session, a websocket carrying
binary messages, a relay tunnel...). Layers wrap one another: a connector takes the stream a
transport produced and returns the stream to the target. ``Datagrams`` carries whole UDP payloads to
one fixed peer (a relay UDP stream, a socks5 UDP association, a direct UDP socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Protocol, runtime_checkable

#: Read size for splicing: large reads keep Python's per-call overhead small next to the copy.
CHUNK = 256 * 1024


@runtime_checkable
class Stream(Protocol):
    """An ordered byte pipe. ``read`` returns b"" at EOF; ``write`` applies backpressure."""

    async def read(self, max_bytes: int = CHUNK) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self) -> None:
        """Half-close the sending side where the transport allows it (else a no-op)."""

    async def close(self) -> None: ...


@runtime_checkable
class Datagrams(Protocol):
    """Whole datagrams to and from one fixed peer. ``recv`` raises EOFError when the peer is gone."""

    async def send(self, payload: bytes) -> None: ...

    async def recv(self) -> bytes: ...

    async def close(self) -> None: ...


class SocketStream:
    """A ``Stream`` over asyncio's StreamReader/StreamWriter (TCP, optionally upgraded to TLS)."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        return await self.reader.read(max_bytes)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def write_eof(self) -> None:
        if self.writer.can_write_eof():
            with contextlib.suppress(OSError):
                self.writer.write_eof()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError):
            await self.writer.wait_closed()

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None = None) -> None:
        """Upgrade this socket stream to TLS in place (client or server side per ``context``)."""
        await self.writer.start_tls(context, server_hostname=server_hostname)

    @property
    def half_close(self) -> bool:
        """Whether ``write_eof`` reaches the peer: TCP yes, TLS on this socket no (see ``half_closes``)."""
        return self.writer.can_write_eof()

    @property
    def peername(self) -> tuple[str, int] | None:
        peer = self.writer.get_extra_info("peername")
        return (peer[0], peer[1]) if peer else None

    @property
    def sockname(self) -> tuple[str, int] | None:
        name = self.writer.get_extra_info("sockname")
        return (name[0], name[1]) if name else None


def half_closes(stream: Stream) -> bool:
    """Whether ``stream.write_eof`` reaches the peer as a half-close.

    Streams that know say so with a ``half_close`` attribute (TLS and websocket streams: False; a
    wrapper: what its inner stream says); a stream without one is assumed to (plain sockets, tests).
    Proxies use it to end a session at the client's EOF when the upstream could not pass it on.
    """
    return bool(getattr(stream, "half_close", True))


async def pipe(src: Stream, dst: Stream) -> int:
    """Copy ``src`` to ``dst`` until EOF, then half-close ``dst``. Returns the bytes copied."""
    total = 0
    while data := await src.read(CHUNK):
        total += len(data)
        await dst.write(data)
    await dst.write_eof()
    return total


async def splice(a: Stream, b: Stream) -> tuple[int, int]:
    """Copy both ways until both directions reach EOF (or one fails), then close both.

    Returns (bytes a→b, bytes b→a). Errors of either side end both directions: a reset on one side
    must not leave the other half open forever.
    """
    try:
        async with asyncio.TaskGroup() as group:
            up = group.create_task(pipe(a, b))
            down = group.create_task(pipe(b, a))
        return up.result(), down.result()
    finally:
        await asyncio.gather(a.close(), b.close(), return_exceptions=True)
