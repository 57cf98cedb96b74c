"""The README's first command, end to end: ``python -m tungo_sidecar.app.demo`` (what ``scripts/demo`` runs
after set-up) builds its namespaces, pushes traffic through tungo, prints the summary, cleans up, exits 0;
interrupted half-way it still removes everything and exits 130.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tungo_sidecar.app import demo

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root + TUN"),
]

DEMO = [sys.executable, "-m", "tungo_sidecar.app.demo"]


def lab_namespaces(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"tgd{pid}x")]


def test_demo_runs_end_to_end_and_cleans_up() -> None:
    with subprocess.Popen(
        [*DEMO, "--size", "8M", "--upload", "2M"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "readyz       : 200 ready" in out
    assert "sha256 at the target" in out and "MISMATCH" not in out
    assert "20/20 answered over IPv4, 20/20 over IPv6" in out
    assert "(the relay server only)" in out
    assert "engine       : 5 TCP flows, 2 UDP sessions" in out
    # The split tunnel: the bypassed name left from the pod itself, the other through the relay.
    assert f"split tunnel : Host {demo.DIRECT_NAME} -> target saw {demo.POD4} (" in out
    assert f"split tunnel : Host {demo.TUNNEL_NAME} -> target saw {demo.SRV_TGT4} (" in out
    assert "routes: 1 direct, 6 chain, 0 refused" in out
    assert "routes, rules and TUN removed: yes" in out
    assert out.rstrip().endswith("demo OK")
    assert lab_namespaces(proc.pid) == []


def test_demo_interrupted_cleans_up() -> None:
    pipe = subprocess.PIPE
    proc = subprocess.Popen(
        [*DEMO, "--size", "1M", "--upload", "1M", "--keep", "60"], stdout=pipe, stderr=pipe, text=True
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and not line.startswith("keeping"):
            line = proc.stdout.readline()
            if not line:
                break
        assert line.startswith("keeping"), line
        assert len(lab_namespaces(proc.pid)) == 3  # the lab is up and waiting: interrupt it, as Ctrl-C would
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 130, stderr
    assert "interrupted; cleaned up" in stderr
    assert lab_namespaces(proc.pid) == []
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def test_loopback_demo_still_works() -> None:
    proc = subprocess.run(
        [*DEMO, "--loopback", "--size", "1M"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sha256       : OK" in proc.stdout and "20/20 datagrams" in proc.stdout
