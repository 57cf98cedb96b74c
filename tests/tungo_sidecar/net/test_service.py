"""net.service: a proxy service's limits (maxConns, maxHandshakes, gracePeriod), its drain on stop,
and one quiet DEBUG line for a client that connects and closes without a byte, on every listener and
handler kind (issue 12, items 1, 6 and 8)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tungo_sidecar import errors
from tungo_sidecar.config.model import Plugin
from tungo_sidecar.config.url import build_config
from tungo_sidecar.net.connectors import make_connector
from tungo_sidecar.net.direct import DirectDialer
from tungo_sidecar.net.handlers import make_handler
from tungo_sidecar.net.service import DEFAULT_GRACE_PERIOD, ProxyService, limits
from tungo_sidecar.net.sockopts import DEFAULT_MAX_HANDSHAKES, TCPListener, open_tcp
from tungo_sidecar.proto.address import Address

LOCAL = "127.0.0.1"


def _tls_query(listener: str, pki: Any) -> str:
    if listener not in ("tls", "wss"):
        return ""
    return f"certFile={pki.server.cert}&keyFile={pki.server.key}"


def _url(handler: str, listener: str, pki: Any = None, **options: object) -> str:
    query = "&".join([f"{k}={v}" for k, v in options.items()] + [_tls_query(listener, pki)] * bool(pki))
    return f"{handler}+{listener}://{LOCAL}:0" + (f"?{query.strip('&')}" if query.strip("&") else "")


@contextlib.asynccontextmanager
async def serving(url: str) -> AsyncIterator[ProxyService]:
    service = build_config([url]).services[0]
    proxy = ProxyService(service, make_handler(service, DirectDialer()))
    await proxy.start()
    try:
        async with asyncio.timeout(30):
            yield proxy
    finally:
        await proxy.stop()


def _listener(proxy: ProxyService) -> TCPListener:
    assert proxy.listener is not None
    return proxy.listener


async def _until_idle(proxy: ProxyService) -> None:
    async with asyncio.timeout(5):
        while _listener(proxy).sessions:  # noqa: ASYNC110 (polling the listener's own count)
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("listener", ["tcp", "tls", "ws", "wss"])
@pytest.mark.parametrize("handler", ["relay", "socks5", "http"])
async def test_a_bare_tcp_health_check_is_a_debug_line(
    handler: str, listener: str, pki: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Item 8: only relay+tcp logged this at DEBUG; tls, ws, wss, socks5 and http said WARNING.
    caplog.set_level(logging.DEBUG, logger="tungo_sidecar")
    async with serving(_url(handler, listener, pki)) as proxy:
        for _ in range(3):
            _, writer = await asyncio.open_connection(LOCAL, proxy.port)
            writer.close()
            await writer.wait_closed()
        await _until_idle(proxy)
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []
    quiet = [r.getMessage() for r in caplog.records if "without" in r.getMessage()]
    assert len(quiet) == 3, [r.getMessage() for r in caplog.records]


async def test_a_client_that_sends_garbage_is_still_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tungo_sidecar")
    async with serving(_url("socks5", "tcp")) as proxy:
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        writer.write(b"\x04\x01junk")
        async with asyncio.timeout(5):
            await reader.read()
        writer.close()
        await _until_idle(proxy)
    assert [r.levelno for r in caplog.records if "client" in r.getMessage()] == [logging.WARNING]


def test_limits_come_from_metadata_with_documented_defaults() -> None:
    default = limits(build_config(["socks5://:1080"]).services[0])
    assert default.max_conns is None  # the listener derives it from the open-file limit
    assert default.max_handshakes == DEFAULT_MAX_HANDSHAKES == 256
    assert default.grace_period == DEFAULT_GRACE_PERIOD == 5.0
    assert default.handshake_timeout == 10.0
    url = "relay+wss://:443?maxConns=1000&maxHandshakes=64&gracePeriod=30s&handshakeTimeout=3s"
    assert limits(build_config([url]).services[0]) == type(default)(1000, 64, 3.0, 30.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [("maxConns", "0"), ("maxHandshakes", "many"), ("gracePeriod", "-1s"), ("maxConns", "-5")],
)
def test_bad_limits_are_config_errors_naming_the_service(key: str, value: str) -> None:
    service = build_config([f"socks5://:1080?{key}={value}"]).services[0]
    with pytest.raises(errors.ConfigError, match=rf"service 'service-0': metadata '{key}'"):
        ProxyService(service, make_handler(service, DirectDialer()))


async def test_max_handshakes_bounds_idle_unauthenticated_clients(pki: Any) -> None:
    # Item 1: clients that finish TLS and the websocket upgrade but never send a request each hold a
    # session; past maxHandshakes new ones are reset at once, and counted.
    async with serving(_url("relay", "ws", None, maxHandshakes=3)) as proxy:
        idle = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
            writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
            writer.write(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            idle.append(writer)
        assert _listener(proxy).handshakes == 3
        with contextlib.suppress(ConnectionResetError):
            reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
            writer.write(b"GET /ws HTTP/1.1\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
            writer.close()
        assert _listener(proxy).stats.refused_handshakes == 1
        for writer in idle:
            writer.close()


async def _slow_source(period: float = 0.01) -> tuple[asyncio.Server, Address, asyncio.Event]:
    """A target that streams 16 KiB every ``period`` until the peer goes (then sets the event)."""
    gone = asyncio.Event()

    async def stream_forever(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while not writer.is_closing():
                writer.write(bytes(16384))
                await writer.drain()
                await asyncio.sleep(period)
        writer.close()
        gone.set()

    server = await asyncio.start_server(stream_forever, LOCAL, 0)
    return server, Address(LOCAL, server.sockets[0].getsockname()[1]), gone


async def test_stop_drains_then_resets_a_cut_download_so_the_client_sees_an_error() -> None:
    # Item 6: stop used to cancel sessions and close their sockets with a FIN: a client mid-download
    # saw a normal end. Now the listener closes at once, the session runs on for the grace period,
    # and is then reset.
    server, target, gone = await _slow_source()
    async with server, serving(_url("socks5", "tcp", None, gracePeriod="600ms")) as proxy:
        socks = make_connector(Plugin("socks5"))
        port = proxy.port
        tunnel = await socks.connect_tcp(await open_tcp(Address(LOCAL, port), timeout=2), target)
        assert await tunnel.read()
        started = time.monotonic()
        stopping = asyncio.create_task(proxy.stop())
        await asyncio.sleep(0.1)
        with pytest.raises(ConnectionRefusedError):  # no new connections while draining
            await asyncio.open_connection(LOCAL, port)
        received = 0
        with pytest.raises(ConnectionResetError):
            while data := await tunnel.read():  # the download goes on during the grace period...
                received += len(data)
        elapsed = time.monotonic() - started  # ...and ends in an error, not an EOF
        await stopping
        await tunnel.close()
        async with asyncio.timeout(5):
            await gone.wait()  # the proxy closed its upstream side too
    assert 0.5 < elapsed < 3, elapsed
    assert received > 16384


async def test_a_transfer_that_ends_within_the_grace_period_completes() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, sent in pieces over ~0.3 s

    async def finite(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for start in range(0, len(payload), 65536):
            writer.write(payload[start : start + 65536])
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.close()

    server = await asyncio.start_server(finite, LOCAL, 0)
    target = Address(LOCAL, server.sockets[0].getsockname()[1])
    async with server, serving(_url("socks5", "tcp", None, gracePeriod="5s")) as proxy:
        socks = make_connector(Plugin("socks5"))
        tunnel = await socks.connect_tcp(await open_tcp(Address(LOCAL, proxy.port), timeout=2), target)
        received = bytearray(await tunnel.read())
        stopping = asyncio.create_task(proxy.stop())
        while data := await tunnel.read():
            received += data
        await tunnel.close()
        async with asyncio.timeout(3):
            await stopping  # returns once the session is over, long before the 5 s
    assert bytes(received) == payload
