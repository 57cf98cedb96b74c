"""proto.fragments: UDP reassembly checked against scapy's fragmenters, and every hostile case counted."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.packet import Packet

from tungo_sidecar.proto import packet as p
from tungo_sidecar.proto.fragments import FragLimits, Reassembled, Reassembler
from tungo_sidecar.proto.packet import Drop


def _drops() -> list[int]:
    return [0] * (max(Drop) + 1)


def _udp4(size: int, ident: int = 7) -> Packet:
    return IP(src="192.168.123.1", dst="198.19.77.2", id=ident) / UDP(sport=40000, dport=7) / (b"a" * size)


def _udp6(size: int) -> Packet:
    return IPv6(src="fd00:123::1", dst="fd77::2") / UDP(sport=40000, dport=7) / (b"b" * size)


def _frags4(pkt: Packet, size: int) -> list[bytes]:
    return [bytes(f) for f in fragment(pkt, fragsize=size)]


def _scapy_frags6(pkt: Packet, mtu: int, ident: int) -> list[bytes]:
    framed = IPv6(bytes(pkt))
    framed = IPv6(src=framed.src, dst=framed.dst) / IPv6ExtHdrFragment(id=ident) / framed.payload
    return [bytes(f) for f in fragment6(framed, mtu)]


def _push_all(reasm: Reassembler, frags: list[bytes], now: float = 0.0) -> list[Reassembled]:
    out = []
    for frag in frags:
        done = reasm.push(bytearray(frag), 0, len(frag), now)
        if done is not None:
            out.append(done)
    return out


@pytest.mark.parametrize("order", ["in", "reversed", "shuffled"])
def test_v4_reassembly_rebuilds_the_datagram(order: str) -> None:
    original = IP(bytes(_udp4(4000)))  # checksums filled in
    frags = _frags4(original, 1400)
    assert len(frags) == 3
    if order == "reversed":
        frags.reverse()
    elif order == "shuffled":
        random.Random(5).shuffle(frags)
    drops = _drops()
    reasm = Reassembler(FragLimits(), drops)
    (done,) = _push_all(reasm, frags)
    assert bytes(done.data) == bytes(original)  # header included: flags cleared, checksum recomputed
    assert (done.l4, done.fragments) == (20, 3)
    assert p.udp_check(done.data, done.l4, len(done.data)) == 28
    assert sum(drops) == 0 and reasm.partials == 0 and reasm.bytes == 0


def test_v6_reassembly_rebuilds_the_datagram() -> None:
    original = IPv6(bytes(_udp6(60000)))
    frags = _scapy_frags6(original, 1420, 123)
    assert len(frags) == 44
    drops = _drops()
    reasm = Reassembler(FragLimits(), drops)
    (done,) = _push_all(reasm, list(reversed(frags)))
    assert bytes(done.data) == bytes(original)
    assert (done.l4, done.fragments) == (40, 44)
    assert sum(drops) == 0 and reasm.partials == 0


def test_our_fragmenter_round_trips_through_the_reassembler() -> None:
    for src, dst in (
        (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"),
        (b"\xfd" + bytes(15), b"\xfd" + bytes(14) + b"\x02"),
    ):
        whole = p.build_udp(src, dst, 1, 2, bytes(range(256)) * 200)
        reasm = Reassembler(FragLimits(), _drops())
        (done,) = _push_all(reasm, [bytes(f) for f in p.fragment(whole, 1280, 42)])
        assert done.data[done.l4 :] == whole[len(whole) - len(done.data) + done.l4 :]


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=9000),
    mtu=st.integers(min_value=128, max_value=3000),  # at most 128 fragments of a 9,000-byte datagram
    seed=st.integers(min_value=0, max_value=1 << 30),
    v6=st.booleans(),
)
def test_any_fragmentation_in_any_order_reassembles(size: int, mtu: int, seed: int, v6: bool) -> None:
    whole = p.build_udp(
        b"\xfd" + bytes(15) if v6 else b"\x0a\x00\x00\x01",
        b"\xfd" + bytes(14) + b"\x02" if v6 else b"\x0a\x00\x00\x02",
        1,
        2,
        random.Random(seed).randbytes(size),
    )
    frags = [bytes(f) for f in p.fragment(whole, mtu, seed)]
    if len(frags) == 1:
        return  # fits the MTU: nothing to reassemble
    random.Random(seed).shuffle(frags)
    drops = _drops()
    (done,) = _push_all(Reassembler(FragLimits(), drops), frags)
    assert done.data[done.l4 :] == whole[-(len(whole) - (40 if v6 else 20)) :]
    assert sum(drops) == 0


# --- hostile and broken sequences ---------------------------------------------------------------------
def _frag4(ident: int, offset: int, data: bytes, more: bool) -> bytearray:
    """An IPv4 UDP fragment built by hand (scapy's fragment() only makes well-formed ones)."""
    raw = bytearray(bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=17, id=ident) / data))
    p.put_be16(raw, 6, (0x2000 if more else 0) | (offset >> 3))
    return raw


def _frag6(ident: int, offset: int, data: bytes, more: bool) -> bytearray:
    header = IPv6ExtHdrFragment(nh=17, m=int(more), offset=offset >> 3, id=ident)
    return bytearray(bytes(IPv6(src="fd00::1", dst="fd00::2") / header / data))


def _push(reasm: Reassembler, raw: bytearray) -> Reassembled | None:
    return reasm.push(raw, 0, len(raw), 0.0)


def test_overlap_abandons_the_whole_datagram() -> None:
    frags = _frags4(IP(bytes(_udp4(4000))), 1400)
    overlapping = IP(frags[1])
    overlapping.frag -= 1  # starts 8 bytes inside the first fragment
    drops = _drops()
    reasm = Reassembler(FragLimits(), drops)
    assert _push_all(reasm, [frags[0], frags[2], bytes(overlapping)]) == []
    assert drops[Drop.FRAG_OVERLAP] == 3 and reasm.partials == 0 and reasm.bytes == 0
    # What arrives later starts a fresh datagram, which can still complete.
    assert len(_push_all(reasm, frags)) == 1


@pytest.mark.parametrize(
    ("offset", "size"),
    [(16, 24), (8, 16), (24, 8), (0, 16), (40, 16)],  # same start other length, inside, straddling
)
def test_every_kind_of_overlap_is_caught(offset: int, size: int) -> None:
    drops = _drops()
    reasm = Reassembler(FragLimits(), drops)
    _push(reasm, _frag4(1, 0, b"a" * 8, True))  # [0, 8)
    _push(reasm, _frag4(1, 16, b"b" * 32, True))  # [16, 48)
    assert _push(reasm, _frag4(1, offset, b"c" * size, True)) is None
    assert drops[Drop.FRAG_OVERLAP] == 3 and reasm.partials == 0 and reasm.bytes == 0


def test_exact_duplicate_is_dropped_alone() -> None:
    frags = _frags4(IP(bytes(_udp4(4000))), 1400)
    drops = _drops()
    (done,) = _push_all(Reassembler(FragLimits(), drops), [frags[0], frags[0], frags[1], frags[2]])
    assert drops[Drop.FRAG_DUPLICATE] == 1 and sum(drops) == 1
    assert done.fragments == 3


@pytest.mark.parametrize("make", [_frag4, _frag6])
def test_tiny_first_fragment_and_bad_sizes(make: Callable[[int, int, bytes, bool], bytearray]) -> None:
    drops = _drops()
    reasm = Reassembler(FragLimits(), drops)
    assert _push(reasm, make(1, 0, b"1234", True)) is None  # half a UDP header (RFC 1858 / 7112)
    assert _push(reasm, make(2, 0, b"", True)) is None
    assert drops[Drop.FRAG_TINY] == 2
    assert _push(reasm, make(3, 8, b"12345", True)) is None  # not the last, not a multiple of 8
    assert _push(reasm, make(4, 16, b"", False)) is None  # empty
    assert drops[Drop.FRAG_BAD] == 2
    assert _push(reasm, make(5, 0, b"12345678", True)) is None  # the smallest legal first fragment
    assert sum(drops) == 4 and reasm.partials == 1


def test_an_atomic_ipv6_fragment_is_a_whole_datagram() -> None:
    whole = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / b"hi")
    atomic = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(nh=17, m=0, offset=0) / whole[40:])
    done = Reassembler(FragLimits(), _drops()).push(bytearray(atomic), 0, len(atomic), 0.0)
    assert done is not None and bytes(done.data) == whole and done.fragments == 1


def test_different_ends_abandon_the_datagram() -> None:
    drops = _drops()
    reasm = Reassembler(FragLimits(), drops)
    _push(reasm, _frag4(1, 0, b"h" * 16, True))
    _push(reasm, _frag4(1, 32, b"t" * 16, False))  # ends at 48
    assert _push(reasm, _frag4(1, 40, b"t" * 16, False)) is None  # a second, different end: 56
    assert drops[Drop.FRAG_BAD] == 3 and reasm.partials == 0
    _push(reasm, _frag4(2, 0, b"h" * 16, True))
    _push(reasm, _frag4(2, 32, b"t" * 16, False))  # ends at 48
    assert _push(reasm, _frag4(2, 40, b"m" * 16, True)) is None  # a middle fragment past the end
    assert drops[Drop.FRAG_BAD] == 6 and reasm.partials == 0
    _push(reasm, _frag4(3, 40, b"m" * 16, True))  # data up to 56 held first...
    assert _push(reasm, _frag4(3, 16, b"t" * 16, False)) is None  # ...then a last fragment ending at 32
    assert drops[Drop.FRAG_BAD] == 8 and reasm.partials == 0


def test_too_big_and_not_udp() -> None:
    drops = _drops()
    reasm = Reassembler(FragLimits(), drops)
    far = bytearray(bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=17, id=1, frag=8189) / (b"x" * 40)))
    assert reasm.push(far, 0, len(far), 0.0) is None  # 65512 + 40 > 65515
    assert drops[Drop.FRAG_TOO_BIG] == 1
    tcp = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP() / (b"x" * 4))
    assert reasm.push(bytearray(tcp), 0, len(tcp), 0.0) is None
    tcp6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(m=1) / TCP())
    assert reasm.push(bytearray(tcp6), 0, len(tcp6), 0.0) is None
    assert drops[Drop.FRAGMENT] == 2
    short6 = bytes(IPv6(src="fd00::1", dst="fd00::2", nh=44, plen=4) / b"\x11\x00\x00\x01")
    assert reasm.push(bytearray(short6), 0, len(short6), 0.0) is None
    assert reasm.push(bytearray(b"\x45" * 10), 0, 10, 0.0) is None
    assert drops[Drop.TRUNCATED] == 2
    assert reasm.partials == 0


def test_timeout_counts_every_held_fragment() -> None:
    frags = _frags4(IP(bytes(_udp4(6000))), 1400)  # 5 fragments
    drops = _drops()
    reasm = Reassembler(FragLimits(timeout=5.0), drops)
    _push_all(reasm, frags[:3], now=100.0)
    assert reasm.expire(104.9) == 0 and reasm.partials == 1
    assert reasm.expire(105.0) == 1
    assert drops[Drop.FRAG_TIMEOUT] == 3 and reasm.partials == 0 and reasm.bytes == 0
    # A fragment arriving for an expired (not yet swept) datagram starts over.
    _push_all(reasm, frags[:2], now=200.0)
    assert _push_all(reasm, frags[2:], now=206.0) == []
    assert drops[Drop.FRAG_TIMEOUT] == 5 and reasm.partials == 1


def test_caps_evict_the_oldest_and_bound_memory() -> None:
    drops = _drops()
    reasm = Reassembler(FragLimits(max_datagrams=2, max_fragments=3, max_bytes=10_000), drops)
    first = [_frags4(IP(bytes(_udp4(4000, ident=i))), 1000)[0] for i in range(3)]
    _push_all(reasm, first)
    assert reasm.partials == 2 and drops[Drop.FRAG_LIMIT] == 1  # ident 0 evicted for ident 2
    many = _frags4(IP(bytes(_udp4(4000, ident=50))), 1000)  # 5 fragments > max 3
    _push_all(reasm, many[:4])
    assert drops[Drop.FRAG_LIMIT] == 1 + 1 + 4  # ident 1 evicted; then 3 held + the 4th
    big = _frags4(IP(bytes(_udp4(20000, ident=60))), 1480)
    _push_all(reasm, big)  # 10,000-byte cap: it can never fit
    assert reasm.bytes <= 10_000 and reasm.partials <= 2


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(0, 12), st.booleans()), max_size=80)
)
def test_hostile_sequences_are_bounded_and_every_packet_counted(
    ops: list[tuple[int, int, int, bool]],
) -> None:
    limits = FragLimits(max_datagrams=3, max_fragments=6, max_bytes=600)
    drops = _drops()
    reasm = Reassembler(limits, drops)
    completed = 0
    for ident, offset_units, size_units, more in ops:
        raw = bytearray(
            bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=17, id=ident) / (b"u" * (size_units * 8)))
        )
        raw[6:8] = ((0x2000 if more else 0) | offset_units).to_bytes(2, "big")
        if not more and offset_units == 0:
            raw[6] |= 0x20  # keep it a fragment
        done = reasm.push(raw, 0, len(raw), 0.0)
        if done is not None:
            completed += done.fragments
        assert reasm.partials <= 3 and reasm.bytes <= 600
    held = reasm.partials
    reasm.expire(1e9)
    assert reasm.partials == 0 and reasm.bytes == 0
    assert sum(drops) + completed == len(ops), (held, drops)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        FragLimits(timeout=0)
    with pytest.raises(ValueError, match="max_bytes must be at least 1"):
        FragLimits(max_bytes=0)
