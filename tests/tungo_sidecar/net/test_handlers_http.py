"""http CONNECT connector and handler together on loopback, and the handler's answers to bad input."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from loopback import dial, handler_server

from tungo_sidecar import errors
from tungo_sidecar.config.model import Auth, Plugin, Service
from tungo_sidecar.net.connectors import HopContext, make_connector
from tungo_sidecar.net.direct import DirectDialer
from tungo_sidecar.net.handlers import make_handler
from tungo_sidecar.proto.address import Address


@contextlib.asynccontextmanager
async def greeter() -> AsyncIterator[Address]:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = await reader.readline()
        writer.write(b"hello " + name)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    try:
        yield Address("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def http_proxy(auth: Auth | None = None) -> AsyncIterator[tuple[Address, list[BaseException]]]:
    svc = Service("h", "127.0.0.1:0", handler=Plugin("http", auth=auth), listener=Plugin("tcp"))
    async with handler_server(make_handler(svc, DirectDialer())) as served:
        yield served


async def test_connect_with_basic_auth() -> None:
    async with greeter() as target, http_proxy(Auth("u", "p")) as (proxy, failures):
        tunnel = await make_connector(Plugin("http", auth=Auth("u", "p"))).connect_tcp(
            await dial(proxy), target
        )
        await tunnel.write(b"tungo\n")
        got = b""
        async with asyncio.timeout(5):
            while chunk := await tunnel.read():
                got += chunk
        await tunnel.close()
    assert got == b"hello tungo\n"
    assert failures == []


@pytest.mark.parametrize("auth", [None, Auth("u", "bad")])
async def test_wrong_or_missing_credentials_get_407(auth: Auth | None) -> None:
    async with http_proxy(Auth("u", "p")) as (proxy, failures):
        with pytest.raises(errors.ProxyRefusedError, match="407") as info:
            await make_connector(Plugin("http", auth=auth)).connect_tcp(
                await dial(proxy), Address("127.0.0.1", 9)
            )
        await asyncio.sleep(0.05)
    assert info.value.code == 407
    assert "credentials" in str(failures[0])


async def test_unreachable_target_gets_502() -> None:
    async with greeter() as gone:
        pass
    async with http_proxy() as (proxy, _):
        with pytest.raises(errors.ProxyRefusedError) as info:
            await make_connector(Plugin("http")).connect_tcp(await dial(proxy), gone)
    assert info.value.code == 502


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", b"405"),
        (b"CONNECT nohost HTTP/1.1\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"400"),
    ],
)
async def test_bad_requests_are_answered_and_logged(head: bytes, status: bytes) -> None:
    async with http_proxy() as (proxy, failures):
        stream = await dial(proxy)
        await stream.write(head)
        async with asyncio.timeout(5):
            answer = await stream.read()
        await stream.close()
        await asyncio.sleep(0.05)
    assert answer.split(b" ")[1] == status
    assert isinstance(failures[0], errors.HttpProtocolError)


async def test_http_connector_has_no_udp() -> None:
    connector = make_connector(Plugin("http"))
    assert not connector.supports_udp
    with pytest.raises(errors.DialError, match="no UDP"):
        await connector.connect_udp(None, Address("1.1.1.1", 53), HopContext(Address("127.0.0.1", 8080)))  # type: ignore[arg-type]
