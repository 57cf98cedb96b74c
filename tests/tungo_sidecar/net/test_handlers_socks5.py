"""socks5 connector and handler together on loopback (TCP CONNECT, UDP ASSOCIATE, auth), plus raw
bytes for the refusals."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import pytest
from loopback import dial, echo_tcp, echo_udp, handler_server

from tungo_sidecar import errors
from tungo_sidecar.config.model import Auth, Plugin, Service
from tungo_sidecar.net.connectors import HopContext, make_connector
from tungo_sidecar.net.direct import DirectDialer
from tungo_sidecar.net.handlers import make_handler
from tungo_sidecar.proto import socks5
from tungo_sidecar.proto.address import Address


@contextlib.asynccontextmanager
async def socks_server(auth: Auth | None = None) -> AsyncIterator[tuple[Address, list[BaseException]]]:
    svc = Service("s5", "127.0.0.1:0", handler=Plugin("socks5", auth=auth), listener=Plugin("tcp"))
    async with handler_server(make_handler(svc, DirectDialer())) as served:
        yield served


@pytest.mark.parametrize("auth", [None, Auth("alice", "s3cret")])
async def test_connect_carries_bytes_both_ways(auth: Auth | None) -> None:
    blob = hashlib.sha256(b"seed").digest() * 20000
    async with echo_tcp() as target, socks_server(auth) as (proxy, failures):
        tunnel = await make_connector(Plugin("socks5", auth=auth)).connect_tcp(await dial(proxy), target)

        async def send() -> None:
            await tunnel.write(blob)
            await tunnel.write_eof()

        got = bytearray()
        async with asyncio.timeout(10), asyncio.TaskGroup() as group:
            group.create_task(send())
            while chunk := await tunnel.read():
                got += chunk
        await tunnel.close()
    assert bytes(got) == blob
    assert failures == []


async def test_wrong_password_is_refused_with_auth_status() -> None:
    async with socks_server(Auth("alice", "s3cret")) as (proxy, failures):
        connector = make_connector(Plugin("socks5", auth=Auth("alice", "nope")))
        with pytest.raises(errors.ProxyRefusedError, match="authentication failed") as info:
            await connector.connect_tcp(await dial(proxy), Address("127.0.0.1", 9))
        assert info.value.code == socks5.AUTH_FAILURE
        await asyncio.sleep(0.05)
    assert "wrong credentials" in str(failures[0])


async def test_no_credentials_against_an_auth_server_gets_no_acceptable_method() -> None:
    async with socks_server(Auth("alice", "s3cret")) as (proxy, _):
        with pytest.raises(errors.ProxyRefusedError) as info:
            await make_connector(Plugin("socks5")).connect_tcp(await dial(proxy), Address("127.0.0.1", 9))
    assert info.value.code == socks5.Method.NO_ACCEPTABLE


async def test_unreachable_target_gets_network_unreachable() -> None:
    async with echo_tcp() as gone:
        pass  # closed now: connection refused
    async with socks_server() as (proxy, failures):
        with pytest.raises(errors.ProxyRefusedError) as info:
            await make_connector(Plugin("socks5")).connect_tcp(await dial(proxy), gone)
        await asyncio.sleep(0.05)
    assert info.value.code == socks5.ReplyCode.NETWORK_UNREACHABLE
    assert isinstance(failures[0], errors.DialError)


async def test_bind_and_garbage_are_answered_and_logged() -> None:
    async with socks_server() as (proxy, failures):
        stream = await dial(proxy)
        await stream.write(
            socks5.Greeting((0,)).encode()
            + socks5.Request(socks5.Command.BIND, Address("0.0.0.0", 0)).encode()
        )
        got = b""
        async with asyncio.timeout(5):
            while chunk := await stream.read():
                got += chunk
        assert got == b"\x05\x00" + socks5.Reply(socks5.ReplyCode.COMMAND_NOT_SUPPORTED).encode()
        await stream.close()

        stream = await dial(proxy)
        await stream.write(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")  # a socks4 request
        async with asyncio.timeout(5):
            assert await stream.read() == b""
        await stream.close()
        await asyncio.sleep(0.05)
    assert len(failures) == 2
    assert isinstance(failures[1], errors.Socks5ProtocolError)


async def test_udp_associate_round_trip_and_ends_with_control_connection() -> None:
    async with echo_udp() as target, socks_server(Auth("u", "p")) as (proxy, failures):
        control = await dial(proxy)
        session = await make_connector(Plugin("socks5", auth=Auth("u", "p"))).connect_udp(
            control, target, HopContext(proxy)
        )
        async with asyncio.timeout(5):
            for i in range(10):
                await session.send(b"q%d" % i)
                assert await session.recv() == b"echo:q%d" % i
        await session.close()
        await asyncio.sleep(0.05)
    assert failures == []


async def test_udp_associate_refused_beyond_the_first_hop() -> None:
    with pytest.raises(errors.DialError, match="only as the first hop"):
        await make_connector(Plugin("socks5")).connect_udp(
            None,  # type: ignore[arg-type]  # refused before touching the stream
            Address("127.0.0.1", 53),
            HopContext(Address("127.0.0.1", 1080), first_hop=False),
        )
