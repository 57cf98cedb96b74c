"""Known plugin types, address checks, and the questions callers ask of a Config."""

from __future__ import annotations

import pytest

from tungo_sidecar.config import validate as v
from tungo_sidecar.config.model import Hop, Metadata, Node, Plugin, TLSOptions
from tungo_sidecar.config.url import build_config
from tungo_sidecar.config.yaml_io import load
from tungo_sidecar.errors import ConfigError


def test_known_types_are_the_ones_tungo_promises() -> None:
    assert set(v.HANDLERS) == {"relay", "socks5", "socks", "http", "tungo", "dns"}
    assert set(v.LISTENERS) == {"tcp", "tls", "ws", "wss", "tungo", "dns"}
    assert set(v.CONNECTORS) == {"relay", "socks5", "socks", "http"}
    assert set(v.DIALERS) == {"tcp", "tls", "ws", "wss"}
    assert v.HANDLERS["socks"] == v.HANDLERS["socks5"] and v.CONNECTORS["socks"] == v.CONNECTORS["socks5"]
    # what each supports, as data the registries and validation read
    assert v.CONNECTORS["relay"].udp and not v.CONNECTORS["http"].udp
    assert v.DIALERS["wss"] == v.Capabilities(tls=True, websocket=True)
    assert v.LISTENERS["tungo"].tun and v.HANDLERS["tungo"].tun and not v.HANDLERS["tungo"].auth
    assert v.LISTENERS["dns"].dns and v.HANDLERS["dns"].dns and not v.HANDLERS["dns"].auth
    with pytest.raises(TypeError):
        v.HANDLERS["auto"] = v.Capabilities()  # type: ignore[index]


def test_capabilities_lookup_names_the_kind() -> None:
    assert v.capabilities("dialer", "tls").tls
    with pytest.raises(ConfigError, match=r'^unknown dialer "quic" \(known: tcp, tls, ws, wss\)$'):
        v.capabilities("dialer", "quic")


@pytest.mark.parametrize(
    "host", ["example.com", "a.b-c.example.", "localhost", "10.0.0.1", "2001:db8::1", "SERVER_IP", "x"]
)
def test_good_hosts(host: str) -> None:
    assert v.check_host(host) == host


@pytest.mark.parametrize(
    "host", ["ex..ample", "-", "a b", "a/b", "é.example", "999.1.1.1", "1.2.3", "a" * 64]
)
def test_bad_hosts(host: str) -> None:
    with pytest.raises(ConfigError, match="bad host"):
        v.check_host(host)


@pytest.mark.parametrize(
    ("addr", "parts"), [("h:1", ("h", "1")), (":8080", ("", "8080")), ("[::1]:53", ("::1", "53"))]
)
def test_split_host_port(addr: str, parts: tuple[str, str]) -> None:
    assert v.split_host_port(addr) == parts
    assert v.join_host_port(parts[0], int(parts[1])) == addr


def test_insecure_tls_nodes_lists_tls_speaking_nodes_without_verification() -> None:
    config = build_config(
        ["socks5://:1080"],
        [
            "relay+wss://a.example:443",  # GOST default: no verification
            "relay+tls://b.example:443?secure=true",  # verified
            "socks5://c.example:1080",  # plain tcp: nothing to verify
            "http+tls://d.example:443,e.example:443",
        ],
    )
    assert v.insecure_tls_nodes(config) == [
        "chain-0/hop-0/node-0 (a.example:443)",
        "chain-0/hop-3/node-0 (d.example:443)",
        "chain-0/hop-3/node-1 (e.example:443)",
    ]
    no_block = load(
        "chains: [{name: c, hops: [{name: h, nodes: [{name: n, addr: 'h:443', dialer: {type: wss}}]}]}]"
    )
    assert v.insecure_tls_nodes(no_block) == ["c/h/n (h:443)"]


def _node(metadata: dict[str, object] | None = None, interface: str | None = None) -> Node:
    return Node(
        name="n",
        addr="h:1",
        connector=Plugin(type="relay"),
        dialer=Plugin(type="tls", tls=TLSOptions()),
        interface=interface,
        metadata=Metadata(metadata),
    )


def test_node_socket_options_follow_gost_inheritance() -> None:
    hop = Hop(
        name="h", nodes=(), metadata=Metadata({"interface": "eth0", "so_mark": "100"}), interface="old0"
    )
    assert v.node_socket_options(hop, _node()) == v.SocketOptions("eth0", 100)
    assert v.node_socket_options(hop, _node(interface="eth1")) == v.SocketOptions("eth1", 100)
    assert v.node_socket_options(hop, _node({"interface": "eth2", "so_mark": 7}, "eth1")) == v.SocketOptions(
        "eth2", 7
    )
    bare = Hop(name="h", nodes=(), interface="old0")
    assert v.node_socket_options(bare, _node()) == v.SocketOptions("old0", 0)
    assert v.node_socket_options(Hop(name="h", nodes=()), _node()) == v.SocketOptions(None, 0)
    with pytest.raises(ConfigError, match="so_mark"):
        v.node_socket_options(Hop(name="h", nodes=(), metadata=Metadata({"so_mark": "x"})), _node())


def test_socket_options_from_a_command_line() -> None:
    config = build_config(
        ["tungo://:0?interface=eth0&so_mark=255"], ["relay+wss://h:443?interface=eth1&so_mark=9"]
    )
    (hop,) = config.chains[0].hops
    assert v.node_socket_options(hop, hop.nodes[0]) == v.SocketOptions("eth1", 9)
    assert v.service_socket_options(config.services[0]) == v.SocketOptions("eth0", 255)


def test_validate_returns_the_config_itself() -> None:
    config = build_config(["socks5://:1080"], check=False)
    assert v.validate(config) is config
