"""The TUN engine: one packet loop that NATs TCP onto local listeners and terminates UDP sessions.

Owns the read loop over the device, the per-family NAT listeners and every flow task (in one
TaskGroup: nothing is fire-and-forget). Called by the app (and tests) as
``await TunEngine(device, router).run()``, which runs until cancelled. Each new flow becomes a
``chain.route.Flow`` handed to ``router`` (``net.routed.RoutedDialer``: refused, direct or chain):
with its sniffed name when ``sniffing`` is on (TCP is then accepted first, ``tun.tcp``), else with the
name DNS answered for its address when ``sniffing.udp`` filled the name map (``rules.dnsmap``, fed by
the replies of UDP port 53 sessions).

The packet loop is a reader callback, not a coroutine: per packet it validates headers
(``proto.packet``), rewrites TCP in place (``tun.nat``) and writes it back, with no per-packet buffer
allocation. A bad packet is counted in ``stats.drops`` and never raises out of the loop. Fragments
(which validation rejects) take the cold path: UDP ones are reassembled (``proto.fragments``, bounded)
and fed to the UDP sessions like any datagram; the only cost to other packets is one comparison on
the rejection path. Routes, rules and the device's life belong to others (``routing``, ``tun.device``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Coroutine
from typing import Any

from tungo_sidecar.chain.route import Flow
from tungo_sidecar.config.sniffing import SniffSettings
from tungo_sidecar.errors import TunError
from tungo_sidecar.net.dialer import FlowRouter
from tungo_sidecar.net.stream import Datagrams, Stream
from tungo_sidecar.proto import dns, packet
from tungo_sidecar.proto.address import Address, Network
from tungo_sidecar.proto.fragments import FragLimits, Reassembler
from tungo_sidecar.proto.packet import Drop
from tungo_sidecar.proto.sniff import Sniffed
from tungo_sidecar.rules.dnsmap import DnsMap
from tungo_sidecar.tun.device import TunDevice
from tungo_sidecar.tun.nat import FORWARD, NEW, TcpNat, TcpSession, TunStats, pick_next
from tungo_sidecar.tun.tcp import TcpFlows
from tungo_sidecar.tun.udp import UdpFlows, UdpSession

log = logging.getLogger(__name__)

#: Packets handled per readiness callback before yielding to the event loop (fairness with splices).
BATCH = 64
#: Read buffer: virtio-net header + the largest IP packet (GSO super-packets included).
READ_SIZE = packet.VNET_HDR_LEN + 65535
LISTEN_BACKLOG = 4096
SWEEP_SECONDS = 1.0


class TunEngine:
    """Moves the flows of one TUN device to a ``FlowRouter``."""

    def __init__(
        self,
        device: TunDevice,
        router: FlowRouter,
        *,
        sniffing: SniffSettings | None = None,
        udp_timeout: float = 30.0,
        dial_timeout: float = 10.0,
        accept_timeout: float = 10.0,
        frag_limits: FragLimits | None = None,
    ) -> None:
        self.device = device
        self.router = router
        self.sniffing = sniffing if sniffing is not None else SniffSettings()
        #: Address -> name from the DNS answers seen (``sniffing.udp``); None when not sniffing DNS.
        self.dns_map: DnsMap | None = DnsMap() if self.sniffing.udp else None
        self.dial_timeout = dial_timeout
        self.accept_timeout = accept_timeout
        self.stats = TunStats()
        self._hl = device.header_len
        self._header = packet.VNET_HDR_PLAIN if device.vnet_hdr else b""
        self._buf = bytearray(READ_SIZE)
        self._bufs = [self._buf]
        self._view = memoryview(self._buf)
        self._group: asyncio.TaskGroup | None = None
        self._nat4: TcpNat | None = None
        self._nat6: TcpNat | None = None
        self._tcp: list[TcpFlows] = []
        self._read_error_logged = False
        self.udp = UdpFlows(
            write_packet=self._write,
            header=self._header,
            dial=self._dial_udp,
            spawn=self._spawn,
            stats=self.stats,
            timeout=udp_timeout,
            dial_timeout=dial_timeout,
            mtu=device.mtu,
            dns_reply=self.learn_dns if self.dns_map is not None else None,
        )
        self.frags = Reassembler(frag_limits or FragLimits(), self.stats.drops)
        self._ifaces: dict[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface] = {}
        for iface in device.addresses:
            self._ifaces.setdefault(iface.version, iface)  # the first address of each family serves
        for iface in self._ifaces.values():
            try:
                pick_next(iface)
            except ValueError as exc:
                raise TunError(str(exc)) from exc

    async def run(self) -> None:
        """Serve the device until cancelled; closes the listeners (not the device) on the way out."""
        loop = asyncio.get_running_loop()
        listeners: list[socket.socket] = []
        try:
            for version, iface in self._ifaces.items():
                listener = self._listen(iface)
                listeners.append(listener)
                nat = TcpNat(iface.ip, pick_next(iface), listener.getsockname()[1], self.stats)
                if version == 4:
                    self._nat4 = nat
                else:
                    self._nat6 = nat
                self._tcp.append(
                    TcpFlows(
                        nat,
                        listener,
                        write_packet=self._write,
                        header=self._header,
                        dial=self._dial_tcp,
                        stats=self.stats,
                        dial_timeout=self.dial_timeout,
                        accept_timeout=self.accept_timeout,
                        sniff_timeout=self.sniffing.timeout if self.sniffing.tcp else None,
                    )
                )
            async with asyncio.TaskGroup() as group:
                self._group = group
                for flows in self._tcp:
                    group.create_task(flows.accept_loop())
                group.create_task(self._sweep_loop())
                loop.add_reader(self.device.fd, self._on_readable)
                try:
                    await asyncio.Event().wait()
                finally:
                    loop.remove_reader(self.device.fd)
        finally:
            self._group = None
            for listener in listeners:
                listener.close()

    def _listen(self, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> socket.socket:
        family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(iface.ip), 0))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise TunError(f"cannot listen on the TUN address {iface.ip}: {exc}") from exc
        return sock

    # --- packet loop ------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        fd, buf, bufs, view, hl, stats = (
            self.device.fd,
            self._buf,
            self._bufs,
            self._view,
            self._hl,
            self.stats,
        )
        drops = stats.drops
        for _ in range(BATCH):
            try:
                n = os.readv(fd, bufs)
            except BlockingIOError:
                return
            except OSError as exc:
                if not self._read_error_logged:
                    self._read_error_logged = True
                    log.error("reading TUN %s failed: %s", self.device.name, exc)
                return
            stats.packets_in += 1
            l4 = packet.ip_l4_offset(buf, hl, n)
            if l4 < 0:
                if l4 == -Drop.FRAGMENT:
                    self._on_fragment(n)
                else:
                    drops[-l4] += 1
                continue
            try:
                if buf[hl] >> 4 == 4:
                    proto, nat = buf[hl + 9], self._nat4
                else:
                    proto, nat = buf[hl + 6], self._nat6
                if proto != packet.PROTO_TCP:
                    self.udp.on_packet(buf, hl, l4, n)
                    continue
                if nat is None:  # a family the TUN has no address of
                    drops[Drop.UNSUPPORTED] += 1
                    continue
                flags = packet.tcp_check(buf, l4, n)
                if flags < 0:
                    drops[-flags] += 1
                    continue
                verdict = nat.translate(buf, hl, l4, n, flags)
                if verdict == FORWARD:
                    try:
                        os.write(fd, view[:n])
                        stats.packets_out += 1
                    except OSError:
                        stats.write_errors += 1
                elif verdict == NEW:
                    session = nat.pending
                    assert session is not None
                    self._spawn(self._tcp_for(nat).run_flow(session))
                elif verdict < 0:
                    drops[-verdict] += 1
            except Exception:  # a bug must cost one packet, not the data plane
                stats.flow_errors += 1
                log.exception("TUN packet handling failed; packet dropped")

    def _on_fragment(self, n: int) -> None:
        """Cold path: hold a fragment; a datagram it completes goes to the UDP sessions."""
        stats, frags = self.stats, self.frags
        try:
            datagram = frags.push(self._buf, self._hl, n, time.monotonic())
            stats.frag_partials, stats.frag_bytes = frags.partials, frags.bytes
            if datagram is None:
                return
            data, l4 = datagram.data, datagram.l4
            payload = packet.udp_check(data, l4, len(data))
            if payload < 0:  # e.g. a UDP length that disagrees with the reassembled size
                stats.drops[-payload] += datagram.fragments
                return
            stats.udp_reassembled += 1
            self.udp.on_packet(data, 0, l4, len(data))
        except Exception:  # a bug must cost one packet, not the data plane
            stats.flow_errors += 1
            log.exception("TUN fragment handling failed; fragment dropped")

    def _tcp_for(self, nat: TcpNat) -> TcpFlows:
        return next(flows for flows in self._tcp if flows.nat is nat)

    def _write(self, data: bytes | bytearray) -> None:
        try:
            os.write(self.device.fd, data)
            self.stats.packets_out += 1
        except OSError:
            self.stats.write_errors += 1

    # --- flows ------------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._group is None:
            coro.close()
            return
        self._group.create_task(self._guard(coro))

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        # A flow that fails (a reset, a broken upstream) must never cancel the engine's TaskGroup.
        try:
            await coro
        except Exception as exc:
            self.stats.flow_errors += 1
            log.debug("TUN flow ended with an error: %r", exc)

    def _flow(self, network: Network, src: Address, dst: Address, sniffed: Sniffed | None = None) -> Flow:
        """The flow as the router sees it: with its sniffed name, else the name DNS gave its address."""
        if sniffed is not None and sniffed.host is not None and not _is_ip(sniffed.host):
            return Flow(network, src, dst, sniffed.host, sniffed=True)
        if self.dns_map is not None and (ip := dst.ip) is not None:
            name = self.dns_map.lookup(ip, time.monotonic())
            if name is not None:
                self.stats.flows_named_by_dns += 1
                return Flow(network, src, dst, name)
        return Flow(network, src, dst)

    def learn_dns(self, payload: bytes) -> None:
        """Learn the names of a DNS answer's addresses (a no-op unless ``sniffing.udp`` is on)."""
        if self.dns_map is None:
            return
        try:
            answer = dns.parse_response(payload)
        except dns.DnsError:
            return
        if answer is not None and self.dns_map.learn(answer, time.monotonic()):
            self.stats.dns_answers_learnt += 1

    async def _dial_tcp(self, session: TcpSession, sniffed: Sniffed | None, first: bytes) -> Stream:
        flow = self._flow(Network.TCP, session.src, session.dst, sniffed)
        return await self.router.dial_tcp_flow(flow, first)

    async def _dial_udp(self, session: UdpSession) -> Datagrams:
        return await self.router.dial_udp_flow(self._flow(Network.UDP, session.src, session.dst))

    async def _sweep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            for nat in (self._nat4, self._nat6):
                if nat is not None:
                    nat.sweep(loop.time())
            if self.frags.partials:
                self.frags.expire(time.monotonic())
                self.stats.frag_partials, self.stats.frag_bytes = self.frags.partials, self.frags.bytes


def _is_ip(host: str) -> bool:
    # A Host header naming an address says nothing the destination does not: route by the destination.
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
