"""tun.device: bad arguments are refused up front; a real TUN opens with and without offload and is
removed on close (inside a throwaway namespace)."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest
from tun_netns import NetnsSet, in_netns, sh

from tungo_sidecar.errors import TunError
from tungo_sidecar.tun.device import open_tun, remove_persistent

NETS = [ipaddress.ip_interface("192.168.123.1/24"), ipaddress.ip_interface("fd00:123::1/64")]


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
