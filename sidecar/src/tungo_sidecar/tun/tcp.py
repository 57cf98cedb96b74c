"""TCP flows of the TUN engine: dial while the SYN is held (or accept first and sniff), splice.

Owns one flow's life, in one of two orders:

* **held SYN** (no sniffing): the upstream dial runs while the SYN stays held in ``tun.nat``, so a
  failed dial is answered with an RST the app sees as "connection refused" — truthful, and fail closed;
  then the SYN is released to the local listener and the connection accepted;
* **accept first** (``sniffing``): the route depends on the flow's first bytes, so the SYN is released at
  once, the kernel completes the handshake, and up to ``proto.sniff.MAX_SNIFF_BYTES`` are read for at
  most ``sniff_timeout`` seconds (a server-speaks-first protocol sends nothing: it is routed by address
  when the time is up); then the route is dialled, and a failed dial resets the app's connection
  (SO_LINGER 0). The bytes read while sniffing go upstream first, unchanged.

Either way the accept is matched by the peer's NAT port, the splice has backpressure, and resets are
propagated. Called by ``tun.engine``, which spawns ``run_flow`` in its TaskGroup and runs
``accept_loop``. Never touches packets other than the held SYN and the RST; never decides routes (the
``dial`` it is given does, with the sniffed name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

from tungo_sidecar.net.stream import CHUNK, SocketStream, Stream, splice
from tungo_sidecar.proto.sniff import Sniffed, Sniffer
from tungo_sidecar.tun.nat import State, TcpNat, TcpSession, TunStats

log = logging.getLogger(__name__)

_LINGER_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN


class AppStream(SocketStream):
    """The accepted (app-side) socket; ``abort`` makes ``close`` reset it, mirroring an upstream reset."""

    __slots__ = ("abort",)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.abort = False

    async def close(self) -> None:
        if self.abort:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            self.writer.transport.abort()
            return
        await super().close()


class _Upstream:
    """Wraps the dialled stream: if it fails, the app side is reset rather than closed cleanly."""

    __slots__ = ("app", "inner")

    def __init__(self, inner: Stream, app: AppStream) -> None:
        self.inner = inner
        self.app = app

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        try:
            return await self.inner.read(max_bytes)
        except Exception:
            self.app.abort = True
            raise

    async def write(self, data: bytes) -> None:
        try:
            await self.inner.write(data)
        except Exception:
            self.app.abort = True
            raise

    async def write_eof(self) -> None:
        await self.inner.write_eof()

    async def close(self) -> None:
        await self.inner.close()


class TcpFlows:
    """The flows of one ``TcpNat`` (one address family) and its listener socket."""

    def __init__(
        self,
        nat: TcpNat,
        listener: socket.socket,
        *,
        write_packet: Callable[[bytes | bytearray], None],
        header: bytes,
        dial: Callable[[TcpSession, Sniffed | None, bytes], Awaitable[Stream]],
        stats: TunStats,
        dial_timeout: float,
        accept_timeout: float,
        sniff_timeout: float | None = None,
    ) -> None:
        self.nat = nat
        self.listener = listener
        self._write = write_packet
        self._header = header
        self._dial = dial
        self._stats = stats
        self._dial_timeout = dial_timeout
        self._accept_timeout = accept_timeout
        self._sniff_timeout = sniff_timeout
        self._next_host = str(nat.next_hop)

    async def accept_loop(self) -> None:
        """Hand each accepted connection to the flow whose NAT port is its peer port (until cancelled)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.listener)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("TUN listener accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            session = self.nat.by_port[peer[1]] if peer[0] == self._next_host else None
            future = session.accepted if session is not None else None
            if future is None or future.done():
                conn.close()  # not a connection the NAT released: nobody asked for it
                continue
            future.set_result(conn)

    async def run_flow(self, session: TcpSession) -> None:
        """Dial and accept in the order the flow needs, splice; always leaves the NAT consistent."""
        self._stats.tcp_flows += 1
        if self._sniff_timeout is not None:
            await self._accept_first(session, self._sniff_timeout)
            return
        try:
            upstream = await asyncio.wait_for(self._dial(session, None, b""), self._dial_timeout)
        except Exception as exc:  # any dial failure, chain or direct, refuses the flow
            self._dial_failed(session, exc)
            self._refuse(session)
            return
        except BaseException:
            self.nat.release(session)
            raise
        try:
            app = await self._accept(session)
            if app is not None:
                await self._splice(app, upstream)
        finally:
            await upstream.close()  # idempotent for every Stream; splice may have closed it already
            self._done(session)

    async def _accept_first(self, session: TcpSession, sniff_timeout: float) -> None:
        try:
            app = await self._accept(session)
            if app is None:
                return
            try:
                sniffed, first = await _sniff(app, sniff_timeout)
            except BaseException:  # the app reset the connection, or the engine stops
                app.abort = True
                await app.close()
                raise
            self._stats.tcp_sniffed += sniffed.host is not None
            try:
                # The dial sends ``first`` itself: a fallback to the address must replay it.
                upstream = await asyncio.wait_for(self._dial(session, sniffed, first), self._dial_timeout)
            except BaseException as exc:
                app.abort = True  # the handshake is done: a reset is how the app hears "refused"
                await app.close()
                if not isinstance(exc, Exception):
                    raise
                self._dial_failed(session, exc)
                self._stats.tcp_rst_sent += 1
                return
            try:
                await self._splice(app, upstream)
            finally:
                await upstream.close()
        finally:
            self._done(session)

    async def _accept(self, session: TcpSession) -> AppStream | None:
        """Release the held SYN to the listener and wait for its connection (None: it never came)."""
        session.accepted = asyncio.get_running_loop().create_future()
        session.state = State.OPEN
        syn = bytearray(session.syn)
        self.nat.rewrite_out(session, syn, len(self._header))
        self._write(syn)
        try:
            conn: socket.socket = await asyncio.wait_for(session.accepted, self._accept_timeout)
        except TimeoutError:
            log.info("TCP %s -> %s: the app never completed the handshake", session.src, session.dst)
            return None
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader, writer = await asyncio.open_connection(sock=conn, limit=CHUNK)
        except BaseException:
            conn.close()
            raise
        return AppStream(reader, writer)

    async def _splice(self, app: AppStream, upstream: Stream) -> None:
        self._stats.tcp_active += 1
        try:
            await splice(app, _Upstream(upstream, app))
        finally:
            self._stats.tcp_active -= 1

    def _dial_failed(self, session: TcpSession, exc: BaseException) -> None:
        self._stats.tcp_dial_failures += 1
        log.info("TCP %s -> %s refused: dial failed: %s", session.src, session.dst, exc or type(exc).__name__)

    def _done(self, session: TcpSession) -> None:
        self.nat.close(session, asyncio.get_running_loop().time())
        if session.accepted is not None and not session.accepted.done():
            session.accepted.cancel()

    def _refuse(self, session: TcpSession) -> None:
        self.nat.release(session)
        rst = self.nat.reply_rst(session)
        self._write(self._header + rst if self._header else rst)
        self._stats.tcp_rst_sent += 1


async def _sniff(app: AppStream, wait: float) -> tuple[Sniffed, bytes]:
    """Read the app's first bytes until the sniffer decides, the app stops sending, or ``wait`` s pass.

    Returns the verdict and every byte read (at most the sniffer's cap plus one read: it decides by
    then), which the caller sends upstream first."""
    sniffer = Sniffer()
    chunks: list[bytes] = []
    result: Sniffed | None = None
    try:
        async with asyncio.timeout(wait):
            while result is None:
                data = await app.read(CHUNK)
                if not data:  # EOF: the reader keeps answering b"" so the splice sees it again
                    break
                chunks.append(data)
                result = sniffer.feed(data)
    except TimeoutError:
        pass
    return (result if result is not None else sniffer.finish()), b"".join(chunks)
