"""tun.nat: the per-packet TCP rewrite and the session table, checked against scapy's checksums."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from tungo_sidecar.proto import packet as p
from tungo_sidecar.tun import nat as n

SRV4, NEXT4 = ipaddress.IPv4Address("192.168.123.1"), ipaddress.IPv4Address("192.168.123.2")
SRV6, NEXT6 = ipaddress.IPv6Address("fd00:123::1"), ipaddress.IPv6Address("fd00:123::2")
LPORT = 4321
HL = p.VNET_HDR_LEN


def _with_vnet(pkt: bytes, *, partial: bool) -> bytearray:
    """Prefix a virtio header; with ``partial`` the L4 checksum becomes the pseudo-header sum (as Linux)."""
    buf = bytearray(pkt)
    l4 = p.ip_l4_offset(buf, 0, len(buf))
    if partial:
        src, dst = p.ip_addresses(buf, 0)
        pseudo = p.pseudo_header_sum(src, dst, p.PROTO_TCP, len(buf) - l4)
        p.put_be16(buf, l4 + p.TCP_CSUM_OFFSET, pseudo)
        header = p.VirtioNetHeader(p.VNET_F_NEEDS_CSUM, 0, 0, 0, l4, p.TCP_CSUM_OFFSET)
    else:
        header = p.VirtioNetHeader()
    return bytearray(header.encode()) + buf


def _translate(nat: n.TcpNat, buf: bytearray) -> int:
    l4 = p.ip_l4_offset(buf, HL, len(buf))
    assert l4 > 0
    flags = p.tcp_check(buf, l4, len(buf))
    assert flags >= 0
    return nat.translate(buf, HL, l4, len(buf), flags)


def _assert_checksums_valid(buf: bytearray) -> None:
    pkt = (IP if buf[HL] >> 4 == 4 else IPv6)(bytes(buf[HL:]))
    again = pkt.copy()
    del again[TCP].chksum
    if isinstance(pkt, IP):
        del again.chksum
    rebuilt = type(pkt)(bytes(again))
    assert rebuilt[TCP].chksum == pkt[TCP].chksum
    if isinstance(pkt, IP):
        assert rebuilt.chksum == pkt.chksum


def _open_session(nat: n.TcpNat, syn: bytearray) -> n.TcpSession:
    assert _translate(nat, syn) == n.NEW
    session = nat.pending
    assert session is not None
    session.state = n.State.OPEN
    return session


@pytest.fixture
def nat4() -> n.TcpNat:
    return n.TcpNat(SRV4, NEXT4, LPORT, n.TunStats())


@pytest.fixture
def nat6() -> n.TcpNat:
    return n.TcpNat(SRV6, NEXT6, LPORT, n.TunStats())


def test_syn_creates_a_pending_session_then_packets_flow_both_ways(nat4: n.TcpNat) -> None:
    app = IP(src="192.168.123.1", dst="93.184.216.34") / TCP(sport=40000, dport=443, flags="S", seq=1000)
    syn = _with_vnet(bytes(app), partial=False)
    assert _translate(nat4, syn) == n.NEW
    session = nat4.pending
    assert session is not None
    assert (str(session.src), str(session.dst), session.isn) == (
        "192.168.123.1:40000",
        "93.184.216.34:443",
        1000,
    )
    assert session.syn == bytes(syn)  # held untouched, virtio header included
    # Retransmitted SYNs are swallowed while the dial runs; anything else has no session yet.
    assert _translate(nat4, _with_vnet(bytes(app), partial=False)) == 0
    ack_pkt = IP(src="192.168.123.1", dst="93.184.216.34") / TCP(sport=40000, dport=443, flags="A")
    assert _translate(nat4, _with_vnet(bytes(ack_pkt), partial=False)) == -p.Drop.NO_SESSION

    # Released SYN: rewritten towards the listener.
    session.state = n.State.OPEN
    released = bytearray(session.syn)
    nat4.rewrite_out(session, released, HL)
    out = IP(bytes(released[HL:]))
    assert (out.src, out.dst, out[TCP].sport, out[TCP].dport) == (
        "192.168.123.2",
        "192.168.123.1",
        session.port,
        LPORT,
    )
    _assert_checksums_valid(released)

    # The listener's reply is rewritten back to the original destination.
    reply = IP(src=str(SRV4), dst=str(NEXT4)) / TCP(
        sport=LPORT, dport=session.port, flags="SA", seq=5, ack=1001
    )
    buf = _with_vnet(bytes(reply), partial=False)
    assert _translate(nat4, buf) == n.FORWARD
    back = IP(bytes(buf[HL:]))
    assert (back.src, back.dst, back[TCP].sport, back[TCP].dport) == (
        "93.184.216.34",
        "192.168.123.1",
        443,
        40000,
    )
    _assert_checksums_valid(buf)


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("family", [4, 6])
def test_data_packets_keep_valid_checksums(
    family: int, partial: bool, nat4: n.TcpNat, nat6: n.TcpNat
) -> None:
    nat, l3 = (nat4, IP) if family == 4 else (nat6, IPv6)
    src, dst, srv, nxt = (
        ("192.168.123.1", "10.9.8.7", str(SRV4), str(NEXT4))
        if family == 4
        else ("fd00:123::1", "2001:db8::7", str(SRV6), str(NEXT6))
    )
    session = _open_session(
        nat, _with_vnet(bytes(l3(src=src, dst=dst) / TCP(sport=5555, dport=80, flags="S")), partial=False)
    )
    payload = bytes(range(256)) * 7
    up = _with_vnet(
        bytes(l3(src=src, dst=dst) / TCP(sport=5555, dport=80, flags="PA") / payload), partial=partial
    )
    assert _translate(nat, up) == n.FORWARD
    down = _with_vnet(
        bytes(l3(src=srv, dst=nxt) / TCP(sport=LPORT, dport=session.port, flags="A") / payload),
        partial=partial,
    )
    assert _translate(nat, down) == n.FORWARD
    for buf, (want_src, want_dst) in ((up, (nxt, srv)), (down, (dst, src))):
        pkt = l3(bytes(buf[HL:]))
        assert (pkt.src, pkt.dst) == (want_src, want_dst)
        if partial:
            # The field must hold the new pseudo-header sum, for the kernel to complete.
            s, d = p.ip_addresses(buf, HL)
            l4 = p.ip_l4_offset(buf, HL, len(buf))
            expected = p.pseudo_header_sum(s, d, p.PROTO_TCP, len(buf) - l4)
            assert p.be16(buf, l4 + p.TCP_CSUM_OFFSET) % 0xFFFF == expected % 0xFFFF
            assert buf[:HL] == bytearray(
                p.VirtioNetHeader(p.VNET_F_NEEDS_CSUM, 0, 0, 0, l4 - HL, 16).encode()
            )
        else:
            _assert_checksums_valid(buf)


def test_replies_for_unknown_or_pending_ports_are_dropped(nat4: n.TcpNat) -> None:
    stray = IP(src=str(SRV4), dst=str(NEXT4)) / TCP(sport=LPORT, dport=12345, flags="A")
    assert _translate(nat4, _with_vnet(bytes(stray), partial=False)) == -p.Drop.NO_SESSION
    syn = IP(src="192.168.123.1", dst="10.0.0.1") / TCP(sport=1, dport=2, flags="S")
    assert _translate(nat4, _with_vnet(bytes(syn), partial=False)) == n.NEW
    assert nat4.pending is not None
    early = IP(src=str(SRV4), dst=str(NEXT4)) / TCP(sport=LPORT, dport=nat4.pending.port, flags="SA")
    assert _translate(nat4, _with_vnet(bytes(early), partial=False)) == -p.Drop.NO_SESSION


def test_closed_sessions_linger_then_are_swept(nat4: n.TcpNat) -> None:
    syn = bytes(IP(src="192.168.123.1", dst="10.0.0.1") / TCP(sport=1, dport=2, flags="S"))
    session = _open_session(nat4, _with_vnet(syn, partial=False))
    nat4.close(session, now=100.0)
    fin = bytes(IP(src="192.168.123.1", dst="10.0.0.1") / TCP(sport=1, dport=2, flags="FA"))
    assert _translate(nat4, _with_vnet(fin, partial=False)) == n.FORWARD  # still translated
    assert nat4.sweep(100.0 + n.LINGER_SECONDS - 1) == 0
    assert nat4.sweep(100.0 + n.LINGER_SECONDS) == 1
    assert nat4.by_port[session.port] is None and not nat4.by_key
    assert _translate(nat4, _with_vnet(fin, partial=False)) == -p.Drop.NO_SESSION


def test_new_syn_on_a_lingering_tuple_starts_a_new_session(nat4: n.TcpNat) -> None:
    syn = bytes(IP(src="192.168.123.1", dst="10.0.0.1") / TCP(sport=1, dport=2, flags="S"))
    old = _open_session(nat4, _with_vnet(syn, partial=False))
    nat4.close(old, now=1.0)
    assert _translate(nat4, _with_vnet(syn, partial=False)) == n.NEW
    assert nat4.pending is not old and nat4.pending is not None
    assert nat4.by_port[old.port] is None


def test_ports_are_allocated_cyclically_and_run_out(nat4: n.TcpNat) -> None:
    first = _open_session(
        nat4,
        _with_vnet(bytes(IP(src="192.168.123.1", dst="10.0.0.1") / TCP(sport=1, flags="S")), partial=False),
    )
    second = _open_session(
        nat4,
        _with_vnet(bytes(IP(src="192.168.123.1", dst="10.0.0.1") / TCP(sport=2, flags="S")), partial=False),
    )
    assert second.port == first.port + 1
    nat4.release(first)
    third = _open_session(
        nat4,
        _with_vnet(bytes(IP(src="192.168.123.1", dst="10.0.0.1") / TCP(sport=3, flags="S")), partial=False),
    )
    assert third.port == second.port + 1  # a freed port is not reused at once (TIME_WAIT on the listener)
    for port in range(n.NAT_PORT_MIN, n.NAT_PORT_MAX + 1):
        nat4.by_port[port] = nat4.by_port[port] or first  # fill the table
    syn = IP(src="192.168.123.1", dst="10.0.0.1") / TCP(sport=9, flags="S")
    assert _translate(nat4, _with_vnet(bytes(syn), partial=False)) == -p.Drop.SESSION_LIMIT


def test_rst_refusing_a_held_syn(nat4: n.TcpNat) -> None:
    syn = IP(src="192.168.123.1", dst="10.0.0.1") / TCP(sport=40000, dport=80, flags="S", seq=0xFFFFFFFF)
    session = _open_session(nat4, _with_vnet(bytes(syn), partial=False))
    rst = IP(bytes(nat4.reply_rst(session)))
    assert (rst.src, rst.dst, rst[TCP].sport, rst[TCP].dport) == ("10.0.0.1", "192.168.123.1", 80, 40000)
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 0  # ISN + 1 wraps


def test_pick_next_and_small_nets() -> None:
    assert n.pick_next(ipaddress.ip_interface("192.168.123.1/24")) == ipaddress.ip_address("192.168.123.2")
    assert n.pick_next(ipaddress.ip_interface("192.168.123.254/24")) == ipaddress.ip_address(
        "192.168.123.253"
    )
    assert n.pick_next(ipaddress.ip_interface("fd00::1/64")) == ipaddress.ip_address("fd00::2")
    assert n.pick_next(ipaddress.ip_interface("10.0.0.1/30")) == ipaddress.ip_address("10.0.0.2")
    with pytest.raises(ValueError, match="too small"):
        n.pick_next(ipaddress.ip_interface("10.0.0.1/31"))
    with pytest.raises(ValueError, match="one family"):
        n.TcpNat(SRV4, NEXT6, 1, n.TunStats())


def test_stats_snapshot_names_every_drop_reason() -> None:
    stats = n.TunStats()
    stats.drops[p.Drop.FRAGMENT] += 2
    snap = stats.snapshot()
    assert snap["drops"]["fragment"] == 2 and set(snap["drops"]) == {r.name.lower() for r in p.Drop}
    assert stats.dropped == 2 and snap["packets_in"] == 0
