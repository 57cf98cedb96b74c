"""-L/-F URLs into Config, checked against what GOST v3 builds for the same command line."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tungo_sidecar.config.model import (
    Auth,
    BypassConfig,
    ChainConfig,
    Config,
    Hop,
    Metadata,
    Node,
    Plugin,
    Selector,
    Service,
    TLSOptions,
)
from tungo_sidecar.config.url import build_config, parse_url, redact
from tungo_sidecar.config.yaml_io import dump, load
from tungo_sidecar.errors import ConfigError


def only_service(config: Config) -> Service:
    assert len(config.services) == 1
    return config.services[0]


def only_node(config: Config) -> tuple[Hop, Node]:
    (chain,) = config.chains
    (hop,) = chain.hops
    (node,) = hop.nodes
    return hop, node


# -- scheme defaults, as GOST resolves them ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "handler", "listener"),
    [
        ("relay+wss://:443", "relay", "wss"),
        ("relay+tls://:443", "relay", "tls"),
        ("relay+ws://:80", "relay", "ws"),
        ("relay://:8421", "relay", "tcp"),
        ("socks5://:1080", "socks5", "tcp"),
        ("socks://:1080", "socks", "tcp"),
        ("socks5+wss://:443", "socks5", "wss"),
        ("http://:8080", "http", "tcp"),
        ("https://:8443", "http", "tls"),  # GOST rewrites https to http+tls
        ("HTTP://:8080", "http", "tcp"),  # schemes are case-insensitive
        ("tungo://:0", "tungo", "tungo"),
    ],
)
def test_service_scheme_defaults(url: str, handler: str, listener: str) -> None:
    service = only_service(build_config([url]))
    assert (service.handler.type, service.listener.type) == (handler, listener)


@pytest.mark.parametrize(
    ("url", "connector", "dialer"),
    [
        ("relay+wss://h:443", "relay", "wss"),
        ("relay+tls://h:443", "relay", "tls"),
        ("relay://h:8421", "relay", "tcp"),
        ("socks5://h:1080", "socks5", "tcp"),
        ("socks://h:1080", "socks", "tcp"),
        ("http://h:8080", "http", "tcp"),
        ("https://h:443", "http", "tls"),
        ("wss://h:443", "http", "wss"),  # a bare transport: GOST's default connector is http
        ("tls://h:443", "http", "tls"),
        ("ws://h:80", "http", "ws"),
        ("h:8080", "http", "tcp"),  # no scheme at all: GOST's "auto" -> http+tcp
    ],
)
def test_node_scheme_defaults(url: str, connector: str, dialer: str) -> None:
    _, node = only_node(build_config([], [url]))
    assert (node.connector.type, node.dialer.type) == (connector, dialer)


# -- whole configs ------------------------------------------------------------------------------------


def test_gost_tungo_tutorial_command_line() -> None:
    """The command of GOST's TUN2SOCKS tutorial, field by field."""
    config = build_config(
        ["tungo://:0?name=tungo&net=192.168.123.1/24&mtu=1420&dns=1.1.1.1"],
        ["relay+wss://SERVER_IP:443?interface=eth0"],
    )
    tun_md = Metadata({"name": "tungo", "net": "192.168.123.1/24", "mtu": "1420", "dns": ["1.1.1.1"]})
    assert config == Config(
        services=(
            Service(
                name="service-0",
                addr=":0",
                handler=Plugin(type="tungo", metadata=tun_md),
                listener=Plugin(type="tungo", metadata=tun_md),
                chain="chain-0",
                metadata=tun_md,
            ),
        ),
        chains=(
            ChainConfig(
                name="chain-0",
                hops=(
                    Hop(
                        name="hop-0",
                        nodes=(
                            Node(
                                name="node-0",
                                addr="SERVER_IP:443",
                                connector=Plugin(type="relay"),
                                dialer=Plugin(type="wss", tls=TLSOptions(server_name="SERVER_IP")),
                            ),
                        ),
                        metadata=Metadata({"interface": "eth0"}),
                    ),
                ),
            ),
        ),
    )


TUTORIAL_YAML = """\
services:
  - name: service-0
    addr: :0
    handler:
      type: tungo
      chain: chain-0
      metadata:
        dns:
          - 1.1.1.1
        mtu: "1420"
        name: tungo
        net: 192.168.123.1/24
    listener:
      type: tungo
      metadata:
        dns:
          - 1.1.1.1
        mtu: "1420"
        name: tungo
        net: 192.168.123.1/24
    metadata:
      dns:
        - 1.1.1.1
      mtu: "1420"
      name: tungo
      net: 192.168.123.1/24
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
              tls:
                serverName: SERVER_IP
        metadata:
          interface: eth0
"""


def test_gost_tungo_tutorial_yaml_shape() -> None:
    """GOST -O yaml's shape: struct key order, sorted metadata, omitted empties, yaml.v3 indenting."""
    config = build_config(
        ["tungo://:0?name=tungo&net=192.168.123.1/24&mtu=1420&dns=1.1.1.1"],
        ["relay+wss://SERVER_IP:443?interface=eth0"],
    )
    assert dump(config) == TUTORIAL_YAML


def test_each_f_is_one_hop_in_order_and_services_use_the_chain() -> None:
    config = build_config(
        ["socks5://:1080", "http://127.0.0.1:8080"],
        ["relay+tls://first:443", "socks5://second:1080", "http://third:3128"],
    )
    (chain,) = config.chains
    assert chain.name == "chain-0"
    assert [h.name for h in chain.hops] == ["hop-0", "hop-1", "hop-2"]
    assert [h.nodes[0].addr for h in chain.hops] == ["first:443", "second:1080", "third:3128"]
    assert [h.nodes[0].name for h in chain.hops] == ["node-0"] * 3
    assert [(s.name, s.addr, s.chain) for s in config.services] == [
        ("service-0", ":1080", "chain-0"),
        ("service-1", "127.0.0.1:8080", "chain-0"),
    ]


def test_no_f_means_no_chain() -> None:
    config = build_config(["socks5://:1080"])
    assert config.chains == ()
    assert only_service(config).chain is None


def test_server_side_relay_wss_with_auth_and_certificate() -> None:
    config = build_config(["relay+wss://user:pass@:443?certFile=/c.pem&keyFile=/k.pem&path=/tunnel"])
    service = only_service(config)
    assert service.handler == Plugin(type="relay", auth=Auth("user", "pass"), metadata={"path": "/tunnel"})
    assert service.listener == Plugin(
        type="wss", tls=TLSOptions(cert_file="/c.pem", key_file="/k.pem"), metadata={"path": "/tunnel"}
    )
    assert service.metadata == {"path": "/tunnel"}


def test_listener_tls_needs_a_certificate_else_gost_default() -> None:
    service = only_service(build_config(["relay+tls://:443?keyFile=/k.pem&caFile=/ca.pem"]))
    assert service.listener.tls is None  # GOST drops the block without certFile...
    assert "keyFile" not in service.listener.metadata  # ...and the keys with it
    short = only_service(build_config(["relay+tls://:443?cert=/c&key=/k&ca=/ca"]))
    assert short.listener.tls == TLSOptions(cert_file="/c", key_file="/k", ca_file="/ca")


def test_node_tls_options_and_default_server_name() -> None:
    _, node = only_node(
        build_config([], ["relay+tls://10.0.0.1:443?secure=true&serverName=relay.example&caFile=/ca.pem"])
    )
    assert node.dialer.tls == TLSOptions(secure=True, server_name="relay.example", ca_file="/ca.pem")
    assert node.dialer.metadata == {} and node.connector.metadata == {} and node.metadata == {}
    hop, _ = only_node(build_config([], ["relay+tls://10.0.0.1:443?secure=true&serverName=relay.example"]))
    assert hop.metadata == {"secure": "true", "serverName": "relay.example"}  # GOST's hop keeps a copy
    _, v6 = only_node(build_config([], ["relay+wss://[2001:db8::1]:443?tls.secure=1"]))
    assert v6.dialer.tls == TLSOptions(secure=True, server_name="2001:db8::1")
    assert v6.addr == "[2001:db8::1]:443"


def test_userinfo_is_percent_decoded_and_auth_option_is_base64() -> None:
    _, node = only_node(build_config([], ["relay+wss://us%3Aer:p%40ss%2F@h:443"]))
    assert node.connector.auth == Auth("us:er", "p@ss/")
    token = base64.b64encode(b"alice:s3cret").decode()
    _, node = only_node(build_config([], [f"socks5://h:1080?auth={token}"]))
    assert node.connector.auth == Auth("alice", "s3cret")
    raw = base64.urlsafe_b64encode(b"bob:x?y").decode().rstrip("=")
    service = only_service(build_config([f"http://:8080?auth={raw}"]))
    assert service.handler.auth == Auth("bob", "x?y")
    assert "auth" not in service.handler.metadata
    # the user info wins over auth= (GOST reads auth= only without user info)
    _, node = only_node(build_config([], [f"socks5://carol:pw@h:1080?auth={token}"]))
    assert node.connector.auth == Auth("carol", "pw")
    _, node = only_node(build_config([], ["socks5://dave@h:1080"]))
    assert node.connector.auth == Auth("dave", "")


def test_query_keys_go_to_every_metadata_block_and_prefixes_to_one() -> None:
    config = build_config(
        ["relay+ws://:80?keepalive=true&handler.readTimeout=5s&listener.backlog=64&service.x=1"],
        ["relay+ws://h:80?host=cdn.example&dialer.header=a&connector.nodelay=true&node.y=2&hop.z=3"],
    )
    service = only_service(config)
    assert service.handler.metadata == {"keepalive": "true", "readTimeout": "5s"}
    assert service.listener.metadata == {"keepalive": "true", "backlog": "64"}
    assert service.metadata == {"keepalive": "true", "x": "1"}
    hop, node = only_node(config)
    assert hop.metadata == {"host": "cdn.example", "z": "3"}
    assert node.metadata == {"host": "cdn.example", "y": "2"}
    assert node.connector.metadata == {"host": "cdn.example", "nodelay": "true"}
    assert node.dialer.metadata == {"host": "cdn.example", "header": "a"}


def test_metadata_keeps_spelling_for_output_and_first_repeated_value() -> None:
    service = only_service(build_config(["tungo://:0?udpTimeout=30s&sniffing=true&mtu=1420&mtu=9000"]))
    assert service.handler.metadata.get_duration("udptimeout") == 30.0
    assert ("udpTimeout", "30s") in service.handler.metadata.original_items()
    assert service.handler.metadata["mtu"] == "1420"


def test_interface_and_so_mark_go_to_the_hop_and_service() -> None:
    config = build_config(
        ["tungo://:0?interface=eth0&so_mark=255"], ["relay+wss://h:443?interface=eth1&so_mark=100"]
    )
    service = only_service(config)
    assert service.metadata == {"interface": "eth0", "so_mark": 255}
    assert "interface" not in service.handler.metadata and "so_mark" not in service.listener.metadata
    hop, node = only_node(config)
    assert hop.metadata == {"interface": "eth1", "so_mark": 100}
    assert node.metadata == {} and node.dialer.metadata == {}


def test_bypass_on_hop_and_service_with_whitelist_and_numbering() -> None:
    config = build_config(
        ["tungo://:0?bypass=~*.example.com,10.0.0.0/8"],
        ["relay+wss://a:443?bypass=192.168.0.0/16", "relay+wss://b:443", "socks5://c:1080?bypass=x.test"],
    )
    assert config.bypasses == (
        BypassConfig(name="bypass-0", matchers=("192.168.0.0/16",)),
        BypassConfig(name="bypass-1", matchers=("x.test",)),
        BypassConfig(name="bypass-2", matchers=("*.example.com", "10.0.0.0/8"), reverse=True),
    )
    hops = config.chains[0].hops
    assert [h.bypasses for h in hops] == [("bypass-0",), (), ("bypass-1",)]
    assert "bypass" not in hops[0].metadata and "bypass" not in hops[0].nodes[0].metadata
    service = only_service(config)
    assert service.bypasses == ("bypass-2",)
    # GOST removes it from the handler's options only
    assert "bypass" not in service.handler.metadata
    assert service.listener.metadata["bypass"] == "~*.example.com,10.0.0.0/8"


def test_selector_keys_and_gost_defaults() -> None:
    hop, _ = only_node(build_config([], ["relay+wss://h:443?strategy=fifo"]))
    assert hop.selector == Selector(strategy="fifo", max_fails=1, fail_timeout=30.0)
    assert "strategy" not in hop.metadata
    hop, _ = only_node(build_config([], ["relay+wss://h:443?max_fails=3&failTimeout=1m30s"]))
    assert hop.selector == Selector(strategy="round", max_fails=3, fail_timeout=90.0)
    hop, _ = only_node(build_config([], ["relay+wss://h:443"]))
    assert hop.selector is None


def test_several_hosts_in_one_f_make_one_hop_of_several_nodes() -> None:
    config = build_config([], ["relay+wss://a.example:443,b.example:8443?strategy=rand"])
    (hop,) = config.chains[0].hops
    assert [(n.name, n.addr, n.dialer.tls) for n in hop.nodes] == [
        ("node-0", "a.example:443", TLSOptions(server_name="a.example")),
        ("node-1", "b.example:8443", TLSOptions(server_name="b.example")),
    ]
    assert hop.selector is not None and hop.selector.strategy == "rand"


def test_websocket_path_from_the_url_and_from_the_query() -> None:
    _, node = only_node(build_config([], ["relay+wss://h:443/tunnel"]))
    assert node.dialer.metadata == {"path": "/tunnel"}
    assert node.connector.metadata == {}
    _, node = only_node(build_config([], ["relay+wss://h:443/ignored?path=/q"]))
    assert node.dialer.metadata == {"path": "/q"}
    service = only_service(build_config(["relay+ws://:8080/ws"]))
    assert service.listener.metadata == {"path": "/ws"}
    assert service.handler.metadata == {}
    # a bare "/" is no path at all
    _, node = only_node(build_config([], ["http://h:8080/"]))
    assert node.dialer.metadata == {}


def test_dns_becomes_a_list_as_gost_does() -> None:
    service = only_service(build_config(["tungo://:0?dns=1.1.1.1,8.8.8.8"]))
    assert service.listener.metadata["dns"] == ["1.1.1.1", "8.8.8.8"]


def test_port_range_makes_one_service_per_port() -> None:
    config = build_config(["socks5://127.0.0.1:1080-1082", "http://:8080"])
    assert [(s.name, s.addr) for s in config.services] == [
        ("service-0", "127.0.0.1:1080"),
        ("service-1", "127.0.0.1:1081"),
        ("service-2", "127.0.0.1:1082"),
        ("service-3", ":8080"),
    ]


def test_tungo_without_address_and_empty_l_values_skipped() -> None:
    config = build_config(["", "tungo://?net=10.1.0.1/24"])
    service = only_service(config)
    assert service.addr == "" and service.name == "service-0"


# -- bad input: one line naming the flag, the URL and the part -----------------------------------------


@pytest.mark.parametrize(
    ("flag", "url", "message"),
    [
        ("-F", "relay+wsx://h:1", '-F "relay+wsx://h:1": unknown dialer "wsx" (known: tcp, tls, ws, wss)'),
        ("-F", "relax+wss://h:1", 'unknown connector "relax" (known: http, relay, socks, socks5)'),
        ("-F", "ss://h:1", 'unknown scheme "ss" (connectors: http, relay, socks, socks5; dialers: tcp'),
        ("-F", "a+b+c://h:1", 'bad scheme "a+b+c" (use connector+dialer)'),
        ("-F", "relay+://h:1", 'bad scheme "relay+" (use connector+dialer)'),
        ("-F", "1relay://h:1", 'bad scheme "1relay"'),
        ("-F", "relay+wss://h", 'address "h" has no port'),
        ("-F", "relay+wss://h:0", 'bad port "0" in "h:0" (1-65535)'),
        ("-F", "relay+wss://h:65536", 'bad port "65536" in "h:65536" (0-65535)'),
        ("-F", "relay+wss://h:https", 'bad port "https"'),
        ("-F", "relay+wss://:443", 'address ":443" has no host'),
        ("-F", "relay+wss://", "no node address (use host:port)"),
        ("-F", "relay+wss://bad_host!:443", 'bad host "bad_host!"'),
        ("-F", "relay+wss://a b:443", 'bad host "a b:443"'),
        ("-F", "relay+wss://2001:db8::1:443", "write IPv6 addresses in brackets"),
        ("-F", "relay+wss://[::1:443", 'bad address "[::1:443"'),
        ("-F", "relay+tcp://h:1/x", 'a URL path ("/x") is only for ws/wss (dialer: it means nothing)'),
        ("-F", "relay://h:1?auth=%%%", 'option "auth": "%%%" is not base64 of user:pass'),
        ("-F", "relay://h:1?so_mark=ten", 'option "so_mark": expected an integer, got "ten"'),
        ("-F", "relay://h:1?secure=maybe", 'option "secure": expected true or false, got "maybe"'),
        ("-F", "relay://h:1?tls.secure=2", 'option "tls.secure": expected true or false, got "2"'),
        ("-F", "relay://h:1?failTimeout=soon", "bad duration 'soon'"),
        ("-F", "relay://h:1?strategy=best", 'unknown selector strategy "best"'),
        ("-F", "relay://h:1?resolver=1.1.1.1", 'option "resolver" is not supported by tungo'),
        ("-F", "", '-F "": empty URL'),
        ("-L", "relay+wsx://:1", 'unknown listener "wsx" (known: dns, tcp, tls, tungo, ws, wss)'),
        ("-L", "rely+wss://:1", 'unknown handler "rely"'),
        (
            "-L",
            "wss://:443",
            'no handler named, and GOST\'s default handler "auto" is not supported; name one, '
            "e.g. relay+wss://...",
        ),
        ("-L", ":8080", "e.g. socks5://..."),
        ("-L", "kcp://:1", 'unknown scheme "kcp" (handlers: dns, http, relay, socks, socks5, tungo; listen'),
        ("-L", "socks5://:99999", 'bad port "99999" in ":99999" (0-65535)'),
        ("-L", "socks5://:-1", 'bad port ""'),
        ("-L", "socks5://", "no listen address (use [host]:port, e.g. :8080)"),
        ("-L", "socks5://:2000-1000", 'bad port range "2000-1000" (low-high, at most 1024 ports)'),
        ("-L", "socks5://:1-5000", 'bad port range "1-5000"'),
        ("-L", "socks5://ex..ample:1", 'bad host "ex..ample"'),
        ("-L", "relay+tls://:443/target:80", "(listener: port-forward targets are not supported)"),
        ("-L", "tungo://tun0", 'bad address "tun0" (use :0 or leave it empty for tungo)'),
        ("-L", "socks5://:1?admission=10.0.0.0/8", 'option "admission" is not supported by tungo'),
        ("-L", "socks5://:1?limiter.in=1MB", 'option "limiter.in" is not supported by tungo'),
        ("-L", "socks5://:1?retries=3", 'option "retries" is not supported by tungo'),
        ("-L", "relay+tungo://:0", 'handler "relay" and listener "tungo" do not pair'),
        ("-L", "tungo+tcp://:0", 'handler "tungo" and listener "tcp" do not pair'),
        ("-L", "tungo://u:p@:0", 'handler "tungo" takes no auth'),
    ],
)
def test_bad_urls_fail_with_one_clear_line(flag: str, url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config([url] if flag == "-L" else [], [url] if flag == "-F" else [])
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    if "do not pair" not in text and "takes no auth" not in text:
        assert text.startswith(f'{flag} "')


def test_error_messages_hide_passwords() -> None:
    with pytest.raises(ConfigError) as info:
        build_config([], ["relay+wsx://alice:hunter2@h:1"])
    assert "hunter2" not in str(info.value)
    assert '-F "relay+wsx://alice:***@h:1"' in str(info.value)


def test_redact_leaves_urls_without_password_alone() -> None:
    assert redact("relay+wss://h:443/ws?x=a@b") == "relay+wss://h:443/ws?x=a@b"
    assert redact("socks5://u@h:1") == "socks5://u@h:1"
    assert redact("socks5://u:p@h:1?q=1") == "socks5://u:***@h:1?q=1"


def test_parse_url_parts() -> None:
    url = parse_url("  Relay+WSS://u%20x:p%3Aw@[::1]:443/a%20b?x=1&y=&z&x=2#frag ")
    assert url.scheme == "relay+wss"
    assert url.userinfo == ("u x", "p:w")
    assert url.host == "[::1]:443"
    assert url.path == "/a b"
    assert url.query == (("x", "1"), ("y", ""), ("z", ""), ("x", "2"))
    assert parse_url(":8080").scheme == "auto"
    assert parse_url("https://h:1").scheme == "http+tls"


# -- fuzz: any text is either a config or one ConfigError line ------------------------------------------

URL_ALPHABET = "relaysockhtpwun5+:/?&=@[]%.,~-_0123456789 \t#"


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=URL_ALPHABET, max_size=60), as_node=st.booleans())
def test_fuzz_any_text_is_a_config_or_one_config_error(text: str, as_node: bool) -> None:
    try:
        config = build_config([] if as_node else [text], [text] if as_node else [])
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert load(dump(config)) == config


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(["relay+wss", "relay+tls", "socks5", "http", "relay+ws", "socks+tcp"]),
    user=st.text(max_size=8),
    password=st.text(max_size=8),
    value=st.text(max_size=12),
)
def test_fuzz_quoted_credentials_and_values_survive(
    scheme: str, user: str, password: str, value: str
) -> None:
    from urllib.parse import quote as q

    text = f"{scheme}://{q(user, safe='')}:{q(password, safe='')}@h.example:443?custom={q(value, safe='')}"
    _, node = only_node(build_config([], [text]))
    assert node.connector.auth == Auth(user, password)
    assert node.dialer.metadata["custom"] == value
    assert load(dump(build_config([], [text]))) == build_config([], [text])
