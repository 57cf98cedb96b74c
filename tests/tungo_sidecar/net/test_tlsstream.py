"""net.tlsstream: TLS through memory BIOs — bulk reads take every record already received (not one
16 KiB record per read), and what follows them (close_notify, a corrupt record) is raised or ended
on the next read without losing the data before it."""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

import pytest

from tungo_sidecar.config.model import TLSOptions
from tungo_sidecar.errors import ProtocolError
from tungo_sidecar.net import tlsconf, tlsstream
from tungo_sidecar.net.stream import CHUNK


class _Pipe:
    """One end of an in-memory byte pipe; ``hold`` keeps writes back until ``release``."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: _Pipe | None = None
        self.held: list[bytes] | None = None
        self.closed = False

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        return await self.inbox.get()

    async def write(self, data: bytes) -> None:
        assert self.peer is not None
        if self.held is not None:
            self.held.append(data)
        else:
            self.peer.inbox.put_nowait(data)

    async def write_eof(self) -> None:
        pass

    async def close(self) -> None:
        assert self.peer is not None
        if self.held is not None:
            self.closed = True  # after what is held
        else:
            self.peer.inbox.put_nowait(b"")

    def release(self) -> None:
        """Deliver everything held as one chunk, as a socket read of a full buffer would."""
        assert self.peer is not None and self.held is not None
        self.peer.inbox.put_nowait(b"".join(self.held))
        if self.closed:
            self.peer.inbox.put_nowait(b"")
        self.held = None


async def _pair(pki: Any) -> tuple[tlsstream.TLSStream, tlsstream.TLSStream, _Pipe]:
    client_end, server_end = _Pipe(), _Pipe()
    client_end.peer, server_end.peer = server_end, client_end
    server_ctx = tlsconf.server_context(
        TLSOptions(cert_file=str(pki.server.cert), key_file=str(pki.server.key))
    )
    client_ctx = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    async with asyncio.timeout(5):
        client, server = await asyncio.gather(
            tlsstream.wrap_client(client_end, client_ctx, "localhost", 5),
            tlsstream.wrap_server(server_end, server_ctx, 5),
        )
    return client, server, client_end


async def test_a_read_takes_every_record_already_received(pki: Any) -> None:
    client, server, wire = await _pair(pki)
    payload = os.urandom(200_000)  # 13 records of at most 16 KiB
    wire.held = []
    await client.write(payload)
    wire.release()
    async with asyncio.timeout(5):
        first = await server.read()
    assert first == payload  # one read, not one per 16 KiB record
    small = await _read_exactly(server, client, b"abc")
    assert small == b"abc"


async def _read_exactly(server: tlsstream.TLSStream, client: tlsstream.TLSStream, data: bytes) -> bytes:
    await client.write(data)
    async with asyncio.timeout(5):
        return await server.read(len(data))


async def test_data_before_a_close_notify_is_kept_and_then_eof(pki: Any) -> None:
    client, server, wire = await _pair(pki)
    wire.held = []
    await client.write(b"x" * 50_000)
    await client.close()  # close_notify right behind the data, in the same chunk
    wire.release()
    async with asyncio.timeout(5):
        assert await server.read() == b"x" * 50_000
        assert await server.read() == b""


async def test_a_corrupt_record_after_good_ones_raises_on_the_next_read(pki: Any) -> None:
    client, server, wire = await _pair(pki)
    wire.held = []
    await client.write(b"y" * 40_000)
    assert wire.held is not None
    wire.held.append(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # an application record that fails to decrypt
    wire.release()
    async with asyncio.timeout(5):
        assert await server.read() == b"y" * 40_000
        with pytest.raises(ProtocolError, match="bad record"):
            await server.read()
