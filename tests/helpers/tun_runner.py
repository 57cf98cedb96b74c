"""Test-only entry point: run a TunEngine with a plain direct dialer inside a namespace.

Started by tests/helpers/tun_netns.py (and the TUN measurement script) as
``ip netns exec POD python tun_runner.py --name tgtun0 --net 192.168.123.1/24,fd00:123::1/64 --mark 1
--stats FILE``. Prints ``READY <json>`` once the device is up, rewrites FILE with the engine's stats
every 0.2 s, and exits 0 on SIGTERM after a final write. The dialer here is deliberately tiny (a
marked socket, no chain): it is the stand-in until the chain dialer is wired in by the app.
``--fail-udp-port P`` makes UDP dials to port P fail as a chain that is down would (``DialError``);
``--frag-timeout S`` shortens the UDP reassembly timeout; ``--refuse A,B`` is a service bypass (GOST
matchers): flows it matches are refused by the real route policy, as ``-L tungo://...?bypass=A,B`` would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys

from tungo_sidecar.chain.route import Flow, Policy, Route
from tungo_sidecar.errors import DialError, RouteRefusedError
from tungo_sidecar.net.stream import SocketStream, Stream
from tungo_sidecar.proto.address import Address
from tungo_sidecar.proto.fragments import FragLimits
from tungo_sidecar.rules.bypass import compile_bypass
from tungo_sidecar.rules.matchers import Pattern
from tungo_sidecar.tun.device import open_tun_async
from tungo_sidecar.tun.engine import TunEngine


class MarkedDatagrams:
    """A connected UDP socket as ``Datagrams``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def send(self, payload: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, payload)

    async def recv(self) -> bytes:
        try:
            return await asyncio.get_running_loop().sock_recv(self.sock, 65535)
        except OSError as exc:
            raise EOFError(str(exc)) from exc

    async def close(self) -> None:
        self.sock.close()


class MarkedDialer:
    """Plain sockets carrying SO_MARK, so the policy rule keeps them off the TUN; every flow direct."""

    def __init__(self, mark: int, fail_udp_port: int | None = None, refuse: str = "") -> None:
        self.mark = mark
        self.fail_udp_port = fail_udp_port
        bypass, problems = compile_bypass(
            "refuse", [Pattern(p) for p in refuse.split(",") if p], reverse=False
        )
        assert not problems, problems
        self.policy = Policy(None, service_bypasses=("refuse",), bypasses={"refuse": bypass})

    def _route(self, flow: Flow) -> None:
        decision = self.policy.decide(flow)
        if decision.route is Route.REFUSE:
            raise RouteRefusedError(f"{flow}: refused by {decision.reason}")

    def _socket(self, target: Address, kind: socket.SocketKind) -> socket.socket:
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
        sock.setblocking(False)
        return sock

    async def dial_tcp(self, target: Address) -> Stream:
        sock = self._socket(target, socket.SOCK_STREAM)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (target.host, target.port))
        except OSError as exc:
            sock.close()
            raise DialError(f"dial {target}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader, writer = await asyncio.open_connection(sock=sock, limit=256 * 1024)
        return SocketStream(reader, writer)

    async def dial_udp(self, target: Address) -> MarkedDatagrams:
        if target.port == self.fail_udp_port:
            raise DialError(f"dial udp {target}: chain down (--fail-udp-port)")
        sock = self._socket(target, socket.SOCK_DGRAM)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (target.host, target.port))
        except OSError as exc:
            sock.close()
            raise DialError(f"dial udp {target}: {exc}") from exc
        return MarkedDatagrams(sock)

    async def dial_tcp_flow(self, flow: Flow, first: bytes = b"") -> Stream:
        self._route(flow)
        stream = await self.dial_tcp(flow.dst)
        if first:
            await stream.write(first)
        return stream

    async def dial_udp_flow(self, flow: Flow) -> MarkedDatagrams:
        self._route(flow)
        return await self.dial_udp(flow.dst)


def _dump(engine: TunEngine, path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(engine.stats.snapshot(), handle)
    os.replace(tmp, path)


async def _main(args: argparse.Namespace) -> None:
    nets = [ipaddress.ip_interface(n) for n in args.net.split(",")]
    device = await open_tun_async(args.name, args.mtu, nets, offload=not args.no_offload)
    engine = TunEngine(
        device,
        MarkedDialer(args.mark, args.fail_udp_port, args.refuse),
        udp_timeout=args.udp_timeout,
        dial_timeout=5.0,
        frag_limits=FragLimits(timeout=args.frag_timeout),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            runner = group.create_task(engine.run())
            info = {"vnet_hdr": device.vnet_hdr, "name": device.name}
            print("READY", json.dumps(info), flush=True)
            while not stop.is_set():
                if args.stats:
                    _dump(engine, args.stats)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
            runner.cancel()
    finally:
        if args.stats:
            _dump(engine, args.stats)
        device.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--net", required=True)
    parser.add_argument("--mtu", type=int, default=1420)
    parser.add_argument("--mark", type=int, default=1)
    parser.add_argument("--stats")
    parser.add_argument("--udp-timeout", type=float, default=30.0)
    parser.add_argument("--no-offload", action="store_true")
    parser.add_argument("--fail-udp-port", type=int)
    parser.add_argument("--frag-timeout", type=float, default=5.0)
    parser.add_argument("--refuse", default="")
    args = parser.parse_args()
    log_format = "runner %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=log_format)
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
