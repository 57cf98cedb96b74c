"""Relay benchmark: ``-L socks5 -F relay+wss`` and ``-F relay+tcp`` against the direct loopback path.

Every party is its own process: a target server (this script with ``--target``), a relay server
(``tungo -L relay+X://``) and a socks5 front (``tungo -L socks5:// -F relay+X://``), and the client
(this process). Measured in the same run, for the direct path and for each chain:

* single-stream throughput (the target sends ``--size`` bytes; median of ``--runs``), and its ratio
  to the direct path;
* request/response latency p50 (1-byte ping-pong on one connection);
* new connections per second (connect through socks5, one round trip, close; 4 in flight).

Prints one JSON object. Not a test: numbers depend on the machine. Usage:
``.venv/bin/python benchmarks/relay.py [--size 268435456] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import AsyncIterator

LOOPBACK = "127.0.0.1"
BLOCK = bytes(1 << 20)  # the target's send buffer: content does not matter, size does


# --- the target process ------------------------------------------------------------------------------


async def _target_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``T`` + 8-byte size: stream that many bytes; ``E``: echo 1-byte pings until EOF."""
    try:
        mode = await reader.readexactly(1)
        if mode == b"T":
            (size,) = struct.unpack("!Q", await reader.readexactly(8))
            view = memoryview(BLOCK)
            while size > 0:
                chunk = view[: min(size, len(BLOCK))]
                writer.write(chunk)
                size -= len(chunk)
                await writer.drain()
        elif mode == b"E":
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _run_target(port: int) -> None:
    server = await asyncio.start_server(_target_session, LOOPBACK, port, backlog=4096)
    async with server:
        await server.serve_forever()


# --- the client ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 15.0  # a tungo process starts in well under a second
    while True:
        try:
            _, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _process(*args: str) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        yield
    finally:
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def _open(
    port: int, target_port: int, via_socks: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if via_socks:
        # Greeting and CONNECT pipelined in one write; the server keeps the leftover.
        request = (
            b"\x05\x01\x00"
            + b"\x05\x01\x00\x01"
            + socket.inet_aton(LOOPBACK)
            + struct.pack("!H", target_port)
        )
        writer.write(request)
        answer = await reader.readexactly(2 + 10)
        if answer[:2] != b"\x05\x00" or answer[3] != 0x00:
            raise RuntimeError(f"socks5 refused: {answer!r}")
    return reader, writer


async def _throughput(port: int, target: int, via_socks: bool, size: int) -> float:
    reader, writer = await _open(port, target, via_socks)
    started = time.perf_counter()
    writer.write(b"T" + struct.pack("!Q", size))
    received = 0
    while received < size:
        data = await reader.read(1 << 20)
        if not data:
            raise RuntimeError(f"EOF after {received} of {size} bytes")
        received += len(data)
    elapsed = time.perf_counter() - started
    writer.close()
    return size * 8 / elapsed / 1e9


async def _latency(port: int, target: int, via_socks: bool, rounds: int = 2000) -> float:
    reader, writer = await _open(port, target, via_socks)
    writer.write(b"E")
    samples: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        writer.write(b"x")
        await reader.readexactly(1)
        samples.append(time.perf_counter() - started)
    writer.close()
    return statistics.median(samples) * 1e6


async def _connections_per_second(port: int, target: int, via_socks: bool, seconds: float = 2.0) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            reader, writer = await _open(port, target, via_socks)
            writer.write(b"Ex")
            await reader.readexactly(1)
            writer.close()
            done += 1

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(4):
            group.create_task(worker())
    return done / (time.perf_counter() - started)


async def _measure(port: int, target: int, via_socks: bool, size: int, runs: int) -> dict[str, float]:
    rates = [await _throughput(port, target, via_socks, size) for _ in range(runs)]
    return {
        "throughput_gbit_s": round(statistics.median(rates), 3),
        "rr_p50_us": round(await _latency(port, target, via_socks), 1),
        "connections_per_s": round(await _connections_per_second(port, target, via_socks), 1),
    }


async def benchmark(size: int, runs: int) -> dict[str, object]:
    target = _free_port()
    result: dict[str, object] = {"size_bytes": size, "runs": runs, "cpus": os.cpu_count()}
    async with _process(__file__, "--target", str(target)):
        await _wait_port(target)
        direct = await _measure(target, target, False, size, runs)
        result["direct"] = direct
        for transport in ("wss", "tcp"):
            relay_port, front_port = _free_port(), _free_port()
            tungo = ("-m", "tungo_sidecar.app.cli")
            async with (
                _process(*tungo, "-L", f"relay+{transport}://{LOOPBACK}:{relay_port}"),
                _process(
                    *tungo,
                    "-L",
                    f"socks5://{LOOPBACK}:{front_port}",
                    "-F",
                    f"relay+{transport}://{LOOPBACK}:{relay_port}",
                ),
            ):
                await _wait_port(relay_port)
                await _wait_port(front_port)
                chained = await _measure(front_port, target, True, size, runs)
            chained["throughput_ratio_to_direct"] = round(
                chained["throughput_gbit_s"] / direct["throughput_gbit_s"], 4
            )
            result[f"socks5_relay+{transport}"] = chained
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256 * 1024 * 1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--target", type=int, help=argparse.SUPPRESS)  # internal: run the target server
    args = parser.parse_args()
    if args.target:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_run_target(args.target))
        return 0
    print(json.dumps(asyncio.run(benchmark(args.size, args.runs)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
