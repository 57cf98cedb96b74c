"""Sockets tungo opens itself: resolution, SO_MARK / SO_BINDTODEVICE before connect, clear dial errors.

Every outbound socket (to a relay node, or a bypassed direct dial) is created here so that the fwmark
and the interface binding are set *before* the first packet leaves: a socket without the mark would be
routed back into the TUN and loop (see DESIGN.md, "Loop avoidance"). Failures become ``DialError``
naming the address and the cause (refused, timed out, unreachable, cannot resolve, cannot mark); a
mark that cannot be set fails the dial rather than sending unmarked traffic (fail closed).

Callers: ``net.direct`` (direct dials), the chain router (first hop's TCP connection), listeners
(``serve_tcp``). Never speaks any protocol on the sockets it opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import SupportsIndex

from tungo_sidecar.errors import DialError
from tungo_sidecar.net.stream import CHUNK, SocketStream
from tungo_sidecar.proto.address import Address

log = logging.getLogger(__name__)

#: Default connect timeout (GOST's dialer default is 10 s as well).
DEFAULT_TIMEOUT = 10.0

#: StreamReader limit: asyncio pauses reading once 2x this is buffered; at the splice chunk size the
#: pause/resume churn stays low on fast paths while one flow still buffers at most ~512 KiB.
READ_LIMIT = CHUNK

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}

SockAddr = tuple[str, int] | tuple[str, int, int, int]


class ChunkReader(asyncio.StreamReader):
    """The reader of every socket tungo opens or accepts: received chunks are kept as they came.

    asyncio's StreamReader copies each received chunk into one bytearray and every ``read`` copies
    the bytes out again: two passes over every byte of every hop, measured at ~25% of the CPU per byte
    of a relay+tcp chain. Here ``read`` hands over the chunk the transport produced (no copy when it
    fits ``n``; a slice otherwise). Flow control is asyncio's: reading pauses above 2x ``limit``
    buffered and resumes at ``limit``.

    Only what the ``Stream`` interface needs is offered: ``read`` and ``readexactly``. The line
    readers (``readline``, ``readuntil``, async iteration) raise NotImplementedError rather than
    silently see an empty buffer.
    """

    def __init__(self, limit: int = CHUNK) -> None:
        super().__init__(limit)
        self._cap = limit
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of _chunks[0] already returned
        self._size = 0  # bytes buffered (not yet returned)
        self._ended = False
        self._error: Exception | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._paused = False

    def exception(self) -> Exception | None:
        return self._error

    def set_exception(self, exc: Exception) -> None:
        self._error = exc
        self._wake(exc)

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def feed_eof(self) -> None:
        self._ended = True
        self._wake()

    def at_eof(self) -> bool:
        return self._ended and not self._chunks

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        chunk = data if isinstance(data, bytes) else bytes(data)  # transports pass bytes already
        if not chunk:
            return
        self._chunks.append(chunk)
        self._size += len(chunk)
        self._wake()
        transport = self._transport
        if transport is not None and not self._paused and self._size > 2 * self._cap:
            assert isinstance(transport, asyncio.ReadTransport)
            transport.pause_reading()
            self._paused = True

    def _wake(self, exc: Exception | None = None) -> None:
        waiter, self._wakeup = self._wakeup, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def _resume(self) -> None:
        transport = self._transport
        if self._paused and self._size <= self._cap and transport is not None:
            assert isinstance(transport, asyncio.ReadTransport)
            self._paused = False
            transport.resume_reading()

    async def read(self, n: int = -1) -> bytes:
        if self._error is not None:
            raise self._error  # as StreamReader: an error wins over what is still buffered
        if n == 0:
            return b""
        if n < 0:
            parts = []
            while data := await self.read(CHUNK):
                parts.append(data)
            return b"".join(parts)
        while not self._chunks:
            if self._ended:
                return b""
            if self._wakeup is not None:
                raise RuntimeError("read() called while another coroutine is already reading")
            # Waiting while paused would deadlock: resume first (asyncio's reader does the same).
            if self._paused and self._transport is not None:
                self._paused = False
                assert isinstance(self._transport, asyncio.ReadTransport)
                self._transport.resume_reading()
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        chunk = self._chunks[0]
        start = self._offset
        if start == 0 and len(chunk) <= n:
            self._chunks.popleft()  # the common case: the whole chunk, no copy
        else:
            # Small reads slice only what they return (an offset, no re-copying of the rest).
            end = start + n
            if end >= len(chunk):
                self._chunks.popleft()
                self._offset = 0
            else:
                self._offset = end
            chunk = chunk[start:end]
        self._size -= len(chunk)
        self._resume()
        return chunk

    async def readexactly(self, n: int) -> bytes:
        parts: list[bytes] = []
        missing = n
        while missing > 0:
            data = await self.read(missing)
            if not data:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(data)
            missing -= len(data)
        return b"".join(parts)

    async def readline(self) -> bytes:
        raise NotImplementedError("ChunkReader offers read() and readexactly() only")

    async def readuntil(self, separator: object = b"\n") -> bytes:
        raise NotImplementedError("ChunkReader offers read() and readexactly() only")

    async def __anext__(self) -> bytes:
        raise NotImplementedError("ChunkReader offers read() and readexactly() only")


def _describe(exc: OSError) -> str:
    """A short human cause for a connect failure."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if exc.errno in _UNREACHABLE:
        return "unreachable" + (f" ({exc.strerror})" if exc.strerror else "")
    return exc.strerror or str(exc) or type(exc).__name__


def apply_sockopts(sock: socket.socket, *, mark: int | None, interface: str | None) -> None:
    """Set SO_MARK and bind to ``interface`` (a device name, or a local IP as GOST also accepts).

    Raises ``DialError`` when an option cannot be set: traffic must never leave unmarked.
    """
    if mark is not None and mark != 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        except OSError as exc:
            raise DialError(f"cannot set SO_MARK={mark:#x} (needs CAP_NET_ADMIN): {_describe(exc)}") from exc
    if interface:
        try:
            ip = ipaddress.ip_address(interface)
        except ValueError:
            ip = None
        try:
            if ip is not None:
                # GOST's `interface` may be a source address: bind it, any port.
                sock.bind((str(ip), 0))
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        except OSError as exc:
            raise DialError(f"cannot bind to interface {interface!r}: {_describe(exc)}") from exc


async def resolve(addr: Address, kind: socket.SocketKind, seconds: float) -> list[tuple[int, SockAddr]]:
    """(family, sockaddr) candidates for ``addr``, IP literals without a lookup. DialError when none."""
    ip = addr.ip
    if ip is not None:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [(family, (str(ip), addr.port))]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(seconds):
            infos = await loop.getaddrinfo(addr.host, addr.port, type=kind)
    except TimeoutError as exc:
        raise DialError(f"dial {addr}: resolving {addr.host!r} timed out after {seconds:g}s") from exc
    except OSError as exc:  # socket.gaierror is an OSError
        raise DialError(f"dial {addr}: cannot resolve {addr.host!r}: {exc}") from exc
    result: list[tuple[int, SockAddr]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr) not in result:
            result.append((family, sockaddr))  # type: ignore[arg-type]
    if not result:
        raise DialError(f"dial {addr}: {addr.host!r} has no IPv4/IPv6 address")
    return result


async def _connect_one(
    family: int,
    sockaddr: SockAddr,
    kind: socket.SocketKind,
    *,
    mark: int | None,
    interface: str | None,
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        apply_sockopts(sock, mark=mark, interface=interface)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.get_running_loop().sock_connect(sock, sockaddr)
        else:
            sock.connect(sockaddr)  # UDP: only sets the default peer, never blocks
    except BaseException:
        sock.close()
        raise
    return sock


async def _open(
    addr: Address, kind: socket.SocketKind, *, mark: int | None, interface: str | None, seconds: float
) -> socket.socket:
    """Resolve and connect, trying each address in turn within one overall budget of ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    candidates = await resolve(addr, kind, seconds)
    last: OSError | None = None
    for family, sockaddr in candidates:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            async with asyncio.timeout(remaining):
                return await _connect_one(family, sockaddr, kind, mark=mark, interface=interface)
        except TimeoutError as exc:
            last = exc
            break
        except OSError as exc:
            last = exc
            log.debug("dial %s via %s failed: %s", addr, sockaddr[0], exc)
    if last is None or isinstance(last, TimeoutError):
        raise DialError(f"dial {addr}: timed out after {seconds:g}s") from last
    raise DialError(f"dial {addr}: {_describe(last)}") from last


async def open_tcp(
    addr: Address,
    *,
    mark: int | None = None,
    interface: str | None = None,
    # One budget for resolve + connect over every address, with a message naming the phase that ran
    # out: clearer than an outer asyncio.timeout, hence a parameter.
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
) -> SocketStream:
    """A connected TCP ``SocketStream`` to ``addr`` (marked / bound before connect, TCP_NODELAY set)."""
    sock = await _open(addr, socket.SOCK_STREAM, mark=mark, interface=interface, seconds=timeout)
    loop = asyncio.get_running_loop()
    reader = ChunkReader(READ_LIMIT)
    try:
        # asyncio.open_connection, with our reader.
        transport, protocol = await loop.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader), sock=sock
        )
    except OSError as exc:
        sock.close()
        raise DialError(f"dial {addr}: {_describe(exc)}") from exc
    return SocketStream(reader, asyncio.StreamWriter(transport, protocol, reader, loop))


async def open_udp(
    addr: Address,
    *,
    mark: int | None = None,
    interface: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (see open_tcp)
) -> socket.socket:
    """A non-blocking UDP socket connected to ``addr`` (marked / bound before connect).

    ``connect`` on UDP only fixes the peer (and lets the kernel report ICMP errors); the caller wraps
    the socket in a datagram endpoint (see ``net.direct``).
    """
    return await _open(addr, socket.SOCK_DGRAM, mark=mark, interface=interface, seconds=timeout)


async def serve_tcp(
    host: str | None,
    port: int,
    on_stream: Callable[[SocketStream], Awaitable[None]],
    *,
    backlog: int = 1024,
    reuse_port: bool = False,
) -> asyncio.Server:
    """Listen on ``host:port`` (SO_REUSEADDR, TCP_NODELAY on accepted sockets) and serve each stream.

    ``on_stream`` owns the stream for its lifetime; the stream is closed after it returns or raises
    (errors are logged here so a bad client never reaches the loop's exception handler).
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = SocketStream(reader, writer)
        try:
            await on_stream(stream)
        except Exception as exc:
            log.info("connection from %s ended: %s", stream.peername, exc)
        except asyncio.CancelledError:
            # Server shutdown. asyncio 3.11's start_server callback calls task.exception() on a
            # cancelled handler task and logs a bogus traceback; this is the task's outermost frame,
            # so ending normally here is equivalent and quiet.
            pass
        finally:
            await stream.close()

    # asyncio.start_server, with our reader.
    return await asyncio.get_running_loop().create_server(
        lambda: asyncio.StreamReaderProtocol(ChunkReader(READ_LIMIT), handle),
        host or None,
        port,
        backlog=backlog,
        reuse_address=True,
        reuse_port=reuse_port,
    )
