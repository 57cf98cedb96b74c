"""IP packets as the TUN device carries them: header offsets, validation, checksums, virtio-net header.

Owns the byte layout of IPv4/IPv6/TCP/UDP headers, the virtio-net header that precedes each packet
when the TUN is opened with ``IFF_VNET_HDR``, and the ones'-complement arithmetic the NAT needs.
Called by ``tun.nat`` (hot path: one call per packet), ``tun.udp`` (building reply datagrams) and the
tests. Pure functions over ``bytearray``/``memoryview``; never imports asyncio or sockets, never
copies or allocates a packet on the hot path (``ip_l4_offset``, ``csum_update_*``, ``be16``), and
never raises on bad input there: validation returns a negative ``Drop`` code instead, so a hostile
packet costs one counter increment.

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
    FRAGMENT = 5  # IPv4 fragment or IPv6 fragment header: cannot be NATed without reassembly
    UNSUPPORTED = 6  # another transport (ICMP, SCTP...) or an IPv6 extension header
    NO_SESSION = 7  # TCP that is not a SYN and matches no session (or a reply to an unknown port)
    NOT_FOR_US = 8  # addressed to the NAT side but not from our listener / to our NAT address
    SESSION_LIMIT = 9  # every NAT port is in use
    BAD_VNET = 10  # virtio header asks for something we do not do (e.g. checksum at a wrong place)


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
