"""TUN settings: the typed, frozen view of a ``tungo`` service's listener, handler and service options.

Owns the parsing and validation of what go-gost/x ``listener/tungo`` (same keys as ``listener/tun``)
reads from the listener's metadata — ``name``, ``net``, ``mtu``, ``gw``, ``route``, ``routes``, ``dns``,
each also accepted with GOST's ``tun.`` prefix (as are tungo's own keys below) — plus the handler's
``udpTimeout`` (alias ``tungo.udpTimeout``) and the service's ``postUp``/``postDown``/``interface``.
The runner calls ``TunSettings.from_service`` once at start-up; the TUN engine (``tun/``) and the
routing plan (``routing/plan.py``) read the result and never raw metadata.

Where GOST silently skips a value it cannot parse (a ``net`` without a prefix, a bad CIDR in ``route``,
a bad ``dns`` address), we refuse it with one ``ConfigError`` line naming the key and the value: a typo
must not start a tunnel that captures less than the user asked for. Deliberate differences, kept small:
``net`` defaults to ``192.168.123.1/24`` (GOST has no default; DESIGN.md §2 picks this one), a plain
address in ``route``/``routes`` is a host route (GOST ignores it for system routes), a gateway must lie
inside a TUN ``net`` of its family (routes are for capturing traffic into the TUN; a gateway elsewhere
would send it around the tunnel), ``postUp``/``postDown`` given as one string is one command line,
and two keys are tungo's own: listener ``exclude``, a comma list of CIDRs kept out of the TUN routes
(the operator renders a TunGateway's ``excludedCIDRs`` into it), and ``excludePorts``, a comma list of
destination ports or ranges (``5432,8000-8100``) whose TCP and UDP traffic leaves through the pod's
``main`` table instead of the TUN (as istio's ``excludeOutboundPorts``; ``routing/plan.py`` turns each
into policy rules).

This module never touches the kernel, the network or the file system.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import TYPE_CHECKING

from tungo_sidecar.config.model import Config, Metadata
from tungo_sidecar.errors import ConfigError

if TYPE_CHECKING:
    from tungo_sidecar.config.model import Service

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network

#: The listener (and handler) type of a TUN service.
TUN_TYPE = "tungo"
DEFAULT_NAME = "tungo"
# GOST's default net is none at all; ours (DESIGN.md §2) gives the engine an address to listen on.
DEFAULT_NET: tuple[IPInterface, ...] = (IPv4Interface("192.168.123.1/24"),)
# GOST's default (listener/tun, listener/tungo): 1500 minus WireGuard-like overhead, so tunnelled
# packets still fit a 1500-byte path after the relay adds its own headers.
DEFAULT_MTU = 1420
DEFAULT_UDP_TIMEOUT = 30.0
# IPv4's floor (RFC 791: every host must accept 68-byte datagrams) and IPv6's (RFC 8200: 1280).
MIN_MTU_V4 = 68
MIN_MTU_V6 = 1280
MAX_MTU = 65535
# Linux IFNAMSIZ is 16 bytes including the terminating NUL.
MAX_IFNAME = 15
# Each excluded port range becomes four policy rules (TCP and UDP, IPv4 and IPv6), and the kernel walks
# the rule list linearly on every route lookup of the pod: a bound keeps that walk short. 64 is far
# above what such lists hold in practice (istio's excludeOutboundPorts: a handful of database ports).
MAX_EXCLUDED_PORTS = 64
MAX_PORT = 65535
# Digits bounded only so int() never sees an absurd string; the range itself is checked as numbers.
_PORT_RANGE = re.compile(r"(\d{1,10})(?:\s*-\s*(\d{1,10}))?", re.ASCII)


@dataclass(frozen=True, slots=True)
class TunRoute:
    """One destination to capture into the TUN, optionally through a gateway inside the TUN net."""

    dst: IPNetwork
    gateway: IPAddress | None = None

    def __str__(self) -> str:
        return f"{self.dst} via {self.gateway}" if self.gateway else str(self.dst)


@dataclass(frozen=True, slots=True)
class PortRange:
    """Destination ports ``first`` to ``last`` inclusive (one port when equal), 1 to 65535."""

    first: int
    last: int

    def __str__(self) -> str:
        # ip(8)'s spelling for `dport`, and the listener key's.
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class TunSettings:
    """Everything the TUN device, the routing plan and the hooks need, validated."""

    name: str = DEFAULT_NAME
    nets: tuple[IPInterface, ...] = DEFAULT_NET
    mtu: int = DEFAULT_MTU
    gateway: IPAddress | None = None
    routes: tuple[TunRoute, ...] = ()
    dns: tuple[IPAddress, ...] = ()
    udp_timeout: float = DEFAULT_UDP_TIMEOUT
    post_up: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    interface: str | None = None
    excluded: tuple[IPNetwork, ...] = ()
    excluded_ports: tuple[PortRange, ...] = ()

    @classmethod
    def from_service(cls, service: Service) -> TunSettings:
        """Settings of a ``tungo`` service: listener, handler and service metadata, as GOST reads them."""
        interface = service.interface or service.metadata.get_str("interface")
        return parse_tun_settings(
            service.listener.metadata, service.handler.metadata, service.metadata, interface=interface
        )

    @property
    def address(self) -> IPInterface:
        """The TUN's first address: the one the engine listens on (GOST's ``ip`` of the listener)."""
        return self.nets[0]


def parse_tun_settings(
    listener: Metadata,
    handler: Metadata | None = None,
    service: Metadata | None = None,
    *,
    interface: str | None = None,
) -> TunSettings:
    """Parse and validate; every problem is one ``ConfigError`` line naming the key and the value."""
    handler = handler if handler is not None else Metadata()
    service = service if service is not None else Metadata()

    name = _name(_get_str(listener, "name") or DEFAULT_NAME)
    nets = _nets(_get_list(listener, "net"))
    mtu = _mtu(listener, nets)
    gateway = _gateway(_get_str(listener, "gw"), nets)
    routes = _routes(listener, gateway, nets)
    dns = tuple(_address(text, "dns") for text in _get_list(listener, "dns"))
    excluded = tuple(dict.fromkeys(_network(text, "exclude") for text in _get_list(listener, "exclude")))
    excluded_ports = _port_ranges(listener, "excludePorts")
    udp_timeout = _udp_timeout(handler)
    post_up = _commands(service, "postUp")
    post_down = _commands(service, "postDown")
    if interface is not None:
        interface = interface.strip() or None
        if interface is not None:
            _check_ifname(interface, "interface")
    return TunSettings(
        name=name,
        nets=nets,
        mtu=mtu,
        gateway=gateway,
        routes=routes,
        dns=dns,
        udp_timeout=udp_timeout,
        post_up=post_up,
        post_down=post_down,
        interface=interface,
        excluded=excluded,
        excluded_ports=excluded_ports,
    )


def _get_str(md: Metadata, key: str) -> str | None:
    # GOST reads every TUN key as KEY or tun.KEY (mdutil.GetString(md, "name", "tun.name")).
    for candidate in (key, f"tun.{key}"):
        value = md.get_str(candidate)
        if value is not None:
            return value.strip()
    return None


def _get_list(md: Metadata, key: str) -> tuple[str, ...]:
    for candidate in (key, f"tun.{key}"):
        if candidate in md:
            return tuple(item.strip() for item in md.get_list(candidate) if item.strip())
    return ()


def _check_ifname(name: str, key: str) -> None:
    # The kernel refuses these names (dev_valid_name); say so before we try to create the device.
    bad = (
        len(name) > MAX_IFNAME
        or name in (".", "..")
        or any(c in name for c in "/:")
        or not name.isprintable()
    )
    if bad or any(c.isspace() for c in name):
        raise ConfigError(
            f"tungo: {key} {name!r}: not a valid interface name "
            f"(at most {MAX_IFNAME} characters, no '/', ':' or spaces)"
        )


def _name(name: str) -> str:
    _check_ifname(name, "name")
    return name


def _nets(items: tuple[str, ...]) -> tuple[IPInterface, ...]:
    if not items:
        return DEFAULT_NET
    nets: list[IPInterface] = []
    for text in items:
        if "/" not in text:
            raise ConfigError(
                f"tungo: net {text!r}: expected an address with a prefix, e.g. 192.168.123.1/24"
            )
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError:
            raise ConfigError(
                f"tungo: net {text!r}: expected an address with a prefix, e.g. 192.168.123.1/24 or fd00::1/64"
            ) from None
        if iface in nets:
            raise ConfigError(f"tungo: net {text!r}: listed twice")
        nets.append(iface)
    return tuple(nets)


def _mtu(md: Metadata, nets: tuple[IPInterface, ...]) -> int:
    mtu = None
    for key in ("mtu", "tun.mtu"):
        mtu = md.get_int(key)
        if mtu is not None:
            break
    if mtu is None or mtu == 0:
        # GOST: mtu <= 0 means the default; we keep 0 as "unset" but refuse negative numbers below.
        return DEFAULT_MTU
    floor = MIN_MTU_V6 if any(n.version == 6 for n in nets) else MIN_MTU_V4
    if not floor <= mtu <= MAX_MTU:
        why = "IPv6 needs at least 1280" if floor == MIN_MTU_V6 else f"between {floor} and {MAX_MTU}"
        raise ConfigError(f"tungo: mtu {mtu}: out of range ({why}, max {MAX_MTU})")
    return mtu


def _address(text: str, key: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"tungo: {key} {text!r}: expected an IP address") from None


def _gateway(text: str | None, nets: tuple[IPInterface, ...]) -> IPAddress | None:
    if not text:
        return None
    gateway = _address(text, "gw")
    _check_gateway(gateway, nets, f"gw {text!r}")
    return gateway


def _check_gateway(gateway: IPAddress, nets: tuple[IPInterface, ...], what: str) -> None:
    if not any(gateway.version == n.version and gateway in n.network for n in nets):
        inside = ", ".join(str(n.network) for n in nets)
        raise ConfigError(f"tungo: {what}: the gateway must be inside the TUN net ({inside})")


def _network(text: str, key: str) -> IPNetwork:
    try:
        # strict=False: GOST's net.ParseCIDR masks host bits (10.1.2.3/8 is 10.0.0.0/8); a plain
        # address is a host route.
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"tungo: {key} {text!r}: expected a CIDR such as 10.0.0.0/8") from None


def _port_ranges(md: Metadata, key: str) -> tuple[PortRange, ...]:
    """``5432,8000-8100`` (or a YAML list, or one number) as ranges; exact duplicates collapse."""
    ranges: list[PortRange] = []
    for text in _listed_ports(md, key):
        match = _PORT_RANGE.fullmatch(text)
        if match is None:
            raise ConfigError(f"tungo: {key} {text!r}: expected a port or a range such as 5432 or 8000-8100")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not 1 <= first <= MAX_PORT or not 1 <= last <= MAX_PORT:
            raise ConfigError(f"tungo: {key} {text!r}: ports are 1-{MAX_PORT}")
        if first > last:
            raise ConfigError(f"tungo: {key} {text!r}: the range's first port is above its last")
        port_range = PortRange(first, last)
        if port_range not in ranges:
            ranges.append(port_range)
    if len(ranges) > MAX_EXCLUDED_PORTS:
        raise ConfigError(f"tungo: {key}: {len(ranges)} ports or ranges given, at most {MAX_EXCLUDED_PORTS}")
    return tuple(ranges)


def _listed_ports(md: Metadata, key: str) -> tuple[str, ...]:
    for candidate in (key, f"tun.{key}"):
        value = md.get(candidate)
        if isinstance(value, int) and not isinstance(value, bool):
            return (str(value),)  # `excludePorts: 5432` in YAML is a number, not a list
        if candidate in md:
            return tuple(item.strip() for item in md.get_list(candidate) if item.strip())
    return ()


def _routes(md: Metadata, gateway: IPAddress | None, nets: tuple[IPInterface, ...]) -> tuple[TunRoute, ...]:
    routes: list[TunRoute] = []
    for text in _get_list(md, "route"):
        dst = _network(text, "route")
        # GOST gives every `route` entry the `gw`; netlink cannot install a v6 route through a v4
        # gateway, so `gw` applies to the entries of its own family only.
        gw = gateway if gateway is not None and gateway.version == dst.version else None
        routes.append(TunRoute(dst, gw))
    for text in _get_list(md, "routes"):
        parts = text.split()
        if len(parts) > 2:
            raise ConfigError(f"tungo: routes {text!r}: expected 'CIDR' or 'CIDR GATEWAY'")
        dst = _network(parts[0], "routes")
        if len(parts) == 2:
            gw = _address(parts[1], "routes gateway")
            if gw.version != dst.version:
                raise ConfigError(f"tungo: routes {text!r}: gateway and destination differ in IP family")
            _check_gateway(gw, nets, f"routes {text!r}")
        else:
            gw = gateway if gateway is not None and gateway.version == dst.version else None
        routes.append(TunRoute(dst, gw))
    seen: dict[IPNetwork, TunRoute] = {}
    for route in routes:
        other = seen.get(route.dst)
        if other is not None and other != route:
            raise ConfigError(f"tungo: route {route.dst} is given twice with different gateways")
        seen[route.dst] = route
    # Duplicates that agree collapse to one: GOST replaces the same route twice, harmlessly.
    return tuple(seen.values())


def _udp_timeout(md: Metadata) -> float:
    value = None
    for key in ("udpTimeout", "tungo.udpTimeout"):
        value = md.get_duration(key)
        if value is not None:
            break
    if value is None or value == 0:
        return DEFAULT_UDP_TIMEOUT
    if value < 0:
        raise ConfigError(f"tungo: udpTimeout {value}s: must be positive (e.g. 30s)")
    return value


def _commands(md: Metadata, key: str) -> tuple[str, ...]:
    value = md.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        # GOST only takes a list here; one string is one command line (commas are common in commands).
        lines: tuple[object, ...] = (value,)
    elif isinstance(value, list | tuple):
        lines = tuple(value)
    else:
        raise ConfigError(f"tungo: {key}: expected a list of command lines, got {value!r}")
    out: list[str] = []
    for line in lines:
        if not isinstance(line, str):
            raise ConfigError(f"tungo: {key}: expected command lines as strings, got {line!r}")
        if line.strip():
            try:
                split_command(line)
            except ConfigError as exc:
                raise ConfigError(f"tungo: {key} {exc}") from None
            out.append(line.strip())
    return tuple(out)


def split_command(line: str) -> list[str]:
    """A postUp/postDown line as argv, split like GOST's google/shlex: POSIX quoting and escapes, ``#``
    starts a comment. ConfigError on unbalanced quotes or a line with no command."""
    try:
        argv = shlex.split(line, comments=True)
    except ValueError as exc:
        raise ConfigError(f"line {line!r}: {exc}") from None
    if not argv:
        raise ConfigError(f"line {line!r}: no command")
    return argv


def with_pod_overrides(
    config: Config,
    *,
    exclude: Sequence[str] = (),
    routes: Sequence[str] = (),
    exclude_ports: Sequence[str] = (),
) -> Config:
    """``config`` with every TUN service's listener changed by the CLI's ``--exclude``/``--route``/
    ``--exclude-ports``.

    tungo's own flags, for what differs per pod while the config Secret is shared by every pod of a
    gateway (the webhook turns a pod's ``tungo.dev/excludeOutboundIPRanges`` and
    ``tungo.dev/includeOutboundIPRanges`` annotations into them): ``exclude`` CIDRs are added to the
    listener's ``exclude``; ``routes``, when given, replace its ``route``/``routes``; ``exclude_ports``
    (ports or ranges, ``"5432"``, ``"8000-8100"``) are added to its ``excludePorts``. The values are
    checked where every listener value is, in ``parse_tun_settings``.
    """
    if not exclude and not routes and not exclude_ports:
        return config
    services = []
    for service in config.services:
        if service.listener.type != TUN_TYPE:
            services.append(service)
            continue
        md = service.listener.metadata
        items = dict(md.original_items())
        for key in list(items):
            lowered = key.lower().removeprefix("tun.")
            if (
                (lowered == "exclude" and exclude)
                or (lowered in ("route", "routes") and routes)
                or (lowered == "excludeports" and exclude_ports)
            ):
                del items[key]
        if exclude:
            items["exclude"] = ",".join([*_get_list(md, "exclude"), *exclude])
        if routes:
            items["route"] = ",".join(routes)
        if exclude_ports:
            items["excludePorts"] = ",".join([*_listed_ports(md, "excludePorts"), *exclude_ports])
        listener = dataclasses.replace(service.listener, metadata=Metadata(items))
        services.append(dataclasses.replace(service, listener=listener))
    return dataclasses.replace(config, services=tuple(services))
