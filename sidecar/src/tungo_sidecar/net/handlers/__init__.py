"""The handler registry: GOST handler names (``-L relay+wss://`` → ``relay``) to factories.

One module, one class, one entry. ``net.service`` builds a service's handler from here; the TUN
data plane's ``tungo`` handler is not a stream handler and is started by ``app.runner`` itself.
"""

from __future__ import annotations

from tungo_sidecar.config.model import Service
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.net.dialer import FlowDialer
from tungo_sidecar.net.handlers.base import Handler, HandlerFactory
from tungo_sidecar.net.handlers.http import HttpHandler
from tungo_sidecar.net.handlers.relay import RelayHandler
from tungo_sidecar.net.handlers.socks5 import Socks5Handler

__all__ = ["HANDLERS", "Handler", "HandlerFactory", "make_handler"]

HANDLERS: dict[str, HandlerFactory] = {
    "relay": RelayHandler,
    "socks5": Socks5Handler,
    "socks": Socks5Handler,
    "http": HttpHandler,
}


def make_handler(service: Service, dialer: FlowDialer) -> Handler:
    """The handler of ``service``; ConfigError naming the service and the known handlers."""
    try:
        factory = HANDLERS[service.handler.type]
    except KeyError:
        known = ", ".join(sorted(HANDLERS))
        raise ConfigError(
            f"service {service.name!r}: unknown handler {service.handler.type!r} (supported: {known})"
        ) from None
    return factory(service, dialer)
