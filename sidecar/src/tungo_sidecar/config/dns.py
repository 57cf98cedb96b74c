"""DNS service settings: the typed view of a ``dns`` service's handler and listener options.

GOST's keys, as go-gost/x ``handler/dns`` and ``listener/dns`` read them: ``dns`` (the upstream
servers, ``udp://IP:53``, ``tcp://IP:53`` or a bare ``IP[:port]`` meaning UDP; the handler's), ``timeout``
(one exchange with one upstream; the handler's) and the listener's ``mode`` and ``readTimeout``. Then
tungo's own keys, for split DNS (GOST has no equivalent): ``dns.local`` (servers dialled directly,
never through the chain: the cluster's DNS in a pod), ``dns.localDomains`` (names equal to or under
these go to ``dns.local``), ``dns.localNets`` (reverse lookups, ``*.in-addr.arpa`` / ``*.ip6.arpa``,
of addresses inside these CIDRs go there too) and ``dns.budget`` (the most one query waits in all).

Deliberate differences from GOST, each so that a query can neither hang nor leak:

* ``timeout`` defaults to 2 s (GOST: 5 s) and ``dns.budget`` to 4 s, below glibc's 5 s per try, so an
  app gets tungo's SERVFAIL before it gives up on its own and asks again;
* ``dns`` is required: GOST falls back to ``/etc/resolv.conf``, which in a pod served by this
  service points back at it;
* upstream hosts are IP literals: a name would have to be resolved by this very resolver;
* with ``mode`` unset the service answers on UDP *and* TCP at the same address (GOST: UDP only), since a
  truncated UDP answer sends the client to TCP; ``mode=udp`` / ``mode=tcp`` keep one of them; GOST's
  ``tls`` and ``https`` modes, DoT/DoH upstreams, its cache (``ttl``, ``async``), ``clientIP`` and the
  buffer and backlog sizes are refused, not silently ignored.

Pure: no I/O. ``DnsSettings.from_service`` is called at config time (``config.validate`` for every
``-L``, and the runner when it builds the service); every problem is one ``ConfigError`` naming the key.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from tungo_sidecar.config.model import Metadata, Service
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.proto.address import Address, Network

IPNetwork = IPv4Network | IPv6Network

DNS_PORT = 53
#: One exchange with one upstream (GOST's ``timeout``; GOST: 5 s). Through a relay, the first try of a
#: query also pays the chain's TCP + TLS + websocket handshake.
DEFAULT_TIMEOUT = 2.0
#: A whole query, all tries together; then the client gets SERVFAIL. Below glibc's 5 s per try.
DEFAULT_BUDGET = 4.0
#: A TCP client's silence before its connection is closed (GOST's listener ``readTimeout``; RFC 7766
#: §6.2.3 asks for idle timeouts of the order of seconds).
DEFAULT_READ_TIMEOUT = 10.0
MAX_TIMEOUT = 30.0
MAX_READ_TIMEOUT = 300.0
_MODES = ("udp", "tcp")
_SCHEMES = {"udp": Network.UDP, "tcp": Network.TCP}
_UNSUPPORTED_SCHEMES = {"tls": "DNS over TLS", "dot": "DNS over TLS", "https": "DNS over HTTPS"}
_BOUNDED = "tungo bounds messages itself: 4096-byte queries, UDP answers cut to each client's size"
#: GOST options tungo does not apply; refused so that a config never means more than it does.
_UNSUPPORTED_KEYS = {
    "ttl": "tungo keeps no answer cache: every query is forwarded",
    "async": "tungo keeps no answer cache: every query is forwarded",
    "clientIP": "tungo sends no EDNS client subnet",
    "bufferSize": _BOUNDED,
    "readBufferSize": _BOUNDED,
    "backlog": "tungo bounds the queries in flight itself",
    "writeTimeout": "dns.budget bounds each query, its answer included",
    "mptcp": "no multipath TCP",
}
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One DNS server to forward to, over UDP or TCP."""

    network: Network
    addr: Address

    def __str__(self) -> str:
        return f"{self.network}://{self.addr}"


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """Everything a DNS service needs, validated. ``local_domains`` are lower-case, without dots at
    either end."""

    upstreams: tuple[Upstream, ...]
    local: tuple[Upstream, ...] = ()
    local_domains: tuple[str, ...] = ()
    local_nets: tuple[IPNetwork, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    budget: float = DEFAULT_BUDGET
    udp: bool = True
    tcp: bool = True
    read_timeout: float = DEFAULT_READ_TIMEOUT

    @classmethod
    def from_service(cls, service: Service) -> DnsSettings:
        return parse_dns_settings(service.handler.metadata, service.listener.metadata)


def parse_dns_settings(handler: Metadata, listener: Metadata | None = None) -> DnsSettings:
    """Parse and validate; every problem is one ``ConfigError`` naming the key and the value."""
    listener = listener if listener is not None else Metadata()
    for key, why in _UNSUPPORTED_KEYS.items():
        for md in (handler, listener):
            if md.get(key) not in (None, ""):
                raise ConfigError(f"dns: option {_quote(key)} is not supported by tungo ({why})")
    upstreams = _upstreams(handler, "dns")
    if not upstreams:
        raise ConfigError(
            "dns: no upstream server: give dns=udp://IP:53 (or tcp://IP:53, comma-separated); tungo does "
            "not fall back to /etc/resolv.conf, which in a pod points back at this service"
        )
    local = _upstreams(handler, "dns.local")
    domains = tuple(dict.fromkeys(_domain(text) for text in _list(handler, "dns.localDomains")))
    nets = tuple(dict.fromkeys(_network(text) for text in _list(handler, "dns.localNets")))
    if local and not (domains or nets):
        raise ConfigError("dns.local: give dns.localDomains (or dns.localNets): which names go there?")
    if (domains or nets) and not local:
        key = "dns.localDomains" if domains else "dns.localNets"
        raise ConfigError(
            f"{key}: give dns.local, the servers those names go to (e.g. dns.local=udp://10.96.0.10:53)"
        )
    timeout = _duration(handler, "timeout", DEFAULT_TIMEOUT, MAX_TIMEOUT)
    budget = _duration(handler, "dns.budget", DEFAULT_BUDGET, MAX_TIMEOUT)
    read_timeout = _duration(listener, "readTimeout", DEFAULT_READ_TIMEOUT, MAX_READ_TIMEOUT)
    mode = (listener.get_str("mode") or "").strip().lower()
    if mode and mode not in _MODES:
        raise ConfigError(
            f"dns: mode {_quote(mode)} is not supported by tungo "
            "(leave it unset for UDP and TCP, or give udp or tcp)"
        )
    return DnsSettings(
        upstreams=upstreams,
        local=local,
        local_domains=domains,
        local_nets=nets,
        timeout=timeout,
        budget=budget,
        udp=mode != "tcp",
        tcp=mode != "udp",
        read_timeout=read_timeout,
    )


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # as config.validate.quote shows values


def _list(md: Metadata, key: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in md.get_list(key) if item.strip())


def _upstreams(md: Metadata, key: str) -> tuple[Upstream, ...]:
    return tuple(dict.fromkeys(parse_upstream(text, key) for text in _list(md, key)))


def parse_upstream(text: str, key: str = "dns") -> Upstream:
    """``udp://IP[:port]``, ``tcp://IP[:port]`` or ``IP[:port]`` (UDP), port 53 by default (GOST's
    exchanger's grammar, less DoT/DoH and host names)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "udp", text
    scheme = scheme.lower()
    if scheme in _UNSUPPORTED_SCHEMES:
        raise ConfigError(
            f"{key}: {_quote(text)}: {_UNSUPPORTED_SCHEMES[scheme]} is not supported by tungo (use udp:// or tcp://)"
        )
    if scheme not in _SCHEMES:
        raise ConfigError(f"{key}: {_quote(text)}: unknown scheme {_quote(scheme)} (use udp:// or tcp://)")
    rest = rest.rstrip("/")
    try:
        addr = Address.parse(rest, default_port=DNS_PORT)
    except ValueError as exc:
        raise ConfigError(f"{key}: {_quote(text)}: {exc}") from None
    if addr.ip is None:
        raise ConfigError(
            f"{key}: {_quote(text)}: give the server's IP address (a name would have to be resolved by this "
            "very DNS service)"
        )
    if addr.port == 0:
        raise ConfigError(f"{key}: {_quote(text)}: port 0")
    return Upstream(_SCHEMES[scheme], Address(str(addr.ip), addr.port))


def _domain(text: str) -> str:
    name = text.strip().lower().strip(".")
    if not name:
        raise ConfigError(
            f"dns.localDomains: {_quote(text)} would send every name to dns.local "
            "(that is what a pod does without this service: leave it out instead)"
        )
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(f"dns.localDomains: {_quote(text)} is not a domain name (such as cluster.local)")
    return name


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"dns.localNets: {_quote(text)}: expected a CIDR such as 10.96.0.0/12") from None


def _duration(md: Metadata, key: str, default: float, most: float) -> float:
    seconds = md.get_duration(key, default)
    assert seconds is not None
    if seconds <= 0:
        return default  # GOST: 0 means "not set"
    if seconds > most:
        raise ConfigError(f"dns: {key} {seconds:g}s is too long (at most {most:g}s)")
    return seconds
