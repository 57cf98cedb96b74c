"""TCP flows of the TUN engine: dial while the SYN is held, accept on the NAT listener, splice.

Owns one flow's life: the upstream dial (the SYN stays held in ``tun.nat`` meanwhile, so a failed dial
is answered with an RST the app sees as "connection refused": truthful, and fail closed), the release
of the SYN to the local listener, the accept (matched by the peer's NAT port), the splice with
backpressure, and the propagation of resets. Called by ``tun.engine``, which spawns ``run_flow`` in its
TaskGroup and runs ``accept_loop``. Never touches packets other than the held SYN and the RST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

from tungo_sidecar.net.stream import CHUNK, SocketStream, Stream, splice
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
        dial: Callable[[TcpSession], Awaitable[Stream]],
        stats: TunStats,
        dial_timeout: float,
        accept_timeout: float,
    ) -> None:
        self.nat = nat
        self.listener = listener
        self._write = write_packet
        self._header = header
        self._dial = dial
        self._stats = stats
        self._dial_timeout = dial_timeout
        self._accept_timeout = accept_timeout
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
        """Dial, release the SYN, wait for the accept, splice; always leaves the NAT consistent."""
        loop = asyncio.get_running_loop()
        self._stats.tcp_flows += 1
        try:
            upstream = await asyncio.wait_for(self._dial(session), self._dial_timeout)
        except Exception as exc:  # any dial failure, chain or direct, refuses the flow
            self._stats.tcp_dial_failures += 1
            log.info(
                "TCP %s -> %s refused: dial failed: %s", session.src, session.dst, exc or type(exc).__name__
            )
            self._refuse(session)
            return
        except BaseException:
            self.nat.release(session)
            raise
        try:
            session.accepted = loop.create_future()
            session.state = State.OPEN
            syn = bytearray(session.syn)
            self.nat.rewrite_out(session, syn, len(self._header))
            self._write(syn)
            try:
                conn: socket.socket = await asyncio.wait_for(session.accepted, self._accept_timeout)
            except TimeoutError:
                log.info("TCP %s -> %s: the app never completed the handshake", session.src, session.dst)
                return
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                reader, writer = await asyncio.open_connection(sock=conn, limit=CHUNK)
            except BaseException:
                conn.close()
                raise
            app = AppStream(reader, writer)
            self._stats.tcp_active += 1
            try:
                await splice(app, _Upstream(upstream, app))
            finally:
                self._stats.tcp_active -= 1
        finally:
            await upstream.close()  # idempotent for every Stream; splice may have closed it already
            self.nat.close(session, loop.time())
            if session.accepted is not None and not session.accepted.done():
                session.accepted.cancel()

    def _refuse(self, session: TcpSession) -> None:
        self.nat.release(session)
        rst = self.nat.reply_rst(session)
        self._write(self._header + rst if self._header else rst)
        self._stats.tcp_rst_sent += 1
