"""The TUN device: open it (with virtio-net header and offloads when the kernel agrees), address it, close it.

Owns the file descriptor and the link's addresses/MTU/up state. Called by the app at start-up
(``open_tun``, or ``open_tun_async`` from a coroutine) and handed to ``tun.engine.TunEngine``. Routes,
rules and postUp belong to ``routing``; this module never touches them, and never reads packets itself.

Why offload: with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` (CSUM, TSO4, TSO6) the kernel hands over and
accepts ~64 KiB TCP super-packets with the checksum left for the device to complete, so Python touches
~40 times fewer packets (DESIGN.md §3: ~8-10 Gbit/s against ~1 Gbit/s with plain 1,500-byte packets).
Where a kernel refuses, the device falls back to plain packets (logged once) and everything still works.

When the device cannot be opened, the error says what to do (``open_hint``): the cause is nearly always
the container, not tungo — no ``/dev/net/tun`` node, no ``NET_ADMIN``, or a device cgroup that refuses
char 10:200 although the node is mounted (runc 1.2.0-1.2.3 and crun 1.5-1.19 dropped it from their
default allowed devices: kubernetes/kubernetes#129157).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytun
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tungo_sidecar.errors import TunError
from tungo_sidecar.proto.packet import VNET_HDR_LEN

log = logging.getLogger(__name__)

# linux/if_tun.h: _IOW('T', 208, unsigned int) and _IOW('T', 216, int).
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
IFA_F_NODAD = 0x02  # no duplicate address detection: a TUN has no neighbours, and the listener must bind now
CAP_NET_ADMIN = 12  # linux/capability.h: bit 12 of CapEff in /proc/self/status

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_fallback_logged = False


@dataclass(slots=True)
class TunDevice:
    """An open TUN: ``vnet_hdr`` says each packet carries the 10-byte virtio-net header first."""

    name: str
    mtu: int
    addresses: tuple[IPInterface, ...]
    vnet_hdr: bool
    persistent: bool = False
    _tun: Any = field(default=None, repr=False)

    @property
    def fd(self) -> int:
        return int(self._tun.fileno())

    @property
    def header_len(self) -> int:
        """Bytes before the IP header in every packet read or written."""
        return VNET_HDR_LEN if self.vnet_hdr else 0

    def close(self) -> None:
        """Close the descriptor; the kernel removes the link unless the device is persistent."""
        if self._tun is not None:
            tun, self._tun = self._tun, None
            tun.close()


def _open(name: str, vnet_hdr: bool) -> Any:
    flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)
    try:
        return pytun.TunTapDevice(name=name, flags=flags)
    except (pytun.Error, OSError) as exc:
        hint = open_hint(exc.errno, os.getuid(), _has_net_admin())
        raise TunError(f"cannot open TUN device {name!r}: {exc}" + (f". {hint}" if hint else "")) from exc


def open_hint(code: int | None, uid: int, net_admin: bool | None) -> str:
    """What to do when opening ``/dev/net/tun`` (or its ``TUNSETIFF``) failed with ``code``; "" if unknown.

    One sentence, no newline: the CLI prints it after ``tungo: error:``. ``net_admin`` (None: unknown)
    tells the two causes of EPERM apart: a missing capability, or a device cgroup that refuses the node.
    """
    run_as_root = (
        "run tungo as uid 0 with NET_ADMIN added (Kubernetes grants added capabilities to uid 0 only: "
        "runAsUser 0, capabilities.add [NET_ADMIN]; docker/podman: --user 0 --cap-add NET_ADMIN)"
    )
    cgroup = (
        "the container's device cgroup refuses /dev/net/tun (char 10:200): runc 1.2.0-1.2.3 and crun "
        "1.5-1.19 left it out of their default allowed devices (kubernetes/kubernetes#129157); upgrade "
        "the node's runtime (runc 1.2.4+, crun 1.20+) or grant the device (a device plugin, a privileged "
        "container; docker/podman: --device /dev/net/tun)"
    )
    if code == errno.ENOENT:
        return (
            "/dev/net/tun is missing: mount the node's /dev/net/tun into the container (Kubernetes: a "
            "hostPath volume of type CharDevice, as the injected sidecar has; docker/podman: --device "
            "/dev/net/tun); on the host itself, load the driver: modprobe tun"
        )
    if code in (errno.ENODEV, errno.ENXIO):
        return "The kernel has no TUN driver: load it on the node with modprobe tun"
    if code == errno.EACCES:
        return f"/dev/net/tun is closed to uid {uid}: {run_as_root}"
    if code == errno.EPERM:
        if net_admin is False:
            return f"tungo (uid {uid}) lacks the NET_ADMIN capability: {run_as_root}"
        if net_admin:
            return f"NET_ADMIN is present, so {cgroup}"
        return f"Either NET_ADMIN is missing: {run_as_root}; or {cgroup}"
    return ""


def _has_net_admin() -> bool | None:
    """Whether this process holds CAP_NET_ADMIN now (None when /proc does not say)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool((int(line.split()[1], 16) >> CAP_NET_ADMIN) & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _enable_offload(tun: Any) -> bool:
    """Ask for checksum + TSO offload; False (and the caller falls back) if the kernel refuses."""
    try:
        fcntl.ioctl(tun.fileno(), TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        fcntl.ioctl(tun.fileno(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError as exc:
        global _fallback_logged  # noqa: PLW0603 - "log once" is process-wide by intent
        if not _fallback_logged:
            _fallback_logged = True
            log.warning("TUN offload refused (%s): falling back to plain packets (slower TCP)", exc)
        return False
    return True


def _configure_link(name: str, mtu: int, addresses: Sequence[IPInterface]) -> None:
    try:
        with IPRoute() as ipr:
            links = ipr.link_lookup(ifname=name)
            if not links:
                raise TunError(f"TUN device {name!r} vanished after open")
            index = links[0]
            ipr.link("set", index=index, mtu=mtu)
            for iface in addresses:
                # "replace" keeps a restart on a persistent device idempotent.
                ipr.addr(
                    "replace",
                    index=index,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                    flags=IFA_F_NODAD if iface.version == 6 else 0,
                )
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise TunError(f"cannot configure TUN device {name!r}: {exc}") from exc


def open_tun(
    name: str,
    mtu: int,
    addresses: Sequence[IPInterface],
    *,
    offload: bool = True,
    persistent: bool = False,
) -> TunDevice:
    """Create (or attach to a persistent) TUN ``name``, set MTU and addresses, bring it up.

    The descriptor is non-blocking (the engine reads it from the event loop). Raises ``TunError`` when
    the device cannot be opened or configured; nothing is left behind then.
    """
    if not addresses:
        raise TunError(f"TUN device {name!r} needs at least one address")
    if not 68 <= mtu <= 65535:
        raise TunError(f"TUN device {name!r}: mtu {mtu} out of range 68-65535")
    tun = _open(name, vnet_hdr=offload)
    vnet_hdr = offload
    if offload and not _enable_offload(tun):
        tun.close()
        tun = _open(name, vnet_hdr=False)
        vnet_hdr = False
    device = TunDevice(tun.name, mtu, tuple(addresses), vnet_hdr, persistent, tun)
    try:
        if persistent:
            tun.persist(True)
        os.set_blocking(tun.fileno(), False)
        _configure_link(device.name, mtu, addresses)
    except (TunError, OSError, pytun.Error) as exc:
        if persistent:
            tun.persist(False)
        device.close()
        if isinstance(exc, TunError):
            raise
        raise TunError(f"cannot set up TUN device {name!r}: {exc}") from exc
    log.info("TUN %s up: mtu %d, %s, offload %s", device.name, mtu, ", ".join(map(str, addresses)), vnet_hdr)
    return device


async def open_tun_async(
    name: str,
    mtu: int,
    addresses: Sequence[IPInterface],
    *,
    offload: bool = True,
    persistent: bool = False,
) -> TunDevice:
    """``open_tun`` from a coroutine: pyroute2's synchronous ``IPRoute`` refuses a running loop's thread."""
    return await asyncio.to_thread(open_tun, name, mtu, addresses, offload=offload, persistent=persistent)


def remove_persistent(name: str) -> None:
    """Delete a persistent TUN left behind (the app's explicit teardown); absent is fine."""
    try:
        with IPRoute() as ipr:
            links = ipr.link_lookup(ifname=name)
            if links:
                ipr.link("del", index=links[0])
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise TunError(f"cannot remove TUN device {name!r}: {exc}") from exc
