"""The README's demo (``python -m tungo_sidecar.app.demo``): a whole GOST-style chain on loopback.

Starts, in this process and through the same runner as the ``tungo`` command:

* a relay server          ``tungo -L relay+wss://demo:secret@127.0.0.1:PORT``   (self-signed, as GOST)
* a socks5 front           ``tungo -L socks5://127.0.0.1:P2 -F relay+wss://demo:secret@127.0.0.1:PORT``
* a local HTTP target and a UDP echo target,

then fetches a random blob over HTTP through socks5 → relay+wss, checks its SHA-256, sends UDP
datagrams through the same chain, prints a summary and exits 0 (1 when anything failed). Everything
stays on 127.0.0.1. Until the TUN data plane has its own demo, this is what ``scripts/demo`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence

from tungo_sidecar.app import runner
from tungo_sidecar.config.model import Plugin
from tungo_sidecar.config.url import build_config
from tungo_sidecar.net import transports
from tungo_sidecar.net.connectors import HopContext, make_connector
from tungo_sidecar.net.service import ProxyService
from tungo_sidecar.net.stream import SocketStream
from tungo_sidecar.proto.address import Address

LOOPBACK = "127.0.0.1"
USER, PASSWORD = "demo", "secret"


@contextlib.asynccontextmanager
async def _tungo(services: Sequence[str], nodes: Sequence[str] = ()) -> AsyncIterator[int]:
    """``tungo -L ... [-F ...]`` running in this process; yields the first service's bound port."""
    config = build_config(list(services), list(nodes))
    stop = asyncio.Event()
    up: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def started(running: list[runner.Runnable]) -> None:
        up.set_result(next(s.port for s in running if isinstance(s, ProxyService)))

    task = asyncio.create_task(runner.run(config, stop=stop, started=started))
    try:
        waiters: list[asyncio.Future[object]] = [task, up]  # type: ignore[list-item]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        yield up.result()
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def _http_target(blob: bytes) -> AsyncIterator[int]:
    """A minimal HTTP/1.1 server answering every GET with ``blob``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(blob)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode())
            view = memoryview(blob)
            for start in range(0, len(blob), 1 << 20):
                writer.write(view[start : start + (1 << 20)])
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data[::-1], addr)  # type: ignore[attr-defined]


async def _fetch(front: int, target: Address) -> tuple[bytes, float]:
    """GET / through the socks5 front; returns the body and the seconds the transfer took."""
    reader, writer = await asyncio.open_connection(LOOPBACK, front)
    tunnel = await make_connector(Plugin("socks5")).connect_tcp(SocketStream(reader, writer), target)
    started = time.perf_counter()
    await tunnel.write(f"GET / HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    data = bytearray()
    while chunk := await tunnel.read():
        data += chunk
    elapsed = time.perf_counter() - started
    await tunnel.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:80]!r}")
    return body, elapsed


async def _udp_round_trips(front: int, target: Address, count: int) -> int:
    reader, writer = await asyncio.open_connection(LOOPBACK, front)
    session = await make_connector(Plugin("socks5")).connect_udp(
        SocketStream(reader, writer), target, HopContext(Address(LOOPBACK, front))
    )
    ok = 0
    try:
        for i in range(count):
            payload = f"datagram {i} through relay".encode()
            await session.send(payload)
            async with asyncio.timeout(5):
                if await session.recv() == payload[::-1]:
                    ok += 1
    finally:
        await session.close()
    return ok


async def demo(size: int, transport: str = "wss") -> bool:
    if transport not in transports.CLIENT_TRANSPORTS:
        raise RuntimeError(f"transport {transport!r} is not available in this build")
    blob = os.urandom(size)
    expected = hashlib.sha256(blob).hexdigest()
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=(LOOPBACK, 0))
    udp_target = Address(LOOPBACK, udp.get_extra_info("sockname")[1])
    try:
        async with (
            _http_target(blob) as http_port,
            _tungo([f"relay+{transport}://{USER}:{PASSWORD}@{LOOPBACK}:0"]) as server,
        ):
            node = f"relay+{transport}://{USER}:{PASSWORD}@{LOOPBACK}:{server}"
            async with _tungo([f"socks5://{LOOPBACK}:0"], [node]) as front:
                print(f"relay server : tungo -L relay+{transport}://{USER}:***@{LOOPBACK}:{server}")
                print(
                    f"socks5 front : tungo -L socks5://{LOOPBACK}:{front} -F {node.replace(PASSWORD, '***')}"
                )
                body, seconds = await _fetch(front, Address(LOOPBACK, http_port))
                got = hashlib.sha256(body).hexdigest()
                udp_ok = await _udp_round_trips(front, udp_target, 20)
    finally:
        udp.close()
    gbits = len(body) * 8 / seconds / 1e9 if seconds > 0 else 0.0
    print(f"HTTP GET     : {len(body):,} bytes in {seconds:.3f} s = {gbits:.2f} Gbit/s")
    verdict = "OK" if got == expected else f"MISMATCH (expected {expected[:16]}...)"
    print(f"sha256       : {got[:16]}... {verdict}")
    print(f"UDP          : {udp_ok}/20 datagrams echoed through socks5 UDP ASSOCIATE -> relay+{transport}")
    return got == expected and len(body) == size and udp_ok == 20


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tungo_sidecar.app.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size", type=int, default=64 * 1024 * 1024, help="bytes to fetch (default 64 MiB)")
    parser.add_argument(
        "--transport",
        default="wss",
        choices=("tcp", "tls", "ws", "wss"),
        help="relay transport (default wss)",
    )
    parser.add_argument("-D", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.D else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        ok = asyncio.run(demo(args.size, args.transport))
    except Exception as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    print("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
