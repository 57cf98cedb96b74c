"""The image, built for real: ``scripts/build-image.sh --netns`` as a subprocess.

The script makes a Debian 12 base with mmdebstrap (once; then reused as a local image), builds the
Dockerfile with buildah against it, runs the image's three commands, and runs its sidecar in network
namespaces (TUN up, HTTP through a relay, clean SIGTERM, the missing-device hint). It needs root,
buildah, podman, mmdebstrap (and runc where crun cannot run containers), a Debian mirror and PyPI, and
takes one to three minutes: it runs only with ``TUNGO_IMAGE_TEST=1`` (the ``slow`` marker alone does
not exclude a test from the default run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "build-image.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.timeout(900),  # a first run makes the base too: ~3 min here, more on a slow mirror
    pytest.mark.skipif(
        os.environ.get("TUNGO_IMAGE_TEST") != "1", reason="set TUNGO_IMAGE_TEST=1 to build the image"
    ),
]


def test_image_builds_and_runs_its_commands_and_the_sidecar() -> None:
    missing = [tool for tool in ("buildah", "podman", "mmdebstrap") if shutil.which(tool) is None]
    assert os.geteuid() == 0, "run as root"
    assert not missing, f"missing {missing}: apt-get install buildah podman mmdebstrap runc"
    proc = subprocess.run(
        [str(SCRIPT), "--netns"], capture_output=True, text=True, timeout=900, check=False, cwd=ROOT
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    for expected in (
        "uid=10001(tungo) gid=10001(tungo)",  # the default user the chart expects
        "(Python 3.11",  # tungo -V
        "usage: tungo-operator",  # the default CMD
        "{serve,certs}",  # tungo-webhook --help
        "ca.crt tls.crt tls.key",  # tungo-webhook certs, as the non-root user
        "nftables v",  # the sidecar's nft is in the image
        "chain first hop 198.18.0.1:8421 answered",  # the sidecar, started from the image
        "app GET| 200 ",  # through the TUN and the relay
        "SIGTERM: exit 0, TUN and rules gone",
        "hostPath volume of type CharDevice",  # the hint when /dev/net/tun is not in the container
        "\n== done",
    ):
        assert expected in output, expected
