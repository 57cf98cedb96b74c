"""The TUN device: open it (with virtio-net header and offloads when the kernel agrees), address it, close it.

Owns the file descriptor and the link's addresses/MTU/up state. Called by the app at start-up
(``open_tun``, or ``open_tun_async`` from a coroutine) and handed to ``tun.engine.TunEngine``. Routes,
rules and postUp belong to ``routing``; this module never touches them, and never reads packets itself.

Why offload: with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` (CSUM, TSO4, TSO6) the kernel hands over and
accepts ~64 KiB TCP super-packets with the checksum left for the device to complete, so Python touches
~40 times fewer packets (DESIGN.md §3: ~8-10 Gbit/s against ~1 Gbit/s with plain 1,500-byte packets).
Where a kernel refuses, the device falls back to plain packets (logged once) and everything still works.
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
        raise TunError(f"cannot open TUN device {name!r}: {exc}") from exc


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
