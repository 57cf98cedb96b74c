"""Sniffing settings: the typed view of GOST's ``sniffing*`` handler options.

GOST's keys, read from the handler's metadata (``-L "tungo://...?sniffing=true"`` puts them there):
``sniffing`` (TCP: read the first bytes, take the HTTP ``Host`` / TLS SNI as the flow's name),
``sniffing.udp`` (tungo: learn names from DNS answers seen on UDP port 53, so later flows to those
addresses match domain rules; GOST only records them), ``sniffing.timeout`` (how long a new TCP flow
waits for its first bytes) and ``sniffing.fallback`` (when the chain cannot reach the sniffed name, dial
the original address on the same route). Parsed once by the TUN service at start-up; ``tun/`` reads the
result, never the raw metadata.

Two deliberate differences from GOST, both so that a flow can never hang on the sniffer:
``sniffing.timeout`` defaults to 300 ms (GOST: no deadline at all, so a server-speaks-first protocol
such as SSH or SMTP waits forever; sing-box uses 300 ms for the same job), and it is capped at 60 s.
``sniffing.responseTimeout`` (GOST's limit on reading the upstream's reply headers in its HTTP/TLS
inspection) is refused: tungo splices after the first bytes and never parses replies.

Pure: no I/O. Every problem is one ``ConfigError`` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from tungo_sidecar.config.model import Metadata
from tungo_sidecar.errors import ConfigError

#: The wait for a new flow's first bytes when ``sniffing.timeout`` is not given (see the docstring).
DEFAULT_TIMEOUT = 0.3
MAX_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class SniffSettings:
    """What the TUN handler sniffs. ``SniffSettings()`` sniffs nothing."""

    tcp: bool = False
    udp: bool = False
    timeout: float = DEFAULT_TIMEOUT
    fallback: bool = False

    @property
    def enabled(self) -> bool:
        return self.tcp or self.udp

    @classmethod
    def from_metadata(cls, metadata: Metadata) -> SniffSettings:
        if metadata.get("sniffing.responseTimeout") is not None:
            raise ConfigError(
                "sniffing.responseTimeout: not supported by tungo (it splices after the first bytes and "
                "never reads the upstream's reply headers)"
            )
        timeout = metadata.get_duration("sniffing.timeout", DEFAULT_TIMEOUT)
        assert timeout is not None
        if timeout <= 0:
            timeout = DEFAULT_TIMEOUT  # GOST: 0 means "not set"
        if timeout > MAX_TIMEOUT:
            raise ConfigError(
                f"sniffing.timeout: {timeout:g}s is too long (at most {MAX_TIMEOUT:g}s: a new connection "
                "waits that long when the server speaks first)"
            )
        return cls(
            tcp=metadata.get_bool("sniffing"),
            udp=metadata.get_bool("sniffing.udp"),
            timeout=timeout,
            fallback=metadata.get_bool("sniffing.fallback"),
        )
