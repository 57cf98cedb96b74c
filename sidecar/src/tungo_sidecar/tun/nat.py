"""The TCP NAT that lands TUN flows on a local listener, and the engine's counters.

Owns the session table of one address family and the per-packet rewrite (DESIGN.md §3, "How the NAT
works"). A flow ``S:sp → D:dp`` read from the TUN becomes ``NEXT:np → SRV:lport``: ``SRV`` is the TUN's
own address where the listener is bound, ``NEXT`` another address of the TUN subnet, ``np`` a NAT port
that indexes the table. The listener's replies ``SRV:lport → NEXT:np`` become ``D:dp → S:sp``. The
accepted socket's peer port is ``np``, so the original destination is one list index away.

Called by ``tun.engine`` once per TCP packet (``translate``) and by ``tun.tcp`` for the session life
cycle. No I/O and no asyncio here; ``translate`` never raises on packet contents, never allocates a
packet, and costs two or three 16-bit checksum updates (deltas precomputed once per session).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from tungo_sidecar.proto import packet
from tungo_sidecar.proto.address import Address
from tungo_sidecar.proto.packet import Drop

#: NAT ports handed out cyclically, so a port is reused as late as possible: the listener side of a
#: finished connection may sit in TIME_WAIT (60 s) on ``SRV:lport ↔ NEXT:np``.
NAT_PORT_MIN = 10000
NAT_PORT_MAX = 65535
#: A closed session keeps translating this long, so the last FIN/ACK exchange (and retransmissions of
#: it) still reach both kernels and no socket is left hanging in LAST_ACK.
LINGER_SECONDS = 10.0

FORWARD = 1  # rewritten in place: write the packet back to the TUN
NEW = 2  # a SYN with no session: ``pending`` holds the new session, start its flow


class State(IntEnum):
    PENDING = 0  # SYN held while the upstream dial runs
    OPEN = 1  # SYN released; packets translated both ways
    CLOSED = 2  # the flow ended; still translating until the linger expires


@dataclass(slots=True)
class TunStats:
    """Counters of one engine. Plain ints: read them from the event loop thread (or accept a torn read)."""

    packets_in: int = 0
    packets_out: int = 0
    tcp_flows: int = 0
    tcp_active: int = 0
    tcp_dial_failures: int = 0
    tcp_sniffed: int = 0  # accepted-first flows whose first bytes named a host (HTTP Host, TLS SNI)
    tcp_rst_sent: int = 0
    tcp_syn_held: int = 0
    udp_sessions: int = 0
    udp_active: int = 0
    udp_dial_failures: int = 0
    udp_datagrams_up: int = 0
    udp_datagrams_down: int = 0
    udp_dropped_pending: int = 0
    udp_dropped_dial_failed: int = 0  # datagrams queued to a session whose dial failed
    udp_icmp_sent: int = 0  # destination unreachable answers to failed UDP flows
    udp_icmp_limited: int = 0  # answers withheld by the rate limit (or not allowed: multicast...)
    udp_reassembled: int = 0  # datagrams rebuilt from fragments
    udp_replies_fragmented: int = 0  # replies larger than the MTU, written as fragments
    dns_answers_learnt: int = 0  # DNS answers whose A/AAAA records filled the name map (sniffing.udp)
    flows_named_by_dns: int = 0  # new flows whose address the name map knew
    frag_partials: int = 0  # gauge: partial datagrams held for reassembly
    frag_bytes: int = 0  # gauge: fragment bytes they hold
    write_errors: int = 0
    flow_errors: int = 0
    drops: list[int] = field(default_factory=lambda: [0] * (max(Drop) + 1))

    @property
    def dropped(self) -> int:
        return sum(self.drops)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-friendly copy: counters plus ``drops`` by reason name."""
        data: dict[str, Any] = {
            name: getattr(self, name) for name in self.__dataclass_fields__ if name != "drops"
        }
        data["drops"] = {reason.name.lower(): self.drops[reason] for reason in Drop}
        return data


Rewrite = tuple[bytes, bytes, int, int]


@dataclass(slots=True, eq=False)
class TcpSession:
    """One TCP flow through the NAT, with its rewrite data precomputed."""

    port: int
    key: bytes
    src: Address
    dst: Address
    src_ip: bytes
    dst_ip: bytes
    isn: int
    syn: bytes  # the held SYN, virtio header included
    #: (addresses, ports, address-only checksum delta, full delta) for app→listener: NEXT+SRV, np+lport.
    out_rw: Rewrite
    #: The same for listener→app: D+S, dp+sp.
    in_rw: Rewrite
    state: State = State.PENDING
    closed_at: float = 0.0
    accepted: Any = None  # the flow's asyncio future for the accepted socket (set by tun.tcp)


def pick_next(
    iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The NAT's other address: a host of the TUN subnet next to the TUN's own address."""
    network = iface.network
    if network.num_addresses < 4:
        raise ValueError(f"TUN net {iface} is too small for the NAT: use at most /30 (IPv4) or /126 (IPv6)")
    own = int(iface.ip)
    first, last = int(network.network_address), int(network.broadcast_address)
    # IPv4 reserves the first and last address of a subnet; keep off both for IPv6 too (simplest rule).
    candidate = own + 1 if own + 1 < last else own - 1
    if candidate <= first:
        raise ValueError(f"TUN net {iface}: no free address beside {iface.ip}")
    return ipaddress.ip_address(candidate) if iface.version == 4 else ipaddress.IPv6Address(candidate)


class TcpNat:
    """The session table and rewrite for one family (IPv4 or IPv6) and one listener ``SRV:lport``."""

    def __init__(
        self,
        srv: ipaddress.IPv4Address | ipaddress.IPv6Address,
        next_hop: ipaddress.IPv4Address | ipaddress.IPv6Address,
        lport: int,
        stats: TunStats,
    ) -> None:
        if srv.version != next_hop.version:
            raise ValueError("SRV and NEXT must be of one family")
        self.v4 = srv.version == 4
        self.srv = srv
        self.next_hop = next_hop
        self.lport = lport
        self.stats = stats
        self._srv = srv.packed
        self._next = next_hop.packed
        self._srv_int = int(srv)
        self._next_int = int(next_hop)
        # Offsets of the address pair inside the IP header, relative to the IP header.
        self._a0, self._a1 = (12, 20) if self.v4 else (8, 40)
        self.by_key: dict[bytes, TcpSession] = {}
        self.by_port: list[TcpSession | None] = [None] * (NAT_PORT_MAX + 1)
        self._cursor = NAT_PORT_MIN
        self.pending: TcpSession | None = None  # the session created by the last NEW verdict

    # --- hot path -----------------------------------------------------------------------------------
    def translate(self, buf: bytearray, hl: int, l4: int, end: int, flags: int) -> int:
        """Rewrite the validated TCP packet in ``buf`` (IP header at ``hl``) in place.

        Returns ``FORWARD`` (write it back), ``NEW`` (``self.pending`` is a new session whose SYN is
        held), 0 (a retransmitted SYN of a held session: swallowed) or ``-Drop`` (counted by the caller).
        """
        sport = (buf[l4] << 8) | buf[l4 + 1]
        if sport == self.lport and self._from_listener(buf, hl):
            session = self.by_port[(buf[l4 + 2] << 8) | buf[l4 + 3]]
            if session is None or session.state == State.PENDING:
                return -Drop.NO_SESSION
            self._rewrite(buf, hl, l4, session.in_rw)
            return FORWARD
        key = bytes(buf[hl + self._a0 : hl + self._a1]) + bytes(buf[l4 : l4 + 4])
        session = self.by_key.get(key)
        is_syn = flags & (packet.TCP_SYN | packet.TCP_ACK | packet.TCP_RST) == packet.TCP_SYN
        if session is not None:
            if session.state == State.OPEN or (session.state == State.CLOSED and not is_syn):
                self._rewrite(buf, hl, l4, session.out_rw)
                return FORWARD
            if session.state == State.PENDING:
                if not is_syn:
                    return -Drop.NO_SESSION
                self.stats.tcp_syn_held += 1  # a retransmitted SYN while the dial runs: still held
                return 0
            self.release(session)  # a new SYN on a lingering 4-tuple: the old flow is over
        if not is_syn:
            return -Drop.NO_SESSION
        return self._new_session(buf, hl, l4, end, key)

    def _from_listener(self, buf: bytearray, off: int) -> bool:
        if self.v4:
            dst = (buf[off + 16] << 24) | (buf[off + 17] << 16) | (buf[off + 18] << 8) | buf[off + 19]
            src = (buf[off + 12] << 24) | (buf[off + 13] << 16) | (buf[off + 14] << 8) | buf[off + 15]
            return dst == self._next_int and src == self._srv_int
        return buf[off + 24 : off + 40] == self._next and buf[off + 8 : off + 24] == self._srv

    def _rewrite(self, buf: bytearray, hl: int, l4: int, rewrite: Rewrite) -> None:
        addrs, ports, addr_delta, full_delta = rewrite
        buf[hl + self._a0 : hl + self._a1] = addrs
        buf[l4 : l4 + 4] = ports
        if self.v4:
            csum = (buf[hl + 10] << 8) | buf[hl + 11]
            csum = packet.csum_update_full(csum, addr_delta)
            buf[hl + 10] = csum >> 8
            buf[hl + 11] = csum & 0xFF
        at = l4 + packet.TCP_CSUM_OFFSET
        csum = (buf[at] << 8) | buf[at + 1]
        if hl and buf[0] & packet.VNET_F_NEEDS_CSUM:
            # CHECKSUM_PARTIAL: the field is the pseudo-header sum; ports are summed by the completer.
            csum = packet.csum_update_partial(csum, addr_delta)
        else:
            csum = packet.csum_update_full(csum, full_delta)
        buf[at] = csum >> 8
        buf[at + 1] = csum & 0xFF

    # --- session life cycle -------------------------------------------------------------------------
    def _new_session(self, buf: bytearray, hl: int, l4: int, end: int, key: bytes) -> int:
        port = self._allocate()
        if port < 0:
            return -Drop.SESSION_LIMIT
        a0, a1 = self._a0, self._a1
        half = (a1 - a0) // 2
        src_ip = bytes(buf[hl + a0 : hl + a0 + half])
        dst_ip = bytes(buf[hl + a0 + half : hl + a1])
        sport = (buf[l4] << 8) | buf[l4 + 1]
        dport = (buf[l4 + 2] << 8) | buf[l4 + 3]
        isn = int.from_bytes(buf[l4 + 4 : l4 + 8], "big")
        orig = src_ip + dst_ip
        orig_ports = bytes(buf[l4 : l4 + 4])
        out_addrs = self._next + self._srv
        out_ports = port.to_bytes(2, "big") + self.lport.to_bytes(2, "big")
        in_addrs = dst_ip + src_ip
        in_ports = orig_ports[2:] + orig_ports[:2]
        reply = self._srv + self._next  # what the listener's replies carry: SRV:lport → NEXT:np
        reply_ports = out_ports[2:] + out_ports[:2]
        session = TcpSession(
            port=port,
            key=key,
            src=Address(str(ipaddress.ip_address(src_ip)), sport),
            dst=Address(str(ipaddress.ip_address(dst_ip)), dport),
            src_ip=src_ip,
            dst_ip=dst_ip,
            isn=isn,
            syn=bytes(buf[:end]),
            out_rw=(
                out_addrs,
                out_ports,
                packet.csum_delta(orig, out_addrs),
                packet.csum_delta(orig + orig_ports, out_addrs + out_ports),
            ),
            in_rw=(
                in_addrs,
                in_ports,
                packet.csum_delta(reply, in_addrs),
                packet.csum_delta(reply + reply_ports, in_addrs + in_ports),
            ),
        )
        self.by_key[key] = session
        self.by_port[port] = session
        self.pending = session
        return NEW

    def _allocate(self) -> int:
        span = NAT_PORT_MAX - NAT_PORT_MIN + 1
        port = self._cursor
        for _ in range(span):
            if self.by_port[port] is None:
                self._cursor = port + 1 if port < NAT_PORT_MAX else NAT_PORT_MIN
                return port
            port = port + 1 if port < NAT_PORT_MAX else NAT_PORT_MIN
        return -1

    def rewrite_out(self, session: TcpSession, buf: bytearray, hl: int) -> None:
        """Rewrite a copy of an app→target packet of ``session`` (used for the held SYN)."""
        l4 = packet.ip_l4_offset(buf, hl, len(buf))
        self._rewrite(buf, hl, l4, session.out_rw)

    def close(self, session: TcpSession, now: float) -> None:
        """The flow ended: keep translating until ``now + LINGER_SECONDS``."""
        if session.state != State.CLOSED:
            session.state = State.CLOSED
            session.closed_at = now

    def release(self, session: TcpSession) -> None:
        """Forget ``session`` now (dial failed, or its linger expired)."""
        if self.by_key.get(session.key) is session:
            del self.by_key[session.key]
        if self.by_port[session.port] is session:
            self.by_port[session.port] = None
        session.state = State.CLOSED

    def sweep(self, now: float) -> int:
        """Release closed sessions whose linger expired; returns how many."""
        expired = [
            s for s in self.by_key.values() if s.state == State.CLOSED and now - s.closed_at >= LINGER_SECONDS
        ]
        for session in expired:
            self.release(session)
        return len(expired)

    def reply_rst(self, session: TcpSession) -> bytearray:
        """An RST|ACK from the original destination to the app, refusing the held SYN."""
        return packet.build_tcp(
            session.dst_ip,
            session.src_ip,
            session.dst.port,
            session.src.port,
            seq=0,
            ack=session.isn + 1,
            flags=packet.TCP_RST | packet.TCP_ACK,
        )
