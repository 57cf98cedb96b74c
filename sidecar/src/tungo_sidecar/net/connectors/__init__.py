"""The connector registry: GOST connector names (``-F relay+wss://`` → ``relay``) to factories.

One module, one class, one entry. The chain router looks connectors up here; config validation can
check names and ``supports_udp`` against ``CONNECTORS``.
"""

from __future__ import annotations

from tungo_sidecar.config.model import Plugin
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.net.connectors.base import Connector, ConnectorFactory, HopContext
from tungo_sidecar.net.connectors.http import HttpConnector
from tungo_sidecar.net.connectors.relay import RelayConnector
from tungo_sidecar.net.connectors.socks5 import Socks5Connector

__all__ = ["CONNECTORS", "Connector", "ConnectorFactory", "HopContext", "make_connector"]

CONNECTORS: dict[str, ConnectorFactory] = {
    "relay": RelayConnector,
    "socks5": Socks5Connector,
    # GOST accepts "socks" as another name of its socks5 connector.
    "socks": Socks5Connector,
    "http": HttpConnector,
}


def make_connector(plugin: Plugin) -> Connector:
    """The connector for ``plugin`` (a node's ``connector`` block); ConfigError naming the known ones."""
    try:
        factory = CONNECTORS[plugin.type]
    except KeyError:
        known = ", ".join(sorted(CONNECTORS))
        raise ConfigError(f"unknown connector {plugin.type!r} (supported: {known})") from None
    return factory(plugin)
