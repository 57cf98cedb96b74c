"""Building the DNS service: the mark its sockets carry beside a TUN, its dialers, the runner's wiring."""

from __future__ import annotations

import logging

import dnswire as w
import pytest

from tungo_sidecar.app import dns_service, runner
from tungo_sidecar.chain.route import Flow, Route
from tungo_sidecar.config.url import build_config
from tungo_sidecar.config.yaml_io import from_data
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.net.direct import DirectDialer
from tungo_sidecar.net.dnsserver import DnsService
from tungo_sidecar.net.routed import RoutedDialer
from tungo_sidecar.proto.address import Address, Network
from tungo_sidecar.routing.plan import FWMARK

DNS = (
    "dns://127.0.0.1:53?dns=udp://198.19.20.2:53&dns.local=udp://10.96.0.10:53&dns.localDomains=cluster.local"
)
TUN = "tungo://:0?net=192.168.123.1/24&route=0.0.0.0/0"
RELAY = "relay+wss://u:p@198.18.10.1:8443?interface=eth0"


def built(services: list[str], nodes: tuple[str, ...] = ()) -> list[runner.Runnable]:
    return runner.build_services(build_config(services, nodes))


def test_beside_a_tun_the_dns_service_carries_the_tun_mark() -> None:
    config = build_config([TUN, DNS], [RELAY])
    assert dns_service.socket_mark(config.services[1], config) == FWMARK
    service = runner.build_services(config)[1]
    assert isinstance(service, DnsService)
    assert isinstance(service.direct, DirectDialer) and service.direct.mark == FWMARK
    assert isinstance(service.dialer, RoutedDialer) and service.dialer.direct is service.direct
    assert service.dialer.chain is not None and service.dialer.chain._mark == FWMARK


@pytest.mark.parametrize(
    ("services", "mark"),
    [
        ([DNS], None),  # alone: no TUN to stay out of
        ([f"{TUN}&so_mark=77", DNS], 77),  # the TUN's own mark
        ([TUN, f"{DNS}&so_mark=99"], 99),  # the service's own mark wins
    ],
)
def test_socket_mark(services: list[str], mark: int | None) -> None:
    config = build_config(services, [RELAY])
    dns = next(s for s in config.services if s.handler.type == "dns")
    assert dns_service.socket_mark(dns, config) == mark


def test_the_service_bypass_matches_names_not_upstream_addresses() -> None:
    # GOST: the dns handler's bypass is checked against the query name; the exchanger's dial goes
    # through the chain's router, which knows nothing of it. A bypass listing the upstream's address
    # must not refuse the upstream.
    (service,) = built([f"{DNS}&bypass=198.19.20.2,ads.test"], (RELAY,))
    assert isinstance(service, DnsService) and isinstance(service.dialer, RoutedDialer)
    decision = service.dialer.decide(Flow(Network.UDP, None, Address("198.19.20.2", 53)))
    assert decision.route is Route.CHAIN


def test_without_a_chain_upstreams_are_dialled_directly() -> None:
    (service,) = built([DNS])
    assert isinstance(service, DnsService) and isinstance(service.dialer, RoutedDialer)
    assert service.dialer.decide(Flow(Network.UDP, None, Address("198.19.20.2", 53))).route is Route.DIRECT


def test_yaml_errors_name_the_service() -> None:
    data = {
        "services": [
            {
                "name": "resolver",
                "addr": "127.0.0.1:53",
                "handler": {"type": "dns"},
                "listener": {"type": "dns"},
            }
        ]
    }
    with pytest.raises(ConfigError, match=r'^service "resolver": dns: no upstream server'):
        from_data(data)


async def test_the_runner_runs_it_and_logs_its_counters(caplog: pytest.LogCaptureFixture) -> None:
    async with w.FakeDns(lambda m, n: w.answer(m, w.a_record("192.0.2.7")), w.bind_socket("127.0.0.1")) as up:
        config = build_config([f"dns://127.0.0.1:0?dns=udp://127.0.0.1:{up.port}"])
        with caplog.at_level(logging.INFO):
            async with runner.running(config) as services:
                (service,) = services
                assert isinstance(service, DnsService)
                port = service.port
                with w.udp_socket() as sock:
                    answer = await w.ask_udp(sock, ("127.0.0.1", port), w.query("x.test"))
                assert w.addresses(answer) == ["192.0.2.7"]
    assert f"dns on udp 127.0.0.1:{port}, tcp 127.0.0.1:{port}" in caplog.text
    assert '"dns_forwarded": 1' in caplog.text
