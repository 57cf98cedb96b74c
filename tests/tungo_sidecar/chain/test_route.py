"""chain.route: the pure per-flow route decision and its documented exclusions."""

from __future__ import annotations

import pytest

from tungo_sidecar.chain.route import Flow, Route, decide
from tungo_sidecar.proto.address import Address, Network


def _flow(dst: str, network: Network = Network.TCP, host: str | None = None) -> Flow:
    return Flow(network, Address("192.168.123.1", 40000), Address(dst, 443), host)


@pytest.mark.parametrize(
    "dst", ["93.184.216.34", "10.1.2.3", "2001:db8::1", "fd00::5", "192.168.123.7", "example.com"]
)
def test_ordinary_destinations_go_through_the_chain(dst: str) -> None:
    assert decide(_flow(dst)) is Route.CHAIN
    assert decide(_flow(dst, Network.UDP)) is Route.CHAIN


@pytest.mark.parametrize(
    "dst",
    [
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "224.0.0.251",
        "ff02::fb",
        "0.0.0.0",
        "::",
        "255.255.255.255",
    ],
)
def test_this_link_destinations_are_direct(dst: str) -> None:
    assert decide(_flow(dst, Network.UDP)) is Route.DIRECT


def test_sniffed_host_is_carried_and_flow_is_frozen() -> None:
    flow = _flow("10.1.2.3", host="example.com")
    assert flow.host == "example.com"
    assert decide(flow) is Route.CHAIN
    with pytest.raises(AttributeError):
        flow.host = "other"  # type: ignore[misc]
