"""The runner's lifecycle: services stop one by one in reverse start order, all of them even when one
fails, and a failed stop (a postDown line, a route teardown) shows as an error instead of a clean exit."""

from __future__ import annotations

import asyncio

import pytest

from tungo_sidecar.app import runner
from tungo_sidecar.config.model import Config
from tungo_sidecar.config.url import build_config
from tungo_sidecar.errors import ConfigError, TungoError


class Recorded:
    """A service that records its lifecycle in a shared journal; ``stop`` may fail on purpose."""

    def __init__(self, name: str, journal: list[str], fail_stop: bool = False) -> None:
        self.name = name
        self.journal = journal
        self.fail_stop = fail_stop

    async def start(self) -> None:
        self.journal.append(f"start {self.name}")

    async def stop(self) -> None:
        await asyncio.sleep(0)  # a real stop awaits; order must hold across awaits
        self.journal.append(f"stop {self.name}")
        if self.fail_stop:
            raise TungoError(f"postDown of {self.name} failed")


async def run_until_started(monkeypatch: pytest.MonkeyPatch, services: list[Recorded]) -> None:
    monkeypatch.setattr(runner, "build_services", lambda config: list(services))
    stop = asyncio.Event()
    async with asyncio.timeout(5):
        await runner.run(Config(), stop=stop, started=lambda running: stop.set())


async def test_services_stop_in_reverse_order_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    journal: list[str] = []
    await run_until_started(monkeypatch, [Recorded("proxy", journal), Recorded("tun", journal)])
    assert journal == ["start proxy", "start tun", "stop tun", "stop proxy"]


async def test_a_failed_stop_is_an_error_and_the_rest_still_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    journal: list[str] = []
    services = [Recorded("proxy", journal), Recorded("tun", journal, fail_stop=True)]
    with pytest.raises(TungoError, match="tun: postDown of tun failed"):
        await run_until_started(monkeypatch, services)
    assert journal[-2:] == ["stop tun", "stop proxy"]


class FailsToStart(Recorded):
    async def start(self) -> None:
        raise TungoError(f"{self.name}: address already in use")


async def test_running_yields_the_started_services_then_stops_them(monkeypatch: pytest.MonkeyPatch) -> None:
    journal: list[str] = []
    services = [Recorded("proxy", journal), Recorded("tun", journal)]
    monkeypatch.setattr(runner, "build_services", lambda config: list(services))
    async with asyncio.timeout(5), runner.running(Config()) as up:
        assert up == services
        assert journal == ["start proxy", "start tun"]
    assert journal[2:] == ["stop tun", "stop proxy"]


async def test_running_raises_the_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    journal: list[str] = []
    services = [Recorded("proxy", journal), FailsToStart("tun", journal)]
    monkeypatch.setattr(runner, "build_services", lambda config: list(services))
    with pytest.raises(TungoError, match="tun: address already in use"):
        async with asyncio.timeout(5), runner.running(Config()):
            pytest.fail("running yielded although a service failed to start")
    assert journal == ["start proxy", "stop proxy"]


async def test_running_surfaces_an_error_while_stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    journal: list[str] = []
    monkeypatch.setattr(runner, "build_services", lambda config: [Recorded("tun", journal, fail_stop=True)])
    with pytest.raises(TungoError, match="postDown of tun failed"):
        async with asyncio.timeout(5), runner.running(Config()):
            pass


def test_node_selection_not_built_yet_is_a_loud_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Declared means applied: GOST's selector is parsed, so until fail-over exists a start says so.
    config = build_config(
        ["socks5://:1080"], ["relay://198.18.0.9:8421,198.18.0.10:8421?strategy=fifo&maxFails=2"]
    )
    caplog.set_level("WARNING", "tungo_sidecar.app.runner")
    runner.warn_unapplied(config)
    assert "hop hop-0: selector strategy 'fifo' is NOT applied; 2 nodes" in caplog.text
    caplog.clear()
    runner.warn_unapplied(build_config(["socks5://:1080"], ["relay://198.18.0.9:8421?strategy=fifo"]))
    assert caplog.text == ""


def test_an_open_proxy_on_every_address_is_a_loud_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", "tungo_sidecar.app.runner")
    runner.warn_open_proxies(build_config(["socks5://:1080", "http://u:p@:8080", "relay://127.0.0.1:8421"]))
    assert caplog.text.count("open proxy") == 1
    assert "service service-0 (socks5) has no auth on *:1080" in caplog.text


@pytest.mark.parametrize(
    ("services", "nodes", "message"),
    [
        (
            ["relay+wss://:8443?certFile=/nonexistent.pem&keyFile=/nonexistent.key"],
            [],
            "service 'service-0': listener: tls certFile '/nonexistent.pem'",
        ),
        (
            ["socks5://:1080"],
            ["relay+tls://h:443?caFile=/nonexistent-ca.pem"],
            "node 'node-0': dialer: tls caFile",
        ),
    ],
)
def test_unloadable_tls_files_refuse_the_start(services: list[str], nodes: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        runner.build_services(build_config(services, nodes))
