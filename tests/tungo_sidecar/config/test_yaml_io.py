"""GOST v3 YAML/JSON files into Config and back, in the shape `gost -O yaml|json` prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tungo_sidecar.config.model import Auth, BypassConfig, Config, Metadata, Plugin, Selector, TLSOptions
from tungo_sidecar.config.url import build_config
from tungo_sidecar.config.yaml_io import dump, from_data, go_duration, load, merge, to_data
from tungo_sidecar.errors import ConfigError

# GOST's TUN2SOCKS tutorial file (hand-written style: sequences not indented, comments, postUp list).
TUTORIAL = """\
services:
- name: service-0
  addr: :0
  handler:
    type: tungo
    chain: chain-0
    metadata:
      udpTimeout: 30s   # UDP session timeout
  listener:
    type: tungo
    metadata:
      name: tungo    # default name is tungo
      net: 192.168.123.1/24
      mtu: 1420      # default mtu is 1420
      dns: 1.1.1.1   # dns server
  metadata:
    postUp:
    - ip route delete default
    - ip route add default via 192.168.1.1 dev eth0 metric 10
    - ip route add default dev tungo metric 1

chains:
- name: chain-0
  hops:
  - name: hop-0
    nodes:
    - name: node-0
      addr: SERVER_IP:443
      connector:
        type: relay
      dialer:
        type: wss
      metadata:
        interface: eth0
"""

COMMAND_LINES = [
    (["tungo://:0?name=tungo&net=192.168.123.1/24&mtu=1420&dns=1.1.1.1"], ["relay+wss://SERVER_IP:443"]),
    (["relay+wss://user:p%40ss@:443?certFile=/c.pem&keyFile=/k.pem&path=/tunnel"], []),
    (["socks5://:1080-1081?bypass=~10.0.0.0/8,*.local", "http://127.0.0.1:8080?so_mark=5"], []),
    (
        ["tungo://?interface=eth0&udpTimeout=1m&sniffing=true"],
        [
            "relay+tls://a:443,b:443?strategy=fifo&maxFails=3&failTimeout=1.5s&secure=true&caFile=/ca",
            "socks5://u:p@c:1080?bypass=192.168.0.0/16&so_mark=9&connector.x=1&dialer.y=2&node.z=3&hop.w=4",
            "http://d:3128?auth=dXNlcjpwYXNz&interface=eth1",
        ],
    ),
    (["relay+ws://:80/custom?keepalive=true&handler.readTimeout=5s&listener.backlog=64&dns=a,b"], []),
]


@pytest.mark.parametrize(("services", "nodes"), COMMAND_LINES)
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_printed_command_line_loads_back_equal(services: list[str], nodes: list[str], fmt: str) -> None:
    config = build_config(services, nodes)
    text = dump(config, fmt)
    assert load(text) == config
    assert dump(load(text), fmt) == text  # stable


def test_gost_tutorial_file() -> None:
    config = load(TUTORIAL)
    (service,) = config.services
    assert service.name == "service-0" and service.addr == ":0" and service.chain == "chain-0"
    assert service.handler == Plugin(type="tungo", metadata={"udpTimeout": "30s"})
    assert service.listener.metadata == {
        "name": "tungo",
        "net": "192.168.123.1/24",
        "mtu": 1420,
        "dns": "1.1.1.1",
    }
    assert service.metadata.get_list("postUp") == (
        "ip route delete default",
        "ip route add default via 192.168.1.1 dev eth0 metric 10",
        "ip route add default dev tungo metric 1",
    )
    node = config.chains[0].hops[0].nodes[0]
    assert (node.connector.type, node.dialer.type, node.dialer.tls) == ("relay", "wss", None)
    assert node.metadata == {"interface": "eth0"}
    # printed back, the lists and the spelling of keys stay as written
    again = yaml.safe_load(dump(config))
    assert again["services"][0]["metadata"]["postUp"][2] == "ip route add default dev tungo metric 1"
    assert again["services"][0]["handler"]["metadata"] == {"udpTimeout": "30s"}
    assert load(dump(config)) == config


def test_keys_match_case_insensitively_as_in_gost() -> None:
    config = load(
        """
        Services:
        - Name: s
          Addr: ":1080"
          Handler: {Type: socks5, Chain: c, Auth: {UserName: u, PassWord: p}}
        chains:
        - name: c
          hops:
          - name: h
            nodes:
            - {name: n, addr: "h:1", dialer: {type: tls, TLS: {ServerName: x, SECURE: true}}}
        """
    )
    service = config.services[0]
    assert service.handler.auth == Auth("u", "p")
    assert service.chain == "c"
    assert config.chains[0].hops[0].nodes[0].dialer.tls == TLSOptions(secure=True, server_name="x")


def test_gost_defaults_for_missing_types_and_names() -> None:
    config = load(
        """
        services: [{name: s, addr: ":1", handler: {type: http}}]
        chains: [{name: c, hops: [{nodes: [{addr: "h:1"}, {addr: "h:2"}]}]}]
        """
    )
    assert config.services[0].listener == Plugin(type="tcp")
    hop = config.chains[0].hops[0]
    assert hop.name == "hop-0"
    assert [(n.name, n.connector.type, n.dialer.type) for n in hop.nodes] == [
        ("node-0", "http", "tcp"),
        ("node-1", "http", "tcp"),
    ]


def test_several_bypasses_are_one_group_in_order_and_print_back_as_written() -> None:
    config = load(
        """
        services: [{name: s, addr: ':1', handler: {type: http}, bypass: a, bypasses: [b, a]}]
        bypasses: [{name: a, matchers: [x.test]}, {name: b, whitelist: true, file: {path: /etc/b.txt}}]
        """
    )
    assert config.services[0].bypasses == ("a", "b")
    assert config.bypasses[1].file == "/etc/b.txt" and config.bypasses[1].reverse
    data = to_data(config, "yaml")
    assert data["services"][0]["bypasses"] == ["a", "b"]
    assert data["bypasses"][1] == {"name": "b", "whitelist": True, "file": {"path": "/etc/b.txt"}}
    assert load(yaml.safe_dump(data)) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bypasses: [{name: b, file: {}}]", "bypasses[0].file.path: missing"),
        ("bypasses: [{name: b, file: {path: /x, type: redis}}]", "bypasses[0].file.type: unknown key"),
        ("bypasses: [{name: b, redis: {addr: 'h:1'}}]", "bypasses[0].redis: not supported"),
    ],
)
def test_bad_bypass_loaders(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(text)


def test_bypass_reverse_and_whitelist_mean_the_same() -> None:
    config = load(
        """
        bypasses:
        - {name: a, reverse: true, matchers: ["*.x"]}
        - {name: b, whitelist: true}
        - {name: c, matchers: [10.0.0.0/8]}
        """
    )
    assert config.bypasses == (
        BypassConfig("a", ("*.x",), reverse=True),
        BypassConfig("b", (), reverse=True),
        BypassConfig("c", ("10.0.0.0/8",)),
    )
    assert "whitelist: true" in dump(config) and "reverse" not in dump(config)


def test_selector_durations_and_deprecated_sockopts() -> None:
    config = load(
        """
        chains:
        - name: c
          hops:
          - name: h
            selector: {strategy: rand, maxFails: 2, failTimeout: 1m30s}
            sockopts: {mark: 7}
            interface: eth9
            nodes: [{name: n, addr: "h:1", bypasses: [b]}]
          - name: g
            selector: {failTimeout: 5000000000}
            nodes: [{name: n, addr: "h:1", metadata: {so_mark: 3}, sockopts: {mark: 4}}]
        bypasses: [{name: b}]
        """
    )
    h, g = config.chains[0].hops
    assert h.selector == Selector("rand", 2, 90.0)
    assert h.metadata == {"so_mark": 7} and h.interface == "eth9"
    assert h.nodes[0].bypasses == ("b",)
    assert g.selector == Selector("round", 1, 5.0)  # a bare number is a Go duration in nanoseconds
    assert g.nodes[0].metadata == {"so_mark": 3}  # metadata wins over the deprecated field
    assert to_data(config, "json")["chains"][0]["hops"][0]["selector"]["failTimeout"] == 90_000_000_000
    assert to_data(config, "yaml")["chains"][0]["hops"][0]["selector"]["failTimeout"] == "1m30s"


def test_json_input_and_output() -> None:
    config = build_config(["socks5://:1080?bypass=a<b&x=1"], ["relay+wss://h:443"])
    text = dump(config, "json")
    assert text.endswith("}\n") and '"services": [' in text
    assert "\\u003c" in text and "<" not in text  # encoding/json's HTML-safe escaping
    assert json.loads(text)["chains"][0]["hops"][0]["nodes"][0]["dialer"] == {
        "type": "wss",
        "tls": {"serverName": "h"},
    }
    assert load(text) == config
    assert load('{"services": []}') == Config()


def test_empty_file_is_an_empty_config_and_merge_appends() -> None:
    assert load("") == Config()
    assert load("# nothing\n") == Config()
    a = build_config(["socks5://:1"])
    b = load("bypasses: [{name: x}]")
    merged = merge(a, b)
    assert merged.services == a.services and merged.bypasses == b.bypasses
    assert dump(Config()) == "services: []\n"


def test_load_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "gost.yaml"
    path.write_text(TUTORIAL)
    assert load(path) == load(TUTORIAL)
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read: No such file or directory"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [{name: s, addr: 8080, handler: {type: socks5}}]")
    with pytest.raises(ConfigError, match=r"^.*bad\.yaml: services\[0\]\.addr: expected a string, got 8080$"):
        load(bad)


def test_top_level_sections_tungo_ignores_only_warn(caplog: pytest.LogCaptureFixture) -> None:
    config = load("log: {level: debug}\napi: {addr: ':18080'}\nservices: []")
    assert config == Config()
    assert "'log' is a GOST section tungo ignores" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services: [", "config: bad YAML at line 1, column 12: expected the node content"),
        ("a: b: c", "bad YAML at line 1, column 5: mapping values are not allowed here"),
        ('{"services": [}', "config: bad JSON at line 1, column 15: Expecting value"),
        ("- 1", "config: : expected a mapping, got [1]"),
        ("services: {name: s}", "config: services: expected a list, got a mapping"),
        ("services: [5]", "config: services[0]: expected a mapping, got 5"),
        ("services: [{addr: ':1'}]", "services[0].name: missing"),
        (
            "services: [{name: s, addr: ':1', handler: {type: 5}}]",
            "services[0].handler.type: expected a string",
        ),
        ("services: [{name: s, adr: ':1'}]", "services[0].adr: unknown key"),
        ("servics: []", "config: servics: unknown key"),
        ("resolvers: []", "config: resolvers: not supported by tungo"),
        ("tls: {certFile: x}", "config: tls: not supported by tungo"),
        ("services: [{name: s, addr: ':1', limiter: l}]", "services[0].limiter: not supported by tungo"),
        (
            "services: [{name: s, addr: ':1', handler: {type: http, retries: 3}}]",
            "handler.retries: not supported",
        ),
        (
            "services: [{name: s, addr: ':1', handler: {type: http, auth: {file: f}}}]",
            "auth.file: not supported",
        ),
        (
            "services: [{name: s, addr: ':1', handler: {type: http}, bypasses: [a, b]}]",
            'bypass "a" names no bypass',
        ),
        (
            "services: [{name: s, addr: ':1', metadata: {1: x}}]",
            "services[0].metadata: key 1 is not a string",
        ),
        (
            "services: [{name: s, addr: ':1', handler: {type: http, tls: {secure: yes please}}}]",
            "expected true",
        ),
        (
            "services: [{name: s, addr: ':1'}]",
            'service "s": handler "auto" (GOST\'s default) is not supported',
        ),
        (
            "services: [{name: s, addr: ':1', handler: {type: http, chain: nope}}]",
            'service "s": handler.chain "nope" names no chain',
        ),
        (
            "services: [{name: s, addr: ':1', handler: {type: http}, bypass: nope}]",
            'service "s": bypass "nope" names no bypass',
        ),
        (
            "services: [{name: s, addr: ':1', handler: {type: socks5}},"
            " {name: s, addr: ':2', handler: {type: http}}]",
            'service "s": name used twice',
        ),
        (
            "services: [{name: s, addr: ':99999', handler: {type: http}}]",
            'service "s": addr: bad port "99999"',
        ),
        ("services: [{name: s, addr: 'x', handler: {type: http}}]", 'addr: address "x" has no port'),
        (
            "services: [{name: s, addr: ':1', handler: {type: relay}, listener: {type: kcp}}]",
            'unknown listener "kcp"',
        ),
        ("chains: [{name: c, hops: []}]", 'chain "c": no hops'),
        ("chains: [{name: c, hops: [{name: h}]}]", 'chain "c" hop "h": no nodes'),
        ("chains: [{name: c, hops: [{name: h, nodes: [{name: n}]}]}]", "nodes[0].addr: missing"),
        (
            "chains: [{name: c, hops: [{name: h, nodes: [{name: n, addr: 'h:1', dialer: {type: quic}}]}]}]",
            'chain "c" hop "h" node "n": unknown dialer "quic" (known: tcp, tls, ws, wss)',
        ),
        (
            "chains: [{name: c, hops: [{name: h, nodes: [{name: n, addr: ':1'}]}]}]",
            'chain "c" hop "h" node "n": address ":1" has no host',
        ),
        (
            "chains: [{name: c, hops: [{name: h, selector: {strategy: best}, nodes: [{addr: 'h:1'}]}]}]",
            'hop "h": unknown selector strategy "best"',
        ),
        ("chains: [{name: c, hops: [{name: h, selector: {failTimeout: soon}, nodes: []}]}]", "bad duration"),
        ("bypasses: [{name: b, matchers: [1]}]", "bypasses[0].matchers[0]: expected a string, got 1"),
        ("bypasses: [{name: b}, {name: b}]", 'bypass "b": name used twice'),
    ],
)
def test_bad_files_fail_with_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (30, "30s"),
        (90, "1m30s"),
        (3600, "1h0m0s"),
        (3725.5, "1h2m5.5s"),
        (1.5, "1.5s"),
        (0.5, "500ms"),
        (0.0015, "1.5ms"),
        (0.000002, "2µs"),
        (0, "0s"),
        (-2, "-2s"),
    ],
)
def test_go_duration_strings(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_metadata_keys_print_in_yaml_v3_order() -> None:
    config = build_config(["tungo://:0?b=1&a=1&item10=1&item9=1&so_mark=2&soa=1&x.y=1&xY=1&B2=1"])
    keys = list(yaml.safe_load(dump(config))["services"][0]["listener"]["metadata"])
    assert keys == ["B2", "a", "b", "item9", "item10", "soa", "x.y", "xY"]  # digits compare as numbers
    json_keys = list(json.loads(dump(config, "json"))["services"][0]["listener"]["metadata"])
    assert json_keys == ["B2", "a", "b", "item10", "item9", "soa", "x.y", "xY"]  # encoding/json: bytes


def test_metadata_values_become_plain_json_values() -> None:
    config = load(
        "services: [{name: s, addr: ':1', handler: {type: socks5,"
        " metadata: {a: 2024-01-02, b: {1: x}, c: .inf}}}]"
    )
    assert config.services[0].handler.metadata == {"a": "2024-01-02", "b": {"1": "x"}, "c": "inf"}
    assert load(dump(config, "json")) == config == load(dump(config))


def test_metadata_with_nested_values_and_spelling_round_trips() -> None:
    config = load(
        """
        services:
        - name: s
          addr: ":1"
          handler: {type: tungo}
          listener:
            type: tungo
            metadata: {routes: [10.0.0.0/8, "0.0.0.0/0 192.168.123.2"], tun: {MTU: 1420, name: t}}
          metadata: {postDown: [ip route del default dev tungo], preUp: "echo hi"}
        """
    )
    assert load(dump(config)) == config
    assert "postDown:" in dump(config) and "MTU: 1420" in dump(config)
    assert config.services[0].metadata == Metadata(
        {"postdown": ["ip route del default dev tungo"], "preup": "echo hi"}
    )


OPERATOR_GOLDEN = Path(__file__).parents[2] / "tungo_operator" / "render" / "golden"


@pytest.mark.parametrize("name", ["minimal-config.yaml", "examples-config.yaml"])
def test_the_config_the_operator_renders_loads(name: str) -> None:
    """The sidecar must read what the operator writes into the config Secret."""
    # The golden files live in this repository: a missing one is a failure, not a skip.
    config = load(OPERATOR_GOLDEN / name)
    assert config.services and config.chains
    assert config.services[0].handler.type == "tungo"
    assert load(dump(config)) == config


# -- fuzz: any YAML data is either a config or one ConfigError line -------------------------------------

_KEYS = st.sampled_from(
    [
        "services",
        "chains",
        "bypasses",
        "name",
        "addr",
        "handler",
        "listener",
        "type",
        "chain",
        "hops",
        "nodes",
        "connector",
        "dialer",
        "tls",
        "auth",
        "metadata",
        "selector",
        "bypass",
        "matchers",
        "secure",
        "x",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.sampled_from(["relay", "wss", "h:1", ":0", "tungo", "c"]),
)
_DATA = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(_KEYS, inner, max_size=4),
        st.dictionaries(st.integers(0, 3), inner, max_size=2),
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(data=_DATA)
def test_fuzz_any_data_is_a_config_or_one_config_error(data: object) -> None:
    try:
        config = from_data(data)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert load(dump(config)) == config
