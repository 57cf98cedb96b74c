"""Host/port addresses as the proxy protocols carry them (IPv4, IPv6 or a domain name).

Shared by the relay, socks5 and http codecs and by every dialer. Pure data; no resolution here.
Also the ``ATYP ADDR PORT`` byte layout (RFC 1928) used by both socks5 and relay.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from tungo_sidecar.errors import ProtocolError


class Network(StrEnum):
    """The transport protocol a flow uses (GOST's ``network``)."""

    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class Address:
    """A target as a proxy request names it: ``host`` is an IP literal or a domain name."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} out of range 0-65535")

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The host as an IP address, or None when it is a domain name."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> Address:
        """Parse ``host:port``, ``[v6]:port`` or (with ``default_port``) a bare host."""
        host, sep, port_text = text.rpartition(":")
        if text.startswith("[") and "]" in text:
            bracket = text.index("]")
            host, rest = text[1:bracket], text[bracket + 1 :]
            if rest.startswith(":"):
                port_text, sep = rest[1:], ":"
            elif rest == "":
                port_text, sep = "", ""
            else:
                raise ValueError(f"bad address {text!r}")
        elif not sep or ":" in host:
            # No colon at all, or an unbracketed IPv6 literal: the whole text is the host.
            host, port_text, sep = text, "", ""
        if not sep or port_text == "":
            if default_port is None:
                raise ValueError(f"address {text!r} has no port")
            return cls(host, default_port)
        if not port_text.isdigit():
            raise ValueError(f"bad port {port_text!r} in address {text!r}")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


# ``ATYP ADDR PORT``: RFC 1928's address layout, which GOST's relay address feature reuses byte for byte.
# Shared by proto/socks5.py and proto/relay.py; each passes its own ProtocolError subclass.


class AddressType(IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


def encode_address(address: Address) -> bytes:
    """``ATYP ADDR PORT``: IPv4 / IPv6 literal by value, anything else as a domain name (<= 255 bytes)."""
    ip = address.ip
    port = struct.pack("!H", address.port)
    if isinstance(ip, ipaddress.IPv4Address):
        return bytes([AddressType.IPV4]) + ip.packed + port
    if isinstance(ip, ipaddress.IPv6Address):
        # As GOST (Go's net.IP.To4): an IPv4-mapped address travels as IPv4; a scoped address
        # (fe80::1%eth0) is not an IP to Go and travels as a name, so the zone is not lost.
        if ip.ipv4_mapped is not None:
            return bytes([AddressType.IPV4]) + ip.ipv4_mapped.packed + port
        if ip.scope_id is None:
            return bytes([AddressType.IPV6]) + ip.packed + port
    name = address.host.encode()  # GOST writes the Go string's bytes (UTF-8); IDNA is the dialer's job
    if len(name) > 0xFF:
        raise ValueError(f"domain name of {len(name)} bytes exceeds 255")
    return bytes([AddressType.DOMAIN, len(name)]) + name + port


def decode_address(
    data: bytes | bytearray | memoryview,
    error: type[ProtocolError],
    *,
    allow_trailing: bool = False,
) -> tuple[Address, int]:
    """Parse ``ATYP ADDR PORT`` at the start of ``data``; return the address and bytes consumed.

    Raises ``error`` on a bad ATYP, truncation, a non-UTF-8 domain or (unless ``allow_trailing``)
    extra bytes. A truncated buffer raises; incremental callers check lengths with
    ``address_length`` first.
    """
    needed = address_length(data, error)
    if needed is None or len(data) < needed:
        raise error(f"truncated address ({len(data)} bytes)")
    if not allow_trailing and len(data) != needed:
        raise error(f"{len(data) - needed} bytes after the address")
    atyp = data[0]
    port = (data[needed - 2] << 8) | data[needed - 1]
    raw = bytes(data[1 : needed - 2])
    if atyp == AddressType.IPV4:
        host = str(ipaddress.IPv4Address(raw))
    elif atyp == AddressType.IPV6:
        host = str(ipaddress.IPv6Address(raw))
    else:
        try:
            host = raw[1:].decode()
        except UnicodeDecodeError as exc:
            raise error("domain name is not valid UTF-8") from exc
    return Address(host, port), needed


def address_length(data: bytes | bytearray | memoryview, error: type[ProtocolError]) -> int | None:
    """Total length of the ``ATYP ADDR PORT`` at the start of ``data``, or None if not yet knowable.

    Raises ``error`` on an unknown ATYP.
    """
    if not data:
        return None
    atyp = data[0]
    if atyp == AddressType.IPV4:
        return 1 + 4 + 2
    if atyp == AddressType.IPV6:
        return 1 + 16 + 2
    if atyp == AddressType.DOMAIN:
        if len(data) < 2:
            return None
        return 2 + data[1] + 2
    raise error(f"bad address type {atyp:#04x}")
