"""DirectDialer: marked TCP and UDP to loopback peers, bounded UDP queues, clear failures."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tungo_sidecar.errors import DialError
from tungo_sidecar.net.dialer import FlowDialer
from tungo_sidecar.net.direct import DirectDialer, UDPDatagrams
from tungo_sidecar.net.sockopts import serve_tcp
from tungo_sidecar.net.stream import SocketStream
from tungo_sidecar.proto.address import Address


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_dial_tcp_marked() -> None:
    async def on_stream(stream: SocketStream) -> None:
        await stream.write(b"welcome")

    server = await serve_tcp("127.0.0.1", 0, on_stream)
    async with server:
        dialer: FlowDialer = DirectDialer(mark=0x2A, interface="lo")
        stream = await dialer.dial_tcp(Address("127.0.0.1", server.sockets[0].getsockname()[1]))
        assert isinstance(stream, SocketStream)
        try:
            assert (
                stream.writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x2A
            )
            assert await stream.read() == b"welcome"
        finally:
            await stream.close()


async def test_dial_tcp_refused() -> None:
    with pytest.raises(DialError, match="connection refused"):
        await DirectDialer(connect_timeout=2).dial_tcp(Address("127.0.0.1", _free_port(socket.SOCK_STREAM)))


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data.upper(), addr)  # type: ignore[attr-defined]


async def test_dial_udp_roundtrip_marked() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        session = await DirectDialer(mark=9).dial_udp(Address("127.0.0.1", port))
        assert isinstance(session, UDPDatagrams)
        try:
            sock = session._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 9
            for payload in (b"one", b"two", b"x" * 60000):
                await session.send(payload)
                async with asyncio.timeout(2):
                    assert await session.recv() == payload.upper()
        finally:
            await session.close()
        with pytest.raises(EOFError):
            await session.recv()
    finally:
        transport.close()


async def test_udp_to_a_closed_port_ends_the_session() -> None:
    session = await DirectDialer().dial_udp(Address("127.0.0.1", _free_port(socket.SOCK_DGRAM)))
    try:
        await session.send(b"anyone?")
        with pytest.raises(EOFError, match="refused"):
            async with asyncio.timeout(2):
                await session.recv()
    finally:
        await session.close()


async def test_udp_queue_is_bounded() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(peer.getsockname())
        session = await UDPDatagrams.open(sock, Address(*peer.getsockname()), queue_size=4)
        try:
            for i in range(10):
                peer.sendto(b"%d" % i, sock.getsockname())
            await asyncio.sleep(0.2)  # loopback delivers at once; the loop reads everything meanwhile
            assert session.dropped == 6
            assert [await session.recv() for _ in range(4)] == [b"0", b"1", b"2", b"3"]
        finally:
            await session.close()


async def test_zero_length_datagrams_cross_both_ways() -> None:
    # asyncio's sendto() drops an empty payload; GOST forwards it, so must we (found against GOST's codec).
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2)
        session = await DirectDialer().dial_udp(Address("127.0.0.1", peer.getsockname()[1]))
        try:
            await session.send(b"")
            data, addr = await loop.run_in_executor(None, peer.recvfrom, 100)
            assert data == b""
            peer.sendto(b"", addr)
            async with asyncio.timeout(2):
                assert await session.recv() == b""
        finally:
            await session.close()
