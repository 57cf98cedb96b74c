"""Hostile packets on a real TUN: ≥ 10,000 scapy-crafted malformed packets are dropped and counted by
reason while a TCP flow through the same engine keeps working.

The packets enter the engine the way any packet from the pod does: sent on the TUN interface (an
AF_PACKET socket in the pod namespace), so the kernel queues them to the device and the engine reads
them. None of them can open a flow: no SYNs, no well-formed UDP, no UDP fragments that complete (those
never completed are counted when the 5 s reassembly timeout abandons them).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.packet import Raw
from tun_netns import TunPod, connect, echo, in_netns, serve, sh

pytestmark = pytest.mark.netns

ETH_P_ALL = 0x0003
TUN4, TUN6 = "192.168.123.1", "fd00:123::1"


def craft(rng: random.Random, target4: str, target6: str) -> list[tuple[str, bytes]]:
    """(expected drop reason, packet) pairs; about 10,400 of them."""
    out: list[tuple[str, bytes]] = []
    no_syn = ["A", "PA", "FA", "R", "RA", "F", "", "U", "SA"]  # SYN|ACK is not an opening SYN either

    def port() -> int:
        return rng.randrange(1, 65536)

    for _ in range(1500):  # TCP without a session (the app never sent a SYN): no_session
        flags = rng.choice(no_syn)
        dst = rng.choice((target4, target6))
        l3 = IP(src=TUN4, dst=dst) if ":" not in dst else IPv6(src=TUN6, dst=dst)
        out.append(
            ("no_session", bytes(l3 / TCP(sport=port(), dport=port(), flags=flags, seq=port()) / b"x"))
        )
    for _ in range(1500):  # cut short anywhere inside or after the headers: truncated / bad_length
        pkt = bytes(IP(src=TUN4, dst=target4) / TCP(sport=port(), dport=port(), flags="A") / Raw(b"y" * 40))
        out.append(("bad_length", pkt[: rng.randrange(20, len(pkt))]))
    for _ in range(300):
        out.append(("truncated", bytes(IP(src=TUN4, dst=target4) / TCP())[: rng.randrange(1, 20)]))
    for _ in range(1000):  # total length lying either way
        pkt = IP(src=TUN4, dst=target4, len=rng.choice((21, 39, 41, 200, 1500, 65535))) / UDP(dport=port())
        out.append(("bad_length", bytes(pkt)))
    for _ in range(800):  # header length below 5 words or beyond the packet
        out.append(("bad_header", bytes(IP(src=TUN4, dst=target4, ihl=rng.choice((0, 1, 4, 15))) / TCP())))
    idents = iter(range(1, 1 << 16))  # a datagram of its own for every fragment: none can combine
    for _ in range(1000):  # fragments, both families: refused on sight, or held and never completed
        choice, ident = rng.randrange(6), next(idents)
        if choice == 0:  # not UDP: only UDP is reassembled
            proto = rng.choice((6, 1, 47))
            frag = IP(src=TUN4, dst=target4, proto=proto, flags="MF", id=ident) / (b"t" * 16)
            out.append(("fragment", bytes(frag)))
        elif choice == 1:
            out.append(
                ("fragment", bytes(IPv6(src=TUN6, dst=target6) / IPv6ExtHdrFragment(id=ident) / TCP()))
            )
        elif choice == 2:  # a first fragment too short for the UDP header (RFC 1858 / RFC 7112)
            frag = IP(src=TUN4, dst=target4, proto=17, flags="MF", id=ident) / rng.randbytes(
                rng.randrange(1, 8)
            )
            out.append(("frag_tiny", bytes(frag)))
        elif choice == 3:  # not the last fragment, yet not a multiple of 8 bytes
            odd = rng.randbytes(8 * rng.randrange(1, 20) + rng.randrange(1, 8))
            header = IPv6ExtHdrFragment(nh=17, m=1, offset=rng.randrange(1, 500), id=ident)
            out.append(("frag_bad", bytes(IPv6(src=TUN6, dst=target6) / header / odd)))
        elif choice == 4:  # would end past the 65,535-byte limit
            frag = IP(src=TUN4, dst=target4, proto=17, frag=8189, id=ident) / (b"b" * 40)
            out.append(("frag_too_big", bytes(frag)))
        elif ident % 5 == 0:  # held, never completed (kept under the 256 partial datagrams cap)
            frag = (
                IP(src=TUN4, dst=target4, flags="MF", id=ident) / UDP(dport=port(), len=4000) / (b"h" * 1000)
            )
            out.append(("frag_timeout", bytes(frag)))
        else:
            out.append(("frag_tiny", bytes(IP(src=TUN4, dst=target4, proto=17, flags="MF", id=ident))))
    for _ in range(1000):  # other transports and IPv6 extension headers
        choice = rng.randrange(4)
        if choice == 0:
            out.append(("unsupported", bytes(IP(src=TUN4, dst=target4) / ICMP())))
        elif choice == 1:
            out.append(
                (
                    "unsupported",
                    bytes(IP(src=TUN4, dst=target4, proto=rng.choice((47, 50, 132))) / (b"z" * 8)),
                )
            )
        elif choice == 2:
            out.append(("unsupported", bytes(IPv6(src=TUN6, dst=target6) / IPv6ExtHdrHopByHop() / UDP())))
        else:
            out.append(("unsupported", bytes(IPv6(src=TUN6, dst=target6, nh=59) / b"nothing")))
    for _ in range(1000):  # TCP data offset below 5 or beyond the segment
        tcp = TCP(sport=port(), dport=port(), flags="A", dataofs=rng.choice((0, 2, 4, 15)))
        out.append(("bad_header", bytes(IP(src=TUN4, dst=target4) / tcp)))
    for _ in range(1000):  # UDP length disagreeing with the datagram
        udp = UDP(sport=port(), dport=port(), len=rng.choice((0, 7, 9, 100, 65535)))
        out.append(("bad_length", bytes(IP(src=TUN4, dst=target4) / udp / b"abc")))
    for _ in range(300):  # IPv6 payload length lies
        out.append(("bad_length", bytes(IPv6(src=TUN6, dst=target6, plen=rng.randrange(100, 65535)) / UDP())))
    for _ in range(1000):  # random garbage: no version 4/6 first nibble
        garbage = bytearray(rng.randbytes(rng.randrange(20, 200)))
        garbage[0] = (rng.choice((0, 1, 2, 3, 5, 7, 8, 15)) << 4) | (garbage[0] & 0x0F)
        out.append(("bad_version", bytes(garbage)))
    rng.shuffle(out)
    return out


def _packet_socket(tun_pod: TunPod) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((tun_pod.tun, 0))
        return sock

    return in_netns(tun_pod.pod, make)


async def test_fuzz_10k_malformed_packets_while_a_flow_keeps_working(tun_pod: TunPod) -> None:
    packets = craft(random.Random(1234), tun_pod.target4, tun_pod.target6)
    assert len(packets) >= 10_000
    expected: dict[str, int] = {}
    for reason, _ in packets:
        expected[reason] = expected.get(reason, 0) + 1
    # Room for the whole burst in the device queue: the test is about the engine, not qdisc drops.
    sh("ip", "-n", tun_pod.pod, "link", "set", tun_pod.tun, "txqueuelen", "20000")
    before = tun_pod.fresh_stats()

    async with serve(tun_pod, echo) as port:
        reader, writer = await connect(tun_pod, tun_pod.target4, port)
        echoed = 0
        with _packet_socket(tun_pod) as sock:
            for index, (_, pkt) in enumerate(packets):
                sock.send(pkt)
                if index % 500 == 0:  # the flow keeps working in the middle of the storm
                    writer.write(b"ping %d" % index)
                    got = await asyncio.wait_for(reader.readexactly(len(b"ping %d" % index)), 5)
                    assert got == b"ping %d" % index
                    echoed += 1
        writer.close()
    assert echoed == 21

    deadline = time.monotonic() + 20
    stats = tun_pod.fresh_stats()
    while sum(stats["drops"].values()) - sum(before["drops"].values()) < len(packets):
        assert time.monotonic() < deadline, (expected, stats["drops"], before["drops"])
        stats = tun_pod.fresh_stats()
    assert tun_pod.alive()
    for reason, count in expected.items():
        got = stats["drops"][reason] - before["drops"][reason]
        # The kernel adds a few packets of its own (IPv6 multicast reports: "unsupported").
        assert count <= got <= count + 20, (reason, count, got)
    assert stats["flow_errors"] == before["flow_errors"]
    assert stats["tcp_flows"] - before["tcp_flows"] == 1  # only the echo flow: the storm opened none
    assert stats["udp_sessions"] == before["udp_sessions"]
