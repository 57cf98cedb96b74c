"""DNS service settings from -L URLs and YAML: GOST's keys, tungo's split keys, and one clear line for
everything tungo refuses."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from tungo_sidecar.config.dns import DnsSettings, Upstream, parse_dns_settings
from tungo_sidecar.config.model import Metadata
from tungo_sidecar.config.url import build_config
from tungo_sidecar.config.yaml_io import dump, from_data, parse_text
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.proto.address import Address, Network

POD = (
    "dns://127.0.0.1:53?dns=udp://1.1.1.1:53,tcp://[2606:4700::1111],9.9.9.9"
    "&dns.local=udp://10.96.0.10:53&dns.localDomains=cluster.local,.Svc.Cluster.Local.,cluster.local"
    "&dns.localNets=10.96.0.0/12,fd00:10:96::/112&timeout=500ms&dns.budget=3s&readTimeout=5s"
)


def settings_of(url: str) -> DnsSettings:
    config = build_config([url], ["relay+wss://relay.example:443"])
    return DnsSettings.from_service(config.services[0])


def test_the_pod_command_line() -> None:
    settings = settings_of(POD)
    assert settings == DnsSettings(
        upstreams=(
            Upstream(Network.UDP, Address("1.1.1.1", 53)),
            Upstream(Network.TCP, Address("2606:4700::1111", 53)),
            Upstream(Network.UDP, Address("9.9.9.9", 53)),
        ),
        local=(Upstream(Network.UDP, Address("10.96.0.10", 53)),),
        local_domains=("cluster.local", "svc.cluster.local"),
        local_nets=(ip_network("10.96.0.0/12"), ip_network("fd00:10:96::/112")),
        timeout=0.5,
        budget=3.0,
        read_timeout=5.0,
    )
    assert [str(u) for u in settings.upstreams] == [
        "udp://1.1.1.1:53",
        "tcp://[2606:4700::1111]:53",
        "udp://9.9.9.9:53",
    ]


def test_defaults_and_modes() -> None:
    settings = settings_of("dns://:53?dns=1.1.1.1")
    assert (settings.timeout, settings.budget, settings.read_timeout) == (2.0, 4.0, 10.0)
    assert settings.udp and settings.tcp and not settings.local
    udp_only = settings_of("dns://:53?dns=1.1.1.1&mode=udp")
    assert udp_only.udp and not udp_only.tcp
    tcp_only = settings_of("dns://:53?dns=1.1.1.1&mode=TCP")
    assert tcp_only.tcp and not tcp_only.udp
    assert settings_of("dns://:53?dns=1.1.1.1&timeout=0").timeout == 2.0  # GOST: 0 is "not set"


def test_the_yaml_form_takes_lists() -> None:
    config = from_data(
        parse_text(
            """
services:
- name: dns
  addr: 127.0.0.1:53
  handler:
    type: dns
    metadata:
      dns: [udp://1.1.1.1:53]
      dns.local: [udp://10.96.0.10:53]
      dns.localDomains: [cluster.local]
      timeout: 1s
  listener:
    type: dns
    metadata: {mode: udp}
"""
        )
    )
    settings = DnsSettings.from_service(config.services[0])
    assert settings.local_domains == ("cluster.local",) and settings.timeout == 1.0 and not settings.tcp
    # -O yaml prints the -L form in GOST's shape, and it reads back to the same settings.
    printed = from_data(parse_text(dump(build_config([POD]))))
    assert DnsSettings.from_service(printed.services[0]) == settings_of(POD)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "dns: no upstream server: give dns=udp://IP:53"),
        ("dns=tls://1.1.1.1:853", 'dns: "tls://1.1.1.1:853": DNS over TLS is not supported by tungo'),
        ("dns=https://1.1.1.1/dns-query", "DNS over HTTPS is not supported"),
        ("dns=quic://1.1.1.1", 'unknown scheme "quic" (use udp:// or tcp://)'),
        ("dns=udp://dns.google:53", "give the server's IP address"),
        ("dns=1.1.1.1:0", "port 0"),
        ("dns=1.1.1.1:99999", "out of range"),
        ("dns=1.1.1.1&dns.local=10.0.0.10", "dns.local: give dns.localDomains (or dns.localNets)"),
        ("dns=1.1.1.1&dns.localDomains=cluster.local", "dns.localDomains: give dns.local"),
        ("dns=1.1.1.1&dns.localNets=10.0.0.0/8", "dns.localNets: give dns.local"),
        ("dns=1.1.1.1&dns.local=10.0.0.10&dns.localDomains=.", "would send every name to dns.local"),
        ("dns=1.1.1.1&dns.local=10.0.0.10&dns.localDomains=a..b", '"a..b" is not a domain name'),
        ("dns=1.1.1.1&dns.local=10.0.0.10&dns.localDomains=-a.b", "is not a domain name"),
        ("dns=1.1.1.1&dns.local=10.0.0.10&dns.localNets=10.0.0.0/33", '"10.0.0.0/33": expected a CIDR'),
        ("dns=1.1.1.1&timeout=31s", "timeout 31s is too long (at most 30s)"),
        ("dns=1.1.1.1&dns.budget=1m", "dns.budget 60s is too long"),
        ("dns=1.1.1.1&timeout=soon", "bad duration"),
        ("dns=1.1.1.1&mode=tls", 'dns: mode "tls" is not supported by tungo'),
        ("dns=1.1.1.1&ttl=60s", 'option "ttl" is not supported by tungo (tungo keeps no answer cache'),
        ("dns=1.1.1.1&async=true", 'option "async"'),
        ("dns=1.1.1.1&clientIP=1.2.3.4", 'option "clientIP"'),
        ("dns=1.1.1.1&bufferSize=1024", 'option "bufferSize"'),
    ],
)
def test_bad_options_fail_with_one_line_naming_the_url(query: str, message: str) -> None:
    url = f"dns://127.0.0.1:53?{query}"
    with pytest.raises(ConfigError) as info:
        build_config([url])
    text = str(info.value)
    assert text.startswith(f'-L "{url}": ') and message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("dns+tcp://:53?dns=1.1.1.1", 'handler "dns" and listener "tcp" do not pair'),
        ("relay+dns://:53", 'handler "relay" and listener "dns" do not pair'),
        ("dns://:53?dns=1.1.1.1&sniffing=true", "sniffing is applied by the tungo handler only"),
        ("dns://u:p@:53?dns=1.1.1.1", 'handler "dns" takes no auth'),
        ("dns://127.0.0.1?dns=1.1.1.1", "has no port"),
    ],
)
def test_the_dns_handler_runs_only_on_its_own_listener(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config([url])


def test_settings_parse_without_a_listener() -> None:
    assert parse_dns_settings(Metadata({"dns": "1.1.1.1"})).upstreams == (
        Upstream(Network.UDP, Address("1.1.1.1", 53)),
    )
