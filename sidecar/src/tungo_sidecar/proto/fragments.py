"""Bounded reassembly of fragmented UDP datagrams read from the TUN (IPv4 fragments, IPv6 Fragment header).

Owns the table of partial datagrams and the rules that keep it harmless: keyed per RFC 791 / RFC 8200
(source, destination, Identification; the protocol is always UDP because fragments of anything else are
refused on sight), a timeout, caps on fragments per datagram, partial datagrams and buffered bytes
(the oldest partial datagram is evicted to make room, so datagrams that never complete cannot block
newer ones for a whole timeout), overlaps abandon the whole datagram (RFC 5722; Linux does the same
for IPv4 since 4.19), exact duplicates are dropped alone (RFC 8200 §4.5), and a first fragment must
hold the whole UDP header (tiny-fragment attacks, RFC 1858 / RFC 7112).

Called by ``tun.engine`` for packets ``proto.packet.ip_l4_offset`` rejected as ``Drop.FRAGMENT`` (the
cold path: non-fragmented packets never get here) and from its once-a-second sweep (``expire``).
Sans-I/O: no asyncio, no sockets, no clock of its own (the caller passes ``now``). Never raises on
packet contents: every rejected or abandoned fragment is counted once in ``drops`` (indexed by
``proto.packet.Drop``) and a fragment still held is counted only when its datagram is abandoned.

Why a 5 s timeout when Linux waits 30 s (``ipfrag_time``) and RFC 8200 says 60 s: fragments on a TUN
come from the pod's own kernel back to back (or, forwarded, from a network path already behind
them), so a datagram not complete after 5 s has lost a fragment, and holding it longer only holds
memory; the application above it (DNS, QUIC) has retried or given up by then.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from tungo_sidecar.proto import packet
from tungo_sidecar.proto.packet import Drop

#: Defaults (see the module docstring for the timeout). 128 fragments carry a 65,535-byte datagram even
#: at the 576-byte IPv4 minimum reassembly size (119 fragments); 4 MiB is Linux's ipfrag_high_thresh.
TIMEOUT = 5.0
MAX_FRAGMENTS = 128
MAX_DATAGRAMS = 256
MAX_BYTES = 4 << 20
MAX_IP_LEN = 0xFFFF  # IPv4 total length / IPv6 payload length (no jumbograms)
#: What one held fragment costs beyond its data (its bytes object, dict and list slots), charged to
#: ``max_bytes`` so a flood of 8-byte fragments is bounded by memory, not only by data bytes.
FRAGMENT_COST = 128


@dataclass(frozen=True, slots=True)
class FragLimits:
    """The reassembly bounds; ``timeout`` in seconds, the rest in fragments, datagrams and bytes."""

    timeout: float = TIMEOUT
    max_fragments: int = MAX_FRAGMENTS
    max_datagrams: int = MAX_DATAGRAMS
    max_bytes: int = MAX_BYTES  # data plus FRAGMENT_COST per held fragment

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"reassembly timeout must be positive, got {self.timeout}")
        for name in ("max_fragments", "max_datagrams", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"reassembly {name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Reassembled:
    """A whole UDP datagram: ``data`` is an IP packet (no fragment fields) whose UDP header is at ``l4``."""

    data: bytearray
    l4: int
    fragments: int  # how many packets it was made of (what a drop of it counts)


@dataclass(slots=True, eq=False)
class _Partial:
    created: float
    starts: list[int] = field(default_factory=list)  # sorted fragment offsets
    pieces: dict[int, bytes] = field(default_factory=dict)  # offset -> data
    received: int = 0  # data bytes held
    total: int = -1  # datagram length once the last fragment (MF = 0) arrived
    header: bytes = b""  # the first fragment's IP header (IPv4: with options; IPv6: the fixed 40 bytes)


class Reassembler:
    """Partial UDP datagrams of both families, bounded by ``limits``; drops counted into ``drops``."""

    def __init__(self, limits: FragLimits, drops: list[int]) -> None:
        self.limits = limits
        self.drops = drops
        self._partials: dict[bytes, _Partial] = {}  # insertion order = creation order (for expiry)
        self.bytes = 0  # memory charged for all held fragments: data + FRAGMENT_COST each

    @property
    def partials(self) -> int:
        return len(self._partials)

    def push(self, buf: bytearray | memoryview, off: int, end: int, now: float) -> Reassembled | None:
        """Take the fragment ``buf[off:end]`` (an IP packet ``ip_l4_offset`` called a fragment).

        Returns the datagram it completes, or None (held, or dropped and counted).
        """
        if end - off < packet.IPV4_HDR_LEN:
            self.drops[Drop.TRUNCATED] += 1
            return None
        version = buf[off] >> 4
        if version == 4:
            ihl = (buf[off] & 0x0F) << 2
            if buf[off + 9] != packet.PROTO_UDP:
                self.drops[Drop.FRAGMENT] += 1
                return None
            field_ = packet.be16(buf, off + 6)
            start, more = (field_ & 0x1FFF) << 3, bool(field_ & 0x2000)
            key = bytes(buf[off + 12 : off + 20]) + bytes(buf[off + 4 : off + 6])
            data_at, header_len, limit = off + ihl, ihl, MAX_IP_LEN - ihl
        else:
            # IPv6 whose next header is Fragment (44) and whose payload length matches.
            if end - off < packet.IPV6_HDR_LEN + 8:
                self.drops[Drop.TRUNCATED] += 1
                return None
            frag = off + packet.IPV6_HDR_LEN
            if buf[frag] != packet.PROTO_UDP:  # fragments of TCP, ICMPv6, or with more extension headers
                self.drops[Drop.FRAGMENT] += 1
                return None
            field_ = packet.be16(buf, frag + 2)
            start, more = field_ & 0xFFF8, bool(field_ & 1)
            key = bytes(buf[off + 8 : off + 40]) + bytes(buf[frag + 4 : frag + 8])
            data_at, header_len, limit = frag + 8, packet.IPV6_HDR_LEN, MAX_IP_LEN
            if start == 0 and not more:  # an atomic fragment is a whole datagram (RFC 6946)
                return self._atomic6(buf, off, data_at, end)
        size = end - data_at
        if start == 0 and size < packet.UDP_HDR_LEN:
            self.drops[Drop.FRAG_TINY] += 1
            return None
        if size == 0 or (more and size & 7):
            self.drops[Drop.FRAG_BAD] += 1
            return None
        partial = self._partials.get(key)
        if partial is not None and now - partial.created >= self.limits.timeout:
            self._abandon(key, Drop.FRAG_TIMEOUT)
            partial = None
        if start + size > limit:
            self._reject(key, partial, Drop.FRAG_TOO_BIG)
            return None
        if partial is None:
            if len(self._partials) >= self.limits.max_datagrams:
                self._abandon(next(iter(self._partials)), Drop.FRAG_LIMIT)
            partial = self._partials[key] = _Partial(now)
        stop = start + size
        if (
            not more
            and (partial.total not in (-1, stop) or (partial.starts and self._last_end(partial) > stop))
        ) or (more and partial.total != -1 and stop > partial.total):
            self._reject(key, partial, Drop.FRAG_BAD)  # two different ends: a corrupt or forged datagram
            return None
        index = bisect.bisect_left(partial.starts, start)
        if index < len(partial.starts) and partial.starts[index] == start:
            if len(partial.pieces[start]) == size:
                self.drops[Drop.FRAG_DUPLICATE] += 1
                return None
            self._reject(key, partial, Drop.FRAG_OVERLAP)
            return None
        if index > 0:
            before = partial.starts[index - 1]
            if before + len(partial.pieces[before]) > start:
                self._reject(key, partial, Drop.FRAG_OVERLAP)
                return None
        if index < len(partial.starts) and stop > partial.starts[index]:
            self._reject(key, partial, Drop.FRAG_OVERLAP)
            return None
        if len(partial.starts) >= self.limits.max_fragments:
            self._reject(key, partial, Drop.FRAG_LIMIT)
            return None
        cost = size + FRAGMENT_COST
        while self.bytes + cost > self.limits.max_bytes:
            oldest = next(iter(self._partials))
            if oldest == key:  # only this datagram is left: it alone is over the cap
                self._reject(key, partial, Drop.FRAG_LIMIT)
                return None
            self._abandon(oldest, Drop.FRAG_LIMIT)
        partial.starts.insert(index, start)
        partial.pieces[start] = bytes(buf[data_at:end])
        partial.received += size
        self.bytes += cost
        if start == 0:
            partial.header = bytes(buf[off : off + header_len])
        if not more:
            partial.total = stop
        if partial.received != partial.total:
            return None
        del self._partials[key]
        self.bytes -= partial.received + len(partial.starts) * FRAGMENT_COST
        return self._build(version, partial)

    def expire(self, now: float) -> int:
        """Abandon partial datagrams older than the timeout; returns how many."""
        expired = 0
        timeout = self.limits.timeout
        while self._partials:
            key, partial = next(iter(self._partials.items()))
            if now - partial.created < timeout:
                break
            self._abandon(key, Drop.FRAG_TIMEOUT)
            expired += 1
        return expired

    # --- internals -----------------------------------------------------------------------------------
    @staticmethod
    def _last_end(partial: _Partial) -> int:
        last = partial.starts[-1]
        return last + len(partial.pieces[last])

    def _abandon(self, key: bytes, reason: Drop) -> None:
        partial = self._partials.pop(key)
        self.bytes -= partial.received + len(partial.starts) * FRAGMENT_COST
        self.drops[reason] += len(partial.starts)

    def _reject(self, key: bytes, partial: _Partial | None, reason: Drop) -> None:
        """Drop this fragment and the datagram it belongs to (all of its held fragments)."""
        self.drops[reason] += 1
        if partial is not None:
            self._abandon(key, reason)

    def _build(self, version: int, partial: _Partial) -> Reassembled:
        header = bytearray(partial.header)
        body = b"".join(partial.pieces[start] for start in partial.starts)
        if version == 4:
            packet.put_be16(header, 2, len(header) + len(body))
            packet.put_be16(header, 6, 0)
            packet.put_be16(header, 10, 0)
            packet.put_be16(header, 10, packet.checksum(header))
        else:
            packet.put_be16(header, 4, len(body))
            header[6] = packet.PROTO_UDP
        l4 = len(header)
        header += body
        return Reassembled(header, l4, len(partial.starts))

    def _atomic6(self, buf: bytearray | memoryview, off: int, data_at: int, end: int) -> Reassembled:
        header = bytearray(buf[off : off + packet.IPV6_HDR_LEN])
        packet.put_be16(header, 4, end - data_at)
        header[6] = packet.PROTO_UDP
        header += buf[data_at:end]
        return Reassembled(header, packet.IPV6_HDR_LEN, 1)
