"""What tungo knows how to run, and the checks that keep a ``Config`` runnable.

Owns the tables of known plugin types (handlers, listeners, connectors, dialers) with what each one
supports, as plain data: ``config.url`` reads them to resolve GOST's scheme defaults, ``validate`` reads
them to reject a config before anything starts, and the net layer's registries must list the same names
(a test compares them). Also answers small questions about a config that several callers ask (which
client TLS nodes skip verification, which interface and mark a node's sockets carry).

Pure functions over the frozen model: no I/O, no logging, no imports from layers above ``config``.
Every problem is one ``ConfigError`` whose message names the offending part.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tungo_sidecar.config.dns import DnsSettings
from tungo_sidecar.config.model import Config, Hop, Node, Plugin, Service
from tungo_sidecar.config.sniffing import SniffSettings
from tungo_sidecar.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one plugin type supports. Validation refuses options a type cannot honour."""

    udp: bool = False  # handler: serves UDP flows; connector: can carry UDP through the hop
    auth: bool = False  # accepts a username/password (handler checks it, connector sends it)
    tls: bool = False  # listener/dialer: the transport itself is TLS (needs a cert / verifies one)
    websocket: bool = False  # listener/dialer: websocket framing, ``path`` metadata (default /ws)
    tun: bool = False  # handler/listener: a TUN device; a tun handler pairs only with a tun listener
    sniffing: bool = False  # handler: applies GOST's sniffing* options (config.sniffing)
    dns: bool = False  # handler/listener: a DNS server (config.dns); pairs only with its own kind


# The names match GOST's registry names (``socks`` is GOST's alias of ``socks5``).
HANDLERS: Mapping[str, Capabilities] = MappingProxyType(
    {
        "relay": Capabilities(udp=True, auth=True),
        "socks5": Capabilities(udp=True, auth=True),
        "socks": Capabilities(udp=True, auth=True),
        "http": Capabilities(auth=True),
        "tungo": Capabilities(udp=True, tun=True, sniffing=True),
        "dns": Capabilities(udp=True, dns=True),
    }
)
LISTENERS: Mapping[str, Capabilities] = MappingProxyType(
    {
        "tcp": Capabilities(),
        "tls": Capabilities(tls=True),
        "ws": Capabilities(websocket=True),
        "wss": Capabilities(tls=True, websocket=True),
        "tungo": Capabilities(tun=True),
        "dns": Capabilities(udp=True, dns=True),
    }
)
CONNECTORS: Mapping[str, Capabilities] = MappingProxyType(
    {
        "relay": Capabilities(udp=True, auth=True),
        "socks5": Capabilities(udp=True, auth=True),
        "socks": Capabilities(udp=True, auth=True),
        "http": Capabilities(auth=True),
    }
)
DIALERS: Mapping[str, Capabilities] = MappingProxyType(
    {
        "tcp": Capabilities(),
        "tls": Capabilities(tls=True),
        "ws": Capabilities(websocket=True),
        "wss": Capabilities(tls=True, websocket=True),
    }
)

KNOWN: Mapping[str, Mapping[str, Capabilities]] = MappingProxyType(
    {"handler": HANDLERS, "listener": LISTENERS, "connector": CONNECTORS, "dialer": DIALERS}
)

# What GOST picks when a scheme does not name a part (cmd.go: unknown handler -> auto, unknown
# listener -> tcp, unknown connector -> http, unknown dialer -> tcp). "auto" is not one of ours.
GOST_DEFAULT_HANDLER = "auto"
GOST_DEFAULT_LISTENER = "tcp"
GOST_DEFAULT_CONNECTOR = "http"
GOST_DEFAULT_DIALER = "tcp"

# GOST's node selection strategies and their aliases (GOST quietly falls back to "round"; we refuse).
SELECTOR_STRATEGIES = frozenset({"round", "rr", "random", "rand", "fifo", "ha", "hash"})

MAX_PORT = 0xFFFF
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$")


def quote(text: str) -> str:
    """``"text"``: how messages show a name or a value (double quotes, escapes made visible)."""
    return json.dumps(text, ensure_ascii=False)


def known_names(kind: str) -> str:
    """``"http, relay, socks, socks5"``: the names of one kind, for error messages."""
    return ", ".join(sorted(KNOWN[kind]))


def capabilities(kind: str, name: str) -> Capabilities:
    """The capabilities of a known type; ConfigError naming the kind when it is unknown."""
    table = KNOWN[kind]
    if name not in table:
        raise ConfigError(f"unknown {kind} {quote(name)} (known: {known_names(kind)})")
    return table[name]


# -- addresses -----------------------------------------------------------------------------------------


def check_host(host: str) -> str:
    """A host as written in an address: an IPv4/IPv6 literal or a DNS name; ConfigError otherwise."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
            raise ConfigError(f"bad host {quote(host)}") from None
    return host


def split_host_port(addr: str) -> tuple[str, str]:
    """``host:port`` / ``[v6]:port`` / ``:port`` into (host, port text), no checks on either part."""
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0 or not addr[end + 1 :].startswith(":"):
            raise ConfigError(f"bad address {quote(addr)} (use [v6-address]:port)")
        return addr[1:end], addr[end + 2 :]
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ConfigError(f"address {quote(addr)} has no port")
    if ":" in host:
        raise ConfigError(f"bad address {quote(addr)} (write IPv6 addresses in brackets: [v6-address]:port)")
    return host, port


def parse_port(text: str, addr: str) -> int:
    if not text.isdigit() or int(text) > MAX_PORT:
        raise ConfigError(f"bad port {quote(text)} in {quote(addr)} (0-65535)")
    return int(text)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_listen_addr(addr: str) -> None:
    """A service address: ``[host]:port``, host optional (all addresses), port 0-65535."""
    host, port = split_host_port(addr)
    if host:
        check_host(host)
    parse_port(port, addr)


def check_node_addr(addr: str) -> None:
    """A node address: ``host:port``, both required, port 1-65535."""
    host, port = split_host_port(addr)
    if not host:
        raise ConfigError(f"address {quote(addr)} has no host")
    check_host(host)
    if parse_port(port, addr) == 0:
        raise ConfigError(f'bad port "0" in {quote(addr)} (1-65535)')


# -- the whole config ----------------------------------------------------------------------------------


def validate(config: Config) -> Config:
    """Return ``config`` when tungo can run it; otherwise ConfigError naming the first problem."""
    _unique("service", [s.name for s in config.services])
    _unique("chain", [c.name for c in config.chains])
    _unique("bypass", [b.name for b in config.bypasses])
    bypasses = {b.name for b in config.bypasses}
    chains = {c.name for c in config.chains}
    for service in config.services:
        _check_service(service, chains, bypasses)
    for chain in config.chains:
        where = f"chain {quote(chain.name)}"
        if not chain.hops:
            raise ConfigError(f"{where}: no hops")
        _unique(f"{where}: hop", [h.name for h in chain.hops])
        for hop in chain.hops:
            _check_hop(f"{where} hop {quote(hop.name)}", hop, bypasses)
    return config


def _unique(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if not name:
            raise ConfigError(f"{what}: a name is empty")
        if name in seen:
            raise ConfigError(f"{what} {quote(name)}: name used twice")
        seen.add(name)


def check_service_plugins(service: Service) -> None:
    """Handler and listener known, paired, and given only options they take (no ``service`` prefix)."""
    if service.handler.type == GOST_DEFAULT_HANDLER:
        raise ConfigError(
            f"handler {quote(GOST_DEFAULT_HANDLER)} (GOST's default) is not supported; name one of: "
            f"{known_names('handler')}"
        )
    handler = capabilities("handler", service.handler.type)
    listener = capabilities("listener", service.listener.type)
    if handler.tun != listener.tun:
        raise ConfigError(
            f"handler {quote(service.handler.type)} and listener {quote(service.listener.type)} do not "
            "pair (the tungo handler runs only on the tungo listener, and the other way round)"
        )
    if handler.dns != listener.dns:
        raise ConfigError(
            f"handler {quote(service.handler.type)} and listener {quote(service.listener.type)} do not "
            "pair (the dns handler runs only on the dns listener, and the other way round: -L dns://...)"
        )
    if service.handler.auth is not None and not handler.auth:
        raise ConfigError(f"handler {quote(service.handler.type)} takes no auth")
    sniffing = SniffSettings.from_metadata(service.handler.metadata)
    if sniffing.enabled and not handler.sniffing:
        raise ConfigError(
            f"handler {quote(service.handler.type)}: sniffing is applied by the tungo handler only "
            "(a proxy handler's clients name their target themselves)"
        )
    if handler.dns:
        DnsSettings.from_service(service)


def check_selector(hop: Hop) -> None:
    if hop.selector is not None and hop.selector.strategy not in SELECTOR_STRATEGIES:
        raise ConfigError(
            f"unknown selector strategy {quote(hop.selector.strategy)} "
            f"(known: {', '.join(sorted(SELECTOR_STRATEGIES))})"
        )


def _check_service(service: Service, chains: set[str], bypasses: set[str]) -> None:
    where = f"service {quote(service.name)}"
    try:
        check_service_plugins(service)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if service.chain is not None and service.chain not in chains:
        raise ConfigError(f"{where}: handler.chain {quote(service.chain)} names no chain")
    _check_bypasses(where, service.bypasses, bypasses)
    if not LISTENERS[service.listener.type].tun:
        try:
            check_listen_addr(service.addr)
        except ConfigError as exc:
            raise ConfigError(f"{where}: addr: {exc}") from None


def _check_bypasses(where: str, names: tuple[str, ...], known: set[str]) -> None:
    for name in names:
        if name not in known:
            raise ConfigError(f"{where}: bypass {quote(name)} names no bypass")


def _check_hop(where: str, hop: Hop, bypasses: set[str]) -> None:
    if not hop.nodes:
        raise ConfigError(f"{where}: no nodes")
    _check_bypasses(where, hop.bypasses, bypasses)
    try:
        check_selector(hop)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    _unique(f"{where}: node", [n.name for n in hop.nodes])
    for node in hop.nodes:
        here = f"{where} node {quote(node.name)}"
        try:
            connector = capabilities("connector", node.connector.type)
            capabilities("dialer", node.dialer.type)
            check_node_addr(node.addr)
        except ConfigError as exc:
            raise ConfigError(f"{here}: {exc}") from None
        if node.connector.auth is not None and not connector.auth:
            raise ConfigError(f"{here}: connector {quote(node.connector.type)} takes no auth")
        _check_bypasses(here, node.bypasses, bypasses)


# -- questions callers ask -----------------------------------------------------------------------------


def _client_tls(plugin: Plugin) -> bool:
    return DIALERS.get(plugin.type, _NO_CAPS).tls


_NO_CAPS = Capabilities()


def insecure_tls_nodes(config: Config) -> list[str]:
    """``chain/hop/node (addr)`` for every TLS-speaking node that does not verify its server.

    GOST's client default is ``secure: false`` (no certificate check); the runner warns about each one.
    """
    found: list[str] = []
    for chain in config.chains:
        for hop in chain.hops:
            for node in hop.nodes:
                tls = node.dialer.tls
                if _client_tls(node.dialer) and (tls is None or not tls.secure):
                    found.append(f"{chain.name}/{hop.name}/{node.name} ({node.addr})")
    return found


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """Where a node's own sockets go: ``SO_BINDTODEVICE`` interface and ``SO_MARK`` (0 = none)."""

    interface: str | None = None
    so_mark: int = 0


def node_socket_options(hop: Hop, node: Node) -> SocketOptions:
    """The interface and mark a node's sockets carry, with GOST's inheritance.

    A node's own metadata (``interface``, ``so_mark``) wins; else its deprecated ``interface`` field;
    else the hop's metadata, else the hop's deprecated field.
    """
    interface = (
        node.metadata.get_str("interface")
        or node.interface
        or hop.metadata.get_str("interface")
        or hop.interface
    )
    mark = node.metadata.get_int("so_mark")
    if mark is None:
        mark = hop.metadata.get_int("so_mark", 0)
    return SocketOptions(interface=interface or None, so_mark=mark or 0)


def service_socket_options(service: Service) -> SocketOptions:
    """The interface and mark of a service's outgoing (direct) sockets: its metadata, else its field."""
    interface = service.metadata.get_str("interface") or service.interface
    return SocketOptions(interface=interface or None, so_mark=service.metadata.get_int("so_mark", 0) or 0)
