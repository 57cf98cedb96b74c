"""Relay benchmark: ``-L socks5 -F relay+wss`` and ``-F relay+tcp`` against the direct loopback path.

Every party is its own process: a target server (this script with ``--target``), one relay server
(``tungo -L relay+X://``) and one socks5 front (``tungo -L socks5:// -F relay+X://``) per transport,
and the client (this process). All of them run for the whole benchmark, and the paths are measured
in interleaved rounds (direct, wss, tcp, direct, wss, tcp...), so a change of background load hits
every path alike and the ratios to the direct path stay fair. Per path and round:

* single-stream throughput (the target sends ``--size`` bytes as fast as the path takes them);
* request/response latency p50 (1-byte ping-pong on one connection, ``--rounds`` times);
* new connections per second (connect through socks5, one round trip, close; 4 in flight, for
  ``--seconds``).

The report (one JSON object on stdout) gives, per path, the median over the rounds and every
sample, the ratios to the direct path, and the CPU each process used during each phase (percent of
one core) next to the machine's total busy share, so a reader can see what bound a figure: a
process at ~100% is the bottleneck; a large "other" share means something else was running.

The client and target are deliberately cheap (blocking sockets in threads for the client, an
asyncio ``Protocol`` for the target): their cost is visible as the direct path's figures, which the
chains can never beat. ``--profile DIR`` additionally runs ``py-spy record`` (``pip install py-spy``)
on the tungo processes of each chain, one collapsed-stack file per phase and process.

Not a test: numbers depend on the machine. Usage:
``.venv/bin/python benchmarks/relay.py [--size 268435456] [--runs 5] [--seconds 2] [--profile DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
BLOCK = bytes(4 << 20)  # the target's send block: content does not matter, size does
RECV_BUFFER = 1 << 20  # the client's receive buffer (reused, never reallocated)
IN_FLIGHT = 4  # concurrent connection openers in the connections/s phase
TUNGO = ("-m", "tungo_sidecar.app.cli")
TICKS = os.sysconf("SC_CLK_TCK")

# Targets from the issue, for the verdict in the report.
TARGET_WSS_GBIT_S = 2.5
TARGET_WSS_CONNECTIONS_PER_S = 1500.0


# --- the target process ------------------------------------------------------------------------------


class _Target(asyncio.Protocol):
    """``T`` + 8-byte size: stream that many bytes, then close; ``E``: echo everything until EOF."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._mode = b""
        self._remaining = 0
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=len(BLOCK))

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if self._mode == b"E":
            self._transport.write(data)
            return
        if self._mode:
            return  # streaming: the client sends nothing else
        self._head += data
        if self._head[:1] == b"E":
            self._mode = b"E"
            if len(self._head) > 1:
                self._transport.write(self._head[1:])
        elif self._head[:1] == b"T" and len(self._head) >= 9:
            self._mode = b"T"
            (self._remaining,) = struct.unpack("!Q", self._head[1:9])
            self._pump()
        elif self._head[:1] not in (b"", b"T"):
            self._transport.close()

    def _pump(self) -> None:
        assert self._transport is not None
        view = memoryview(BLOCK)
        while self._remaining > 0 and not self._paused:
            size = min(self._remaining, len(BLOCK))
            self._transport.write(view[:size])
            self._remaining -= size
        if self._remaining == 0:
            self._transport.close()  # after the buffered bytes are sent

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()


async def _run_target(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Target, LOOPBACK, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


# --- the client (blocking sockets in threads: no event loop between the bytes and the measure) --------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds  # a tungo process starts in well under a second
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


def _open(port: int, target: int, via_socks: bool) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=10.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if via_socks:
        # Greeting and CONNECT pipelined in one write; the server keeps the leftover.
        sock.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(LOOPBACK) + struct.pack("!H", target))
        answer = _recv_exactly(sock, 2 + 10)
        if answer[:2] != b"\x05\x00" or answer[3] != 0x00:
            sock.close()
            raise RuntimeError(f"socks5 refused: {answer!r}")
    return sock


def throughput(port: int, target: int, via_socks: bool, size: int) -> float:
    """Gbit/s of one stream of ``size`` bytes from the target (timed from the request on)."""
    buffer = bytearray(RECV_BUFFER)
    with _open(port, target, via_socks) as sock:
        started = time.perf_counter()
        sock.sendall(b"T" + struct.pack("!Q", size))
        received = 0
        while received < size:
            count = sock.recv_into(buffer)
            if not count:
                raise ConnectionError(f"EOF after {received} of {size} bytes")
            received += count
        elapsed = time.perf_counter() - started
    return size * 8 / elapsed / 1e9


def latency(port: int, target: int, via_socks: bool, rounds: int) -> float:
    """Median µs of a 1-byte round trip on one established connection."""
    samples: list[float] = []
    with _open(port, target, via_socks) as sock:
        sock.sendall(b"E")
        for _ in range(rounds):
            started = time.perf_counter()
            sock.sendall(b"x")
            _recv_exactly(sock, 1)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def connections_per_second(port: int, target: int, via_socks: bool, seconds: float) -> float:
    """Connections opened, used for one round trip and closed per second, ``IN_FLIGHT`` at a time."""
    deadline = time.perf_counter() + seconds
    counts = [0] * IN_FLIGHT

    def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            with _open(port, target, via_socks) as sock:
                sock.sendall(b"Ex")
                _recv_exactly(sock, 1)
            counts[index] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        for future in [pool.submit(worker, i) for i in range(IN_FLIGHT)]:
            future.result()
    return sum(counts) / (time.perf_counter() - started)


# --- processes, CPU accounting, profiling ------------------------------------------------------------


def _proc_counters(pid: int) -> tuple[float, int]:
    """(utime + stime in seconds, minor page faults) of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    # proc(5) fields 10 (minflt), 14 (utime) and 15 (stime), counted from field 3 here.
    return (int(fields[11]) + int(fields[12])) / TICKS, int(fields[7])


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far (/proc/stat)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class Party:
    role: str
    process: subprocess.Popen[bytes]


@dataclass
class Route:
    """One measured path: the port the client connects to, and the tungo processes it runs through."""

    name: str
    port: int
    via_socks: bool
    parties: list[Party] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)  # every port that must answer before measuring


@contextlib.contextmanager
def _spawn(role: str, *args: str) -> Iterator[Party]:
    # stderr goes to a temporary file, shown only if the benchmark fails (the run's first clue).
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield Party(role, process)
        except BaseException:
            log.seek(0)
            tail = log.read().decode(errors="replace").splitlines()[-20:]
            print(f"--- {role} ({' '.join(args)}) stderr, last lines:", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _py_spy() -> str:
    """py-spy next to this interpreter (a venv's bin/), else from PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else "py-spy"


@contextlib.contextmanager
def _profiled(directory: Path | None, path: Route, phase: str) -> Iterator[None]:
    """py-spy record on the path's tungo processes for the duration of one phase (if asked)."""
    if directory is None or not path.parties:
        yield
        return
    spies = []
    for party in path.parties:
        out = directory / f"{path.name}-{phase}-{party.role}.txt"
        command = [_py_spy(), "record", "--format", "raw", "--rate", "250", "--nonblocking"]
        spies.append(
            subprocess.Popen(
                [*command, "--pid", str(party.process.pid), "--output", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(0.5)  # py-spy attaches before the phase starts
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for spy in spies:
            spy.wait(timeout=30)


def _measure_phase(
    path: Route, target: Party, profile: Path | None, phase: str, run: Callable[[], float]
) -> tuple[float, dict[str, float], int]:
    """Run one phase; return its figure, the CPU % (of one core) per process and for the machine, and
    the minor page faults of the tungo processes."""
    pids = {"client": os.getpid(), "target": target.process.pid}
    pids.update({party.role: party.process.pid for party in path.parties})
    with _profiled(profile, path, phase):
        before = {role: _proc_counters(pid) for role, pid in pids.items()}
        busy0, total0 = _machine_busy()
        started = time.perf_counter()
        value = run()
        elapsed = time.perf_counter() - started
        busy1, total1 = _machine_busy()
        after = {role: _proc_counters(pid) for role, pid in pids.items()}
    cpu = {role: 100.0 * (after[role][0] - before[role][0]) / elapsed for role in pids}
    faults = sum(after[p.role][1] - before[p.role][1] for p in path.parties)
    ncpu = os.cpu_count() or 1
    machine = 100.0 * ncpu * (busy1 - busy0) / max(total1 - total0, 1)
    cpu["machine"] = machine  # all cores, in % of one core (2 cores busy = 200)
    cpu["other"] = max(0.0, machine - sum(v for k, v in cpu.items() if k != "machine"))
    return value, cpu, faults


def _summary(samples: list[float], digits: int) -> dict[str, Any]:
    return {"median": round(statistics.median(samples), digits), "runs": [round(s, digits) for s in samples]}


def _tungo_share(cpu: dict[str, float]) -> float:
    """Cores' worth of CPU the tungo processes (front + relay) used during a phase."""
    return (cpu.get("front", 0.0) + cpu.get("relay", 0.0)) / 100.0


def _median_cpu(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(s[key] for s in samples), 1) for key in samples[0]}


def benchmark(size: int, runs: int, seconds: float, rounds: int, profile: Path | None) -> dict[str, Any]:
    loadavg_before = os.getloadavg()
    target_port = _free_port()
    paths = [Route("direct", target_port, via_socks=False)]
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(_spawn("target", __file__, "--target", str(target_port)))
        for transport in ("wss", "tcp"):
            relay_port, front_port = _free_port(), _free_port()
            node = f"relay+{transport}://{LOOPBACK}:{relay_port}"
            relay = stack.enter_context(_spawn("relay", *TUNGO, "-L", node))
            front = stack.enter_context(
                _spawn("front", *TUNGO, "-L", f"socks5://{LOOPBACK}:{front_port}", "-F", node)
            )
            paths.append(
                Route(f"socks5_relay+{transport}", front_port, True, [front, relay], [relay_port, front_port])
            )
        _wait_port(target_port)
        for path in paths[1:]:
            for port in path.ports:
                _wait_port(port)
        results: dict[str, dict[str, list[Any]]] = {
            p.name: {
                "throughput": [],
                "rr": [],
                "cps": [],
                "cpu_t": [],
                "cpu_r": [],
                "cpu_c": [],
                "faults_throughput": [],
                "faults_rr": [],
                "faults_cps": [],
            }
            for p in paths
        }
        # Warm-up: one connection per chain (imports, TLS context, first-use caches).
        for path in paths:
            latency(path.port, target_port, path.via_socks, 10)
        for round_ in range(runs):
            spy = profile if round_ == 0 else None  # one profiled round is enough
            for path in paths:
                r = results[path.name]
                phases: list[tuple[str, str, Path | None, Callable[[], float]]] = [
                    (
                        "throughput",
                        "cpu_t",
                        spy,
                        partial(throughput, path.port, target_port, path.via_socks, size),
                    ),
                    ("rr", "cpu_r", None, partial(latency, path.port, target_port, path.via_socks, rounds)),
                    (
                        "cps",
                        "cpu_c",
                        spy,
                        partial(connections_per_second, path.port, target_port, path.via_socks, seconds),
                    ),
                ]
                for phase, cpu_key, spy_dir, run in phases:
                    value, cpu, faults = _measure_phase(path, target, spy_dir, phase, run)
                    r[phase].append(value)
                    r[cpu_key].append(cpu)
                    r["faults_" + phase].append(faults)
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "loadavg_before": [round(x, 2) for x in loadavg_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {"size_bytes": size, "runs": runs, "cps_seconds": seconds, "rr_rounds": rounds},
        "paths": {},
    }
    direct = results["direct"]
    for name, r in results.items():
        entry: dict[str, Any] = {
            "throughput_gbit_s": _summary(r["throughput"], 3),
            "rr_p50_us": _summary(r["rr"], 1),
            "connections_per_s": _summary(r["cps"], 1),
            "cpu_pct": {
                "throughput": _median_cpu(r["cpu_t"]),
                "rr": _median_cpu(r["cpu_r"]),
                "connections": _median_cpu(r["cpu_c"]),
            },
        }
        if name != "direct":
            # Work per unit, independent of how much CPU other processes left us: the figure a code
            # change should move even on a busy machine.
            entry["tungo_cpu"] = {
                "ns_per_byte": round(
                    statistics.median(
                        _tungo_share(cpu) * 8 / gbit
                        for cpu, gbit in zip(r["cpu_t"], r["throughput"], strict=True)
                    ),
                    3,
                ),
                "us_per_connection": round(
                    statistics.median(
                        _tungo_share(cpu) / cps * 1e6 for cpu, cps in zip(r["cpu_c"], r["cps"], strict=True)
                    ),
                    1,
                ),
                "minor_faults_per_mib": round(
                    statistics.median(r["faults_throughput"]) / (size / (1 << 20)), 2
                ),
                "minor_faults_per_connection": round(
                    statistics.median(
                        f / (cps * seconds) for f, cps in zip(r["faults_cps"], r["cps"], strict=True)
                    ),
                    2,
                ),
            }
            entry["ratio_to_direct"] = {
                "throughput": round(
                    statistics.median(r["throughput"]) / statistics.median(direct["throughput"]), 4
                ),
                "rr_p50": round(statistics.median(r["rr"]) / statistics.median(direct["rr"]), 2),
                "connections_per_s": round(statistics.median(r["cps"]) / statistics.median(direct["cps"]), 4),
            }
        report["paths"][name] = entry
    wss = report["paths"]["socks5_relay+wss"]
    report["targets"] = {
        "wss_throughput_gbit_s": TARGET_WSS_GBIT_S,
        "wss_throughput_met": wss["throughput_gbit_s"]["median"] >= TARGET_WSS_GBIT_S,
        "wss_connections_per_s": TARGET_WSS_CONNECTIONS_PER_S,
        "wss_connections_met": wss["connections_per_s"]["median"] >= TARGET_WSS_CONNECTIONS_PER_S,
    }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--size", type=int, default=256 * 1024 * 1024, help="bytes per throughput run")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (medians over these)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each connections/s run")
    parser.add_argument("--rounds", type=int, default=2000, help="round trips per latency run")
    parser.add_argument("--profile", type=Path, help="write py-spy collapsed stacks of the first round here")
    parser.add_argument("--target", type=int, help=argparse.SUPPRESS)  # internal: run the target server
    args = parser.parse_args()
    if args.target:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_run_target(args.target))
        return 0
    if args.runs < 1 or args.size < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--runs, --size, --seconds and --rounds must be positive")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    report = benchmark(args.size, args.runs, args.seconds, args.rounds, args.profile)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
