"""Direct dials: the ``FlowDialer`` for bypassed flows (and chain-less services).

TCP goes through ``sockopts.open_tcp``; UDP through a connected UDP socket wrapped in an asyncio
datagram endpoint with a bounded receive queue (UDP semantics: when the consumer lags, the newest
datagrams are dropped, never buffered without bound). Every socket carries the fwmark and interface
binding so bypassed traffic leaves through the pod's real interface instead of looping into the TUN.

Callers: the TUN engine and proxy handlers, through ``FlowDialer``. Never decides *whether* a flow
goes direct; the route decision is made before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from tungo_sidecar.errors import DialError
from tungo_sidecar.net import sockopts
from tungo_sidecar.net.stream import Datagrams, Stream
from tungo_sidecar.proto.address import Address

log = logging.getLogger(__name__)

#: Datagrams queued per UDP session before new ones are dropped (~256 * 1.5 KiB = 384 KiB worst case).
UDP_QUEUE = 256


class _UDPProtocol(asyncio.DatagramProtocol):
    """Feeds a bounded queue; remembers the first socket error for ``recv`` to report."""

    def __init__(self, queue_size: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(queue_size)
        self.error: OSError | None = None
        self.dropped = 0
        self.writable = asyncio.Event()
        self.writable.set()

    def datagram_received(self, data: bytes, addr: object) -> None:
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped += 1

    def error_received(self, exc: Exception) -> None:
        # On a connected UDP socket this is the ICMP error of an earlier send (port unreachable...).
        if isinstance(exc, OSError) and self.error is None:
            self.error = exc
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._wake()
        self.writable.set()

    def _wake(self) -> None:
        # A None in the queue wakes a waiting recv; when full, recv will find the error anyway.
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class UDPDatagrams:
    """``Datagrams`` over a connected UDP socket. ``recv`` raises EOFError once closed or refused."""

    __slots__ = ("_closed", "_protocol", "_sock", "_transport", "peer")

    def __init__(
        self, transport: asyncio.DatagramTransport, protocol: _UDPProtocol, peer: Address, sock: socket.socket
    ) -> None:
        self._transport = transport
        self._sock = sock
        self._protocol = protocol
        self._closed = False
        self.peer = peer

    @classmethod
    async def open(cls, sock: socket.socket, peer: Address, queue_size: int = UDP_QUEUE) -> UDPDatagrams:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(lambda: _UDPProtocol(queue_size), sock=sock)
        return cls(transport, protocol, peer, sock)

    @property
    def dropped(self) -> int:
        """Datagrams dropped because the consumer did not keep up."""
        return self._protocol.dropped

    async def send(self, payload: bytes) -> None:
        if self._closed or self._transport.is_closing():
            raise EOFError(f"udp {self.peer}: session closed")
        await self._protocol.writable.wait()
        if not payload:
            # asyncio's sendto() silently drops an empty payload; a zero-length datagram is valid UDP
            # and GOST forwards it, so send it on the socket itself (never blocks: nothing to copy).
            with contextlib.suppress(BlockingIOError):
                self._sock.send(b"")
            return
        self._transport.sendto(payload)

    async def recv(self) -> bytes:
        while True:
            if self._protocol.error is not None:
                err = self._protocol.error
                raise EOFError(f"udp {self.peer}: {err.strerror or err}") from err
            if self._closed and self._protocol.queue.empty():
                raise EOFError(f"udp {self.peer}: session closed")
            data = await self._protocol.queue.get()
            if data is not None:
                return data

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.close()


@dataclass(frozen=True, slots=True)
class DirectDialer:
    """Dials targets straight from this host: marked, optionally bound to ``interface``."""

    mark: int | None = None
    interface: str | None = None
    connect_timeout: float = sockopts.DEFAULT_TIMEOUT

    async def dial_tcp(self, target: Address) -> Stream:
        return await sockopts.open_tcp(
            target, mark=self.mark, interface=self.interface, timeout=self.connect_timeout
        )

    async def dial_udp(self, target: Address) -> Datagrams:
        sock = await sockopts.open_udp(
            target, mark=self.mark, interface=self.interface, timeout=self.connect_timeout
        )
        try:
            return await UDPDatagrams.open(sock, target)
        except OSError as exc:
            sock.close()
            raise DialError(f"dial udp {target}: {exc}") from exc
