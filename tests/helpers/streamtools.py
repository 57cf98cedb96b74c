"""Stream helpers for tests: an echo handler, a non-socket wrapper, a hashed bulk transfer."""

from __future__ import annotations

import asyncio
import hashlib

from tungo_sidecar.net.stream import Stream


class Forwarding:
    """A ``Stream`` that is not a ``SocketStream``: forces the nested (memory BIO) code paths."""

    def __init__(self, inner: Stream) -> None:
        self.inner = inner

    async def read(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.read(max_bytes)

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def write_eof(self) -> None:
        await self.inner.write_eof()

    async def close(self) -> None:
        await self.inner.close()


async def echo(stream: Stream) -> None:
    """Echo until EOF, then half-close (where the stream can) and return."""
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def transfer(stream: Stream, size: int, chunk: int = 256 * 1024) -> None:
    """Send ``size`` pseudo-random bytes through an echoing peer; assert the same bytes come back."""
    block = hashlib.sha256(b"seed").digest() * (chunk // 32)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    got = 0

    async def writer() -> None:
        left = size
        i = 0
        while left > 0:
            part = block[i % 7 : i % 7 + min(left, chunk - 7)]
            sent.update(part)
            await stream.write(part)
            left -= len(part)
            i += 1

    async def reader() -> None:
        nonlocal got
        while got < size:
            data = await stream.read()
            assert data, f"EOF after {got} of {size} bytes"
            received.update(data)
            got += len(data)

    async with asyncio.timeout(30):
        async with asyncio.TaskGroup() as group:
            group.create_task(writer())
            group.create_task(reader())
    assert got == size
    assert received.hexdigest() == sent.hexdigest()
