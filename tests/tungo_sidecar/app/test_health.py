"""The health endpoint over real HTTP on loopback: liveness, readiness from flags and checks, 503 bodies."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tungo_sidecar.app.health import (
    CHECK_TIMEOUT,
    READY_CHAIN,
    READY_ROUTES,
    READY_SERVICES,
    READY_TUN,
    HealthService,
    Readiness,
)
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.proto.address import Address


@pytest.fixture
async def service() -> AsyncIterator[HealthService]:
    svc = HealthService(Address("127.0.0.1", 0))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def get(svc: HealthService, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{svc.port}{path}") as resp:
        return resp.status, await resp.text()


async def test_healthz_is_200_while_alive(service: HealthService) -> None:
    assert service.port and service.port > 0
    assert await get(service, "/healthz") == (200, "ok\n")


async def test_unknown_path_is_404(service: HealthService) -> None:
    status, _ = await get(service, "/metrics")
    assert status == 404


async def test_not_ready_until_the_runner_says_so(service: HealthService) -> None:
    assert await get(service, "/readyz") == (503, "not ready\nservices: starting\n")
    service.set_ready(True)
    assert await get(service, "/readyz") == (200, "ready\nservices: ok\n")
    service.set_ready(False, "shutting down")
    assert await get(service, "/readyz") == (503, "not ready\nservices: shutting down\n")


async def test_every_registered_check_must_pass(service: HealthService) -> None:
    tun = service.readiness.flag(READY_TUN)
    routes = service.readiness.flag(READY_ROUTES, "routes not applied")
    chain_ok = asyncio.Event()

    async def chain() -> tuple[bool, str]:
        return chain_ok.is_set(), "no chain node answered yet"

    service.readiness.add(READY_CHAIN, chain)
    service.set_ready(True)
    status, body = await get(service, "/readyz")
    assert status == 503
    assert body == "not ready\ntun: not yet\nroutes: routes not applied\nchain: no chain node answered yet\n"
    tun.set()
    routes.set()
    status, body = await get(service, "/readyz")
    assert (status, body) == (503, "not ready\nchain: no chain node answered yet\n")
    chain_ok.set()
    status, body = await get(service, "/readyz")
    assert status == 200
    assert body == "ready\nservices: ok\ntun: ok\nroutes: ok\nchain: ok\n"
    tun.clear("TUN device vanished")
    assert await get(service, "/readyz") == (503, "not ready\ntun: TUN device vanished\n")
    assert await get(service, "/healthz") == (200, "ok\n")  # not ready is not dead


async def test_broken_and_hanging_checks_are_not_ready_and_do_not_hang(service: HealthService) -> None:
    service.set_ready(True)

    def broken() -> bool:
        raise RuntimeError("kaput")

    async def hangs() -> bool:
        await asyncio.sleep(30)
        return True

    service.readiness.add("broken", broken)
    service.readiness.add("hangs", hangs)
    service.readiness.add("plain", lambda: False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await get(service, "/readyz")
    assert loop.time() - started < CHECK_TIMEOUT + 1.0
    assert status == 503
    assert body == (
        "not ready\nbroken: check failed: RuntimeError: kaput\n"
        f"hangs: check did not answer within {CHECK_TIMEOUT:g}s\nplain: not ready\n"
    )


def test_registry_rules() -> None:
    r = Readiness()
    r.flag("a")
    with pytest.raises(ValueError, match="registered twice"):
        r.add("a", lambda: True)
    r.remove("a")
    r.remove("a")  # removing what is gone is fine
    assert r.names == ()


async def test_no_checks_at_all_is_not_ready() -> None:
    svc = HealthService(Address("127.0.0.1", 0))
    svc.readiness.remove(READY_SERVICES)
    await svc.start()
    try:
        assert await get(svc, "/readyz") == (503, "not ready\nno readiness checks registered\n")
    finally:
        await svc.stop()


async def test_port_in_use_is_a_clear_config_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        svc = HealthService(Address("127.0.0.1", port))
        with pytest.raises(ConfigError, match=f"--health 127.0.0.1:{port}: cannot listen"):
            await svc.start()


async def test_port_in_use_on_all_addresses() -> None:
    with socket.socket(socket.AF_INET6) as busy:
        busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        busy.bind(("::", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--health :{port}: cannot listen: Address already in use"):
            await HealthService(Address("", port)).start()


async def test_stop_closes_the_port_and_is_idempotent() -> None:
    svc = HealthService(Address("127.0.0.1", 0))
    await svc.start()
    port = svc.port
    assert svc.name == "health@127.0.0.1:0"
    await svc.stop()
    await svc.stop()
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


async def test_all_addresses_when_host_is_empty() -> None:
    svc = HealthService(Address("", 0))
    await svc.start()
    try:
        assert svc.name == "health@*:0"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{svc.port}/healthz") as r,
        ):
            assert r.status == 200
    finally:
        await svc.stop()
