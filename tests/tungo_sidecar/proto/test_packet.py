"""proto.packet: header validation, checksum arithmetic and builders, checked against scapy."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror, defragment
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6, IPv6ExtHdrFragment, defragment6
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


# --- ICMP destination unreachable ---------------------------------------------------------------------
def _recheck_v4(pkt: IP) -> None:
    """The IP and ICMP checksums scapy computes from scratch equal the ones we wrote."""
    again = pkt.copy()
    del again.chksum, again[ICMP].chksum
    rebuilt = IP(bytes(again))
    assert (rebuilt.chksum, rebuilt[ICMP].chksum) == (pkt.chksum, pkt[ICMP].chksum)


@pytest.mark.parametrize(
    ("reason", "code"), [(p.Unreachable.HOST, 1), (p.Unreachable.NET, 0), (p.Unreachable.PROHIBITED, 13)]
)
def test_unreachable_v4_verified_by_scapy(reason: p.Unreachable, code: int) -> None:
    offending = bytes(IP(src="192.168.123.1", dst="198.19.77.2", id=77) / UDP(sport=40000, dport=53) / b"q")
    pkt = IP(p.build_unreachable(offending, reason))
    assert (pkt.src, pkt.dst, pkt.proto) == ("198.19.77.2", "192.168.123.1", 1)
    assert (pkt[ICMP].type, pkt[ICMP].code) == (3, code)
    assert bytes(pkt[ICMP].payload) == offending  # short packets are quoted whole
    assert (pkt[IPerror].id, pkt[UDPerror].sport, pkt[UDPerror].dport) == (77, 40000, 53)
    _recheck_v4(pkt)


def test_unreachable_v4_quotes_at_most_576_bytes_and_takes_a_source() -> None:
    offending = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / (b"z" * 3000))
    wire = p.build_unreachable(offending, p.Unreachable.HOST, src=_v4("192.168.123.2"))
    assert len(wire) == 576
    pkt = IP(wire)
    assert pkt.src == "192.168.123.2"
    assert wire[28:] == offending[: 576 - 28]  # quoted byte for byte (scapy re-serialises a cut quote)
    _recheck_v4(pkt)


@pytest.mark.parametrize(
    ("reason", "code"), [(p.Unreachable.HOST, 3), (p.Unreachable.NET, 0), (p.Unreachable.PROHIBITED, 1)]
)
def test_unreachable_v6_verified_by_scapy(reason: p.Unreachable, code: int) -> None:
    offending = bytes(IPv6(src="fd00:123::1", dst="fd77::2") / UDP(sport=40000, dport=53) / (b"q" * 5000))
    wire = p.build_unreachable(offending, reason)
    assert len(wire) == 1280  # RFC 4443 §2.4(c): never more than the minimum IPv6 MTU
    pkt = IPv6(wire)
    assert (pkt.src, pkt.dst, pkt.nh, pkt.plen) == ("fd77::2", "fd00:123::1", 58, 1240)
    assert (pkt[ICMPv6DestUnreach].type, pkt[ICMPv6DestUnreach].code) == (1, code)
    assert (pkt[UDPerror].sport, pkt[UDPerror].dport) == (40000, 53)
    assert wire[48:] == offending[:1232]
    again = pkt.copy()
    del again[ICMPv6DestUnreach].cksum  # scapy recomputes it with the IPv6 pseudo-header
    assert IPv6(bytes(again))[ICMPv6DestUnreach].cksum == pkt[ICMPv6DestUnreach].cksum


def test_unreachable_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no offending"):
        p.build_unreachable(b"", p.Unreachable.HOST)
    with pytest.raises(ValueError, match="at least 8"):
        p.build_unreachable(bytes(IP(dst="10.0.0.2", proto=17))[:24], p.Unreachable.HOST)
    with pytest.raises(ValueError, match="at least 8"):
        p.build_unreachable(bytes(IPv6(dst="fd00::2"))[:44], p.Unreachable.HOST)
    with pytest.raises(ValueError, match="version 7"):
        p.build_unreachable(b"\x70" + bytes(60), p.Unreachable.HOST)
    with pytest.raises(ValueError, match="4-byte source"):
        p.build_unreachable(bytes(IP(dst="10.0.0.2") / UDP()), p.Unreachable.HOST, src=_v6("::1"))
    with pytest.raises(ValueError, match="16-byte source"):
        p.build_unreachable(bytes(IPv6(dst="fd00::2") / UDP()), p.Unreachable.HOST, src=_v4("1.1.1.1"))


@pytest.mark.parametrize(
    ("offending", "allowed"),
    [
        (IP(src="192.168.123.1", dst="198.19.77.2") / UDP(), True),
        (IP(src="192.168.123.1", dst="224.0.0.251") / UDP(), False),  # multicast destination
        (IP(src="192.168.123.1", dst="255.255.255.255") / UDP(), False),  # limited broadcast
        (IP(src="0.0.0.0", dst="198.19.77.2") / UDP(), False),  # no host to answer
        (IP(src="127.0.0.1", dst="198.19.77.2") / UDP(), False),
        (IP(src="192.168.123.1", dst="198.19.77.2", frag=10) / UDP(), False),  # not the first fragment
        (IPv6(src="fd00:123::1", dst="fd77::2") / UDP(), True),
        (IPv6(src="fe80::1", dst="fe80::2") / UDP(), True),
        (IPv6(src="fd00:123::1", dst="ff02::fb") / UDP(), False),
        (IPv6(src="::", dst="fd77::2") / UDP(), False),
        (IPv6(src="::1", dst="fd77::2") / UDP(), False),
    ],
)
def test_error_allowed(offending: IP, allowed: bool) -> None:
    assert p.error_allowed(bytes(offending)) is allowed


def test_error_allowed_on_garbage() -> None:
    assert not p.error_allowed(b"")
    assert not p.error_allowed(b"\x60" + bytes(30))  # IPv6 shorter than its header
    assert not p.error_allowed(b"\x90" + bytes(60))


# --- fragmenting replies --------------------------------------------------------------------------------
def test_fragment_v4_reassembled_by_scapy() -> None:
    whole = p.build_udp(_v4("198.19.77.2"), _v4("192.168.123.1"), 7, 40000, bytes(range(256)) * 40)
    pieces = p.fragment(whole, 1420, 0x1234)
    assert len(pieces) == 8 and all(len(piece) <= 1420 for piece in pieces)
    parsed = [IP(bytes(piece)) for piece in pieces]
    for index, frag in enumerate(parsed):
        assert frag.id == 0x1234 and bool(frag.flags.MF) is (index < 7) and not frag.flags.DF
        again = frag.copy()
        del again.chksum
        assert IP(bytes(again)).chksum == frag.chksum
    assert [frag.frag * 8 for frag in parsed] == [1400 * i for i in range(8)]
    rebuilt = defragment(parsed)[0]
    assert bytes(rebuilt[UDP].payload) == bytes(range(256)) * 40
    assert rebuilt[UDP].chksum == IP(bytes(whole))[UDP].chksum


def test_fragment_v6_reassembled_by_scapy() -> None:
    payload = b"0123456789abcdef" * 3750  # 60,000 bytes
    whole = p.build_udp(_v6("fd77::2"), _v6("fd00:123::1"), 7, 40000, payload)
    pieces = p.fragment(whole, 1420, 0xDEADBEEF)
    assert all(len(piece) <= 1420 for piece in pieces) and len(pieces) == 44
    parsed = [IPv6(bytes(piece)) for piece in pieces]
    assert all(frag[IPv6ExtHdrFragment].id == 0xDEADBEEF for frag in parsed)
    assert all(frag[IPv6ExtHdrFragment].nh == 17 for frag in parsed)
    assert [frag[IPv6ExtHdrFragment].m for frag in parsed] == [1] * 43 + [0]
    rebuilt = defragment6(parsed)
    assert bytes(rebuilt[UDP].payload) == payload
    again = rebuilt.copy()
    del again[UDP].chksum
    assert IPv6(bytes(again))[UDP].chksum == rebuilt[UDP].chksum


def test_fragment_leaves_small_packets_alone_and_rejects_bad_input() -> None:
    small = p.build_udp(_v4("1.1.1.1"), _v4("2.2.2.2"), 1, 2, b"x")
    assert p.fragment(small, 1420, 1) == [small]
    with pytest.raises(ValueError, match="without options"):
        p.fragment(_raw(IP(options=b"\x01\x01\x01\x00") / UDP() / bytes(100)), 60, 1)
    with pytest.raises(ValueError, match="no room"):
        p.fragment(bytes(IP() / UDP() / bytes(100)), 27, 1)
    with pytest.raises(ValueError, match="no room"):
        p.fragment(bytes(IPv6() / UDP() / bytes(100)), 55, 1)
    with pytest.raises(ValueError, match="version 0"):
        p.fragment(bytes(200), 100, 1)
