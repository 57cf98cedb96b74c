"""The routing executor against the real kernel, inside namespaces these tests create and always remove.

Checks what the plan promises: captured destinations go to the TUN, tungo's own (marked) traffic, the
relay server and excluded ranges leave through the pod's uplink, applying twice changes nothing,
teardown restores the exact previous state, and a SIGKILLed tungo leaves captured destinations
closed (EHOSTUNREACH at once, not a packet on the uplink) until it comes back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address

import pytest
import routing_netns as rn

from tungo_sidecar.config.model import Metadata
from tungo_sidecar.config.tun import parse_tun_settings
from tungo_sidecar.errors import TunError
from tungo_sidecar.routing.apply import (
    Applied,
    apply_plan,
    apply_plan_async,
    netlink,
    teardown,
    teardown_async,
)
from tungo_sidecar.routing.plan import FWMARK, TABLE, AddRoute, Plan, make_plan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and TUN"),
]

RELAY = IPv4Address("198.51.100.7")
RELAY6 = IPv6Address("2001:db8:77::7")
EXCLUDED = ("10.96.0.0/12", "fd00:96::/64")


def dual_stack_plan(name: str = "tungo") -> Plan:
    settings = parse_tun_settings(
        Metadata(
            {
                "name": name,
                "net": "192.168.123.1/24,fd00:7::1/64",
                "route": "0.0.0.0/0,::/0",
                "routes": ["172.16.0.0/12 192.168.123.3"],
            }
        )
    )
    return make_plan(settings, excluded=EXCLUDED, relay_addresses=[RELAY, RELAY6])


@pytest.fixture
def pod() -> Iterator[rn.Pod]:
    with rn.pod_with_uplink() as pod:
        yield pod


def test_apply_captures_and_bypasses_then_teardown_restores(pod: rn.Pod) -> None:
    rn.add_tun(pod.ns, addrs=("192.168.123.1/24", "fd00:7::1/64"))
    before = rn.snapshot(pod.ns)
    assert "dev up0" in rn.route_get(pod.ns, "8.8.8.8")  # the control: uncaptured, it leaves via up0

    with netlink(pod.ns) as ipr:
        applied = apply_plan(dual_stack_plan(), ipr)
        assert [s.outcome for s in applied.steps] == ["added"] * len(applied.steps)
        assert applied.leftovers == 0

        rules4 = rn.ip(pod.ns, "-4", "rule", "show")
        assert "29800:\tfrom all lookup main suppress_prefixlength 0" in rules4
        assert f"29801:\tnot from all fwmark {FWMARK:#x} lookup {TABLE}" in rules4
        assert f"not from all fwmark {FWMARK:#x} lookup {TABLE}" in rn.ip(pod.ns, "-6", "rule", "show")
        table4 = rn.ip(pod.ns, "-4", "route", "show", "table", str(TABLE))
        assert "default dev tungo proto static scope link metric 100" in table4
        assert "unreachable default proto static metric 65535" in table4
        assert "172.16.0.0/12 via 192.168.123.3 dev tungo proto static metric 100" in table4
        assert "throw 198.51.100.7 proto static metric 1" in table4
        table6 = rn.ip(pod.ns, "-6", "route", "show", "table", str(TABLE))
        assert "default dev tungo proto static metric 100" in table6
        assert "unreachable default dev lo proto static metric 65535" in table6

        # Captured: plain traffic, both families.
        assert "dev tungo" in rn.route_get(pod.ns, "8.8.8.8")
        assert "dev tungo" in rn.route_get(pod.ns, "2001:db8:5::5")
        assert "via 192.168.123.3 dev tungo" in rn.route_get(pod.ns, "172.16.1.1")
        # tungo's own sockets (SO_MARK) skip the table: no loop.
        assert "dev up0" in rn.route_get(pod.ns, "8.8.8.8", "mark", hex(FWMARK))
        assert "dev up0" in rn.route_get(pod.ns, "2001:db8:5::5", "mark", hex(FWMARK))
        # The relay server and excluded ranges bypass the TUN even for unmarked traffic.
        assert "dev up0" in rn.route_get(pod.ns, str(RELAY))
        assert "dev up0" in rn.route_get(pod.ns, str(RELAY6))
        assert "dev up0" in rn.route_get(pod.ns, "10.100.0.1")
        assert "dev up0" in rn.route_get(pod.ns, "fd00:96::1")
        # main's non-default routes still win: the uplink's own subnet and the TUN's subnet.
        assert "dev up0" in rn.route_get(pod.ns, "198.18.0.9")
        assert "dev tungo" in rn.route_get(pod.ns, "192.168.123.9")

        teardown(applied, ipr)
    assert rn.snapshot(pod.ns) == before


def test_apply_twice_is_harmless(pod: rn.Pod) -> None:
    rn.add_tun(pod.ns, addrs=("192.168.123.1/24", "fd00:7::1/64"))
    before = rn.snapshot(pod.ns)
    plan = dual_stack_plan()
    with netlink(pod.ns) as ipr:
        first = apply_plan(plan, ipr)
        after_first = rn.snapshot(pod.ns)
        second = apply_plan(plan, ipr)
        assert rn.snapshot(pod.ns) == after_first  # nothing duplicated, nothing changed
        assert second.leftovers == len(second.steps)
        assert {s.outcome for s in second.steps} == {"replaced", "already present"}
        assert rn.ip(pod.ns, "-4", "rule", "show").count(f"lookup {TABLE}") == 1
        teardown(second, ipr)
        assert rn.snapshot(pod.ns) == before
        teardown(first, ipr)  # everything is already gone: fine
    assert rn.snapshot(pod.ns) == before


async def test_async_wrappers_work_from_a_running_loop(pod: rn.Pod) -> None:
    rn.add_tun(pod.ns)
    before = rn.snapshot(pod.ns)
    settings = parse_tun_settings(Metadata({"route": "10.0.0.0/8"}))
    applied = await apply_plan_async(make_plan(settings), pod.ns)
    assert isinstance(applied, Applied) and len(applied.steps) == 4
    assert "dev tungo" in rn.route_get(pod.ns, "10.1.1.1")
    await teardown_async(applied, pod.ns)
    assert rn.snapshot(pod.ns) == before


def test_failure_midway_rolls_back(pod: rn.Pod) -> None:
    before = rn.snapshot(pod.ns)
    # No TUN "tungo" here: the unreachable twins and throws go in, then the capture route fails.
    with netlink(pod.ns) as ipr, pytest.raises(TunError, match=r"dev tungo .*device 'tungo' does not exist"):
        apply_plan(dual_stack_plan(), ipr)
    assert rn.snapshot(pod.ns) == before


def test_kernel_refusal_is_a_clear_error(pod: rn.Pod) -> None:
    rn.add_tun(pod.ns)  # no IPv6 address and no fd00:7::/64 on the TUN: the v6 gateway is unreachable
    settings = parse_tun_settings(
        Metadata({"net": "192.168.123.1/24,fd00:7::1/64", "routes": ["2001:db8::/32 fd00:7::9"]})
    )
    before = rn.snapshot(pod.ns)
    with netlink(pod.ns) as ipr, pytest.raises(TunError) as info:
        apply_plan(make_plan(settings), ipr)
    assert "ip -6 route replace 2001:db8::/32 via fd00:7::9 dev tungo" in str(info.value)
    assert rn.snapshot(pod.ns) == before


def test_netlink_refuses_a_missing_namespace() -> None:
    with pytest.raises(TunError, match="cannot open netlink in netns"), netlink(rn.unique_name("tgnone")):
        pass


_CONNECT = r"""
import errno, socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(5)
t = time.monotonic()
try:
    s.connect((sys.argv[1], 80))
    print("connected", time.monotonic() - t)
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno), f"{time.monotonic() - t:.3f}")
"""


def connect_in(ns: str, dst: str) -> tuple[str, float]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _CONNECT, dst],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout.split()
    return out[0], float(out[1])


def test_sigkilled_tungo_fails_closed_and_restart_takes_over(pod: rn.Pod) -> None:
    plan = dual_stack_plan()
    addrs = ("192.168.123.1/24", "fd00:7::1/64")
    with rn.tun_holder(pod.ns, addrs=addrs) as pid, netlink(pod.ns) as ipr:
        apply_plan(plan, ipr)
        assert "dev tungo" in rn.route_get(pod.ns, "8.8.8.8")
        os.kill(pid, signal.SIGKILL)
        rn.wait_gone(pod.ns, "tungo")

    # tungo is dead and its device gone. Without the twins, these would now leave through up0.
    captured = ("8.8.8.8", "172.16.1.1", "2001:db8:5::5")
    with rn.sniff(pod.outside, "out0") as arrived:
        for dst in captured:
            result, elapsed = connect_in(pod.ns, dst)
            assert result == "EHOSTUNREACH", (dst, result)
            assert elapsed < 0.5, (dst, elapsed)  # at once, not after a timeout
            looked_up = rn.route_get(pod.ns, dst)
            assert "No route to host" in looked_up or "unreachable" in looked_up, looked_up
        # The control: an excluded destination does go out and arrive (the sniffer works).
        rn.ip(pod.outside, "addr", "add", "10.100.0.1/32", "dev", "lo")
        assert connect_in(pod.ns, "10.100.0.1")[0] == "ECONNREFUSED"
    assert "10.100.0.1" in arrived
    assert not set(captured) & set(arrived), arrived  # not one packet to them left in clear
    # Excluded and relay destinations still work as before, and tungo's own sockets still get out.
    assert "dev up0" in rn.route_get(pod.ns, str(RELAY))
    assert "dev up0" in rn.route_get(pod.ns, "8.8.8.8", "mark", hex(FWMARK))

    # Restart: the new tungo applies the same plan on top of the leftovers, without duplicates.
    with rn.tun_holder(pod.ns, addrs=addrs), netlink(pod.ns) as ipr:
        again = apply_plan(plan, ipr)
        outcomes = {(s.op.type if isinstance(s.op, AddRoute) else "rule", s.outcome) for s in again.steps}
        # The TUN routes died with the device; the twins, throws and rules were still there.
        assert outcomes == {
            ("unicast", "added"),
            ("unreachable", "replaced"),
            ("throw", "replaced"),
            ("rule", "already present"),
        }
        assert "dev tungo" in rn.route_get(pod.ns, "8.8.8.8")
        assert rn.ip(pod.ns, "-4", "route", "show", "table", str(TABLE)).count("unreachable default") == 1
        assert rn.ip(pod.ns, "-4", "rule", "show").count(f"lookup {TABLE}") == 1
        teardown(again, ipr)
    assert rn.ip(pod.ns, "-4", "route", "show", "table", str(TABLE)) == ""
    assert f"lookup {TABLE}" not in rn.ip(pod.ns, "-4", "rule", "show")


def run_rendered(ns: str, text: str) -> None:
    for line in text.splitlines():
        if line.startswith("ip "):
            rn.ip(ns, *line.split()[1:])


def test_rendered_plan_is_what_the_executor_does(pod: rn.Pod) -> None:
    # The golden files show `ip` commands; run them with ip(8) in a twin namespace and compare the
    # kernel state with the executor's, so the goldens cannot drift from what is really applied.
    plan = dual_stack_plan()
    setup, teardown_text = plan.render().split("# teardown\n")
    with rn.pod_with_uplink() as twin:
        for ns in (pod.ns, twin.ns):
            rn.add_tun(ns, addrs=("192.168.123.1/24", "fd00:7::1/64"))
        before = rn.snapshot(twin.ns)
        run_rendered(twin.ns, setup)
        with netlink(pod.ns) as ipr:
            apply_plan(plan, ipr)

        def normal(ns: str) -> str:
            # ip(8) marks its routes "proto boot", the executor "proto static".
            return rn.snapshot(ns).replace(" proto boot", "").replace(" proto static", "")

        assert normal(twin.ns) == normal(pod.ns)
        run_rendered(twin.ns, teardown_text)
        assert rn.snapshot(twin.ns) == before


def test_restart_with_a_different_plan_sweeps_the_old_one(pod: rn.Pod) -> None:
    rn.add_tun(pod.ns, addrs=("192.168.123.1/24", "fd00:7::1/64"))
    before = rn.snapshot(pod.ns)
    # Someone else's rule at one of our priorities, shaped unlike ours: must survive the sweep.
    rn.ip(pod.ns, "-4", "rule", "add", "priority", "29801", "fwmark", "0x99", "lookup", "99")
    foreign = rn.snapshot(pod.ns)
    old = make_plan(
        parse_tun_settings(Metadata({"net": "192.168.123.1/24,fd00:7::1/64", "route": "10.0.0.0/8,::/0"}))
    )
    new = make_plan(parse_tun_settings(Metadata({"route": "172.16.0.0/12"})))
    with netlink(pod.ns) as ipr:
        apply_plan(old, ipr)  # ... and the sidecar dies without a teardown; its config changes
        assert "dev tungo" in rn.route_get(pod.ns, "10.1.1.1")
        applied = apply_plan(new, ipr)
        # The old capture is gone entirely (no stale unreachable twin black-holing 10/8, no v6 rules).
        assert len(applied.swept) == 4 + 2  # 10/8 and ::/0 routes with their twins, and the two v6 rules
        assert all(
            line.startswith(("ip -4 route del", "ip -6 route del", "ip -6 rule del"))
            for line in applied.swept
        )
        assert "dev up0" in rn.route_get(pod.ns, "10.1.1.1")
        assert "dev up0" in rn.route_get(pod.ns, "2001:db8:5::5")
        assert "dev tungo" in rn.route_get(pod.ns, "172.16.1.1")
        assert "lookup 99" in rn.ip(pod.ns, "-4", "rule", "show")
        teardown(applied, ipr)
    assert rn.snapshot(pod.ns) == foreign
    rn.ip(pod.ns, "-4", "rule", "del", "priority", "29801", "fwmark", "0x99", "lookup", "99")
    assert rn.snapshot(pod.ns) == before
