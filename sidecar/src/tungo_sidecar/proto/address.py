"""Host/port addresses as the proxy protocols carry them (IPv4, IPv6 or a domain name).

Shared by the relay, socks5 and http codecs and by every dialer. Pure data; no resolution here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum


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
