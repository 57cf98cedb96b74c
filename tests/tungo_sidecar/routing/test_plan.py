"""The routing plan: golden files of whole plans, plus the properties the design relies on."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_network
from pathlib import Path

import pytest

from tungo_sidecar.config.model import ChainConfig, Hop, Metadata, Node, Plugin
from tungo_sidecar.config.tun import PortRange, TunSettings, parse_tun_settings
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.proto.address import Address
from tungo_sidecar.routing import plan as planmod
from tungo_sidecar.routing.plan import (
    FWMARK,
    METRIC_CAPTURE,
    METRIC_FAIL_CLOSED,
    TABLE,
    AddRoute,
    AddRule,
    Undo,
    make_plan,
    relay_hosts,
)

GOLDEN = Path(__file__).parent / "golden"
# Regenerate with UPDATE_GOLDEN=1 after a deliberate change, then review the diff like code.
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

CLUSTER = ("10.244.0.0/16", "10.96.0.0/12", "169.254.20.10/32")


def settings(**listener: object) -> TunSettings:
    return parse_tun_settings(Metadata(listener))


CASES = {
    "default_v4": lambda: make_plan(
        settings(route="0.0.0.0/0"), excluded=CLUSTER, relay_addresses=[IPv4Address("203.0.113.7")]
    ),
    "split_dual_stack": lambda: make_plan(
        settings(
            net="192.168.123.1/24,fd00:7::1/64",
            gw="192.168.123.2",
            route="10.0.0.0/8,::/0",
            routes=["172.16.0.0/12 192.168.123.3", "2001:db8::/32 fd00:7::9"],
        ),
        excluded=[*CLUSTER, "fd00:10::/48"],
        relay_addresses=[IPv4Address("203.0.113.7"), IPv6Address("2001:db8:1::7")],
    ),
    "v6_only_custom_mark": lambda: make_plan(
        settings(name="tun9", net="fd00::1/64", route="::/0"),
        fwmark=0x100,
        table=100,
        excluded=CLUSTER,  # v4 exclusions are dropped: nothing v4 is captured, T is never consulted for v4
    ),
    "no_routes": lambda: make_plan(settings(), excluded=CLUSTER),
    "exclude_ports_dual_stack": lambda: make_plan(
        settings(net="192.168.123.1/24,fd00:7::1/64", route="0.0.0.0/0,::/0", excludePorts="5432,8000-8100"),
        excluded=CLUSTER,
        relay_addresses=[IPv4Address("203.0.113.7")],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    rendered = CASES[name]().render()
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.write_text(rendered)
    assert rendered == path.read_text(), f"plan changed; if deliberate: UPDATE_GOLDEN=1 and review {path}"


def test_golden_files_have_no_orphans() -> None:
    assert {p.stem for p in GOLDEN.glob("*.txt")} == set(CASES)


def test_default_capture_structure() -> None:
    p = make_plan(settings(route="0.0.0.0/0"), relay_addresses=[IPv4Address("203.0.113.7")])
    dst = ip_network("0.0.0.0/0")
    assert p.operations == (
        AddRoute(dst, TABLE, METRIC_FAIL_CLOSED, type="unreachable"),
        AddRoute(ip_network("203.0.113.7/32"), TABLE, planmod.METRIC_EXCLUDE, type="throw"),
        AddRoute(dst, TABLE, METRIC_CAPTURE, dev="tungo"),
        AddRule(4, planmod.RULE_PRIORITY_MAIN, 254, suppress_prefixlength=0),
        AddRule(4, planmod.RULE_PRIORITY_CAPTURE, TABLE, fwmark=FWMARK, invert=True),
    )
    assert p.teardown == tuple(Undo(op) for op in reversed(p.operations))


def test_every_capture_has_a_fail_closed_twin_behind_it() -> None:
    p = make_plan(settings(net="10.1.0.1/24,fd00::1/64", route="0.0.0.0/0,::/0,10.0.0.0/8"))
    routes = [op for op in p.operations if isinstance(op, AddRoute)]
    captures = [r for r in routes if r.type == "unicast"]
    assert len(captures) == 3
    for c in captures:
        twin = [r for r in routes if r.type == "unreachable" and r.dst == c.dst]
        assert len(twin) == 1 and twin[0].metric > c.metric and twin[0].table == c.table
        # The twin is in place before the capture, so there is no instant where the rule points at
        # a table whose route could vanish without a fallback.
        assert routes.index(twin[0]) < routes.index(c)


def test_rules_come_last_and_main_suppression_precedes_capture() -> None:
    p = make_plan(settings(net="10.1.0.1/24,fd00::1/64", route="0.0.0.0/0,::/0"))
    kinds = [type(op) for op in p.operations]
    assert kinds == sorted(kinds, key=lambda k: k is AddRule)
    rules = [op for op in p.operations if isinstance(op, AddRule)]
    assert [(r.family, r.priority) for r in rules] == [
        (4, planmod.RULE_PRIORITY_MAIN),
        (4, planmod.RULE_PRIORITY_CAPTURE),
        (6, planmod.RULE_PRIORITY_MAIN),
        (6, planmod.RULE_PRIORITY_CAPTURE),
    ]
    assert 0 < planmod.RULE_PRIORITY_MAIN < planmod.RULE_PRIORITY_CAPTURE < 32766


def test_metric_order_survives_ipv6_rules() -> None:
    # IPv6 stores metric 0 as 1024: every metric we use must be non-zero to keep its order in v6.
    assert 0 < planmod.METRIC_EXCLUDE < METRIC_CAPTURE < METRIC_FAIL_CLOSED


def test_teardown_removes_rules_before_routes() -> None:
    p = make_plan(settings(route="0.0.0.0/0"))
    kinds = [type(u.op) for u in p.teardown]
    assert kinds[:2] == [AddRule, AddRule] and all(k is AddRoute for k in kinds[2:])


def test_exclusions_only_for_captured_families_and_deduplicated() -> None:
    p = make_plan(
        settings(net="fd00::1/64", route="::/0"),
        excluded=["10.0.0.0/8", "fd01::/16", IPv6Network("fd01::/16")],
        relay_addresses=[IPv4Address("198.51.100.1"), IPv6Address("2001:db8::1")],
    )
    throws = [op.dst for op in p.operations if isinstance(op, AddRoute) and op.type == "throw"]
    assert throws == [ip_network("fd01::/16"), ip_network("2001:db8::1/128")]


def test_no_routes_means_nothing_to_do() -> None:
    p = make_plan(settings(), excluded=CLUSTER)
    assert p.operations == () and p.teardown == ()


def test_same_settings_same_plan() -> None:
    a = make_plan(settings(route="10.0.0.0/8,1.0.0.0/8"), excluded=CLUSTER)
    b = make_plan(settings(route="10.0.0.0/8,1.0.0.0/8"), excluded=CLUSTER)
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"fwmark": 0}, "fwmark 0x0"),
        ({"fwmark": 1 << 32}, "non-zero 32-bit"),
        ({"table": 254}, "table 254: reserved"),
        ({"table": 0}, "table 0: reserved"),
        ({"excluded": ["10.0.0.0/8", "cluster"]}, "excluded 'cluster'"),
    ],
)
def test_bad_parameters(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        make_plan(settings(route="0.0.0.0/0"), **kwargs)  # type: ignore[arg-type]


def test_listener_exclude_and_parameter_exclusions_merge() -> None:
    s = parse_tun_settings(Metadata({"route": "0.0.0.0/0", "exclude": "10.244.0.0/16,10.96.0.0/12"}))
    p = make_plan(s, excluded=["10.96.0.0/12", "169.254.20.10/32"])
    throws = [str(op.dst) for op in p.operations if isinstance(op, AddRoute) and op.type == "throw"]
    assert throws == ["10.244.0.0/16", "10.96.0.0/12", "169.254.20.10/32"]


def chain(*addrs: str, second_hop: str = "10.9.9.9:443") -> ChainConfig:
    def node(i: int, addr: str) -> Node:
        return Node(f"n{i}", addr, Plugin("relay"), Plugin("wss"))

    hops = (Hop("h0", tuple(node(i, a) for i, a in enumerate(addrs))), Hop("h1", (node(9, second_hop),)))
    return ChainConfig("c", hops)


def test_relay_hosts_are_every_first_hop_node() -> None:
    hosts = relay_hosts(
        chain("relay.example:443", "[2001:db8::7]:8443", "203.0.113.7:443", "relay.example:443")
    )
    assert hosts == (Address("relay.example", 443), Address("2001:db8::7", 8443), Address("203.0.113.7", 443))
    assert relay_hosts(None) == ()
    assert relay_hosts(ChainConfig("empty", ())) == ()
    with pytest.raises(
        ConfigError, match=r"node 'n0' addr 'relay\.example': address 'relay\.example' has no port"
    ):
        relay_hosts(chain("relay.example"))


def test_excluded_port_rules_render_like_ip_rule() -> None:
    rule = AddRule(6, planmod.RULE_PRIORITY_EXCLUDE_PORTS, 254, ip_proto="udp", dport=PortRange(8000, 8100))
    assert rule.render() == "ip -6 rule add priority 29799 ipproto udp dport 8000-8100 lookup main"
    static = AddRule(4, 29799, 254, ip_proto="udp", dport=PortRange(53, 53), protocol=planmod.RTPROT_STATIC)
    assert static.render() == "ip -4 rule add priority 29799 ipproto udp dport 53 lookup main protocol static"
    assert AddRule(4, 1, 7, protocol=3).render("del") == "ip -4 rule del priority 1 lookup 7 protocol 3"
    one = AddRule(4, planmod.RULE_PRIORITY_EXCLUDE_PORTS, 254, ip_proto="tcp", dport=PortRange(5432, 5432))
    assert Undo(one).render() == "ip -4 rule del priority 29799 ipproto tcp dport 5432 lookup main"
    # Equality covers the selectors: the executor's sweep and idempotence compare rules with ==.
    assert one != AddRule(
        4, planmod.RULE_PRIORITY_EXCLUDE_PORTS, 254, ip_proto="udp", dport=PortRange(5432, 5432)
    )
    assert one != AddRule(
        4, planmod.RULE_PRIORITY_EXCLUDE_PORTS, 254, ip_proto="tcp", dport=PortRange(5432, 5433)
    )
    assert one != AddRule(4, planmod.RULE_PRIORITY_EXCLUDE_PORTS, 254)


def test_excluded_ports_come_before_main_and_capture_per_family() -> None:
    p = make_plan(settings(net="10.1.0.1/24,fd00::1/64", route="0.0.0.0/0,::/0", excludePorts="53,1-1023"))
    rules = [op for op in p.operations if isinstance(op, AddRule)]
    assert [(r.family, r.priority, r.ip_proto, str(r.dport)) for r in rules if r.dport is not None] == [
        (family, planmod.RULE_PRIORITY_EXCLUDE_PORTS, proto, ports)
        for family in (4, 6)
        for ports in ("53", "1-1023")
        for proto in ("tcp", "udp")
    ]
    for family in (4, 6):
        mine = [r for r in rules if r.family == family]
        # Every port rule is in place before the family's capture rule (and removed after it).
        assert [r.priority for r in mine] == [planmod.RULE_PRIORITY_EXCLUDE_PORTS] * 4 + [
            planmod.RULE_PRIORITY_MAIN,
            planmod.RULE_PRIORITY_CAPTURE,
        ]
    assert planmod.RULE_PRIORITY_EXCLUDE_PORTS < planmod.RULE_PRIORITY_MAIN < planmod.RULE_PRIORITY_CAPTURE
    for r in rules:
        if r.dport is not None:
            # Only "this protocol, these ports, to main": never a port without a protocol (ICMP's type
            # and code sit where the port would), never a mark, never our table.
            assert r.ip_proto in ("tcp", "udp") and r.table == planmod.MAIN_TABLE
            # ... and "protocol static", so deleting it can only ever delete ours.
            assert r.protocol == planmod.RTPROT_STATIC
            assert (r.fwmark, r.invert, r.suppress_prefixlength) == (None, False, None)


def test_excluded_ports_only_for_captured_families() -> None:
    p = make_plan(settings(net="fd00::1/64", route="::/0", excludePorts="5432"))
    assert {op.family for op in p.operations if isinstance(op, AddRule) and op.dport is not None} == {6}
    assert make_plan(settings(excludePorts="5432")).operations == ()  # nothing captured, nothing to exclude
