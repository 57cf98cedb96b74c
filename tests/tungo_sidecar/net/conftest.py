"""Fixtures for transport tests: a test PKI and loopback servers that accept through a transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from pki import CA, CertFiles, make_ca
from streamtools import echo

from tungo_sidecar.net.sockopts import serve_tcp
from tungo_sidecar.net.stream import SocketStream, Stream


@dataclass(frozen=True)
class PKI:
    ca: CA
    server: CertFiles  # SANs: localhost, tungo.test, 127.0.0.1, ::1
    client: CertFiles
    other_ca: CA  # a CA that signed nothing we serve


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "tungo test CA")
    other = make_ca(directory, "unrelated CA")
    server = ca.issue(directory, "server", ["localhost", "tungo.test", "127.0.0.1", "::1"])
    client = ca.issue(directory, "client", ["client.tungo.test"], client=True)
    return PKI(ca, server, client, other)


@dataclass
class Server:
    port: int
    errors: list[BaseException]
    served: list[int]


Accept = Callable[[SocketStream], Awaitable[Stream]]


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """start_server(accept, handler=echo) -> Server on 127.0.0.1; errors of accept are recorded."""
    servers: list[asyncio.Server] = []

    async def start(accept: Accept, handler: Callable[[Stream], Awaitable[None]] = echo) -> Server:
        errors: list[BaseException] = []
        served: list[int] = []

        async def on_stream(raw: SocketStream) -> None:
            try:
                stream = await accept(raw)
            except Exception as exc:
                errors.append(exc)
                return
            try:
                await handler(stream)
                served.append(1)
            finally:
                await stream.close()

        server = await serve_tcp("127.0.0.1", 0, on_stream)
        servers.append(server)
        return Server(server.sockets[0].getsockname()[1], errors, served)

    yield start
    for server in servers:
        server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await server.wait_closed()
