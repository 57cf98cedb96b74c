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
from collections.abc import Awaitable, Callable

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
    try:
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
    except OSError as exc:
        sock.close()
        raise DialError(f"dial {addr}: {_describe(exc)}") from exc
    return SocketStream(reader, writer)


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

    return await asyncio.start_server(
        handle,
        host or None,
        port,
        limit=READ_LIMIT,
        backlog=backlog,
        reuse_address=True,
        reuse_port=reuse_port,
    )
