"""Socket creation: marks and interface binding before connect, clear dial errors, the TCP listener."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

from tungo_sidecar.errors import DialError
from tungo_sidecar.net.sockopts import apply_sockopts, open_tcp, open_udp, serve_tcp
from tungo_sidecar.net.stream import SocketStream
from tungo_sidecar.proto.address import Address


def _closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def on_stream(stream: SocketStream) -> None:
        while data := await stream.read():
            await stream.write(data)

    server = await serve_tcp("127.0.0.1", 0, on_stream)
    return server, server.sockets[0].getsockname()[1]


async def test_open_tcp_sets_mark_nodelay_and_device() -> None:
    server, port = await _echo_server()
    async with server:
        stream = await open_tcp(Address("127.0.0.1", port), mark=0x1234, interface="lo", timeout=2)
        try:
            sock = stream.writer.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x1234
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            device = sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
            assert device.rstrip(b"\0") == b"lo"
            await stream.write(b"ping")
            assert await stream.read() == b"ping"
        finally:
            await stream.close()


async def test_open_tcp_by_name_resolves() -> None:
    server, port = await _echo_server()
    async with server:
        stream = await open_tcp(Address("localhost", port), timeout=2)
        try:
            await stream.write(b"x")
            assert await stream.read() == b"x"
            sock = stream.writer.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0  # no mark asked, none set
        finally:
            await stream.close()


async def test_open_tcp_ipv6_literal() -> None:
    async def on_stream(stream: SocketStream) -> None:
        await stream.write(b"v6")

    server = await serve_tcp("::1", 0, on_stream)
    async with server:
        stream = await open_tcp(Address("::1", server.sockets[0].getsockname()[1]), mark=3, timeout=2)
        try:
            assert await stream.read() == b"v6"
            assert stream.writer.get_extra_info("socket").family == socket.AF_INET6
        finally:
            await stream.close()


async def test_interface_given_as_ip_binds_the_source_address() -> None:
    server, port = await _echo_server()
    async with server:
        stream = await open_tcp(Address("127.0.0.1", port), interface="127.0.0.1", timeout=2)
        try:
            assert stream.sockname is not None and stream.sockname[0] == "127.0.0.1"
        finally:
            await stream.close()


async def test_unknown_interface_fails_closed() -> None:
    with pytest.raises(DialError, match="nosuchif0"):
        await open_tcp(Address("127.0.0.1", _closed_port()), interface="nosuchif0", timeout=2)


async def test_closed_port_is_refused_fast() -> None:
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(DialError, match=rf"127\.0\.0\.1:{port}: connection refused"):
        await open_tcp(Address("127.0.0.1", port), timeout=5)
    assert time.monotonic() - started < 1.0


async def test_connect_timeout_names_the_address() -> None:
    # A listener that never accepts, with its backlog filled: further SYNs are dropped, so the
    # connect hangs until our timeout (loopback only, no external address needed).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(DialError, match=rf"dial 127\.0\.0\.1:{port}: timed out after 0\.3s"):
                await open_tcp(Address("127.0.0.1", port), timeout=0.3)
            assert time.monotonic() - started < 1.5
        finally:
            for filler in fillers:
                filler.close()


async def test_unresolvable_name() -> None:
    with pytest.raises(DialError, match=r"nothing\.invalid"):
        await open_tcp(Address("nothing.invalid", 80), timeout=3)


async def test_mark_without_permission_is_a_dial_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real kernel refusal needs an unprivileged process; a socket whose setsockopt refuses
    # stands in for it to check the fail-closed path (no unmarked socket escapes).
    class Refusing(socket.socket):
        def setsockopt(self, *args: object) -> None:  # type: ignore[override]
            raise PermissionError(1, "Operation not permitted")

    with Refusing() as sock, pytest.raises(DialError, match="SO_MARK=0x10"):
        apply_sockopts(sock, mark=0x10, interface=None)


async def test_open_udp_is_connected_and_marked() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        port = peer.getsockname()[1]
        sock = await open_udp(Address("127.0.0.1", port), mark=7, interface="lo")
        try:
            assert sock.getpeername() == ("127.0.0.1", port)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 7
            sock.send(b"hello")
            data, source = peer.recvfrom(100)
            assert data == b"hello" and source == sock.getsockname()
        finally:
            sock.close()


async def test_serve_tcp_survives_a_failing_handler() -> None:
    calls = 0

    async def on_stream(stream: SocketStream) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await stream.write(b"ok")

    server = await serve_tcp("127.0.0.1", 0, on_stream)
    async with server:
        port = server.sockets[0].getsockname()[1]
        assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        first = await open_tcp(Address("127.0.0.1", port), timeout=2)
        assert await first.read() == b""  # closed by serve_tcp after the handler raised
        await first.close()
        second = await open_tcp(Address("127.0.0.1", port), timeout=2)
        assert await second.read() == b"ok"
        await second.close()
