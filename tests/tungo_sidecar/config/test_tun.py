"""TunSettings: GOST's tungo listener/handler/service keys, defaults, and one clear error per bad value."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest

from tungo_sidecar.config.model import Config, Metadata, Plugin, Service
from tungo_sidecar.config.tun import (
    MAX_EXCLUDED_PORTS,
    PortRange,
    TunRoute,
    TunSettings,
    parse_tun_settings,
    with_pod_overrides,
)
from tungo_sidecar.errors import ConfigError


def parse(
    handler: dict[str, object] | None = None, service: dict[str, object] | None = None, **listener: object
):
    return parse_tun_settings(Metadata(listener), Metadata(handler or {}), Metadata(service or {}))


def test_defaults_match_gost_and_design() -> None:
    s = parse()
    assert s == TunSettings()
    assert s.name == "tungo"
    assert s.nets == (IPv4Interface("192.168.123.1/24"),)
    assert s.address == IPv4Interface("192.168.123.1/24")
    assert s.mtu == 1420
    assert s.udp_timeout == 30.0
    assert (s.gateway, s.routes, s.dns, s.post_up, s.post_down, s.interface) == (None, (), (), (), (), None)


def test_issue_command_line_values() -> None:
    # tungo://:0?name=tungo&net=192.168.123.1/24&mtu=1420&dns=1.1.1.1&route=10.0.0.0/8 (all strings).
    s = parse(name="tun7", net="192.168.123.1/24", mtu="1420", dns="1.1.1.1", route="10.0.0.0/8")
    assert s.name == "tun7"
    assert s.dns == (IPv4Address("1.1.1.1"),)
    assert s.routes == (TunRoute(IPv4Network("10.0.0.0/8")),)


def test_net_is_comma_separated_v4_and_v6() -> None:
    s = parse(net="10.9.0.1/24, fd00:7::1/64", mtu=1500)
    assert s.nets == (IPv4Interface("10.9.0.1/24"), IPv6Interface("fd00:7::1/64"))
    assert s.mtu == 1500


def test_tun_prefixed_aliases() -> None:
    s = parse(**{"tun.name": "t0", "tun.net": "10.1.0.1/16", "tun.mtu": 9000, "tun.route": "1.0.0.0/8"})
    assert (s.name, s.nets, s.mtu) == ("t0", (IPv4Interface("10.1.0.1/16"),), 9000)
    assert s.routes == (TunRoute(IPv4Network("1.0.0.0/8")),)


def test_keys_are_case_insensitive_like_gost() -> None:
    s = parse(handler={"UDPTIMEOUT": "1m"}, NAME="t1")
    assert (s.name, s.udp_timeout) == ("t1", 60.0)


def test_route_gets_gw_and_routes_entries_carry_their_own() -> None:
    s = parse(
        net="192.168.123.1/24,fd00::1/64",
        gw="192.168.123.2",
        route="10.0.0.0/8,2001:db8::/32",
        routes=["172.16.0.0/12 192.168.123.3", "100.64.0.0/10", "fd01::/16 fd00::9"],
    )
    assert s.gateway == IPv4Address("192.168.123.2")
    assert s.routes == (
        TunRoute(IPv4Network("10.0.0.0/8"), IPv4Address("192.168.123.2")),
        TunRoute(IPv6Network("2001:db8::/32")),  # gw is v4: it cannot apply to a v6 route
        TunRoute(IPv4Network("172.16.0.0/12"), IPv4Address("192.168.123.3")),
        TunRoute(IPv4Network("100.64.0.0/10"), IPv4Address("192.168.123.2")),
        TunRoute(IPv6Network("fd01::/16"), IPv6Address("fd00::9")),
    )
    assert str(s.routes[0]) == "10.0.0.0/8 via 192.168.123.2"


def test_routes_as_a_comma_string_from_a_url() -> None:
    s = parse(routes="0.0.0.0/0,10.0.0.0/8 192.168.123.9")
    assert s.routes == (
        TunRoute(IPv4Network("0.0.0.0/0")),
        TunRoute(IPv4Network("10.0.0.0/8"), IPv4Address("192.168.123.9")),
    )


def test_route_host_bits_are_masked_and_plain_address_is_a_host_route() -> None:
    s = parse(route="10.1.2.3/8,8.8.8.8")
    assert [r.dst for r in s.routes] == [IPv4Network("10.0.0.0/8"), IPv4Network("8.8.8.8/32")]


def test_same_route_twice_collapses() -> None:
    assert len(parse(route="10.0.0.0/8,10.0.0.0/8").routes) == 1


def test_handler_and_service_metadata() -> None:
    s = parse(
        handler={"udpTimeout": "1m30s"},
        service={"postUp": ["ip link show", "  ", "true"], "postDown": "echo down, really"},
    )
    assert s.udp_timeout == 90.0
    assert s.post_up == ("ip link show", "true")
    assert s.post_down == ("echo down, really",)


def test_from_service_reads_all_three_places_and_interface() -> None:
    service = Service(
        name="svc",
        addr=":0",
        handler=Plugin("tungo", metadata=Metadata({"tungo.udpTimeout": "5s"})),
        listener=Plugin("tungo", metadata=Metadata({"net": "10.7.0.1/24"})),
        metadata=Metadata({"postUp": ["true"], "interface": "eth0"}),
    )
    s = TunSettings.from_service(service)
    assert (s.nets, s.udp_timeout, s.post_up, s.interface) == (
        (IPv4Interface("10.7.0.1/24"),),
        5.0,
        ("true",),
        "eth0",
    )
    explicit = Service(
        "s", ":0", service.handler, service.listener, interface="eth1", metadata=service.metadata
    )
    assert TunSettings.from_service(explicit).interface == "eth1"


def test_mtu_zero_means_default_as_in_gost() -> None:
    assert parse(mtu=0).mtu == 1420


@pytest.mark.parametrize(
    ("listener", "handler", "service", "needle"),
    [
        ({"net": "192.168.123.1"}, {}, {}, "net '192.168.123.1': expected an address with a prefix"),
        ({"net": "300.1.1.1/24"}, {}, {}, "net '300.1.1.1/24'"),
        ({"net": "10.0.0.1/33"}, {}, {}, "net '10.0.0.1/33'"),
        ({"net": "10.0.0.1/8,10.0.0.1/8"}, {}, {}, "listed twice"),
        ({"mtu": "big"}, {}, {}, "metadata 'mtu': expected an integer"),
        ({"mtu": -1}, {}, {}, "mtu -1: out of range"),
        ({"mtu": 70000}, {}, {}, "mtu 70000: out of range"),
        ({"mtu": 1000, "net": "fd00::1/64"}, {}, {}, "IPv6 needs at least 1280"),
        ({"route": "10.0.0.0/8,nope"}, {}, {}, "route 'nope': expected a CIDR"),
        ({"routes": ["10.0.0.0/8 192.168.123.2 extra"]}, {}, {}, "expected 'CIDR' or 'CIDR GATEWAY'"),
        ({"routes": ["10.0.0.0/8 gateway"]}, {}, {}, "routes gateway 'gateway': expected an IP address"),
        ({"routes": ["10.0.0.0/8 fd00::1"]}, {}, {}, "differ in IP family"),
        ({"routes": ["10.0.0.0/8 10.9.9.9"]}, {}, {}, "must be inside the TUN net (192.168.123.0/24)"),
        ({"gw": "1.2.3.4"}, {}, {}, "gw '1.2.3.4': the gateway must be inside the TUN net"),
        ({"gw": "nope"}, {}, {}, "gw 'nope': expected an IP address"),
        (
            {"routes": ["10.0.0.0/8 192.168.123.2", "10.0.0.0/8"]},
            {},
            {},
            "given twice with different gateways",
        ),
        ({"dns": "1.1.1.1,dns.google"}, {}, {}, "dns 'dns.google': expected an IP address"),
        ({"name": "a-very-long-interface-name"}, {}, {}, "name 'a-very-long-interface-name': not a valid"),
        ({"name": "tun/0"}, {}, {}, "not a valid interface name"),
        ({"name": "tun 0"}, {}, {}, "not a valid interface name"),
        ({"route": {"a": 1}}, {}, {}, "metadata 'route': expected a list"),
        ({}, {"udpTimeout": "soon"}, {}, "bad duration 'soon'"),
        ({}, {"udpTimeout": -3}, {}, "udpTimeout -3.0s: must be positive"),
        ({}, {}, {"postUp": 7}, "postUp: expected a list of command lines"),
        ({}, {}, {"postDown": ["ok", 3]}, "postDown: expected command lines as strings"),
    ],
)
def test_bad_values_give_one_clear_line(
    listener: dict[str, object], handler: dict[str, object], service: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse(handler, service, **listener)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_bad_interface() -> None:
    with pytest.raises(ConfigError, match="interface 'e/th0'"):
        parse_tun_settings(Metadata(), interface="e/th0")
    assert parse_tun_settings(Metadata(), interface="  ").interface is None


def test_settings_are_frozen_and_hashable() -> None:
    s = parse(route="10.0.0.0/8")
    with pytest.raises(AttributeError):
        s.mtu = 1  # type: ignore[misc]
    assert hash(s) == hash(parse(route="10.0.0.0/8"))


def test_exclude_is_tungo_own_listener_key() -> None:
    # As the operator renders a TunGateway's excludedCIDRs (listener metadata "exclude").
    s = parse(exclude="10.244.0.0/16,10.96.0.0/12, 169.254.20.10/32,10.96.0.0/12,fd00::/8")
    assert s.excluded == (
        IPv4Network("10.244.0.0/16"),
        IPv4Network("10.96.0.0/12"),
        IPv4Network("169.254.20.10/32"),
        IPv6Network("fd00::/8"),
    )
    with pytest.raises(ConfigError, match="tungo: exclude 'pods': expected a CIDR"):
        parse(exclude="pods")


def test_exclude_ports_is_tungo_own_listener_key() -> None:
    s = parse(excludePorts="5432, 8000-8100,53,5432, 9000 - 9001")
    assert s.excluded_ports == (
        PortRange(5432, 5432),
        PortRange(8000, 8100),
        PortRange(53, 53),
        PortRange(9000, 9001),
    )
    assert [str(r) for r in s.excluded_ports] == ["5432", "8000-8100", "53", "9000-9001"]
    assert parse().excluded_ports == ()


@pytest.mark.parametrize(
    "listener",
    [
        {"excludePorts": [5432, "1-65535"]},  # a YAML list, numbers included
        {"excludeports": "5432,1-65535"},  # keys are case-insensitive
        {"tun.excludePorts": "5432,1-65535"},  # GOST's prefix, as for every listener key
    ],
)
def test_exclude_ports_spellings(listener: dict[str, object]) -> None:
    assert parse(**listener).excluded_ports == (PortRange(5432, 5432), PortRange(1, 65535))


def test_exclude_ports_one_yaml_number() -> None:
    assert parse(excludePorts=5432).excluded_ports == (PortRange(5432, 5432),)


def test_exclude_ports_at_most_64_after_duplicates_collapse() -> None:
    ports = ",".join(str(p) for p in range(1000, 1000 + MAX_EXCLUDED_PORTS))
    assert len(parse(excludePorts=f"{ports},1000").excluded_ports) == MAX_EXCLUDED_PORTS
    with pytest.raises(ConfigError, match="tungo: excludePorts: 65 ports or ranges given, at most 64"):
        parse(excludePorts=f"{ports},9")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("postgres", "excludePorts 'postgres': expected a port or a range such as 5432 or 8000-8100"),
        ("0", "excludePorts '0': ports are 1-65535"),
        ("65536", "excludePorts '65536': ports are 1-65535"),
        ("80-70000", "excludePorts '80-70000': ports are 1-65535"),
        ("8100-8000", "excludePorts '8100-8000': the range's first port is above its last"),
        ("80-", "excludePorts '80-': expected a port"),
        ("-80", "excludePorts '-80': expected a port"),
        ("1-2-3", "excludePorts '1-2-3': expected a port"),
        ("80:90", "excludePorts '80:90': expected a port"),
        ("²", "excludePorts '²': expected a port"),
        ("9" * 40, "expected a port"),
        (True, "metadata 'excludePorts': expected a list, got True"),
        ({"a": 1}, "metadata 'excludePorts': expected a list"),
    ],
)
def test_bad_exclude_ports_give_one_clear_line(value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(excludePorts=value)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def _config(**listener: object) -> Config:
    tun = Service("tun", ":0", Plugin("tungo"), Plugin("tungo", metadata=Metadata(listener)))
    socks = Service(
        "socks", ":1080", Plugin("socks5"), Plugin("tcp", metadata=Metadata({"excludePorts": "1"}))
    )
    return Config(services=(tun, socks))


def test_pod_overrides_add_exclude_ports_to_every_tun_listener() -> None:
    config = _config(route="0.0.0.0/0", **{"tun.excludePorts": "5432"})
    out = with_pod_overrides(config, exclude_ports=["8000-8100", "53"])
    tun, socks = out.services
    assert dict(tun.listener.metadata.original_items()) == {
        "route": "0.0.0.0/0",
        "excludePorts": "5432,8000-8100,53",
    }
    assert TunSettings.from_service(tun).excluded_ports == (
        PortRange(5432, 5432),
        PortRange(8000, 8100),
        PortRange(53, 53),
    )
    assert socks == config.services[1]  # not a TUN service: untouched
    # Checked where every listener value is.
    with pytest.raises(ConfigError, match="excludePorts '70000'"):
        TunSettings.from_service(with_pod_overrides(config, exclude_ports=["70000"]).services[0])


def test_pod_overrides_keep_their_other_behaviour() -> None:
    config = _config(route="10.0.0.0/8", exclude="10.1.0.0/16", excludePorts=[5432])
    assert with_pod_overrides(config) is config
    out = with_pod_overrides(config, exclude=["10.2.0.0/16"], routes=["172.16.0.0/12"])
    settings = TunSettings.from_service(out.services[0])
    assert [str(n) for n in settings.excluded] == ["10.1.0.0/16", "10.2.0.0/16"]
    assert [str(r) for r in settings.routes] == ["172.16.0.0/12"]
    assert settings.excluded_ports == (PortRange(5432, 5432),)  # no exclude_ports: left as written
    assert out.services[0].listener.metadata["excludePorts"] == [5432]
