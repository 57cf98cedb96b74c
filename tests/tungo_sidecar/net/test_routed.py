"""net.routed: one routed dial per flow against real loopback servers — the bypassed flow dialled direct,
the rest through a real relay server, refusals raised with the rule that made them, every proxy
handler answering a refusal in its own protocol, and the first-answer hand-over used by fallback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest
from loopback import dial, echo_tcp

from tungo_sidecar import errors
from tungo_sidecar.app import runner
from tungo_sidecar.app.bypasses import compile_all, policy_for
from tungo_sidecar.chain.route import Flow, Route
from tungo_sidecar.config.model import Plugin
from tungo_sidecar.config.url import build_config
from tungo_sidecar.net.connectors import make_connector
from tungo_sidecar.net.direct import DirectDialer
from tungo_sidecar.net.routed import RoutedDialer, _first_answer
from tungo_sidecar.net.router import ChainDialer
from tungo_sidecar.net.service import ProxyService
from tungo_sidecar.net.sockopts import serve_tcp
from tungo_sidecar.net.stream import SocketStream
from tungo_sidecar.proto.address import Address, Network


@contextlib.asynccontextmanager
async def serving(services: Sequence[str]) -> AsyncIterator[list[int]]:
    async with asyncio.timeout(30), runner.running(build_config(list(services))) as up:
        yield [s.port for s in up if isinstance(s, ProxyService)]


def routed(services: list[str], nodes: list[str]) -> RoutedDialer:
    config = build_config(services, nodes)
    service, chain = config.services[0], config.chains[0]
    policy = policy_for(service, config, compile_all(config))
    return RoutedDialer(policy, chain=ChainDialer(chain), direct=DirectDialer())


async def test_the_bypassed_name_goes_direct_and_the_rest_through_the_relay() -> None:
    # The relay server refuses every target (its own service bypass): only a direct dial reaches the echo.
    async with echo_tcp() as target, serving(["relay://127.0.0.1:0?bypass=0.0.0.0/0"]) as [relay]:
        dialer = routed(["socks5://:0"], [f"relay://127.0.0.1:{relay}?bypass=.direct.test"])
        direct = await dialer.dial_tcp_flow(Flow(Network.TCP, None, target, "api.direct.test"), b"ping")
        try:
            assert await direct.read() == b"ping"
        finally:
            await direct.close()
        tunnelled = await dialer.dial_tcp_flow(Flow(Network.TCP, None, target, "api.other.test"), b"ping")
        try:
            with pytest.raises(errors.RelayForbidden):  # the relay handler's answer to a refusal
                await asyncio.wait_for(tunnelled.read(), 5)
        finally:
            await tunnelled.close()
        assert dialer.stats.snapshot() == {
            "route_chain": 1,
            "route_direct": 1,
            "route_refused": 0,
            "route_fallbacks": 0,
        }


async def test_a_service_bypass_refuses_with_the_rule_named(caplog: pytest.LogCaptureFixture) -> None:
    dialer = routed(["socks5://:0?bypass=*.blocked.test:443"], ["relay://127.0.0.1:1"])
    caplog.set_level("DEBUG", "tungo_sidecar.net.routed")
    flow = Flow(Network.TCP, None, Address("a.blocked.test", 443))
    with pytest.raises(errors.RouteRefusedError, match=r"service bypass 'bypass-0': matched '\*\.blocked"):
        await dialer.dial_tcp_flow(flow)
    with pytest.raises(errors.RouteRefusedError):
        await dialer.dial_udp(Address("a.blocked.test", 443))
    assert dialer.stats.decisions[Route.REFUSE] == 2
    assert "route refused: tcp ? -> a.blocked.test:443" in caplog.text


async def test_proxy_handlers_answer_a_refusal_in_their_own_protocol() -> None:
    target = Address("10.9.9.9", 80)  # refused before any dial: nothing is ever sent there
    async with serving(
        ["socks5://127.0.0.1:0?bypass=10.0.0.0/8", "http://127.0.0.1:0?bypass=10.0.0.0/8"]
    ) as [socks, http]:
        with pytest.raises(errors.ProxyRefusedError) as refused:
            await make_connector(Plugin("socks5")).connect_tcp(
                await dial(Address("127.0.0.1", socks)), target
            )
        assert refused.value.code == 2  # "connection not allowed by ruleset", as GOST answers
        with pytest.raises(errors.ProxyRefusedError) as refused:
            await make_connector(Plugin("http")).connect_tcp(await dial(Address("127.0.0.1", http)), target)
        assert refused.value.code == 403


async def test_first_answer_hands_over_a_read_still_running_and_raises_a_failed_one() -> None:
    answered = asyncio.Event()

    async def late(stream: SocketStream) -> None:
        await answered.wait()
        await stream.write(b"late answer")

    server = await serve_tcp("127.0.0.1", 0, late)
    async with server:
        stream = await dial(Address("127.0.0.1", server.sockets[0].getsockname()[1]))
        handed = await _first_answer(stream, 0.05)  # nothing yet: the read goes on inside the stream
        answered.set()
        assert await asyncio.wait_for(handed.read(4), 5) == b"late"
        assert await handed.read() == b" answer"
        await handed.close()

    class Failing(SocketStream):
        async def read(self, max_bytes: int = 0) -> bytes:
            raise errors.RelayHostUnreachable()

    async with echo_tcp() as target:
        plain = await dial(target)
        failing = Failing(plain.reader, plain.writer)
        with pytest.raises(errors.RelayHostUnreachable):
            await _first_answer(failing, 1.0)
        assert failing.writer.is_closing()  # closed on the way out
