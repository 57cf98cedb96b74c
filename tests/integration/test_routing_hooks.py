"""bring_up / bring_down in a namespace: routes before postUp, postDown before teardown, and a failing
hook line undoes everything (the kernel is back to its previous state, byte for byte)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import routing_netns as rn

from tungo_sidecar.config.model import ChainConfig, Hop, Metadata, Node, Plugin
from tungo_sidecar.config.tun import TunSettings, parse_tun_settings
from tungo_sidecar.errors import TunError
from tungo_sidecar.routing.hooks import Capture, bring_down, bring_up
from tungo_sidecar.routing.plan import FWMARK, TABLE, make_plan

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and TUN"),
]


@pytest.fixture
def pod() -> Iterator[rn.Pod]:
    with rn.pod_with_uplink() as pod:
        rn.add_tun(pod.ns)
        yield pod


def settings(post_up: list[str], post_down: list[str]) -> TunSettings:
    return parse_tun_settings(
        Metadata({"route": "0.0.0.0/0"}), service=Metadata({"postUp": post_up, "postDown": post_down})
    )


def record(log: Path, ns: str, tag: str) -> str:
    # The hook line itself asks for sh -c (GOST runs no shell); it records where 8.8.8.8 would go *now*.
    return f"sh -c 'echo {tag} $(ip -n {ns} -4 route get 8.8.8.8 | head -1 | cut -d\" \" -f1-3) >> {log}'"


async def test_post_up_after_routes_and_post_down_before_teardown(pod: rn.Pod, tmp_path: Path) -> None:
    log = tmp_path / "hooks"
    s = settings(
        [record(log, pod.ns, "up1"), record(log, pod.ns, "up2")],
        [record(log, pod.ns, "down1"), record(log, pod.ns, "down2")],
    )
    before = rn.snapshot(pod.ns)
    applied = await bring_up(s, make_plan(s), netns=pod.ns)
    assert log.read_text() == "up1 8.8.8.8 dev tungo\nup2 8.8.8.8 dev tungo\n"
    await bring_down(s, applied, netns=pod.ns)
    assert log.read_text().splitlines()[2:] == ["down1 8.8.8.8 dev tungo", "down2 8.8.8.8 dev tungo"]
    assert rn.snapshot(pod.ns) == before


async def test_failing_post_up_tears_everything_down(pod: rn.Pod, tmp_path: Path) -> None:
    log = tmp_path / "hooks"
    s = settings(
        [record(log, pod.ns, "up1"), "sh -c 'echo nope >&2; exit 7'", record(log, pod.ns, "up3")], []
    )
    before = rn.snapshot(pod.ns)
    with pytest.raises(TunError, match=r"postUp .*exit status 7: nope"):
        await bring_up(s, make_plan(s), netns=pod.ns)
    assert log.read_text() == "up1 8.8.8.8 dev tungo\n"  # ran with routes in place; line 3 never ran
    assert rn.snapshot(pod.ns) == before
    assert "dev up0" in rn.route_get(pod.ns, "8.8.8.8")


async def test_failing_post_down_still_tears_down(pod: rn.Pod) -> None:
    s = settings([], ["false", "true"])
    before = rn.snapshot(pod.ns)
    applied = await bring_up(s, make_plan(s), netns=pod.ns)
    assert str(TABLE) in rn.ip(pod.ns, "-4", "rule", "show")
    with pytest.raises(TunError, match="postDown 'false': exit status 1"):
        await bring_down(s, applied, netns=pod.ns)
    assert rn.snapshot(pod.ns) == before


async def test_capture_excludes_the_chain_first_hop_and_undoes_everything(pod: rn.Pod) -> None:
    def node(name: str, addr: str) -> Node:
        return Node(name, addr, Plugin("relay"), Plugin("wss"))

    chain = ChainConfig(
        "c",
        (
            Hop("h0", (node("a", "198.51.100.7:443"), node("b", "localhost:8443"))),
            Hop("h1", (node("c", "203.0.113.9:443"),)),
        ),
    )
    s = parse_tun_settings(Metadata({"route": "0.0.0.0/0", "exclude": "10.96.0.0/12"}))
    before = rn.snapshot(pod.ns)
    capture = Capture(s, chain, netns=pod.ns)
    applied = await capture.start()
    assert await capture.start() is applied  # started once only
    assert capture.plan is not None and capture.plan.fwmark == FWMARK
    assert "dev up0" in rn.route_get(pod.ns, "198.51.100.7")  # the first hop bypasses the TUN
    assert "dev tungo" in rn.route_get(pod.ns, "203.0.113.9")  # a later hop is reached through the first
    assert "dev up0" in rn.route_get(pod.ns, "10.100.0.1")  # the listener's own exclude
    assert "dev tungo" in rn.route_get(pod.ns, "8.8.8.8")
    await capture.stop()
    await capture.stop()
    assert capture.applied is None
    assert rn.snapshot(pod.ns) == before
