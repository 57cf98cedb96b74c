"""End to end on loopback: the real runner with real TLS (a CA made here) and real websockets.

socks5 / relay fronts forwarding through ``-F relay+{tcp,tls,ws,wss}`` to relay servers, one and two
hops, TCP and UDP, auth failures and non-OK answers; and the ``tungo`` CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pki
import pytest
from loopback import echo_tcp, echo_udp

from tungo_sidecar import errors
from tungo_sidecar.app import runner
from tungo_sidecar.config.model import Auth, Plugin
from tungo_sidecar.config.url import build_config
from tungo_sidecar.net import transports
from tungo_sidecar.net.connectors import HopContext, make_connector
from tungo_sidecar.net.service import ProxyService
from tungo_sidecar.net.stream import SocketStream, Stream
from tungo_sidecar.proto import relay
from tungo_sidecar.proto.address import Address

TRANSPORTS = [
    pytest.param(
        name, marks=pytest.mark.skipif(name not in transports.CLIENT_TRANSPORTS, reason=f"no {name}")
    )
    for name in ("tcp", "tls", "ws", "wss")
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pki.CertFiles]:
    directory = tmp_path_factory.mktemp("chain-pki")
    ca = pki.make_ca(directory, "chain test CA")
    return ca.cert_file, ca.issue(directory, "relay-server", ["relay.test", "127.0.0.1"])


def _server_query(transport: str, certs: tuple[Path, pki.CertFiles]) -> str:
    _, leaf = certs
    return f"?certFile={leaf.cert}&keyFile={leaf.key}" if transport in ("tls", "wss") else ""


def _client_query(transport: str, certs: tuple[Path, pki.CertFiles]) -> str:
    ca, _ = certs
    return f"?secure=true&serverName=relay.test&caFile={ca}" if transport in ("tls", "wss") else ""


@contextlib.asynccontextmanager
async def running(services: Sequence[str], nodes: Sequence[str] = ()) -> AsyncIterator[list[int]]:
    """``tungo -L ... -F ...`` in this process; yields the bound ports in service order. Bounded as a
    whole (start, the test's traffic, stop): a hang fails the test instead of stalling the run."""
    async with asyncio.timeout(60), runner.running(build_config(list(services), list(nodes))) as up:
        yield [s.port for s in up if isinstance(s, ProxyService)]


def _digest_reply(data: bytes) -> bytes:
    return hashlib.sha256(data).digest() + data[:16]


async def tcp(port: int) -> SocketStream:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return SocketStream(reader, writer)


async def round_trip(tunnel: Stream, size: int) -> bytes:
    """Send ``size`` random bytes to an echo target and read them back (no half-close: TLS and
    websocket transports cannot carry one, as in GOST)."""
    blob = os.urandom(size)
    received = bytearray()
    async with asyncio.timeout(20), asyncio.TaskGroup() as group:
        group.create_task(tunnel.write(blob))
        while len(received) < size:
            chunk = await tunnel.read()
            assert chunk, f"EOF after {len(received)} of {size} bytes"
            received += chunk
    await tunnel.close()
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(blob).hexdigest()
    return bytes(received)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_socks5_front_through_relay_to_tcp_target(
    transport: str, certs: tuple[Path, pki.CertFiles]
) -> None:
    server_url = f"relay+{transport}://u:p@127.0.0.1:0{_server_query(transport, certs)}"
    async with echo_tcp() as target, running([server_url]) as [server]:
        node = f"relay+{transport}://u:p@127.0.0.1:{server}{_client_query(transport, certs)}"
        async with running(["socks5://127.0.0.1:0"], [node]) as [front]:
            socks = make_connector(Plugin("socks5"))
            await round_trip(await socks.connect_tcp(await tcp(front), target), 2 * 1024 * 1024)
            # Many small sessions in a row: no state leaks between them.
            for _ in range(5):
                await round_trip(await socks.connect_tcp(await tcp(front), target), 100)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_socks5_udp_through_relay(transport: str, certs: tuple[Path, pki.CertFiles]) -> None:
    async with (
        echo_udp(_digest_reply) as target,
        running([f"relay+{transport}://127.0.0.1:0{_server_query(transport, certs)}"]) as [server],
    ):
        node = f"relay+{transport}://127.0.0.1:{server}{_client_query(transport, certs)}"
        async with running(["socks5://127.0.0.1:0"], [node]) as [front]:
            session = await make_connector(Plugin("socks5")).connect_udp(
                await tcp(front), target, HopContext(Address("127.0.0.1", front))
            )
            async with asyncio.timeout(10):
                for size in (1, 512, 1400, 8000, 60000):
                    payload = os.urandom(size)
                    await session.send(payload)
                    assert await session.recv() == hashlib.sha256(payload).digest() + payload[:16]
            await session.close()


async def test_two_hop_chain_tls_then_wss(certs: tuple[Path, pki.CertFiles]) -> None:
    second = "wss" if "wss" in transports.CLIENT_TRANSPORTS else "tls"
    async with (
        echo_tcp() as target,
        running([f"relay+tls://a:1@127.0.0.1:0{_server_query('tls', certs)}"]) as [hop1],
        running([f"relay+{second}://b:2@127.0.0.1:0{_server_query(second, certs)}"]) as [hop2],
    ):
        nodes = [
            f"relay+tls://a:1@127.0.0.1:{hop1}{_client_query('tls', certs)}",
            f"relay+{second}://b:2@127.0.0.1:{hop2}{_client_query(second, certs)}",
        ]
        async with running(["socks5://127.0.0.1:0"], nodes) as [front]:
            tunnel = await make_connector(Plugin("socks5")).connect_tcp(await tcp(front), target)
            await round_trip(tunnel, 1024 * 1024)


async def test_relay_front_passes_the_servers_refusal_through(certs: tuple[Path, pki.CertFiles]) -> None:
    """Wrong credentials at the far server: a relay client of the front sees status 2 itself."""
    async with (
        echo_tcp() as target,
        running([f"relay+tls://u:right@127.0.0.1:0{_server_query('tls', certs)}"]) as [server],
    ):
        node = f"relay+tls://u:wrong@127.0.0.1:{server}{_client_query('tls', certs)}"
        async with running(["relay://127.0.0.1:0"], [node]) as [front]:
            tunnel = await make_connector(Plugin("relay")).connect_tcp(await tcp(front), target)
            await tunnel.write(b"hello")
            with pytest.raises(errors.RelayUnauthorized):
                async with asyncio.timeout(10):
                    await tunnel.read()
            await tunnel.close()


async def test_socks5_front_with_refusing_server_closes_the_client(
    certs: tuple[Path, pki.CertFiles], caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        echo_tcp() as target,
        running([f"relay+tls://u:right@127.0.0.1:0{_server_query('tls', certs)}"]) as [server],
    ):
        node = f"relay+tls://u:wrong@127.0.0.1:{server}{_client_query('tls', certs)}"
        async with running(["socks5://127.0.0.1:0"], [node]) as [front]:
            tunnel = await make_connector(Plugin("socks5")).connect_tcp(await tcp(front), target)
            await tunnel.write(b"hello")
            async with asyncio.timeout(10):
                assert await tunnel.read() == b""
            await tunnel.close()
            await asyncio.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if "status 2" in r.getMessage()]
    assert len(lines) == 1, lines


async def test_unreachable_target_is_status_7_through_the_chain(certs: tuple[Path, pki.CertFiles]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = Address("127.0.0.1", sock.getsockname()[1])
    async with running([f"relay+tls://127.0.0.1:0{_server_query('tls', certs)}"]) as [server]:
        node = f"relay+tls://127.0.0.1:{server}{_client_query('tls', certs)}"
        async with running(["relay://127.0.0.1:0"], [node]) as [front]:
            tunnel = await make_connector(Plugin("relay")).connect_tcp(await tcp(front), closed)
            await tunnel.write(b"x")
            with pytest.raises(errors.RelayNetworkUnreachable):
                async with asyncio.timeout(10):
                    await tunnel.read()
            await tunnel.close()


async def test_untrusted_server_certificate_fails_the_dial(
    certs: tuple[Path, pki.CertFiles], tmp_path: Path
) -> None:
    other = pki.make_ca(tmp_path, "other CA")
    async with (
        echo_tcp() as target,
        running([f"relay+tls://127.0.0.1:0{_server_query('tls', certs)}"]) as [server],
    ):
        node = f"relay+tls://127.0.0.1:{server}?secure=true&serverName=relay.test&caFile={other.cert_file}"
        async with running(["relay://127.0.0.1:0"], [node]) as [front]:
            tunnel = await make_connector(Plugin("relay")).connect_tcp(await tcp(front), target)
            await tunnel.write(b"x")
            with pytest.raises(errors.RelayNetworkUnreachable):
                async with asyncio.timeout(10):
                    await tunnel.read()


async def test_server_keeps_serving_after_garbage_and_vanishing_clients() -> None:
    async with echo_tcp() as target, running(["relay://u:p@127.0.0.1:0"]) as [server]:
        for junk in (b"\x05\x01\x00", b"\x01\x01\xff\xff", b"GET / HTTP/1.0\r\n\r\n"):
            stream = await tcp(server)
            await stream.write(junk)
            await stream.write_eof()
            async with asyncio.timeout(5):
                assert await stream.read() == b""
            await stream.close()
        stream = await tcp(server)
        await stream.write(relay.Request.connect(target, auth=relay.UserAuth("u", "p")).encode()[:7])
        stream.writer.transport.abort()
        connector = make_connector(Plugin("relay", auth=Auth("u", "p")))
        await round_trip(await connector.connect_tcp(await tcp(server), target), 4096)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_tungo_cli_subprocess_serves_and_stops_on_sigterm() -> None:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tungo_sidecar.app.cli",
        "-L",
        f"relay://127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with echo_tcp() as target:
            async with asyncio.timeout(15):
                while True:
                    try:
                        stream = await tcp(port)
                        break
                    except OSError:
                        await asyncio.sleep(0.05)
            await round_trip(await make_connector(Plugin("relay")).connect_tcp(stream, target), 65536)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_tungo_cli_bad_url_exits_2_without_listening() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tungo_sidecar.app.cli",
        "-L",
        "relay+bogus://127.0.0.1:1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(15):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"bogus" in stderr
