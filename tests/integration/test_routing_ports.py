"""Excluded ports (listener ``excludePorts``) against the real kernel, in namespaces these tests create.

Checks what the plan promises for them: exactly the expected ``ip rule`` lines, TCP and UDP to an
excluded port (IPv4 and IPv6) leave through the pod's uplink while every other port still goes into the
TUN, tungo's marked sockets see no difference, re-applying changes nothing, a restart with other ports
sweeps exactly the stale port rules (and nobody else's), teardown restores the previous state, and a
kernel that drops the ``ipproto``/``dport`` selectors (Linux < 4.17) is refused instead of capturing
nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import routing_netns as rn

from tungo_sidecar.config.model import Metadata
from tungo_sidecar.config.tun import parse_tun_settings
from tungo_sidecar.errors import TunError
from tungo_sidecar.routing import apply
from tungo_sidecar.routing.apply import apply_plan, netlink, teardown
from tungo_sidecar.routing.plan import FWMARK, TABLE, AddRule, Plan, make_plan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and TUN"),
]

TUN_ADDRS = ("192.168.123.1/24", "fd00:7::1/64")
# Destinations behind the uplink (on the outside namespace's loopback): nothing listens, so what gets
# there is refused at once, and what went into the TUN gets no answer.
FAR4 = "203.0.113.50"
FAR6 = "2001:db8:99::50"


def ports_plan(ports: str = "5432,8000-8100") -> Plan:
    settings = parse_tun_settings(
        Metadata({"net": ",".join(TUN_ADDRS), "route": "0.0.0.0/0,::/0", "excludePorts": ports})
    )
    return make_plan(settings, excluded=("10.96.0.0/12",))


@pytest.fixture
def pod() -> Iterator[rn.Pod]:
    with rn.pod_with_uplink() as pod:
        yield pod


def rules(ns: str, family: str) -> list[str]:
    return rn.ip(ns, family, "rule", "show").splitlines()


def expected_rules(ports: tuple[str, ...], *, v6: bool = False) -> list[str]:
    port_rules = [
        f"29799:\tfrom all ipproto {proto} dport {p} lookup main proto static"
        for p in ports
        for proto in ("tcp", "udp")
    ]
    return [
        "0:\tfrom all lookup local",
        *port_rules,
        "29800:\tfrom all lookup main suppress_prefixlength 0",
        f"29801:\tnot from all fwmark {FWMARK:#x} lookup {TABLE}",
        "32766:\tfrom all lookup main",
        *([] if v6 else ["32767:\tfrom all lookup default"]),
    ]


def test_apply_shows_exactly_the_port_rules_reapply_is_a_no_op_teardown_restores(pod: rn.Pod) -> None:
    rn.add_tun(pod.ns, addrs=TUN_ADDRS)
    before = rn.snapshot(pod.ns)
    plan = ports_plan()
    with netlink(pod.ns) as ipr:
        first = apply_plan(plan, ipr)
        assert [s.outcome for s in first.steps] == ["added"] * len(first.steps)
        assert rules(pod.ns, "-4") == expected_rules(("5432", "8000-8100"))
        assert rules(pod.ns, "-6") == expected_rules(("5432", "8000-8100"), v6=True)

        applied = rn.snapshot(pod.ns)
        again = apply_plan(plan, ipr)
        assert rn.snapshot(pod.ns) == applied  # nothing duplicated, nothing changed
        assert again.swept == ()
        port_steps = [s for s in again.steps if isinstance(s.op, AddRule) and s.op.dport is not None]
        assert len(port_steps) == 2 * 2 * 2  # two ranges, tcp and udp, v4 and v6
        assert {s.outcome for s in port_steps} == {"already present"}

        teardown(again, ipr)
        assert rn.snapshot(pod.ns) == before
        teardown(first, ipr)  # all gone already: fine
    assert rn.snapshot(pod.ns) == before


def test_route_lookup_sends_excluded_ports_to_main_and_the_rest_to_the_tun(pod: rn.Pod) -> None:
    rn.add_tun(pod.ns, addrs=TUN_ADDRS)
    with netlink(pod.ns) as ipr:
        applied = apply_plan(ports_plan(), ipr)
        for dst in ("8.8.8.8", "2001:db8:5::5"):
            for proto in ("tcp", "udp"):
                for port in ("5432", "8000", "8050", "8100"):
                    assert "dev up0" in rn.route_get(pod.ns, dst, "ipproto", proto, "dport", port), (
                        dst,
                        proto,
                        port,
                    )
                for port in ("5431", "5433", "7999", "8101", "443"):
                    assert "dev tungo" in rn.route_get(pod.ns, dst, "ipproto", proto, "dport", port), (
                        dst,
                        proto,
                        port,
                    )
            # ICMP is captured as before, even when its type and code (kept where a port would be)
            # read as an excluded port number: the rules name their protocol.
            icmp = "ipv6-icmp" if ":" in dst else "icmp"
            assert "dev tungo" in rn.route_get(pod.ns, dst, "ipproto", icmp, "dport", "5432")
            assert "dev tungo" in rn.route_get(pod.ns, dst)
            # tungo's own marked sockets leave by main whatever the port, exactly as without the rules.
            for port in ("5432", "443"):
                assert "dev up0" in rn.route_get(
                    pod.ns, dst, "mark", hex(FWMARK), "ipproto", "tcp", "dport", port
                )
        # An excluded port takes main as it is: main's own route to the TUN subnet still wins there.
        assert "dev tungo" in rn.route_get(pod.ns, "192.168.123.9", "ipproto", "tcp", "dport", "5432")
        teardown(applied, ipr)
    # And without the plan, the excluded ports are back to plain main (the uplink) like every port.
    assert "dev up0" in rn.route_get(pod.ns, "8.8.8.8", "ipproto", "tcp", "dport", "443")


_SEND = r"""
import errno, socket, sys
proto, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.settimeout(1)
try:
    s.connect((dst, port))
    if proto == "udp":  # a connected UDP socket learns of the ICMP port unreachable on its next recv
        s.send(b"tungo")
        s.recv(100)
    print("answered")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno))
"""


def send_in(ns: str, proto: str, dst: str, port: int) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _SEND, proto, dst, str(port)],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout.strip()


# Plays tungo's TUN engine just enough: reads every packet the kernel routes into TUN argv[1] and, once
# stdin closes, prints "PROTO DST DPORT" of each TCP/UDP one (IPv6 without extension headers: enough for
# the packets these tests send). Bounded by a deadline like the helpers' TUN holder.
_TUN_READER = r"""
import fcntl, ipaddress, os, select, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
IFF_TUN, IFF_NO_PI, TUNSETIFF = 0x0001, 0x1000, 0x400454CA
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", sys.argv[1].encode(), IFF_TUN | IFF_NO_PI))
print("READY", flush=True)
seen, deadline = [], time.monotonic() + 60
while time.monotonic() < deadline:
    ready, _, _ = select.select([fd, sys.stdin], [], [], 0.2)
    if sys.stdin in ready:
        break
    if fd in ready:
        packet = os.read(fd, 65535)
        if packet[0] >> 4 == 4:
            proto, dst, l4 = packet[9], ipaddress.IPv4Address(packet[16:20]), packet[(packet[0] & 15) * 4:]
        else:
            proto, dst, l4 = packet[6], ipaddress.IPv6Address(packet[24:40]), packet[40:]
        if proto in (6, 17):
            seen.append(f"{'tcp' if proto == 6 else 'udp'} {dst} {int.from_bytes(l4[2:4], 'big')}")
print("|".join(seen), flush=True)
"""


@contextmanager
def tun_reader(ns: str) -> Iterator[list[str]]:
    """TUN "tungo" in ``ns`` read by a child; the list fills with what entered it once the block ends."""
    seen: list[str] = []
    with rn.tun_child(ns, _TUN_READER, "tungo", TUN_ADDRS, stdin=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        yield seen
        proc.stdin.close()
        seen.extend(item for item in proc.stdout.readline().strip().split("|") if item)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_real_traffic_to_an_excluded_port_leaves_by_the_uplink_not_the_tun(pod: rn.Pod, proto: str) -> None:
    rn.ip(pod.outside, "addr", "add", f"{FAR4}/32", "dev", "lo")
    rn.ip(pod.outside, "-6", "addr", "add", f"{FAR6}/128", "dev", "lo", "nodad")
    with tun_reader(pod.ns) as captured, netlink(pod.ns) as ipr:
        applied = apply_plan(ports_plan(), ipr)
        for dst in (FAR4, FAR6):
            with rn.sniff(pod.outside, "out0") as arrived:
                result = send_in(pod.ns, proto, dst, 5433)
            # Into the TUN (nobody answers there, so no answer comes) and not one packet in clear.
            assert result == "timeout", (dst, result)
            assert dst not in arrived, arrived
            with rn.sniff(pod.outside, "out0") as arrived:
                result = send_in(pod.ns, proto, dst, 8042)
            # Out of the uplink: it arrives, and nothing listens there: refused at once (TCP RST, or
            # ICMP port unreachable for UDP).
            assert result == "ECONNREFUSED", (dst, result)
            assert dst in arrived, arrived
        teardown(applied, ipr)
    # What entered the TUN: the captured port only (a retransmitted SYN is the same entry), both families.
    assert set(captured) == {f"{proto} {FAR4} 5433", f"{proto} {FAR6} 5433"}, captured


def test_restart_with_other_ports_sweeps_exactly_the_stale_port_rules(pod: rn.Pod) -> None:
    rn.add_tun(pod.ns, addrs=TUN_ADDRS)
    before = rn.snapshot(pod.ns)
    # Someone else's rules at the port priority, each with a selector or protocol ours never have.
    foreign = (
        ("priority", "29799", "from", "10.0.0.0/8", "ipproto", "tcp", "dport", "5432", "lookup", "main"),
        ("priority", "29799", "ipproto", "sctp", "dport", "5432", "lookup", "main"),
        ("priority", "29799", "ipproto", "tcp", "sport", "5432", "lookup", "main"),
        ("priority", "29799", "iif", "lo", "ipproto", "udp", "dport", "5432", "lookup", "main"),
    )
    for words in foreign:
        rn.ip(pod.ns, "-4", "rule", "add", *words)
    with_foreign = rn.snapshot(pod.ns)
    with netlink(pod.ns) as ipr:
        apply_plan(ports_plan("5432,8000-8100"), ipr)  # ... and the sidecar dies; its ports change
        applied = apply_plan(ports_plan("8000-8100,9000"), ipr)
        assert sorted(applied.swept) == sorted(
            f"ip -{family} rule del priority 29799 ipproto {proto} dport 5432 lookup main protocol static"
            for family in (4, 6)
            for proto in ("tcp", "udp")
        )
        v4 = rules(pod.ns, "-4")
        assert sum("dport 5432 lookup main" in line for line in v4) == len(foreign) - 1  # the sport one
        assert "dev up0" in rn.route_get(pod.ns, "8.8.8.8", "ipproto", "tcp", "dport", "9000")
        assert "dev tungo" in rn.route_get(pod.ns, "8.8.8.8", "ipproto", "tcp", "dport", "5432")
        assert "dev tungo" in rn.route_get(pod.ns, "2001:db8:5::5", "ipproto", "udp", "dport", "5432")

        # And a plan without excludePorts sweeps every port rule of ours, still none of the others.
        plain = apply_plan(ports_plan(""), ipr)
        assert len(plain.swept) == 2 * 2 * 2
        assert "dev tungo" in rn.route_get(pod.ns, "8.8.8.8", "ipproto", "tcp", "dport", "9000")
        teardown(plain, ipr)
    assert rn.snapshot(pod.ns) == with_foreign
    for words in foreign:
        rn.ip(pod.ns, "-4", "rule", "del", *words)
    assert rn.snapshot(pod.ns) == before


def test_rendered_port_rules_are_what_the_executor_does(pod: rn.Pod) -> None:
    # The golden files' `ip rule ... ipproto P dport LO-HI` lines, run by ip(8) in a twin namespace,
    # give the same kernel state as the executor's netlink requests, and their teardown undoes it.
    plan = ports_plan()
    setup, teardown_text = plan.render().split("# teardown\n")
    with rn.pod_with_uplink() as twin:
        for ns in (pod.ns, twin.ns):
            rn.add_tun(ns, addrs=TUN_ADDRS)
        before = rn.snapshot(twin.ns)
        for line in setup.splitlines()[1:]:
            rn.ip(twin.ns, *line.split()[1:])
        with netlink(pod.ns) as ipr:
            apply_plan(plan, ipr)

        def normal(ns: str) -> str:
            return rn.snapshot(ns).replace(" proto boot", "").replace(" proto static", "")

        assert normal(twin.ns) == normal(pod.ns)
        for line in teardown_text.splitlines():
            rn.ip(twin.ns, *line.split()[1:])
        assert rn.snapshot(twin.ns) == before


def test_a_kernel_dropping_the_port_selectors_is_refused_and_rolled_back(
    pod: rn.Pod, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Linux < 4.17 ignores FRA_IP_PROTO/FRA_DPORT_RANGE without an error: the rule it keeps is a bare
    # "lookup main" in front of the capture, which would capture nothing. Play that kernel.
    rule_args = apply._rule_args

    def old_kernel(op: AddRule) -> dict[str, Any]:
        args = rule_args(op)
        args.pop("ip_proto", None)
        args.pop("dport_range", None)
        return args

    monkeypatch.setattr(apply, "_rule_args", old_kernel)
    rn.add_tun(pod.ns, addrs=TUN_ADDRS)
    before = rn.snapshot(pod.ns)
    with netlink(pod.ns) as ipr, pytest.raises(TunError, match=r"excludePorts needs Linux 4\.17") as info:
        apply_plan(ports_plan(), ipr)
    assert "ip -4 rule add priority 29799 ipproto tcp dport 5432 lookup main protocol static" in str(
        info.value
    )
    assert rn.snapshot(pod.ns) == before
