"""tun.device: bad arguments are refused up front; a real TUN opens with and without offload and is
removed on close (inside a throwaway namespace); a TUN that cannot be opened is one ``tungo: error:``
line that says what to do, for each real cause (missing node, no NET_ADMIN, non-root, device cgroup)."""

from __future__ import annotations

import errno
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tun_netns import NetnsSet, in_netns, sh

from tungo_sidecar.errors import TunError
from tungo_sidecar.tun.device import open_hint, open_tun, remove_persistent

NETS = [ipaddress.ip_interface("192.168.123.1/24"), ipaddress.ip_interface("fd00:123::1/64")]
TUNGO = Path(sys.executable).with_name("tungo")
# A fresh network namespace (unshare --net): should the open succeed after all, nothing reaches the host.
TUN_CLI = [str(TUNGO), "-L", "tungo://:0?name=tgerr0&net=192.168.123.1/24"]
DEVICES_V1 = Path("/sys/fs/cgroup/devices")  # the cgroup v1 devices controller, where mounted


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(TunError, match="at least one address"):
        open_tun("tgbad0", 1420, [])
    with pytest.raises(TunError, match="mtu 67 out of range"):
        open_tun("tgbad0", 67, NETS)
    with pytest.raises(TunError, match="mtu 70000 out of range"):
        open_tun("tgbad0", 70000, NETS)


@pytest.mark.netns
@pytest.mark.parametrize("offload", [True, False])
def test_open_configure_and_close(offload: bool) -> None:
    namespaces = NetnsSet()
    try:
        ns = namespaces.add("tgdev")
        device = in_netns(ns, lambda: open_tun("tgdev0", 1400, NETS, offload=offload))
        try:
            assert device.vnet_hdr is offload
            assert device.header_len == (10 if offload else 0)
            link = sh("ip", "-n", ns, "addr", "show", "tgdev0")
            assert "mtu 1400" in link and "UP" in link
            assert "192.168.123.1/24" in link and "fd00:123::1/64" in link
        finally:
            device.close()
        proc = subprocess.run(["ip", "-n", ns, "link", "show", "tgdev0"], capture_output=True, check=False)
        assert proc.returncode != 0  # a non-persistent TUN goes away with its descriptor
    finally:
        namespaces.close()


@pytest.mark.netns
def test_persistent_device_outlives_close_and_reattaches() -> None:
    namespaces = NetnsSet()
    try:
        ns = namespaces.add("tgdev")
        first = in_netns(ns, lambda: open_tun("tgper0", 1420, NETS, persistent=True))
        first.close()
        assert "tgper0" in sh("ip", "-n", ns, "link", "show", "tgper0")
        # A restart attaches to the same device; re-adding its addresses is harmless.
        second = in_netns(ns, lambda: open_tun("tgper0", 1420, NETS, persistent=True))
        second.close()
        assert sh("ip", "-n", ns, "addr", "show", "tgper0").count("192.168.123.1/24") == 1
        in_netns(ns, lambda: remove_persistent("tgper0"))
        in_netns(ns, lambda: remove_persistent("tgper0"))  # already gone: fine
        gone = subprocess.run(["ip", "-n", ns, "link", "show", "tgper0"], capture_output=True, check=False)
        assert gone.returncode != 0
    finally:
        namespaces.close()


@pytest.mark.parametrize(
    ("code", "net_admin", "fragments"),
    [
        (errno.ENOENT, True, ["/dev/net/tun is missing", "hostPath volume of type CharDevice", "--device"]),
        (errno.ENODEV, True, ["no TUN driver", "modprobe tun"]),
        (errno.EACCES, False, ["closed to uid 10001", "uid 0 with NET_ADMIN", "--cap-add NET_ADMIN"]),
        (errno.EPERM, False, ["(uid 10001) lacks the NET_ADMIN capability", "runAsUser 0"]),
        (
            errno.EPERM,
            True,
            ["device cgroup refuses", "runc 1.2.0-1.2.3", "kubernetes/kubernetes#129157", "runc 1.2.4+"],
        ),
        (errno.EPERM, None, ["NET_ADMIN is missing", "device cgroup refuses"]),
    ],
)
def test_open_hint_says_what_to_do(code: int, net_admin: bool | None, fragments: list[str]) -> None:
    hint = open_hint(code, 10001, net_admin)
    assert "\n" not in hint
    for fragment in fragments:
        assert fragment in hint


def test_open_hint_is_empty_for_other_errors() -> None:
    assert open_hint(errno.EBUSY, 0, True) == ""
    assert open_hint(None, 0, None) == ""


def _tun_error(argv: list[str]) -> str:
    """Run ``argv`` (ending in the tungo command), expect exit 1 and one error line; return that line."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tungo: error:")]
    assert proc.returncode == 1 and len(errors) == 1, (proc.returncode, proc.stderr)
    assert errors[0].startswith("tungo: error: cannot open TUN device 'tgerr0': "), errors[0]
    return errors[0]


@pytest.mark.netns
def test_missing_device_node() -> None:
    # A private mount namespace with an empty /dev/net: what a container without the node sees.
    line = _tun_error(
        [
            "unshare",
            "--net",
            "--mount",
            "sh",
            "-c",
            'mount -t tmpfs none /dev/net && exec "$@"',
            "sh",
            *TUN_CLI,
        ]
    )
    assert "No such file or directory. /dev/net/tun is missing" in line
    assert "hostPath volume of type CharDevice" in line and "--device /dev/net/tun" in line


@pytest.mark.netns
def test_root_without_net_admin() -> None:
    drop = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]
    line = _tun_error(["unshare", "--net", *drop, *TUN_CLI])
    assert "Operation not permitted. tungo (uid 0) lacks the NET_ADMIN capability" in line
    assert "--user 0 --cap-add NET_ADMIN" in line


@pytest.mark.netns
def test_non_root_user() -> None:
    # The image's default user. A 0600 node (as here) refuses the open (EACCES); a 0666 node lets it
    # open and TUNSETIFF refuses (EPERM, no NET_ADMIN): both answers say to run as uid 0.
    nobody = ["setpriv", "--reuid", "10001", "--regid", "10001", "--clear-groups"]
    line = _tun_error(["unshare", "--net", *nobody, *TUN_CLI])
    assert "uid 10001" in line and "run tungo as uid 0 with NET_ADMIN added" in line


@pytest.fixture
def tun_denying_cgroup() -> Iterator[Path]:
    """A cgroup v1 devices group that refuses char 10:200, as runc 1.2.0-1.2.3 set up for every container."""
    if not (DEVICES_V1 / "devices.deny").exists():
        pytest.skip("no cgroup v1 devices controller (cgroup v2 filters devices with BPF programs)")
    group = DEVICES_V1 / f"tungo-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "devices.deny").write_text("c 10:200 rwm\n")
        yield group
    finally:
        group.rmdir()  # the process that joined it has exited


@pytest.mark.netns
def test_device_cgroup_refuses_the_node(tun_denying_cgroup: Path) -> None:
    # Root, NET_ADMIN, the node present: only the device cgroup says no (kubernetes/kubernetes#129157).
    join = f'echo $$ > {tun_denying_cgroup / "cgroup.procs"} && exec "$@"'
    line = _tun_error(["sh", "-c", join, "sh", "unshare", "--net", *TUN_CLI])
    assert "Operation not permitted. NET_ADMIN is present, so the container's device cgroup refuses" in line
    assert "runc 1.2.0-1.2.3" in line and "runc 1.2.4+" in line and "kubernetes/kubernetes#129157" in line
