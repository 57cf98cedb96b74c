"""What the operator renders is what the sidecar reads: every rendered config goes through the
sidecar's own ``-C`` loader (``tungo_sidecar.config.yaml_io``) and TUN settings parser, and each
TunGateway/Chain field must arrive where the sidecar looks for it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tungo_operator.model.chain import parse_chain
from tungo_operator.model.errors import SpecError
from tungo_operator.model.exclusions import ClusterFacts, ServiceLookup, cluster_exclusions
from tungo_operator.model.gateway import parse_gateway
from tungo_operator.render.config import decode_secret, render_config
from tungo_sidecar.app import runner
from tungo_sidecar.app.bypasses import compile_all, policy_for
from tungo_sidecar.chain.route import Flow, Route
from tungo_sidecar.config import yaml_io
from tungo_sidecar.config.tun import TunSettings
from tungo_sidecar.config.validate import insecure_tls_nodes
from tungo_sidecar.proto.address import Address, Network
from tungo_sidecar.routing.plan import make_plan

ROOT = Path(__file__).resolve().parents[3]
CA = next(
    doc
    for doc in yaml.safe_load_all((ROOT / "examples" / "chain.yaml").read_text())
    if doc["metadata"]["name"] == "relay-ca"
)

FULL_GATEWAY: dict[str, Any] = {
    "metadata": {"name": "full", "namespace": "ns"},
    "spec": {
        "chainRef": {"name": "two-hops"},
        "tun": {
            "name": "tun7",
            "net": "10.99.0.1/24",
            "mtu": 9000,
            "dns": ["10.99.0.53"],
            "routes": ["0.0.0.0/0", "2001:db8::/32"],
            "gw": "10.99.0.2",
            "postUp": ["ip link show tun7"],
            "postDown": ["ip link show tun7"],
        },
        "handler": {"udpTimeout": "1m30s", "sniffing": {"enabled": True, "udp": True, "timeout": "500ms"}},
        "interface": "eth0",
        "bypass": {"matchers": ["*.corp.example", "192.0.2.0/24"], "reverse": True},
        "excludedCIDRs": ["10.96.0.0/12", "fd00:10::/64"],
    },
}
FULL_CHAIN: dict[str, Any] = {
    "metadata": {"name": "two-hops", "namespace": "ns"},
    "spec": {
        "hops": [
            {
                "name": "edge",
                "selector": {"strategy": "rand", "maxFails": 2, "failTimeout": "45s"},
                "bypass": {"matchers": ["intranet.example"]},
                "nodes": [
                    {
                        "name": "a",
                        "addr": "edge-a.example:443",
                        "connector": {
                            "type": "relay",
                            "auth": {"secretRef": {"name": "creds"}},
                            "metadata": {"nodelay": "true"},
                        },
                        "dialer": {
                            "type": "wss",
                            "tls": {"caSecretRef": {"name": "ca"}},
                            "ws": {"path": "/t", "host": "cdn.example"},
                        },
                    },
                    {
                        "name": "b",
                        "addr": "[2001:db8::7]:8443",
                        "connector": {"type": "relay"},
                        "dialer": {"type": "tls", "tls": {"secure": False, "serverName": "edge-b.example"}},
                    },
                ],
            },
            {
                "name": "exit",
                "nodes": [
                    {
                        "name": "s",
                        "addr": "exit.example:1080",
                        "connector": {
                            "type": "socks5",
                            "auth": {"secretRef": {"name": "socks"}, "usernameKey": "u", "passwordKey": "p"},
                        },
                        "dialer": {"type": "tcp"},
                    }
                ],
            },
        ]
    },
}
SECRETS = {
    "creds": {"username": b"relay-user", "password": b"relay-pass"},
    "socks": {"u": b"socks-user", "p": b"socks-pass"},
    "ca": {"ca.crt": decode_secret(CA)["ca.crt"]},
}


def load_rendered(
    gateway: dict[str, Any], chain: dict[str, Any], secrets: dict[str, dict[str, bytes]]
) -> Any:
    rendered = render_config(parse_gateway(gateway), parse_chain(chain), secrets)
    return yaml_io.load(rendered.config_yaml), rendered


def test_full_gateway_arrives_where_the_sidecar_reads_it() -> None:
    config, rendered = load_rendered(FULL_GATEWAY, FULL_CHAIN, SECRETS)
    (service,) = config.services
    assert (service.name, service.handler.type, service.listener.type) == ("full", "tungo", "tungo")
    assert service.chain == "two-hops"
    tun = TunSettings.from_service(service)
    assert tun.name == "tun7" and str(tun.address) == "10.99.0.1/24" and tun.mtu == 9000
    assert [str(r.dst) for r in tun.routes] == ["0.0.0.0/0", "2001:db8::/32"]
    assert str(tun.gateway) == "10.99.0.2" and [str(d) for d in tun.dns] == ["10.99.0.53"]
    assert tun.udp_timeout == 90.0 and tun.interface == "eth0"
    assert tun.post_up == ("ip link show tun7",) and tun.post_down == ("ip link show tun7",)
    assert [str(n) for n in tun.excluded] == ["10.96.0.0/12", "fd00:10::/64"]
    md = service.handler.metadata
    assert (
        md.get_bool("sniffing") and md.get_bool("sniffing.udp") and md.get_duration("sniffing.timeout") == 0.5
    )

    bypasses = {b.name: b for b in config.bypasses}
    assert service.bypasses == () and bypasses["bypass-full"].reverse
    assert bypasses["bypass-full"].matchers == ("*.corp.example", "192.0.2.0/24")

    chain = config.chain("two-hops")
    edge, exit_hop = chain.hops
    assert edge.bypasses == ("bypass-full", "bypass-two-hops-edge")
    assert bypasses["bypass-two-hops-edge"].matchers == ("intranet.example",)
    # What the sidecar then does with them: the gateway's whitelist keeps only its names on the chain,
    # the Chain's first-hop bypass sends its name direct (GOST's group: whitelists AND, blacklists OR).
    policy = policy_for(service, config, compile_all(config))

    def route(host: str) -> Route:
        return policy.decide(Flow(Network.TCP, None, Address(host, 443))).route

    assert route("git.corp.example") is Route.CHAIN and route("192.0.2.7") is Route.CHAIN
    assert route("intranet.example") is Route.DIRECT and route("www.example.org") is Route.DIRECT
    assert edge.selector is not None and (
        edge.selector.strategy,
        edge.selector.max_fails,
        edge.selector.fail_timeout,
    ) == (
        "rand",
        2,
        45.0,
    )
    a, b = edge.nodes
    assert a.connector.auth is not None and (a.connector.auth.username, a.connector.auth.password) == (
        "relay-user",
        "relay-pass",
    )
    assert a.connector.metadata.get_bool("nodelay")
    assert (
        a.dialer.type == "wss"
        and a.dialer.metadata.get_str("path") == "/t"
        and a.dialer.metadata.get_str("host") == "cdn.example"
    )
    assert a.dialer.tls is not None and a.dialer.tls.secure and a.dialer.tls.server_name == "edge-a.example"
    assert a.dialer.tls.ca_file == "/etc/tungo/ca-edge-a.pem" and "ca-edge-a.pem" in rendered.files
    assert b.addr == "[2001:db8::7]:8443" and b.dialer.tls is not None and not b.dialer.tls.secure
    (s,) = exit_hop.nodes
    assert (
        s.connector.type == "socks5"
        and s.connector.auth is not None
        and s.connector.auth.password == "socks-pass"
    )
    # Only the node the user explicitly marked insecure is reported as such by the sidecar.
    assert len(insecure_tls_nodes(config)) == 1 and "b" in insecure_tls_nodes(config)[0]


@pytest.mark.parametrize("golden", ["examples-config.yaml", "minimal-config.yaml"])
def test_golden_configs_load_in_the_sidecar(golden: str) -> None:
    config = yaml_io.load(Path(__file__).parent / "golden" / golden)
    (service,) = config.services
    settings = TunSettings.from_service(service)
    assert settings.mtu == 1420 and settings.udp_timeout == 30.0  # GOST's defaults reach the sidecar
    assert service.chain is not None and config.chain(service.chain) is not None


def test_discovered_exclusions_reach_the_sidecars_routing_plan() -> None:
    gateway = parse_gateway(FULL_GATEWAY)
    facts = ClusterFacts(
        service_cidrs=(("kubernetes", ("10.96.0.0/12", "fd00:10:96::/112")),),
        nodes=(("worker-1", ("10.244.1.0/24", "fd00:10:244:1::/64")),),
        dns=ServiceLookup("kube-system", "kube-dns", ("10.96.0.10", "fd00:10:96::a")),
    )
    decided = cluster_exclusions(gateway, facts)
    rendered = render_config(gateway, parse_chain(FULL_CHAIN), SECRETS, excluded=decided.cidrs)
    (service,) = yaml_io.load(rendered.config_yaml).services
    tun = TunSettings.from_service(service)
    assert tuple(str(n) for n in tun.excluded) == decided.cidrs
    assert {"fe80::/10", "fd00:10:96::a/128", "10.96.0.10/32", "169.254.0.0/16"} <= set(decided.cidrs)
    # Both families are captured (routes 0.0.0.0/0 and 2001:db8::/32): every entry becomes a throw route.
    throws = {str(op.dst) for op in make_plan(tun).operations if getattr(op, "type", None) == "throw"}
    assert throws == set(decided.cidrs)


def test_split_dns_renders_a_dns_service_the_sidecar_runs_before_its_tun(tmp_path: Path) -> None:
    gateway = copy.deepcopy(FULL_GATEWAY)
    gateway["spec"]["dns"] = {"mode": "tunnel"}
    rendered = render_config(
        parse_gateway(gateway),
        parse_chain(FULL_CHAIN),
        SECRETS,
        excluded=["10.96.0.0/12", "10.244.0.0/16"],
        cluster_dns=["10.96.0.10"],
        cluster_domain="k8s.example",
    )
    # The Secret's files as the pod sees them, under a temporary mount (the sidecar loads the CAs).
    for key, text in rendered.files.items():
        (tmp_path / key).write_text(text)
    config = yaml_io.load(rendered.config_yaml.replace("/etc/tungo/", f"{tmp_path}/"))
    dns, tun = config.services
    assert (dns.handler.type, dns.listener.type, dns.addr, dns.chain) == (
        "dns",
        "dns",
        "127.0.0.1:53",
        "two-hops",
    )
    md = dns.handler.metadata
    assert md.get_list("dns") == ("udp://10.99.0.53:53",)  # spec.tun.dns, through the chain
    assert md.get_list("dns.local") == ("udp://10.96.0.10:53",)  # the discovered DNS Service, direct
    # The cluster domain and the first hop's relay host names: the sidecar must resolve its relay
    # before any tunnel exists (the IPv6 node needs no name).
    assert md.get_list("dns.localDomains") == ("k8s.example", "edge-a.example")
    assert md.get_list("dns.localNets") == ("10.96.0.0/12", "10.244.0.0/16")
    # The sidecar's own runner builds both, DNS first, and the DNS answers teach the TUN's name map
    # (the gateway sniffs UDP).
    built = runner.build_services(config)
    assert [type(s).__name__ for s in built] == ["DnsService", "TunService"]
    assert getattr(built[0], "on_answer", None) == getattr(built[1], "learn_dns", None)
    assert tun.handler.type == "tungo"


@pytest.mark.parametrize(
    ("dns", "tun_dns", "cluster_dns", "message"),
    [
        ({"mode": "tunnel"}, [], ["10.96.0.10"], "spec.dns.mode: tunnel needs spec.tun.dns"),
        ({"mode": "tunnel"}, ["1.1.1.1"], [], "set spec.dns.clusterServers"),
        (
            {"mode": "everything"},
            ["1.1.1.1"],
            [],
            "spec.dns.mode: 'everything' is not one of cluster, tunnel",
        ),
    ],
)
def test_split_dns_without_what_it_needs_is_a_spec_error(
    dns: dict[str, Any], tun_dns: list[str], cluster_dns: list[str], message: str
) -> None:
    gateway = copy.deepcopy(FULL_GATEWAY)
    gateway["spec"]["dns"] = dns
    gateway["spec"]["tun"]["dns"] = tun_dns
    with pytest.raises(SpecError, match=message):
        render_config(parse_gateway(gateway), parse_chain(FULL_CHAIN), SECRETS, cluster_dns=cluster_dns)
    if dns["mode"] == "tunnel" and tun_dns:  # an explicit cluster DNS needs no discovery
        gateway["spec"]["dns"]["clusterServers"] = ["169.254.20.10"]
        rendered = render_config(parse_gateway(gateway), parse_chain(FULL_CHAIN), SECRETS)
        assert "udp://169.254.20.10:53" in rendered.config_yaml
