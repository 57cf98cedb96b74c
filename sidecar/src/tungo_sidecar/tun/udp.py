"""UDP flows of the TUN engine: per-(source, destination) sessions with an idle timeout.

Owns the UDP session table. Each datagram read from the TUN is queued to its session (created on
the first datagram, dialled with ``FlowDialer.dial_udp``); each reply payload is written back to the
TUN as a complete IPv4/IPv6 UDP packet with valid checksums (``proto.packet.build_udp``). Called by
``tun.engine`` from its packet loop (``on_packet``, synchronous, never blocks) and runs one task per
session in the engine's TaskGroup. A session ends after ``timeout`` seconds without traffic either
way (GOST's ``udpTimeout``), when its peer goes away, or when the dial fails.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from tungo_sidecar.net.stream import Datagrams
from tungo_sidecar.proto import packet
from tungo_sidecar.proto.address import Address
from tungo_sidecar.proto.packet import Drop
from tungo_sidecar.tun.nat import TunStats

log = logging.getLogger(__name__)

#: Datagrams queued per session while its dial runs or its sender is behind; beyond this they are
#: dropped (UDP's own contract) rather than buffered without bound.
MAX_QUEUED = 256


@dataclass(slots=True, eq=False)
class UdpSession:
    key: bytes
    src: Address
    dst: Address
    src_ip: bytes
    dst_ip: bytes
    last: float
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
    ) -> None:
        self._write = write_packet
        self._header = header
        self._dial = dial
        self._spawn = spawn
        self._stats = stats
        self.timeout = timeout
        self._dial_timeout = dial_timeout
        self.sessions: dict[bytes, UdpSession] = {}

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
                log.info("UDP %s -> %s: dial failed: %s", session.src, session.dst, exc or type(exc).__name__)
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
        while True:
            payload = await datagrams.recv()
            session.last = time.monotonic()
            try:
                reply = packet.build_udp(session.dst_ip, session.src_ip, dport, sport, payload)
            except ValueError:
                self._stats.drops[Drop.BAD_LENGTH] += 1
                continue
            self._write(self._header + reply if self._header else reply)
            self._stats.udp_datagrams_down += 1


def _ip_text(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))
