"""The ``tungo`` TUN service end to end: the real CLI in a "pod" namespace, a relay+wss server namespace,
a target namespace (``tungo_sidecar.app.demo.Lab``: veths, the server forwarding, so a leak would arrive).

The pod runs ``tungo -L tungo://...route=0.0.0.0/0,::/0 -F relay+wss://...?interface=eth0 --health``;
this test process plays the app inside the pod (sockets created in its namespace) and the target's
servers. Leaks are counted with a packet sniffer on the pod's own uplink (``eth0``): a packet to the
target's address there is a packet that left unencrypted; tunnelled traffic is addressed to the relay.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import routing_netns as rn
import yaml

from tungo_sidecar.app import demo
from tungo_sidecar.app.demo import SRV_POD4, TGT4, TGT6, Lab, Proc, Targets
from tungo_sidecar.routing.plan import RULE_PRIORITY_CAPTURE, TABLE

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root + TUN"),
]

BULK = 32 << 20
HOOK_ADDR = "198.18.99.1/32"  # postUp adds it to lo, postDown removes it
SYSCTL = "net.ipv4.conf.eth0.accept_local"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path) as built:
        yield built


async def start_server(lab: Lab) -> Proc:
    server = lab.tungo(lab.srv, "server", *demo.server_command())
    await demo.wait_listening(lab, lab.pod, SRV_POD4, demo.RELAY_PORT)
    return server


async def start_pod(lab: Lab, *args: str, name: str = "pod") -> Proc:
    pod = lab.tungo(lab.pod, name, *(args or demo.pod_command()))
    await demo.wait_ready(lab, pod)
    return pod


async def readyz(lab: Lab) -> tuple[int, str]:
    status, body = await asyncio.wait_for(
        demo.http_get(lab, lab.pod, "127.0.0.1", demo.HEALTH_PORT, "/readyz"), 5
    )
    return status, body.decode()


async def echo_roundtrip(lab: Lab, host: str, port: int, payload: bytes) -> bytes:
    reader, writer = await demo.connect(lab, lab.pod, host, port)
    try:
        writer.write(payload)
        await writer.drain()
        return await reader.readexactly(len(payload))
    finally:
        writer.close()


async def connect_outcome(lab: Lab, host: str, port: int) -> tuple[str, float]:
    """How a new TCP connect from the pod ends, and how long it took (bounded by 5 s)."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(demo.connect(lab, lab.pod, host, port), 5)
    except TimeoutError:
        return "timeout", time.monotonic() - started
    except (ConnectionRefusedError, ConnectionResetError) as exc:
        return type(exc).__name__, time.monotonic() - started
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc)), time.monotonic() - started
    # Connected: the flow may still be refused right after (a RST once the chain dial fails).
    try:
        writer.write(b"x")
        data = await asyncio.wait_for(reader.read(1), 5)
        outcome = "open" if data else "closed"
    except OSError as exc:
        outcome = type(exc).__name__
    except TimeoutError:
        outcome = "timeout"
    writer.close()
    return outcome, time.monotonic() - started


def rules_and_routes(lab: Lab) -> list[str]:
    """Every rule and route of the pod, but the hook's own address (postUp adds it) and link-local
    addresses (a new TUN gets a new random one; eth0's appears once its DAD is over)."""
    hook = HOOK_ADDR.split("/", 1)[0]
    return [
        line for line in rn.snapshot(lab.pod).splitlines() if hook not in line and "local fe80:" not in line
    ]


def our_state(lab: Lab) -> tuple[list[str], list[str]]:
    """Our rules (both families) and every route of our table."""
    rules = [
        line
        for family in ("-4", "-6")
        for line in rn.ip(lab.pod, family, "rule", "show").splitlines()
        if line.startswith(("29800:", f"{RULE_PRIORITY_CAPTURE}:"))
    ]
    routes = [
        line
        for family in ("-4", "-6")
        for line in rn.ip(lab.pod, family, "route", "show", "table", str(TABLE), check=False).splitlines()
    ]
    return rules, routes


async def test_traffic_through_tun_relay_wss_and_chain_down_fails_closed(lab: Lab) -> None:
    blob = os.urandom(BULK)
    async with Targets(lab, blob) as targets:
        server = await start_server(lab)
        pod = await start_pod(lab)
        status, body = await readyz(lab)
        assert status == 200, body
        assert "tun: ok" in body and "routes: ok" in body and "chain: ok" in body

        # 32 MiB down (IPv4) and up (IPv6), hashed at the far end.
        got, _ = await demo.download(lab, lab.pod, TGT4, targets.http_port)
        assert len(got) == BULK and hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
        data = os.urandom(BULK)
        digest, _ = await demo.upload(lab, lab.pod, TGT6, targets.http_port, data)
        assert digest == hashlib.sha256(data).hexdigest()
        # UDP both families, DNS-sized, answered through relay UDP over wss.
        assert await demo.udp_round_trips(lab, lab.pod, TGT4, targets.udp_port, count=10) == 10
        assert await demo.udp_round_trips(lab, lab.pod, TGT6, targets.udp_port, count=10) == 10
        # Many flows at once.
        payloads = [os.urandom(4096) for _ in range(48)]
        echoed = await asyncio.gather(
            *(
                echo_roundtrip(lab, TGT4 if i % 2 else TGT6, targets.echo_port, p)
                for i, p in enumerate(payloads)
            )
        )
        assert echoed == payloads
        # Everything the target saw came from the relay server's side, none from the pod.
        assert targets.peers <= {demo.SRV_TGT4, demo.SRV_TGT6}, targets.peers

        # The chain goes down: new connects fail fast, nothing to the target leaves the pod.
        server.stop(signal.SIGKILL)
        with rn.sniff(lab.pod, "eth0") as leaving:
            outcomes = [await connect_outcome(lab, host, targets.echo_port) for host in (TGT4, TGT6, TGT4)]
            await demo.udp_round_trips(lab, lab.pod, TGT4, targets.udp_port, count=3, wait=0.3)
        for outcome, seconds in outcomes:
            assert outcome in ("ConnectionRefusedError", "ConnectionResetError", "closed"), outcomes
            assert seconds < 2.0, outcomes
        assert TGT4 not in leaving and TGT6 not in leaving, leaving
        assert SRV_POD4 in leaving  # the control: the sniffer saw tungo's (marked) dials to the relay
        # A failed dial makes the service re-probe at once: /readyz says the chain is the problem.
        for _ in range(25):  # 5 s at most
            status, body = await readyz(lab)
            if status != 200:
                break
            await asyncio.sleep(0.2)
        # The 503 body lists only what is not ready: the chain, not the TUN or the routes.
        assert status == 503 and "chain: first hop" in body, body
        assert "tun:" not in body and "routes:" not in body, body

        # The server comes back: the probe notices, traffic flows again.
        await start_server(lab)
        await demo.wait_ready(lab, pod, within=10)
        assert await echo_roundtrip(lab, TGT4, targets.echo_port, b"back") == b"back"

        assert pod.stop(signal.SIGTERM) == 0
        stats = demo.engine_stats(pod.output())
        assert stats is not None and stats["tcp_flows"] >= 50 and stats["tcp_dial_failures"] >= 3, stats
    assert our_state(lab) == ([], [])


def sysctl(lab: Lab) -> str:
    return rn.run("ip", "netns", "exec", lab.pod, "sysctl", "-n", SYSCTL).strip()


def _yaml_config(lab: Lab, path: Path, marker: Path) -> None:
    """The pod's command line as GOST YAML (``tungo ... -O yaml``), plus postUp/postDown lists."""
    out = subprocess.run(
        [*demo.tungo_command(), *demo.pod_command()[:4], "-O", "yaml"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    config = yaml.safe_load(out)
    service = config["services"][0]
    service.setdefault("metadata", {})
    service["metadata"]["postUp"] = [
        f"touch {marker}",
        f"ip addr add {HOOK_ADDR} dev lo",
        f"sysctl -qw {SYSCTL}=1",
    ]
    service["metadata"]["postDown"] = [
        f"sysctl -qw {SYSCTL}=0",
        f"ip addr del {HOOK_ADDR} dev lo",
        f"rm {marker}",
    ]
    path.write_text(yaml.safe_dump(config))


async def test_sigkill_fails_closed_then_restart_takes_over_and_hooks_run(lab: Lab, tmp_path: Path) -> None:
    marker = tmp_path / "post-up-ran"
    config = tmp_path / "tungo.yaml"
    _yaml_config(lab, config, marker)
    async with Targets(lab, b"") as targets:
        await start_server(lab)
        # First start: the GOST command line, one postUp given in the URL.
        args = demo.pod_command(extra_query=f"&postUp=touch {marker}")
        pod = await start_pod(lab, *args)
        assert marker.exists()
        assert await echo_roundtrip(lab, TGT4, targets.echo_port, b"first") == b"first"
        before = rules_and_routes(lab)

        pod.stop(signal.SIGKILL)
        rn.wait_gone(lab.pod, "tungo")
        with rn.sniff(lab.pod, "eth0") as leaving:
            outcomes = [await connect_outcome(lab, host, targets.echo_port) for host in (TGT4, TGT6)]
            with pytest.raises(OSError) as udp_refused:
                await demo.udp_round_trips(lab, lab.pod, TGT4, targets.udp_port, count=2, wait=0.3)
            assert udp_refused.value.errno == errno.EHOSTUNREACH
        # The unreachable twins answer at once (EHOSTUNREACH; IPv6 may say ENETUNREACH).
        assert {o for o, _ in outcomes} <= {"EHOSTUNREACH", "ENETUNREACH"}, outcomes
        assert all(seconds < 1.0 for _, seconds in outcomes), outcomes
        assert TGT4 not in leaving and TGT6 not in leaving, leaving
        rules, routes = our_state(lab)
        assert len(rules) == 4 and any("unreachable" in r for r in routes), (rules, routes)

        # Restart from the YAML form: it takes over, exactly the same rules and routes (no duplicates).
        pod = await start_pod(
            lab, "-C", str(config), "--health", f"127.0.0.1:{demo.HEALTH_PORT}", name="pod2"
        )
        assert "already in place" in pod.output()
        assert rules_and_routes(lab) == before
        assert await echo_roundtrip(lab, TGT6, targets.echo_port, b"again") == b"again"
        assert HOOK_ADDR in rn.ip(lab.pod, "addr", "show", "dev", "lo")
        assert sysctl(lab) == "1"

        # A clean stop runs postDown (in order) and removes everything.
        assert pod.stop(signal.SIGTERM) == 0
    assert not marker.exists()
    assert HOOK_ADDR not in rn.ip(lab.pod, "addr", "show", "dev", "lo")
    assert sysctl(lab) == "0"
    assert "tungo" not in rn.ip(lab.pod, "link", "show")
    assert our_state(lab) == ([], [])


def run_in_pod(lab: Lab, args: list[str]) -> subprocess.CompletedProcess[str]:
    """The tungo CLI in the pod namespace, to completion (bounded)."""
    return subprocess.run(
        ["ip", "netns", "exec", lab.pod, *demo.tungo_command(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_start_failure_undoes_everything_and_exits_1(lab: Lab) -> None:
    args = demo.pod_command(extra_query="&postUp=ip link set nosuchdev0 up")
    proc = run_in_pod(lab, args)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tungo: error:")]
    assert len(errors) == 1 and "postUp" in errors[0] and "nosuchdev0" in errors[0], proc.stderr
    assert our_state(lab) == ([], [])
    assert "tungo" not in rn.ip(lab.pod, "link", "show")


def test_bad_tun_settings_are_one_line_exit_2(lab: Lab) -> None:
    args = demo.pod_command(routes="10.0.0.0/33")
    proc = run_in_pod(lab, args)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tungo: error: tungo: route '10.0.0.0/33'"), proc.stderr
    assert our_state(lab) == ([], [])
