"""Builds a ``dns`` service (``net.dnsserver.DnsService``) from its config entry: settings and dialers.

Owns one decision, the mark on the DNS service's own sockets. In a pod the DNS service runs beside a
TUN service that captures everything (``route=0.0.0.0/0``) except sockets carrying its fwmark, so the
DNS service's sockets carry that same mark: its direct dials to ``dns.local`` (the cluster's DNS) and
its first-hop connections to the relay leave through the pod's own interface and never re-enter the
TUN (where a cluster name would be sent through the chain). The mark is the service's own
``so_mark`` when given, else the mark of the config's ``tungo`` service (its ``so_mark``, else
``routing.plan.FWMARK``), else none.

The upstream dialer is a ``RoutedDialer`` over the service's chain with the chain's hop and node
bypasses, as GOST's exchanger dials through its router; the service's own bypass is *not* applied to
upstream addresses: as in GOST's handler it is matched against query names (``net.dnsserver``), and
a match gets an empty answer. Called by ``app.runner.build_services``; never starts anything.
"""

from __future__ import annotations

from collections.abc import Mapping

from tungo_sidecar.chain.route import Policy
from tungo_sidecar.config.dns import DnsSettings
from tungo_sidecar.config.model import Config, Service
from tungo_sidecar.config.validate import HANDLERS, quote, service_socket_options
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.net.direct import DirectDialer
from tungo_sidecar.net.dnsserver import DnsService
from tungo_sidecar.net.routed import RoutedDialer
from tungo_sidecar.net.router import ChainDialer
from tungo_sidecar.routing.plan import FWMARK
from tungo_sidecar.rules.bypass import Bypass

#: The handler/listener type of the DNS service (``-L dns://...``).
DNS = "dns"


def socket_mark(service: Service, config: Config) -> int | None:
    """The fwmark on a DNS service's own sockets (see the module docstring)."""
    own = service_socket_options(service).so_mark
    if own:
        return own
    for other in config.services:
        if HANDLERS[other.handler.type].tun:
            return service_socket_options(other).so_mark or FWMARK
    return None


def make_dns_service(service: Service, config: Config, compiled: Mapping[str, Bypass]) -> DnsService:
    """The DNS service of ``service``; ``compiled`` holds every bypass of the config by name."""
    try:
        settings = DnsSettings.from_service(service)
    except ConfigError as exc:
        raise ConfigError(f"service {quote(service.name)}: {exc}") from None
    mark = socket_mark(service, config)
    options = service_socket_options(service)
    direct = DirectDialer(mark=mark, interface=options.interface)
    chain = config.chain(service.chain)
    dialer = RoutedDialer(
        Policy(chain, bypasses=compiled),
        chain=ChainDialer(chain, mark=mark) if chain is not None else None,
        direct=direct,
    )
    return DnsService(
        service,
        settings,
        dialer=dialer,
        direct=direct,
        bypasses=tuple(compiled[name] for name in service.bypasses),
        through=f"through chain {chain.name}" if chain is not None else "direct: no chain",
    )
