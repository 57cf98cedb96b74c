"""chain.route: the pure per-flow decision with GOST's bypass scopes (service refuses, hop ends the route,
node leaves the candidates), the documented this-link exclusions, and what the chain is asked for."""

from __future__ import annotations

from typing import Any

import pytest

from tungo_sidecar.app.bypasses import compile_all, policy_for
from tungo_sidecar.chain.route import Decision, Flow, Policy, Route
from tungo_sidecar.config.model import Config
from tungo_sidecar.config.url import build_config
from tungo_sidecar.config.yaml_io import from_data
from tungo_sidecar.proto.address import Address, Network

TUN = "tungo://:0?net=192.168.123.1/24"
SRC = Address("192.168.123.1", 40000)


def _flow(dst: str, port: int = 443, *, host: str | None = None, sniffed: bool = False) -> Flow:
    return Flow(Network.TCP, SRC, Address(dst, port), host, sniffed)


def _decide(config: Config, flow: Flow) -> Decision:
    return policy_for(config.services[0], config, compile_all(config)).decide(flow)


def _yaml(
    hops: list[dict[str, Any]], bypasses: list[dict[str, Any]], service_bypass: str | None = None
) -> Config:
    service: dict[str, Any] = {
        "name": "tun",
        "addr": ":0",
        "handler": {"type": "tungo", "chain": "c"},
        "listener": {"type": "tungo"},
    }
    if service_bypass:
        service["bypass"] = service_bypass
    return from_data({"services": [service], "chains": [{"name": "c", "hops": hops}], "bypasses": bypasses})


def _node(name: str, bypass: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"name": name, "addr": f"{name}.relay.test:443", "connector": {"type": "relay"}}
    node["dialer"] = {"type": "tcp"}
    if bypass:
        node["bypass"] = bypass
    return node


@pytest.mark.parametrize(
    "dst", ["93.184.216.34", "10.1.2.3", "2001:db8::1", "fd00::5", "192.168.123.7", "example.com"]
)
def test_ordinary_destinations_go_through_the_whole_chain(dst: str) -> None:
    config = build_config([TUN], ["relay://198.18.0.9:8421", "relay://198.18.0.10:8421"])
    policy = Policy(config.chains[0])
    for network in Network:
        decision = policy.decide(Flow(network, SRC, Address(dst, 443)))
        assert decision.route is Route.CHAIN
        assert [step.hop.name for step in decision.path] == ["hop-0", "hop-1"]
        assert [len(step.nodes) for step in decision.path] == [1, 1]


@pytest.mark.parametrize(
    "dst",
    [
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "224.0.0.251",
        "ff02::fb",
        "0.0.0.0",
        "::",
        "255.255.255.255",
    ],
)
def test_this_link_destinations_are_direct_from_the_tun_only(dst: str) -> None:
    config = build_config([TUN], ["relay://198.18.0.9:8421"])
    flow = Flow(Network.UDP, SRC, Address(dst, 53))
    decision = Policy(config.chains[0], this_link_direct=True).decide(flow)
    assert decision == Decision(Route.DIRECT, reason="an address of this host's own link")
    assert _decide(config, flow) == decision  # what app.bypasses builds for a tungo service
    # A proxy client asking for 127.0.0.1 means the far end's loopback: GOST sends it through the chain.
    proxied = build_config(["socks5://:1080"], ["relay://198.18.0.9:8421"])
    assert _decide(proxied, flow).route is Route.CHAIN


def test_without_a_chain_everything_is_direct() -> None:
    assert Policy(None).decide(_flow("10.1.2.3")).route is Route.DIRECT


def test_seed_command_first_hop_bypass_sends_the_name_direct_and_the_rest_through_the_chain() -> None:
    config = build_config(
        ["tungo://:0?name=tungo&net=192.168.123.1/24&mtu=1420&interface=eth0&sniffing=true"],
        ["relay+wss://198.18.0.9:443?interface=eth0&bypass=example.com"],
    )
    direct = _decide(config, _flow("93.184.216.34", host="example.com", sniffed=True))
    assert direct.route is Route.DIRECT
    assert "hop 'hop-0' bypass 'bypass-0': matched 'example.com'" in direct.reason
    # Exact name only (GOST: "example.com" is not ".example.com"), and an IP alone matches no name.
    assert _decide(config, _flow("93.184.216.34", host="www.example.com", sniffed=True)).route is Route.CHAIN
    assert _decide(config, _flow("93.184.216.34")).route is Route.CHAIN


def test_a_later_hop_bypass_ends_the_route_at_the_previous_hop() -> None:
    config = build_config([TUN], ["relay://198.18.0.9:8421", "relay://198.18.0.10:8421?bypass=.corp.test"])
    decision = _decide(config, _flow("10.9.9.9", host="git.corp.test"))
    assert decision.route is Route.CHAIN
    assert [step.hop.name for step in decision.path] == ["hop-0"]
    assert decision.reason.startswith("1 of 2 hops: hop 'hop-1' bypass")
    assert len(_decide(config, _flow("10.9.9.9", host="git.other.test")).path) == 2


def test_service_bypass_refuses_before_any_exclusion() -> None:
    config = build_config([TUN + "&bypass=10.0.0.0/8,127.0.0.0/8"], ["relay://198.18.0.9:8421"])
    # (The service bypass is checked before the TUN's this-link exclusion: 127.0.0.1 is refused.)
    refused = _decide(config, _flow("10.1.2.3"))
    assert (
        refused.route is Route.REFUSE and "service bypass 'bypass-0': matched '10.0.0.0/8'" in refused.reason
    )
    assert _decide(config, _flow("127.0.0.1")).route is Route.REFUSE
    assert _decide(config, _flow("11.1.2.3")).route is Route.CHAIN


def test_whitelist_hop_bypass_tunnels_only_what_it_lists_and_sees_the_sniffed_name() -> None:
    # ``~`` is GOST's whitelist mark: the listed names take the chain, everything else goes direct.
    config = build_config([TUN], ["relay://198.18.0.9:8421?bypass=~.tunnel.test"])
    # go-gost/gost#899: the whitelist must match the sniffed name, not only the address.
    assert _decide(config, _flow("203.0.113.7", host="api.tunnel.test", sniffed=True)).route is Route.CHAIN
    direct = _decide(config, _flow("203.0.113.7"))
    assert direct.route is Route.DIRECT and "no whitelist entry matched" in direct.reason


def test_node_bypass_leaves_the_node_out_and_an_empty_hop_ends_the_route() -> None:
    config = _yaml(
        [{"name": "h", "nodes": [_node("a", "only-a-off"), _node("b")]}],
        [{"name": "only-a-off", "matchers": ["*.video.test"]}],
    )
    [step] = _decide(config, _flow("10.0.0.1", host="cdn.video.test")).path
    assert [n.name for n in step.nodes] == ["b"]
    [step] = _decide(config, _flow("10.0.0.1", host="cdn.other.test")).path
    assert [n.name for n in step.nodes] == ["a", "b"]
    both = _yaml(
        [{"name": "h", "nodes": [_node("a", "off"), _node("b", "off")]}],
        [{"name": "off", "matchers": ["10.0.0.0/8"]}],
    )
    decision = _decide(both, _flow("10.0.0.1"))
    assert decision == Decision(Route.DIRECT, reason="hop 'h': every node's bypass matched")


def test_address_rules_see_the_address_of_a_named_flow_and_ports_count() -> None:
    config = _yaml(
        [{"name": "h", "bypass": "b", "nodes": [_node("a")]}],
        [{"name": "b", "matchers": ["198.51.100.0/24", "*.test:8080"]}],
    )
    assert _decide(config, _flow("198.51.100.9", host="x.example", sniffed=True)).route is Route.DIRECT
    assert _decide(config, _flow("10.0.0.1", 8080, host="a.test")).route is Route.DIRECT
    assert _decide(config, _flow("10.0.0.1", 443, host="a.test")).route is Route.CHAIN


def test_the_chain_is_asked_for_the_sniffed_name_only() -> None:
    sniffed = _flow("93.184.216.34", 8443, host="example.com", sniffed=True)
    assert sniffed.chain_target == Address("example.com", 8443)
    learnt = _flow("93.184.216.34", 8443, host="example.com")  # from DNS: the address is what the app chose
    assert learnt.chain_target == Address("93.184.216.34", 8443)
    assert str(sniffed) == "tcp 192.168.123.1:40000 -> 93.184.216.34:8443 (example.com)"


def test_a_proxy_client_naming_a_domain_is_matched_by_name() -> None:
    config = build_config(["socks5://:1080"], ["relay://198.18.0.9:8421?bypass=.example.com"])
    flow = Flow(Network.TCP, None, Address("www.example.com", 443))
    assert _decide(config, flow).route is Route.DIRECT


def test_flow_is_frozen() -> None:
    flow = _flow("10.1.2.3", host="example.com")
    with pytest.raises(AttributeError):
        flow.host = "other"  # type: ignore[misc]
