"""Sockets tungo opens itself: resolution, SO_MARK / SO_BINDTODEVICE before connect, clear dial errors;
and the listening sockets of proxy services, with their own bounded accept loop (``listen_tcp``).

Every outbound socket (to a relay node, or a bypassed direct dial) is created here so that the fwmark
and the interface binding are set *before* the first packet leaves: a socket without the mark would be
routed back into the TUN and loop (see DESIGN.md, "Loop avoidance"). Failures become ``DialError``
naming the address and the cause (refused, timed out, unreachable, cannot resolve, cannot mark); a
mark that cannot be set fails the dial rather than sending unmarked traffic (fail closed).

Listening (``listen_tcp``, ``TCPListener``): asyncio's accept loop logs a traceback per failed accept
and retries at once, so at the descriptor limit a server burned most of a core and wrote ~30,000
tracebacks in 8 s. Here accepting pauses with a back-off on resource errors (EMFILE, ENFILE, ENOBUFS,
ENOMEM; 5 ms doubling to 1 s, as Go's net/http), each listener caps its open sessions (``max_conns``)
and the sessions still in their handshake (``max_handshakes``), refusing the excess at once with a
reset, and all of it is counted and logged as one summary line per ``SUMMARY_INTERVAL``, never one
per connection. ``drain`` is the graceful stop: no new connections, a grace period, then resets.

Callers: ``net.direct`` (direct dials), the chain router (first hop's TCP connection), ``net.service``
(``listen_tcp``), the DNS service (``serve_tcp``, asyncio's loop). Never speaks any protocol on the
sockets it opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import resource
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import SupportsIndex

from tungo_sidecar.errors import DialError
from tungo_sidecar.net import alloc
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
        #: Bytes received from the peer so far (a server tells a bare health check from a client).
        self.received = 0
        self._on_data: Callable[[], None] | None = None

    def on_first_data(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the first byte has arrived (at once if it already has)."""
        if self.received:
            callback()
        else:
            self._on_data = callback

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
        self.received += len(chunk)
        if self._on_data is not None:
            callback, self._on_data = self._on_data, None
            callback()
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


# -- listening -------------------------------------------------------------------------------------

#: Errors of the one pending connection (it left, or the network under it failed; accept(2) tells
#: to retry them, as Go does): that connection is skipped, accepting goes on. Any other error, above
#: all running out of something (EMFILE, ENFILE, ENOBUFS, ENOMEM), leaves the connection queued and
#: the listening socket readable again at once: accepting pauses with a back-off instead of spinning,
#: and resumes by itself.
_ACCEPT_SKIP = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        errno.ENONET,
    }
)

#: Accept back-off, as Go's net/http server: 5 ms, doubled per failure up to 1 s, reset by a success.
BACKOFF_MIN = 0.005
BACKOFF_MAX = 1.0
#: Connections accepted per wake-up before the loop runs other work (asyncio takes up to its backlog).
ACCEPT_BATCH = 64
#: Default cap on a listener's connections still in their handshake (transport handshake and the first
#: bytes of the proxy request). Idle ones cost 3-30 KiB each (measured), a websocket client sending
#: its first message at most ``ws.FIRST_MESSAGE`` more: 256 bound that to a few MiB, ~80 MiB at worst.
#: A TLS handshake costs ~1 ms of CPU: 256 in flight are ~0.15 s of two cores' work, so the cap binds
#: on clients that stall, not on a burst of real ones.
DEFAULT_MAX_HANDSHAKES = 256
#: Share of the open-file limit one listener's sessions may use by default: a proxied session holds
#: two descriptors (client and upstream), so 40% of the limit in sessions is 80% of it in descriptors.
MAX_CONNS_SHARE = 0.4
#: A listener writes at most one line per this many seconds about refused connections and accept
#: errors: the first event at once, then the counts of each interval that had any.
SUMMARY_INTERVAL = 10.0

#: Returning memory after a burst: once a listener's sessions fall to a quarter of a peak of at least
#: ``TRIM_PEAK``, memory is released (``alloc.release``) ``TRIM_DELAY`` later (closes come in bunches).
TRIM_PEAK = 64
TRIM_DELAY = 1.0

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


def nofile_limit() -> int:
    """The soft open-file limit (RLIMIT_NOFILE) of this process, ``1 << 20`` when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if 0 < soft != resource.RLIM_INFINITY else 1 << 20


def default_max_conns() -> int:
    """``max_conns`` when not configured: ``MAX_CONNS_SHARE`` of the open-file limit (at least 1)."""
    return max(1, int(nofile_limit() * MAX_CONNS_SHARE))


def set_reset(sock: socket.socket | object) -> None:
    """Make the next close of ``sock`` a reset (SO_LINGER 0): the peer sees an error, not an EOF."""
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is not None:
        with contextlib.suppress(OSError):
            setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)


class _Summary:
    """Counted events of one listener, logged as one WARNING line per interval, never one per event."""

    def __init__(self, label: str, interval: float) -> None:
        self._label = label
        self._interval = interval
        self._counts: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def note(self, reason: str) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + 1
        if self._timer is None:
            # The first event after a quiet interval is said at once; the rest are summed per interval.
            self.flush()
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._counts:
            self.flush()
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def flush(self) -> None:
        if self._counts:
            parts = ", ".join(f"{count} {reason}" for reason, count in self._counts.items())
            self._counts.clear()
            log.warning("%s: %s", self._label, parts)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()


class _Conn:
    """One accepted connection: its socket, then its stream, and whether it is still in its handshake."""

    __slots__ = ("handshaking", "sock", "stream")

    def __init__(self, sock: socket.socket, handshaking: bool) -> None:
        self.sock = sock
        self.stream: SocketStream | None = None
        self.handshaking = handshaking


class ListenerStats:
    """What a listener counted since it started (tests and summaries read it)."""

    __slots__ = ("accept_errors", "accepted", "refused_conns", "refused_handshakes", "reset_at_stop")

    def __init__(self) -> None:
        self.accepted = 0
        self.refused_conns = 0  # over max_conns
        self.refused_handshakes = 0  # over max_handshakes
        self.accept_errors = 0  # accept() failed for lack of a resource (each one paused accepting)
        self.reset_at_stop = 0  # sessions still open when the drain's grace period ended


class TCPListener:
    """Listening sockets with an owned accept loop, per-listener caps and a graceful drain.

    ``on_stream`` runs in a task per connection (owned here: ``drain`` ends them) and owns the stream
    for its lifetime; the stream is closed after it returns. A connection counts as in its handshake
    from accept until ``handshake_done(stream)`` (never, when ``max_handshakes`` is None: then there
    is no such phase). Accepted streams have no connect callback, so asyncio's ``start_tls`` would
    take them for client sockets: servers run TLS through ``net.tlsstream``.
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        on_stream: Callable[[SocketStream], Awaitable[None]],
        *,
        label: str,
        max_conns: int,
        max_handshakes: int | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._on_stream = on_stream
        self.label = label
        self.max_conns = max_conns
        self.max_handshakes = max_handshakes
        self.stats = ListenerStats()
        self._conns: dict[asyncio.Task[None], _Conn] = {}
        self._by_stream: dict[SocketStream, _Conn] = {}
        self._handshakes = 0
        self._delay = 0.0
        self._resume_handle: asyncio.TimerHandle | None = None
        self._accepting = False
        self._closed = False
        self._summary = _Summary(label, SUMMARY_INTERVAL)
        self._peak = 0  # most sessions at once since the last trim
        self._trim_handle: asyncio.TimerHandle | None = None

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (none once closed)."""
        return () if self._closed else tuple(self._sockets)

    @property
    def sessions(self) -> int:
        """Connections being served (handshaking or not)."""
        return len(self._conns)

    @property
    def handshakes(self) -> int:
        """Connections still in their handshake."""
        return self._handshakes

    def start(self) -> None:
        if not self._closed and not self._accepting:
            self._accepting = True
            for sock in self._sockets:
                self._loop.add_reader(sock.fileno(), self._on_readable, sock)

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            for sock in self._sockets:
                self._loop.remove_reader(sock.fileno())

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP:
                    continue
                self._back_off(exc)
                return
            self._delay = 0.0
            self._admit(conn)

    def _back_off(self, exc: OSError) -> None:
        """Pause accepting on every socket of this listener, resume after the next back-off step."""
        self.stats.accept_errors += 1
        self._delay = min(BACKOFF_MAX, self._delay * 2) if self._delay else BACKOFF_MIN
        name = errno.errorcode.get(exc.errno or 0, "error")
        self._summary.note(
            f"accept() failed with {name} ({exc.strerror or exc}): accepting paused, retried with a "
            f"back-off up to {BACKOFF_MAX:g}s"
        )
        self._stop_accepting()
        self._resume_handle = self._loop.call_later(self._delay, self._resume)

    def _resume(self) -> None:
        self._resume_handle = None
        self.start()

    def _admit(self, sock: socket.socket) -> None:
        if len(self._conns) >= self.max_conns:
            self.stats.refused_conns += 1
            self._summary.note(f"connections refused: {self.max_conns} open (maxConns)")
            set_reset(sock)
            sock.close()
            return
        tracked = self.max_handshakes is not None
        if tracked and self._handshakes >= (self.max_handshakes or 0):
            self.stats.refused_handshakes += 1
            self._summary.note(
                f"connections refused: {self.max_handshakes} in their handshake (maxHandshakes)"
            )
            set_reset(sock)
            sock.close()
            return
        self.stats.accepted += 1
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()  # the peer is already gone
            return
        conn = _Conn(sock, handshaking=tracked)
        if tracked:
            self._handshakes += 1
        task = self._loop.create_task(self._session(conn))
        self._conns[task] = conn
        self._peak = max(self._peak, len(self._conns))

    def handshake_done(self, stream: SocketStream) -> None:
        """``stream`` left its handshake: it no longer counts against ``max_handshakes``."""
        conn = self._by_stream.get(stream)
        if conn is not None and conn.handshaking:
            conn.handshaking = False
            self._handshakes -= 1

    async def _session(self, conn: _Conn) -> None:
        loop = self._loop
        reader = ChunkReader(READ_LIMIT)
        stream: SocketStream | None = None
        try:
            transport, protocol = await loop.connect_accepted_socket(
                lambda: asyncio.StreamReaderProtocol(reader), conn.sock
            )
            stream = SocketStream(reader, asyncio.StreamWriter(transport, protocol, reader, loop))
            conn.stream = stream
            self._by_stream[stream] = conn
            await self._on_stream(stream)
        except Exception as exc:
            peer = stream.peername if stream is not None else None
            log.info("%s: connection from %s ended: %s", self.label, peer, exc)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._conns.pop(task, None)
            if conn.handshaking:
                conn.handshaking = False
                self._handshakes -= 1
            if stream is not None:
                self._by_stream.pop(stream, None)
                await stream.close()
            else:
                conn.sock.close()
            self._after_burst()

    def _after_burst(self) -> None:
        if self._trim_handle is None and self._peak >= TRIM_PEAK and len(self._conns) <= self._peak // 4:
            self._trim_handle = self._loop.call_later(TRIM_DELAY, self._trim)

    def _trim(self) -> None:
        self._trim_handle = None
        self._peak = len(self._conns)
        alloc.release()

    def close(self) -> None:
        """Stop accepting and close the listening sockets (the kernel refuses new connections).
        Sessions keep running; ``drain`` or ``wait_closed`` waits for them."""
        if self._closed:
            return
        self._stop_accepting()
        self._closed = True
        for handle in (self._resume_handle, self._trim_handle):
            if handle is not None:
                handle.cancel()
        self._resume_handle = self._trim_handle = None
        for sock in self._sockets:
            sock.close()
        self._summary.close()

    async def wait_closed(self) -> None:
        """Wait until closed and every session has ended."""
        while self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    async def drain(self, grace: float) -> int:
        """Close, let sessions finish for up to ``grace`` seconds, then reset the rest (RST to their
        clients, so a cut transfer is an error, not a clean end). Returns how many were reset."""
        self.close()
        left: list[asyncio.Task[None]] = []
        try:
            if self._conns and grace > 0:
                await asyncio.wait(list(self._conns), timeout=grace)
        finally:
            left = list(self._conns)
            self.stats.reset_at_stop += len(left)
            for task in left:
                self._reset(self._conns[task])
                task.cancel()
            if left:
                await asyncio.gather(*left, return_exceptions=True)
        return len(left)

    @staticmethod
    def _reset(conn: _Conn) -> None:
        if conn.stream is None:
            set_reset(conn.sock)
            return
        transport = conn.stream.writer.transport
        set_reset(transport.get_extra_info("socket"))
        transport.abort()


async def _bind_tcp(host: str | None, port: int, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host:port`` (every address when ``host`` is None),
    as ``loop.create_server`` makes them (SO_REUSEADDR, IPV6_V6ONLY on IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # a family this kernel lacks (IPv6 off), as asyncio skips it
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {sockaddr!r}: {exc.strerror}"
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(errno.EADDRNOTAVAIL, f"no address to listen on for {host or '*'}:{port}")
    return sockets


async def listen_tcp(
    host: str | None,
    port: int,
    on_stream: Callable[[SocketStream], Awaitable[None]],
    *,
    label: str = "listener",
    max_conns: int | None = None,
    max_handshakes: int | None = None,
    backlog: int = 1024,
    reuse_port: bool = False,
) -> TCPListener:
    """Listen on ``host:port`` and serve each accepted stream with ``on_stream`` (see ``TCPListener``).

    ``max_conns`` defaults to ``default_max_conns()``; ``max_handshakes`` None means connections have
    no handshake phase (the caller never calls ``handshake_done``). ``label`` starts the log lines.
    """
    sockets = await _bind_tcp(host, port, backlog, reuse_port)
    try:
        listener = TCPListener(
            sockets,
            on_stream,
            label=label,
            max_conns=max_conns if max_conns is not None else default_max_conns(),
            max_handshakes=max_handshakes,
        )
        listener.start()
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return listener
