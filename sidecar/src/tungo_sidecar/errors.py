"""The one error tree of the sidecar.

Every exception the sidecar raises on purpose derives from ``TungoError``; callers catch the narrowest
class they can act on. Always chain (``raise X(...) from exc``) so the cause stays visible in logs.

    TungoError
    ├── ConfigError                 bad -L/-F URL, bad YAML, bad metadata value (exit code 2)
    ├── ProtocolError               a peer sent bytes that do not parse (relay, socks5, http, ws)
    │   ├── RelayProtocolError      malformed relay frame, wrong version, oversized feature
    │   ├── Socks5ProtocolError     malformed socks5 message (``.reply``: the REP a server should send)
    │   ├── HttpProtocolError       malformed or oversized HTTP CONNECT head (``.status``: what to answer)
    │   └── DnsError (proto.dns)    a DNS message whose header or question does not parse (also a ValueError)
    │       └── QueryError (proto.dnsmsg)  a query the DNS service refuses (``.reply``: the answer, or None)
    ├── RelayStatusError            a relay server answered non-OK; one subclass per status code
    │   ├── RelayBadRequest (1)         ├── RelayServiceUnavailable (5)
    │   ├── RelayUnauthorized (2)       ├── RelayHostUnreachable (6)
    │   ├── RelayForbidden (3)          ├── RelayNetworkUnreachable (7)
    │   ├── RelayTimeout (4)            └── RelayInternalServerError (8)
    ├── ProxyRefusedError           a socks5/http proxy refused (auth or connect), with its reply code
    ├── DialError                   could not reach a node or a target (refused, unreachable, timeout)
    │   └── RouteRefusedError       the route decision left the flow no dialer (policy refusal)
    └── TunError                    TUN device or routing could not be set up
"""

from __future__ import annotations


class TungoError(Exception):
    """Base class of every error the sidecar raises on purpose."""


class ConfigError(TungoError):
    """A configuration value is invalid; the message names the offending part."""


class ProtocolError(TungoError):
    """A peer sent bytes that do not follow the protocol."""


class RelayProtocolError(ProtocolError):
    """A relay frame is malformed: wrong version, truncated or oversized feature, bad address."""


class Socks5ProtocolError(ProtocolError):
    """A socks5 message is malformed. ``reply`` is the REP code a server should answer before closing
    (e.g. 8 for an unknown address type), or None when the peer gets no reply (bad version)."""

    def __init__(self, message: str, reply: int | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class HttpProtocolError(ProtocolError):
    """An HTTP CONNECT head is malformed or too large. ``status`` is the HTTP status a server should
    answer (400, 431...), or None on the client side."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RelayStatusError(TungoError):
    """A relay server answered with a non-OK status. ``status`` is the wire code."""

    status: int = -1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or f"relay: status {self.status} ({type(self).__name__})")


class RelayBadRequest(RelayStatusError):
    status = 1


class RelayUnauthorized(RelayStatusError):
    status = 2


class RelayForbidden(RelayStatusError):
    status = 3


class RelayTimeout(RelayStatusError):
    status = 4


class RelayServiceUnavailable(RelayStatusError):
    status = 5


class RelayHostUnreachable(RelayStatusError):
    status = 6


class RelayNetworkUnreachable(RelayStatusError):
    status = 7


class RelayInternalServerError(RelayStatusError):
    status = 8


RELAY_STATUS_ERRORS: dict[int, type[RelayStatusError]] = {
    cls.status: cls
    for cls in (
        RelayBadRequest,
        RelayUnauthorized,
        RelayForbidden,
        RelayTimeout,
        RelayServiceUnavailable,
        RelayHostUnreachable,
        RelayNetworkUnreachable,
        RelayInternalServerError,
    )
}


class ProxyRefusedError(TungoError):
    """A socks5 or http proxy refused the request. ``code`` is its reply code (socks5 REP / http status)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class DialError(TungoError):
    """A node or target could not be reached (refused, unreachable, timed out, TLS failed)."""


class RouteRefusedError(DialError):
    """The route decision gave a flow a path with no dialer (``direct`` and no direct dialer): refused by
    policy, which the TUN engine tells the app as "administratively prohibited"."""


class TunError(TungoError):
    """The TUN device, its addresses or its routes could not be set up."""
