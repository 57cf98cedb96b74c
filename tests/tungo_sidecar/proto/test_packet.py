"""proto.packet: header validation, checksum arithmetic and builders, checked against scapy."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.packet import Raw

from tungo_sidecar.proto import packet as p


def _v4(a: str) -> bytes:
    return ipaddress.IPv4Address(a).packed


def _v6(a: str) -> bytes:
    return ipaddress.IPv6Address(a).packed


def _raw(pkt: object) -> bytearray:
    return bytearray(bytes(pkt))  # type: ignore[call-overload]


# --- virtio-net header -----------------------------------------------------------------------------
def test_vnet_header_round_trip_bytes() -> None:
    header = p.VirtioNetHeader(p.VNET_F_NEEDS_CSUM, p.GSO_TCPV4, 66, 1448, 34, 16)
    wire = bytes([1, 1, 66, 0, 0xA8, 0x05, 34, 0, 16, 0])
    assert header.encode() == wire
    assert p.VirtioNetHeader.decode(wire) == header
    assert p.VirtioNetHeader.decode(b"xx" + wire, 2) == header
    assert header.needs_csum
    assert bytes(10) == p.VNET_HDR_PLAIN


def test_vnet_header_too_short() -> None:
    with pytest.raises(ValueError, match="10 bytes"):
        p.VirtioNetHeader.decode(b"\x00" * 9)


# --- ones' complement arithmetic --------------------------------------------------------------------
def _reference_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=3000))
def test_ones_sum_matches_reference(data: bytes) -> None:
    # 0 and 0xFFFF are the same number in ones' complement; the reference may give either.
    assert p.ones_sum(data) % 0xFFFF == _reference_sum(data) % 0xFFFF
    assert p.checksum(data) in (~_reference_sum(data) & 0xFFFF, 0, 0xFFFF)


def test_ones_sum_edges() -> None:
    assert p.ones_sum(b"") == 0
    assert p.ones_sum(b"\x00\x00") == 0
    assert p.ones_sum(b"\xff\xff") == 0xFFFF
    assert p.ones_sum(b"\x01") == 0x0100
    assert p.ones_sum(b"\x80\x00\x80\x00") == 0x0001


@given(st.binary(min_size=12, max_size=12), st.binary(min_size=12, max_size=12), st.binary(max_size=200))
def test_incremental_update_equals_recompute(old: bytes, new: bytes, rest: bytes) -> None:
    before = p.checksum(old + rest)
    after = p.csum_update_full(before, p.csum_delta(old, new))
    # Either representation of zero verifies; compare as ones' complement values.
    assert after % 0xFFFF == p.checksum(new + rest) % 0xFFFF


@given(st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8))
def test_partial_update_equals_new_pseudo_sum(old: bytes, new: bytes) -> None:
    before = p.pseudo_header_sum(old[:4], old[4:], p.PROTO_TCP, 1480)
    after = p.csum_update_partial(before, p.csum_delta(old, new))
    assert after % 0xFFFF == p.pseudo_header_sum(new[:4], new[4:], p.PROTO_TCP, 1480) % 0xFFFF


# --- header validation ------------------------------------------------------------------------------
def test_ipv4_tcp_offsets_and_flags() -> None:
    buf = _raw(IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x00") / TCP(flags="S") / b"hi")
    l4 = p.ip_l4_offset(buf, 0, len(buf))
    assert l4 == 24
    assert p.ip_proto(buf, 0) == p.PROTO_TCP
    assert p.tcp_check(buf, l4, len(buf)) == p.TCP_SYN
    assert p.ip_addresses(buf, 0) == (_v4("10.0.0.1"), _v4("10.0.0.2"))


def test_ipv6_udp_offsets() -> None:
    buf = _raw(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5, dport=53) / b"query")
    l4 = p.ip_l4_offset(buf, 0, len(buf))
    assert l4 == 40
    assert p.ip_proto(buf, 0) == p.PROTO_UDP
    assert p.udp_check(buf, l4, len(buf)) == 48
    assert p.ip_addresses(buf, 0) == (_v6("fd00::1"), _v6("fd00::2"))


def test_offset_respects_start_of_packet() -> None:
    buf = bytearray(10) + _raw(IP(dst="10.0.0.2") / UDP() / b"x")
    assert p.ip_l4_offset(buf, 10, len(buf)) == 30


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", p.Drop.TRUNCATED),
        (b"\x45" + bytes(10), p.Drop.TRUNCATED),
        (_raw(IP(dst="10.0.0.2") / TCP())[:-1], p.Drop.BAD_LENGTH),
        (_raw(IP(dst="10.0.0.2", len=80) / TCP()), p.Drop.BAD_LENGTH),
        (_raw(IP(dst="10.0.0.2", ihl=4) / TCP()), p.Drop.BAD_HEADER),
        (_raw(IP(dst="10.0.0.2", ihl=15) / TCP()), p.Drop.BAD_HEADER),
        (_raw(IP(dst="10.0.0.2", flags="MF") / TCP()), p.Drop.FRAGMENT),
        (_raw(IP(dst="10.0.0.2", frag=3) / TCP()), p.Drop.FRAGMENT),
        (_raw(IP(dst="10.0.0.2", proto=1) / (b"\x08\x00" + bytes(6))), p.Drop.UNSUPPORTED),
        (_raw(IPv6(dst="fd00::2") / IPv6ExtHdrFragment() / UDP()), p.Drop.FRAGMENT),
        (_raw(IPv6(dst="fd00::2", nh=0) / (b"\x11" + bytes(7))), p.Drop.UNSUPPORTED),
        (_raw(IPv6(dst="fd00::2", plen=4) / UDP()), p.Drop.BAD_LENGTH),
        (_raw(IPv6(dst="fd00::2") / UDP())[:30], p.Drop.TRUNCATED),
        (bytes([0x75]) + bytes(30), p.Drop.BAD_VERSION),
    ],
)
def test_ip_rejects(packet: bytes, reason: p.Drop) -> None:
    assert p.ip_l4_offset(bytearray(packet), 0, len(packet)) == -reason


def test_transport_rejects() -> None:
    tcp = _raw(IP(dst="10.0.0.2") / TCP())
    tcp[32] = 0x40  # data offset 4 words < 5
    assert p.tcp_check(tcp, 20, len(tcp)) == -p.Drop.BAD_HEADER
    tcp[32] = 0xF0  # 60-byte header in a 20-byte segment
    assert p.tcp_check(tcp, 20, len(tcp)) == -p.Drop.BAD_HEADER
    assert p.tcp_check(tcp, 20, 30) == -p.Drop.TRUNCATED
    udp = _raw(IP(dst="10.0.0.2") / UDP() / b"abc")
    assert p.udp_check(udp, 20, 30) == -p.Drop.BAD_LENGTH
    assert p.udp_check(udp, 20, 27) == -p.Drop.TRUNCATED


@settings(max_examples=400)
@given(st.binary(max_size=120))
def test_validation_never_raises_on_garbage(data: bytes) -> None:
    buf = bytearray(data)
    l4 = p.ip_l4_offset(buf, 0, len(buf))
    if l4 < 0:
        assert -l4 in set(p.Drop)
        return
    if p.ip_proto(buf, 0) == p.PROTO_TCP:
        p.tcp_check(buf, l4, len(buf))
    else:
        p.udp_check(buf, l4, len(buf))


# --- builders ---------------------------------------------------------------------------------------
def test_build_udp_v4_verified_by_scapy() -> None:
    pkt = IP(p.build_udp(_v4("1.2.3.4"), _v4("10.0.0.9"), 53, 40000, b"answer!"))
    assert (pkt.src, pkt.dst, pkt[UDP].sport, pkt[UDP].dport) == ("1.2.3.4", "10.0.0.9", 53, 40000)
    assert bytes(pkt[Raw]) == b"answer!"
    again = pkt.copy()
    del again.chksum, again[UDP].chksum
    rebuilt = IP(bytes(again))
    assert (rebuilt.chksum, rebuilt[UDP].chksum) == (pkt.chksum, pkt[UDP].chksum)


def test_build_udp_v6_verified_by_scapy() -> None:
    pkt = IPv6(p.build_udp(_v6("fd00::53"), _v6("fd00::9"), 53, 40000, b"x" * 1001))
    again = pkt.copy()
    del again[UDP].chksum
    assert IPv6(bytes(again))[UDP].chksum == pkt[UDP].chksum
    assert pkt.plen == 8 + 1001


def test_build_tcp_rst_verified_by_scapy() -> None:
    pkt = IP(
        p.build_tcp(_v4("1.2.3.4"), _v4("10.0.0.9"), 80, 40000, seq=0, ack=1001, flags=p.TCP_RST | p.TCP_ACK)
    )
    assert pkt[TCP].flags == "RA" and pkt[TCP].ack == 1001
    again = pkt.copy()
    del again.chksum, again[TCP].chksum
    rebuilt = IP(bytes(again))
    assert (rebuilt.chksum, rebuilt[TCP].chksum) == (pkt.chksum, pkt[TCP].chksum)
    six = IPv6(p.build_tcp(_v6("fd00::1"), _v6("fd00::2"), 1, 2, seq=5, ack=6, flags=p.TCP_RST))
    again6 = six.copy()
    del again6[TCP].chksum
    assert IPv6(bytes(again6))[TCP].chksum == six[TCP].chksum


def test_builders_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"4 \(IPv4\) or 16"):
        p.build_udp(b"\x01\x02\x03\x04", _v6("::1"), 1, 2, b"")
    with pytest.raises(ValueError, match="does not fit"):
        p.build_udp(_v4("1.1.1.1"), _v4("2.2.2.2"), 1, 2, bytes(70000))
    with pytest.raises(ValueError, match=r"4 \(IPv4\) or 16"):
        p.build_tcp(b"\x01", b"\x02", 1, 2, seq=0, ack=0, flags=0)
