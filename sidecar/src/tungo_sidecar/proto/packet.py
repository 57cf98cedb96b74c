"""IP packets as the TUN device carries them: header offsets, validation, checksums, virtio-net header.

Owns the byte layout of IPv4/IPv6/TCP/UDP headers, the virtio-net header that precedes each packet
when the TUN is opened with ``IFF_VNET_HDR``, and the ones'-complement arithmetic the NAT needs.
Called by ``tun.nat`` (hot path: one call per packet), ``tun.udp`` (building reply datagrams, their
fragments when larger than the MTU, and ICMP/ICMPv6 destination unreachable answers),
``proto.fragments`` (reassembly) and the tests. Pure functions over ``bytearray``/``memoryview``;
never imports asyncio or sockets, never copies or allocates a packet on the hot path (``ip_l4_offset``,
``csum_update_*``, ``be16``), and never raises on bad input there: validation returns a negative
``Drop`` code instead, so a hostile packet costs one counter increment.

Checksum facts the NAT relies on (RFC 1071 / RFC 1624):

* The ones'-complement sum of 16-bit big-endian words equals the value of the bytes read as one big
  integer modulo 0xFFFF (because 2**16 ≡ 1 mod 0xFFFF), which ``int.from_bytes`` computes in C.
* Rewriting fields ``old`` → ``new`` changes a *complete* checksum ``C`` into ``~(~C + Δ)`` and a
  *partial* one (``CHECKSUM_PARTIAL``: the field holds the uncomplemented pseudo-header sum that the
  device will complete) into ``C + Δ``, where ``Δ = sum(new) + ~sum(old)``. Under partial checksums only
  the pseudo-header (addresses) is in the field; ports are summed later by whoever completes it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

# --- virtio-net header (linux/virtio_net.h), little-endian on every host we run on ------------------
VNET_HDR_LEN = 10
VNET_F_NEEDS_CSUM = 0x01  # csum_start/csum_offset say where the device must complete the checksum
VNET_F_DATA_VALID = 0x02  # checksum already verified
GSO_NONE = 0x00
GSO_TCPV4 = 0x01
GSO_UDP = 0x03
GSO_TCPV6 = 0x04
GSO_UDP_L4 = 0x05
GSO_ECN = 0x80

_VNET = struct.Struct("<BBHHHH")


@dataclass(frozen=True, slots=True)
class VirtioNetHeader:
    """The 10-byte ``virtio_net_hdr`` the kernel puts before (and expects before) each TUN packet."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def encode(self) -> bytes:
        return _VNET.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, offset: int = 0) -> VirtioNetHeader:
        """Decode the header at ``offset``; raises ``ValueError`` if fewer than 10 bytes remain."""
        if len(data) - offset < VNET_HDR_LEN:
            raise ValueError(f"virtio-net header needs {VNET_HDR_LEN} bytes, got {len(data) - offset}")
        return cls(*_VNET.unpack_from(data, offset))

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & VNET_F_NEEDS_CSUM)


#: A header that says "complete packet, checksums already valid, no segmentation".
VNET_HDR_PLAIN = VirtioNetHeader().encode()

# --- IP and transport constants ----------------------------------------------------------------------
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6_FRAG = 44
PROTO_ICMPV6 = 58

IPV4_HDR_LEN = 20
IPV6_HDR_LEN = 40
TCP_HDR_LEN = 20
UDP_HDR_LEN = 8

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

#: Offset of the checksum field inside each transport header.
TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6


class Drop(IntEnum):
    """Why a packet read from the TUN was not forwarded. Validation returns ``-Drop.X``."""

    TRUNCATED = 1  # shorter than its headers say
    BAD_VERSION = 2  # neither IPv4 nor IPv6
    BAD_HEADER = 3  # IPv4 IHL < 5 or past the end; TCP data offset < 5 or past the end
    BAD_LENGTH = 4  # IP total/payload length or UDP length disagrees with the bytes read
    FRAGMENT = 5  # a fragment of something other than UDP (only UDP is reassembled: tun.engine)
    UNSUPPORTED = 6  # another transport (ICMP, SCTP...) or an IPv6 extension header
    NO_SESSION = 7  # TCP that is not a SYN and matches no session (or a reply to an unknown port)
    NOT_FOR_US = 8  # addressed to the NAT side but not from our listener / to our NAT address
    SESSION_LIMIT = 9  # every NAT port is in use
    BAD_VNET = 10  # virtio header asks for something we do not do (e.g. checksum at a wrong place)
    # UDP fragments (proto.fragments). A fragment held for reassembly is counted only once its datagram
    # is abandoned, under the reason that abandoned it, so every packet read is counted exactly once.
    FRAG_TINY = 11  # a first fragment too short to hold the whole UDP header (RFC 1858, RFC 7112)
    FRAG_BAD = 12  # a non-final fragment not a multiple of 8 bytes, empty, or ends that disagree
    FRAG_OVERLAP = 13  # overlaps another fragment of its datagram: the whole datagram (RFC 5722)
    FRAG_DUPLICATE = 14  # exactly repeats a fragment already held (dropped alone, RFC 8200 §4.5)
    FRAG_TIMEOUT = 15  # its datagram was not complete in time
    FRAG_LIMIT = 16  # over the caps: too many fragments, partial datagrams or buffered bytes
    FRAG_TOO_BIG = 17  # reassembled, it would exceed the 65,535-byte IP length


# --- hot-path field access ---------------------------------------------------------------------------
def be16(buf: bytearray | memoryview, offset: int) -> int:
    """Read a big-endian 16-bit field."""
    return (buf[offset] << 8) | buf[offset + 1]


def put_be16(buf: bytearray | memoryview, offset: int, value: int) -> None:
    """Write a big-endian 16-bit field."""
    buf[offset] = value >> 8
    buf[offset + 1] = value & 0xFF


def ip_l4_offset(buf: bytearray | memoryview, off: int, end: int) -> int:
    """Validate the IP header at ``buf[off:end]``; return the transport header's offset or ``-Drop``.

    Accepts only unfragmented IPv4 or IPv6 whose length fields match the bytes read exactly (a TUN
    hands over whole packets with no link padding, so any mismatch is a malformed or hostile packet)
    and whose transport header immediately follows the IP header (IPv6 extension headers: unsupported).
    The protocol number is at ``off + 9`` (IPv4) or ``off + 6`` (IPv6).
    """
    avail = end - off
    if avail < IPV4_HDR_LEN:
        return -Drop.TRUNCATED
    version = buf[off] >> 4
    if version == 4:
        ihl = (buf[off] & 0x0F) << 2
        if ihl < IPV4_HDR_LEN or ihl > avail:
            return -Drop.BAD_HEADER
        if ((buf[off + 2] << 8) | buf[off + 3]) != avail:
            return -Drop.BAD_LENGTH
        if ((buf[off + 6] << 8) | buf[off + 7]) & 0x3FFF:  # MF flag or a fragment offset
            return -Drop.FRAGMENT
        proto = buf[off + 9]
        if proto not in (PROTO_TCP, PROTO_UDP):
            return -Drop.UNSUPPORTED
        return off + ihl
    if version == 6:
        if avail < IPV6_HDR_LEN:
            return -Drop.TRUNCATED
        if ((buf[off + 4] << 8) | buf[off + 5]) + IPV6_HDR_LEN != avail:
            return -Drop.BAD_LENGTH
        proto = buf[off + 6]
        if proto in (PROTO_TCP, PROTO_UDP):
            return off + IPV6_HDR_LEN
        if proto == PROTO_IPV6_FRAG:
            return -Drop.FRAGMENT
        return -Drop.UNSUPPORTED
    return -Drop.BAD_VERSION


def ip_proto(buf: bytearray | memoryview, off: int) -> int:
    """The transport protocol of the (validated) IP packet at ``off``."""
    return buf[off + 9] if buf[off] >> 4 == 4 else buf[off + 6]


def tcp_check(buf: bytearray | memoryview, l4: int, end: int) -> int:
    """Validate the TCP header at ``l4``; return its flags byte or ``-Drop``."""
    if end - l4 < TCP_HDR_LEN:
        return -Drop.TRUNCATED
    doff = (buf[l4 + 12] >> 4) << 2
    if doff < TCP_HDR_LEN or doff > end - l4:
        return -Drop.BAD_HEADER
    return buf[l4 + 13]


def udp_check(buf: bytearray | memoryview, l4: int, end: int) -> int:
    """Validate the UDP header at ``l4``; return the payload offset or ``-Drop``."""
    if end - l4 < UDP_HDR_LEN:
        return -Drop.TRUNCATED
    if ((buf[l4 + 4] << 8) | buf[l4 + 5]) != end - l4:
        return -Drop.BAD_LENGTH
    return l4 + UDP_HDR_LEN


# --- ones'-complement arithmetic ---------------------------------------------------------------------
def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit ones'-complement sum of ``data`` (odd length: padded with a zero byte), 0..0xFFFF."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    total = value % 0xFFFF
    # 0 and 0xFFFF are both "zero"; a non-empty all-zero input keeps 0, any other multiple is 0xFFFF.
    return 0xFFFF if total == 0 and value else total


def fold(value: int) -> int:
    """Fold carries of a ones'-complement accumulator into 16 bits (enough for sums of a few words)."""
    value = (value & 0xFFFF) + (value >> 16)
    return (value & 0xFFFF) + (value >> 16)


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (complement of the sum) of ``data`` plus an initial partial sum."""
    return ~fold(ones_sum(data) + initial) & 0xFFFF


def csum_delta(old: bytes | bytearray, new: bytes | bytearray) -> int:
    """The ones'-complement difference Δ = sum(new) - sum(old) of equally laid-out field bytes."""
    return fold(ones_sum(new) + (~ones_sum(old) & 0xFFFF))


def csum_update_full(csum: int, delta: int) -> int:
    """A complete checksum after the covered fields changed by ``delta`` (RFC 1624, eqn. 3)."""
    return ~fold((~csum & 0xFFFF) + delta) & 0xFFFF


def csum_update_partial(csum: int, delta: int) -> int:
    """A CHECKSUM_PARTIAL field (uncomplemented pseudo-header sum) after its inputs changed by ``delta``."""
    return fold(csum + delta)


def pseudo_header_sum(src: bytes | bytearray, dst: bytes | bytearray, proto: int, length: int) -> int:
    """Ones'-complement sum of the IPv4/IPv6 pseudo-header (addresses, protocol, transport length)."""
    return fold(ones_sum(src) + ones_sum(dst) + proto + (length >> 16) + (length & 0xFFFF))


# --- building packets (not the NAT hot path: replies, resets) -----------------------------------------
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")

DEFAULT_TTL = 64


def _ip_header(src: bytes, dst: bytes, proto: int, l4_len: int) -> bytearray:
    if len(src) == 4:
        header = bytearray(
            _IPV4.pack(0x45, 0, IPV4_HDR_LEN + l4_len, 0, 0x4000, DEFAULT_TTL, proto, 0, src, dst)
        )
        put_be16(header, 10, checksum(header))
        return header
    return bytearray(_IPV6.pack(6 << 28, l4_len, proto, DEFAULT_TTL, src, dst))


def build_udp(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes | bytearray | memoryview
) -> bytearray:
    """A complete IPv4 or IPv6 UDP packet (by address length) with valid IP and UDP checksums."""
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError("addresses must both be 4 (IPv4) or 16 (IPv6) bytes")
    l4_len = UDP_HDR_LEN + len(payload)
    limit = 0xFFFF - (IPV4_HDR_LEN if len(src) == 4 else 0)
    if l4_len > limit:
        raise ValueError(f"UDP payload of {len(payload)} bytes does not fit one IP packet")
    packet = _ip_header(src, dst, PROTO_UDP, l4_len)
    l4 = len(packet)
    packet += _UDP.pack(sport, dport, l4_len, 0)
    packet += payload
    csum = checksum(memoryview(packet)[l4:], pseudo_header_sum(src, dst, PROTO_UDP, l4_len))
    put_be16(packet, l4 + UDP_CSUM_OFFSET, csum or 0xFFFF)  # 0 means "no checksum" in UDP
    return packet


def build_tcp(src: bytes, dst: bytes, sport: int, dport: int, *, seq: int, ack: int, flags: int) -> bytearray:
    """A bare TCP segment (no options, no payload) with valid checksums: used to answer RST."""
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError("addresses must both be 4 (IPv4) or 16 (IPv6) bytes")
    packet = _ip_header(src, dst, PROTO_TCP, TCP_HDR_LEN)
    l4 = len(packet)
    packet += _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 0, 0, 0)
    csum = checksum(memoryview(packet)[l4:], pseudo_header_sum(src, dst, PROTO_TCP, TCP_HDR_LEN))
    put_be16(packet, l4 + TCP_CSUM_OFFSET, csum)
    return packet


def ip_addresses(buf: bytearray | memoryview, off: int) -> tuple[bytes, bytes]:
    """Source and destination address bytes of the (validated) IP packet at ``off``."""
    if buf[off] >> 4 == 4:
        return bytes(buf[off + 12 : off + 16]), bytes(buf[off + 16 : off + 20])
    return bytes(buf[off + 8 : off + 24]), bytes(buf[off + 24 : off + 40])


# --- ICMP destination unreachable (fail-closed answers to UDP flows that cannot be dialled) -----------
ICMP4_DEST_UNREACH = 3
ICMP6_DEST_UNREACH = 1
ICMP_HDR_LEN = 8
#: How much of the offending packet an error quotes: as much as fits a 576-byte IPv4 datagram (RFC 1812
#: §4.3.2.3; RFC 1122 §3.2.2 asks for at least the IP header + 8 bytes) or the 1,280-byte IPv6 minimum
#: MTU (RFC 4443 §2.4(c)).
ICMP4_QUOTE_MAX = 576 - IPV4_HDR_LEN - ICMP_HDR_LEN
ICMP6_QUOTE_MAX = 1280 - IPV6_HDR_LEN - ICMP_HDR_LEN


class Unreachable(IntEnum):
    """Why a flow cannot be delivered, as the caller knows it; ``UNREACHABLE_CODES`` gives the ICMP code.

    * ``NET``: the far end has no route (a relay answered "network unreachable").
    * ``HOST``: the path to the destination failed (chain down, dial error, timeout, "host unreachable").
    * ``PROHIBITED``: a policy refused the flow (the route decision, or a relay's "forbidden").
    """

    NET = 0
    HOST = 1
    PROHIBITED = 2


#: (IPv4 code, IPv6 code) of ICMP type 3 / ICMPv6 type 1 per reason. IPv4: 0 net unreachable, 1 host
#: unreachable (RFC 792), 13 communication administratively prohibited (RFC 1812 §5.2.7.1). IPv6 (RFC
#: 4443 §3.1): 0 "no route to destination", 3 "address unreachable" for "any other reason ... a
#: link-specific problem" (a chain that is down is that link), 1 "administratively prohibited".
UNREACHABLE_CODES: dict[Unreachable, tuple[int, int]] = {
    Unreachable.NET: (0, 0),
    Unreachable.HOST: (1, 3),
    Unreachable.PROHIBITED: (13, 1),
}

_ICMP = struct.Struct("!BBHI")


def error_allowed(offending: bytes | bytearray | memoryview) -> bool:
    """Whether an ICMP error may answer the IP packet ``offending`` (RFC 1122 §3.2.2, RFC 4443 §2.4(e)).

    Never about a packet to a multicast or broadcast address, nor from an address that does not name one
    host (unspecified, multicast, loopback, limited broadcast), nor a non-initial fragment.
    """
    if len(offending) < IPV4_HDR_LEN:
        return False
    version = offending[0] >> 4
    if version == 4:
        src, dst = bytes(offending[12:16]), bytes(offending[16:20])
        if (offending[6] << 8 | offending[7]) & 0x1FFF:  # fragment offset: not the first fragment
            return False
        # Multicast, class E and the limited broadcast (first byte >= 224), loopback, unspecified.
        return all(addr[0] < 224 and addr[0] != 127 and addr != b"\x00" * 4 for addr in (src, dst))
    if version == 6 and len(offending) >= IPV6_HDR_LEN:
        src, dst = bytes(offending[8:24]), bytes(offending[24:40])
        loopback = b"\x00" * 15 + b"\x01"
        return dst[0] != 0xFF and src[0] != 0xFF and src not in (b"\x00" * 16, loopback) and dst != loopback
    return False


def build_unreachable(
    offending: bytes | bytearray | memoryview, reason: Unreachable, *, src: bytes | None = None
) -> bytearray:
    """An ICMP (IPv4) or ICMPv6 destination unreachable answering ``offending``, checksums valid.

    ``offending`` starts at its IP header and holds at least that header and 8 more bytes (the UDP
    header: what the receiving kernel matches the error to a socket with); as much of it as the RFCs
    allow is quoted. The error goes to the offending packet's source, from ``src`` (default: the
    offending packet's destination, which the engine answers for, as it does with TCP resets).
    Raises ``ValueError`` when ``offending`` is too short or not IPv4/IPv6.
    """
    if not offending:
        raise ValueError("no offending packet to quote")
    version = offending[0] >> 4
    code4, code6 = UNREACHABLE_CODES[reason]
    if version == 4:
        if len(offending) < IPV4_HDR_LEN:
            raise ValueError("offending IPv4 packet shorter than its header")
        ihl = (offending[0] & 0x0F) << 2
        if ihl < IPV4_HDR_LEN or len(offending) < ihl + 8:
            raise ValueError("an ICMP error quotes the IP header and at least 8 more bytes")
        orig_src, orig_dst = bytes(offending[12:16]), bytes(offending[16:20])
        quoted = offending[:ICMP4_QUOTE_MAX]
        message = bytearray(_ICMP.pack(ICMP4_DEST_UNREACH, code4, 0, 0)) + quoted
        put_be16(message, 2, checksum(message))  # ICMPv4: no pseudo-header
        sender = src if src is not None else orig_dst
        if len(sender) != 4:
            raise ValueError("an IPv4 error needs a 4-byte source address")
        return _ip_header(sender, orig_src, PROTO_ICMP, len(message)) + message
    if version == 6:
        if len(offending) < IPV6_HDR_LEN + 8:
            raise ValueError("an ICMPv6 error quotes the IPv6 header and at least 8 more bytes")
        orig_src, orig_dst = bytes(offending[8:24]), bytes(offending[24:40])
        sender = src if src is not None else orig_dst
        if len(sender) != 16:
            raise ValueError("an IPv6 error needs a 16-byte source address")
        quoted = offending[:ICMP6_QUOTE_MAX]
        message = bytearray(_ICMP.pack(ICMP6_DEST_UNREACH, code6, 0, 0)) + quoted
        pseudo = pseudo_header_sum(sender, orig_src, PROTO_ICMPV6, len(message))
        put_be16(message, 2, checksum(message, pseudo))
        return _ip_header(sender, orig_src, PROTO_ICMPV6, len(message)) + message
    raise ValueError(f"offending packet has IP version {version}")


# --- fragmenting oversized replies (cold path: only datagrams larger than the TUN's MTU) -------------
def fragment(ip_packet: bytes | bytearray, mtu: int, ident: int) -> list[bytearray]:
    """Split the IPv4/IPv6 packet ``ip_packet`` into fragments of at most ``mtu`` bytes each.

    For packets this module builds: an IPv4 header without options (its DF flag is cleared: we are the
    source, allowed to fragment) or an IPv6 header directly followed by its transport (a Fragment header
    is inserted, RFC 8200 §4.5). ``ident`` is the datagram's Identification (16 bits used for IPv4,
    32 for IPv6). A packet that already fits comes back as the only element. Raises ``ValueError`` for
    a packet of another shape or an ``mtu`` too small to carry 8 bytes of data per fragment.
    """
    if len(ip_packet) <= mtu:
        return [bytearray(ip_packet)]
    version = ip_packet[0] >> 4 if ip_packet else 0
    if version == 4:
        if (ip_packet[0] & 0x0F) != 5:
            raise ValueError("fragment() takes IPv4 packets without options")
        data = memoryview(ip_packet)[IPV4_HDR_LEN:]
        step = (mtu - IPV4_HDR_LEN) & ~7
        if step < 8:
            raise ValueError(f"MTU {mtu} leaves no room for fragment data")
        out = []
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            more = start + step < len(data)
            header = bytearray(ip_packet[:IPV4_HDR_LEN])
            put_be16(header, 2, IPV4_HDR_LEN + len(chunk))
            put_be16(header, 4, ident & 0xFFFF)
            put_be16(header, 6, (0x2000 if more else 0) | (start >> 3))
            put_be16(header, 10, 0)
            put_be16(header, 10, checksum(header))
            out.append(header + chunk)
        return out
    if version == 6:
        if len(ip_packet) < IPV6_HDR_LEN:
            raise ValueError("IPv6 packet shorter than its header")
        next_header = ip_packet[6]
        data = memoryview(ip_packet)[IPV6_HDR_LEN:]
        step = (mtu - IPV6_HDR_LEN - 8) & ~7
        if step < 8:
            raise ValueError(f"MTU {mtu} leaves no room for fragment data")
        out = []
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            more = start + step < len(data)
            header = bytearray(ip_packet[:IPV6_HDR_LEN])
            put_be16(header, 4, 8 + len(chunk))
            header[6] = PROTO_IPV6_FRAG
            header += struct.pack("!BBHI", next_header, 0, start | (1 if more else 0), ident & 0xFFFFFFFF)
            out.append(header + chunk)
        return out
    raise ValueError(f"cannot fragment IP version {version}")
