"""The tungo service's wiring without a TUN: what the runner builds for ``-L tungo://``, the marks and
interfaces its dialers carry, its readiness checks, and the chain probe against a real relay+wss server
on loopback. Starting it for real (device, routes, hooks) is tests/integration/test_tun_service.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tungo_sidecar import errors
from tungo_sidecar.app import runner, tun_service
from tungo_sidecar.app.health import READY_CHAIN, READY_ROUTES, READY_TUN, Readiness
from tungo_sidecar.app.tun_service import ChainProbe, TunService
from tungo_sidecar.config.url import build_config
from tungo_sidecar.net.direct import DirectDialer
from tungo_sidecar.net.service import ProxyService
from tungo_sidecar.proto.address import Address
from tungo_sidecar.routing.plan import FWMARK

TUN = "tungo://:0?name=tgunit0&net=192.168.123.1/24&route=10.0.0.0/8"


def built(services: list[str], nodes: tuple[str, ...] = ()) -> TunService:
    [service] = runner.build_services(build_config(services, list(nodes)))
    assert isinstance(service, TunService)
    return service


def test_runner_builds_the_tun_service_for_tungo() -> None:
    assert runner.TUN_SERVICE_FACTORY is tun_service.make_tun_service
    svc = built([TUN], ("relay+wss://u:p@198.18.0.9:8443?interface=eth0",))
    assert svc.settings.name == "tgunit0"
    assert svc.mark == FWMARK and svc.capture.fwmark == FWMARK
    # The first hop's interface is where direct dials leave too; the probe dials the first hop.
    assert svc.interface == "eth0" and svc.direct == DirectDialer(mark=FWMARK, interface="eth0")
    assert svc.probe is not None and svc.probe.addr == Address("198.18.0.9", 8443)
    assert not svc.ready_chain.ok and not svc.ready_tun.ok and not svc.ready_routes.ok


def test_service_so_mark_and_interface_win() -> None:
    svc = built([TUN + "&so_mark=153&interface=tun-up"], ("relay://198.18.0.9:8421?interface=eth0",))
    assert svc.mark == 0x99 and svc.capture.fwmark == 0x99
    assert svc.direct == DirectDialer(mark=0x99, interface="tun-up")


def test_without_a_chain_dials_direct_and_needs_no_chain_check() -> None:
    svc = built([TUN])
    assert svc.probe is None and svc.dialer.chain is None and svc.dialer.direct is svc.direct
    assert svc.ready_chain.ok


def test_bad_tun_settings_fail_at_build_time() -> None:
    with pytest.raises(errors.ConfigError, match="mtu 20"):
        built(["tungo://:0?net=192.168.123.1/24&mtu=20"])


async def test_readiness_checks_are_registered_and_start_not_ready() -> None:
    svc = built([TUN], ("relay+wss://198.18.0.9:8443",))
    readiness = Readiness()
    svc.register_readiness(readiness)
    assert readiness.names == (READY_TUN, READY_ROUTES, READY_CHAIN)
    results = await readiness.evaluate()
    assert [ok for _, ok, _ in results] == [False, False, False]


@contextlib.asynccontextmanager
async def relay_server(transport: str) -> AsyncIterator[int]:
    # Bounds start, the test's probe and stop together; each takes well under a second.
    config = build_config([f"relay+{transport}://u:p@127.0.0.1:0"])
    async with asyncio.timeout(20), runner.running(config) as up:
        yield next(s.port for s in up if isinstance(s, ProxyService))


@pytest.mark.parametrize("transport", ["wss", "tcp"])
async def test_probe_answers_against_a_real_relay_server(transport: str) -> None:
    async with relay_server(transport) as port:
        chain = build_config([TUN], [f"relay+{transport}://u:p@127.0.0.1:{port}"]).chains[0]
        await ChainProbe(chain, mark=FWMARK, interface=None)()


async def test_probe_fails_against_a_closed_port_and_a_plain_tcp_server_for_wss() -> None:
    async with relay_server("tcp") as port:
        # A wss probe to a server that does not speak TLS fails its handshake: not "answering".
        chain = build_config([TUN], [f"relay+wss://127.0.0.1:{port}"]).chains[0]
        with pytest.raises((errors.TungoError, OSError, EOFError, TimeoutError)):
            await ChainProbe(chain, mark=FWMARK, interface=None)()
    chain = build_config([TUN], [f"relay+tcp://127.0.0.1:{port}"]).chains[0]
    with pytest.raises(errors.DialError, match="refused"):
        await ChainProbe(chain, mark=FWMARK, interface=None)()


async def test_a_failed_chain_dial_asks_for_a_probe_now() -> None:
    svc = built([TUN], ("relay+tcp://127.0.0.1:1",))  # port 1: nothing listens, refused at once
    assert not svc._probe_now.is_set()
    with pytest.raises(errors.DialError):
        await svc.dialer.dial_tcp(Address("198.18.0.1", 80))
    assert svc._probe_now.is_set()


def test_the_dns_service_answers_teach_a_dns_sniffing_tun_service() -> None:
    config = build_config(
        [TUN + "&sniffing.udp=true", "dns://127.0.0.1:53?dns=udp://198.18.0.53:53"],
        ["relay://198.18.0.9:8421"],
    )
    tun, dns = runner.build_services(config)
    assert isinstance(tun, TunService) and tun.sniffing.udp
    assert getattr(dns, "on_answer", None) == tun.learn_dns
    tun.learn_dns(b"\x00" * 12)  # before start (no engine yet): nothing to learn into, no error
    without = runner.build_services(build_config([TUN, "dns://127.0.0.1:53?dns=udp://198.18.0.53:53"]))
    assert getattr(without[1], "on_answer", "unset") is None  # the TUN does not sniff DNS: no hook
