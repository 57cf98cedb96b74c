"""UDP flows of the TUN engine: per-(source, destination) sessions with an idle timeout.

Owns the UDP session table. Each datagram read from the TUN is queued to its session (created on
the first datagram, dialled with ``FlowDialer.dial_udp``); each reply payload is written back to the
TUN as a complete IPv4/IPv6 UDP packet with valid checksums (``proto.packet.build_udp``), split into
IP fragments when it is larger than the TUN's MTU (cold path: a real link never carries more than
its MTU, and the app's kernel reassembles them). Called by ``tun.engine`` from its packet loop
(``on_packet``, synchronous, never blocks; reassembled datagrams come the same way) and runs one task
per session in the engine's TaskGroup. A session ends after ``timeout`` seconds without traffic
either way (GOST's ``udpTimeout``), when its peer goes away, or when the dial fails.

Fail closed, and say so: when the dial fails the datagrams queued meanwhile are dropped (counted) and
the app is answered with an ICMP/ICMPv6 destination unreachable quoting the flow's first packet
(``unreachable_reason`` picks the code from the error), so a connected socket learns it at once
instead of waiting for its own timeout. Those answers are rate limited per source and globally
(``ErrorLimiter``) so a flood of doomed flows cannot turn the engine into an ICMP generator.

How the app's kernel reports them (Linux, ``__udp4_lib_err``/``__udp6_lib_err``): "administratively
prohibited" is a hard error every connected socket gets (IPv4: EHOSTUNREACH, IPv6: EACCES); "host /
address unreachable" and "no route" are soft errors (RFC 1122 §4.2.3.9 calls them transient) that
reach sockets with IP_RECVERR/IPV6_RECVERR set (EHOSTUNREACH / ENETUNREACH) and are otherwise only
counted by the kernel. We still send the truthful code rather than "port unreachable" (which every
socket would see as ECONNREFUSED): that code says the target itself refused, which nobody knows.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from tungo_sidecar import errors
from tungo_sidecar.net.stream import Datagrams
from tungo_sidecar.proto import packet
from tungo_sidecar.proto.address import Address
from tungo_sidecar.proto.packet import Drop, Unreachable
from tungo_sidecar.tun.nat import TunStats

log = logging.getLogger(__name__)

#: Replies from this port are DNS answers the engine may learn names from (``sniffing.udp``).
DNS_PORT = 53

#: Datagrams queued per session while its dial runs or its sender is behind; beyond this they are
#: dropped (UDP's own contract) rather than buffered without bound.
MAX_QUEUED = 256

#: ICMP answers to failed flows: per app source address ``ERROR_RATE``/s with bursts of ``ERROR_BURST``
#: (enough to fail every flow of a busy app fast when the chain drops), at most ``ERROR_GLOBAL_RATE``/s
#: overall (≤ ~330 KB/s of 1,280-byte ICMPv6 at worst), sources tracked: ``ERROR_SOURCES`` (the least
#: recently seen one is forgotten first; the global bucket still bounds the total).
ERROR_RATE = 10.0
ERROR_BURST = 20.0
ERROR_GLOBAL_RATE = 256.0
ERROR_GLOBAL_BURST = 256.0
ERROR_SOURCES = 1024


class ErrorLimiter:
    """Token buckets deciding whether an ICMP error may be sent now: one per source, one overall.

    Pure (the caller passes ``now``). The per-source table holds at most ``max_sources`` entries.
    """

    def __init__(
        self,
        rate: float = ERROR_RATE,
        burst: float = ERROR_BURST,
        *,
        global_rate: float = ERROR_GLOBAL_RATE,
        global_burst: float = ERROR_GLOBAL_BURST,
        max_sources: int = ERROR_SOURCES,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.global_rate, self.global_burst = global_rate, global_burst
        self.max_sources = max_sources
        self._global = (global_burst, -1.0)
        self._sources: dict[bytes, tuple[float, float]] = {}

    def allow(self, source: bytes, now: float) -> bool:
        """Take a token from ``source``'s bucket and the global one; False (none taken) if one is empty."""
        tokens, last = self._sources.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        g_tokens, g_last = self._global
        if g_last >= 0:
            g_tokens = min(self.global_burst, g_tokens + (now - g_last) * self.global_rate)
        allowed = tokens >= 1.0 and g_tokens >= 1.0
        if allowed:
            tokens -= 1.0
            g_tokens -= 1.0
        if len(self._sources) >= self.max_sources:
            del self._sources[next(iter(self._sources))]  # least recently seen
        self._sources[source] = (tokens, now)  # re-inserted last: the dict stays in recency order
        self._global = (g_tokens, now)
        return allowed

    @property
    def sources(self) -> int:
        return len(self._sources)


def unreachable_reason(exc: BaseException) -> Unreachable:
    """What a failed dial tells the app: a policy refusal, "no route" at the far end, or else "host"."""
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain, bounded (a relay error wrapped in a DialError...)
        if seen is None:
            break
        if isinstance(seen, errors.RouteRefusedError | errors.RelayForbidden | errors.RelayUnauthorized):
            return Unreachable.PROHIBITED
        if isinstance(seen, errors.RelayNetworkUnreachable):
            return Unreachable.NET
        seen = seen.__cause__
    return Unreachable.HOST


@dataclass(slots=True, eq=False)
class UdpSession:
    key: bytes
    src: Address
    dst: Address
    src_ip: bytes
    dst_ip: bytes
    last: float
    first: bytes = b""  # the first packet's IP header + leading bytes: what an ICMP error quotes
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(MAX_QUEUED))


class _Idle(Exception):
    """Internal: the session's idle timeout expired."""


class UdpFlows:
    """The UDP sessions of one engine (both families)."""

    def __init__(
        self,
        *,
        write_packet: Callable[[bytes | bytearray], None],
        header: bytes,
        dial: Callable[[UdpSession], Awaitable[Datagrams]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        stats: TunStats,
        timeout: float,
        dial_timeout: float,
        mtu: int = 65535,
        limiter: ErrorLimiter | None = None,
        dns_reply: Callable[[bytes], None] | None = None,
    ) -> None:
        self._write = write_packet
        self._header = header
        self._dial = dial
        self._spawn = spawn
        self._stats = stats
        self.timeout = timeout
        self._dial_timeout = dial_timeout
        self.mtu = mtu
        self.limiter = limiter if limiter is not None else ErrorLimiter()
        self._dns_reply = dns_reply  # sees every reply from port 53 (``sniffing.udp``)
        self.sessions: dict[bytes, UdpSession] = {}
        self._frag_id = int.from_bytes(os.urandom(4), "big")  # Identification of fragmented replies

    def on_packet(self, buf: bytearray, hl: int, l4: int, end: int) -> None:
        """Queue the validated IP/UDP packet in ``buf`` to its session (created on first sight)."""
        payload = packet.udp_check(buf, l4, end)
        if payload < 0:
            self._stats.drops[-payload] += 1
            return
        a0, a1 = (12, 20) if buf[hl] >> 4 == 4 else (8, 40)
        key = bytes(buf[hl + a0 : hl + a1]) + bytes(buf[l4 : l4 + 4])
        session = self.sessions.get(key)
        now = time.monotonic()
        if session is None:
            half = (a1 - a0) // 2
            src_ip, dst_ip = key[:half], key[half : 2 * half]
            session = UdpSession(
                key,
                Address(_ip_text(src_ip), (buf[l4] << 8) | buf[l4 + 1]),
                Address(_ip_text(dst_ip), (buf[l4 + 2] << 8) | buf[l4 + 3]),
                src_ip,
                dst_ip,
                now,
                bytes(buf[hl : min(end, hl + _QUOTE[a0])]),
            )
            self.sessions[key] = session
            self._spawn(self._run(session))
        session.last = now
        if session.queue.full():
            self._stats.udp_dropped_pending += 1
            return
        session.queue.put_nowait(bytes(buf[payload:end]))

    async def _run(self, session: UdpSession) -> None:
        self._stats.udp_sessions += 1
        self._stats.udp_active += 1
        try:
            try:
                datagrams = await asyncio.wait_for(self._dial(session), self._dial_timeout)
            except Exception as exc:  # any dial failure drops the session (and what it queued)
                self._stats.udp_dial_failures += 1
                self._stats.udp_dropped_dial_failed += session.queue.qsize()
                log.info("UDP %s -> %s: dial failed: %s", session.src, session.dst, exc or type(exc).__name__)
                self._refuse(session, unreachable_reason(exc))
                return
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._send_loop(session, datagrams))
                    group.create_task(self._recv_loop(session, datagrams))
                    await self._idle(session)
                    raise _Idle
            except* (_Idle, EOFError):
                pass
            except* OSError as errors:
                log.info("UDP %s -> %s ended: %s", session.src, session.dst, errors.exceptions[0])
            finally:
                await datagrams.close()
        finally:
            self._stats.udp_active -= 1
            if self.sessions.get(session.key) is session:
                del self.sessions[session.key]

    def _refuse(self, session: UdpSession, reason: Unreachable) -> None:
        """Answer the app's first packet with destination unreachable, if allowed and within the rate."""
        if not packet.error_allowed(session.first) or not self.limiter.allow(
            session.src_ip, time.monotonic()
        ):
            self._stats.udp_icmp_limited += 1
            return
        try:
            error = packet.build_unreachable(session.first, reason)
        except ValueError:  # cannot happen for a packet on_packet accepted; a bug costs the answer only
            log.exception("UDP %s -> %s: cannot build the ICMP error", session.src, session.dst)
            return
        self._write(self._header + error if self._header else error)
        self._stats.udp_icmp_sent += 1

    async def _idle(self, session: UdpSession) -> None:
        # The deadline moves with every datagram; sleeping to the current deadline costs nothing per packet.
        while (left := session.last + self.timeout - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)

    async def _send_loop(self, session: UdpSession, datagrams: Datagrams) -> None:
        while True:
            payload = await session.queue.get()
            await datagrams.send(payload)
            self._stats.udp_datagrams_up += 1

    async def _recv_loop(self, session: UdpSession, datagrams: Datagrams) -> None:
        dport, sport = session.dst.port, session.src.port
        dns_reply = self._dns_reply if dport == DNS_PORT else None
        while True:
            payload = await datagrams.recv()
            session.last = time.monotonic()
            if dns_reply is not None:
                dns_reply(payload)
            try:
                reply = packet.build_udp(session.dst_ip, session.src_ip, dport, sport, payload)
            except ValueError:
                self._stats.drops[Drop.BAD_LENGTH] += 1
                continue
            if len(reply) > self.mtu:
                self._write_fragments(reply)
            else:
                self._write(self._header + reply if self._header else reply)
            self._stats.udp_datagrams_down += 1

    def _write_fragments(self, reply: bytearray) -> None:
        self._frag_id = (self._frag_id + 1) & 0xFFFFFFFF
        for piece in packet.fragment(reply, self.mtu, self._frag_id):
            self._write(self._header + piece if self._header else piece)
        self._stats.udp_replies_fragmented += 1


#: Bytes of a flow's first packet kept for an ICMP error, by the offset of its addresses (12: IPv4).
_QUOTE = {12: packet.ICMP4_QUOTE_MAX, 8: packet.ICMP6_QUOTE_MAX}


def _ip_text(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))
