"""The ``http`` connector: an HTTP/1.1 CONNECT tunnel with optional Basic proxy credentials.

Called by the chain router for hops whose connector is ``http``. Sends ``proto.http_connect``'s
CONNECT request (the headers GOST's http connector sends, plus any ``header`` metadata), reads the
response head, and hands back the stream with whatever followed the head. TCP only: GOST's
UDP-over-HTTP is a GOST-only extension we do not speak.
"""

from __future__ import annotations

from typing import ClassVar

from tungo_sidecar import errors
from tungo_sidecar.config.model import Plugin
from tungo_sidecar.net.connectors.base import HopContext, prefixed, read_message
from tungo_sidecar.net.stream import Datagrams, Stream
from tungo_sidecar.proto import http_connect
from tungo_sidecar.proto.address import Address


class HttpConnector:
    """``connector: http``. Options: ``auth`` (Basic ``Proxy-Authorization``)."""

    supports_udp: ClassVar[bool] = False

    def __init__(self, plugin: Plugin) -> None:
        auth = plugin.auth
        try:
            self._credentials = http_connect.BasicCredentials(auth.username, auth.password) if auth else None
        except ValueError as exc:
            raise errors.ConfigError(f"http connector: {exc}") from exc

    async def connect_tcp(self, stream: Stream, target: Address) -> Stream:
        await stream.write(http_connect.ConnectRequest(target, self._credentials).encode())
        head, leftover = await read_message(
            stream, http_connect.ResponseHeadReader(), "http CONNECT response"
        )
        http_connect.raise_for_status(head)
        return prefixed(stream, leftover)

    async def connect_udp(self, stream: Stream, target: Address, hop: HopContext) -> Datagrams:
        raise errors.DialError(f"http node {hop.node}: the http connector carries no UDP")
