"""The transport registry: GOST's "dialers" and "listeners" (tcp, tls, ws, wss) as stream wrappers.

A client transport takes the byte stream to a node (a TCP socket for the first hop, the previous hop's
tunnel for later hops) and returns the stream the connector speaks over; a server transport does the
same for an accepted stream. ``CLIENT_TRANSPORTS`` / ``SERVER_TRANSPORTS`` are keyed by GOST's names;
each entry declares what it offers in ``info`` so config validation and the connectors can check
(e.g. whether ``write_eof`` really half-closes).

Callers: the chain router (client side), the listeners of ``app`` (server side). Transports never pick
routes or speak proxy protocols; they never open sockets (``net.sockopts`` does).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tungo_sidecar.config.model import Plugin
from tungo_sidecar.errors import ConfigError, DialError, ProtocolError
from tungo_sidecar.net import tlsconf, tlsstream, ws
from tungo_sidecar.net.stream import SocketStream, Stream
from tungo_sidecar.proto.address import Address

#: Default bound on a transport handshake (TLS or websocket). GOST has none by default; an endless
#: handshake would pin a flow (client) or a file descriptor (server) forever.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class TransportInfo:
    """What a transport offers. ``half_close``: ``write_eof`` reaches the peer as a half-close."""

    name: str
    tls: bool
    websocket: bool
    half_close: bool
    #: Works over any ``Stream`` (not only a socket), so it can ride inside another hop's tunnel.
    nestable: bool = True


class ClientTransport(Protocol):
    info: TransportInfo

    async def handshake(self, stream: Stream, plugin: Plugin, addr: Address) -> Stream:
        """Wrap ``stream`` (to node ``addr``); raise ``DialError`` when the node refuses or fails."""
        ...


class ServerTransport(Protocol):
    info: TransportInfo

    async def accept(self, stream: Stream, plugin: Plugin) -> Stream:
        """Wrap an accepted ``stream``; raise ``ProtocolError`` when the client misbehaves."""
        ...


def handshake_timeout(plugin: Plugin) -> float:
    """GOST's ``handshakeTimeout`` metadata, bounded by our default when unset or zero."""
    value = plugin.metadata.get_duration("handshakeTimeout")
    if value is None or value <= 0:
        return DEFAULT_HANDSHAKE_TIMEOUT
    return value


async def start_tls_in_place(
    stream: SocketStream, context: ssl.SSLContext, server_hostname: str | None, seconds: float
) -> None:
    """Upgrade a socket stream to TLS, leaving it closable if the handshake fails or is cancelled.

    asyncio (3.11) hands the socket to a new SSLProtocol for the handshake. When the awaiting task is
    cancelled (our timeout, or the flow going away) it closes the socket with that SSLProtocol still
    attached, which swallows connection_lost while handshaking: the stream's own protocol never
    hears it and ``SocketStream.close()`` waits forever in ``wait_closed``. The scheduled
    connection_lost runs on a later loop step, so putting the stream's protocol back right here
    delivers it where it belongs. (asyncio's own ``ssl_handshake_timeout`` has the same flaw with no
    such window, so it is set past ours and never fires first.)
    """
    transport = stream.writer.transport
    original = transport.get_protocol()
    try:
        async with asyncio.timeout(seconds):
            await stream.writer.start_tls(
                context, server_hostname=server_hostname, ssl_handshake_timeout=seconds + 30.0
            )
    except BaseException:
        if transport.get_protocol() is not original:
            transport.set_protocol(original)
        transport.abort()
        raise


async def tls_client(stream: Stream, plugin: Plugin, addr: Address) -> Stream:
    """TLS client handshake over ``stream``: in place on a socket, through memory BIOs otherwise."""
    context = tlsconf.client_context(plugin.tls)
    name = tlsconf.server_hostname(plugin.tls, addr.host)
    timeout = handshake_timeout(plugin)
    try:
        if isinstance(stream, SocketStream):
            await start_tls_in_place(stream, context, name, timeout)
            return stream
        return await tlsstream.wrap_client(stream, context, name, timeout)
    except TimeoutError as exc:
        raise DialError(f"tls {addr}: handshake timed out after {timeout:g}s") from exc
    except ssl.SSLCertVerificationError as exc:
        raise DialError(f"tls {addr}: certificate verification failed: {exc.verify_message}") from exc
    except (ssl.SSLError, OSError, ProtocolError) as exc:
        raise DialError(f"tls {addr}: handshake failed: {exc}") from exc


async def tls_server(stream: Stream, plugin: Plugin) -> Stream:
    """TLS server handshake over an accepted ``stream``; failures raise ``ProtocolError``.

    Always through memory BIOs (``net.tlsstream``), on a socket too: asyncio's in-place TLS gives each
    connection a 256 KiB receive buffer from the moment ``start_tls`` is called, so every idle,
    unauthenticated client held ~300 KiB of RSS (1,000 of them ~310 MB, kept after they left).
    A ``TLSStream`` holds no buffer between reads.
    """
    context = tlsconf.server_context(plugin.tls)
    timeout = handshake_timeout(plugin)
    peer = _peer(stream)
    try:
        return await tlsstream.wrap_server(stream, context, timeout)
    except TimeoutError as exc:
        raise ProtocolError(f"tls from {peer}: handshake timed out after {timeout:g}s") from exc
    except (ssl.SSLError, OSError) as exc:
        raise ProtocolError(f"tls from {peer}: handshake failed: {exc}") from exc


class TCPClient:
    """``tcp``: the stream as it is."""

    info = TransportInfo("tcp", tls=False, websocket=False, half_close=True)

    async def handshake(self, stream: Stream, plugin: Plugin, addr: Address) -> Stream:
        return stream


class TCPServer:
    info = TCPClient.info

    async def accept(self, stream: Stream, plugin: Plugin) -> Stream:
        return stream


class TLSClient:
    """``tls``: TLS per GOST's client rules (see ``net.tlsconf``)."""

    info = TransportInfo("tls", tls=True, websocket=False, half_close=False)

    async def handshake(self, stream: Stream, plugin: Plugin, addr: Address) -> Stream:
        return await tls_client(stream, plugin, addr)


class TLSServer:
    info = TLSClient.info

    async def accept(self, stream: Stream, plugin: Plugin) -> Stream:
        return await tls_server(stream, plugin)


def _ws_headers(plugin: Plugin) -> Mapping[str, object]:
    """GOST's ``header`` metadata: extra HTTP headers for the upgrade request / response."""
    value = plugin.metadata.get("header")
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    raise ConfigError(f"metadata 'header': expected a mapping of header names to values, got {value!r}")


def _ws_path(plugin: Plugin) -> str:
    return plugin.metadata.get_str("path") or ws.DEFAULT_PATH


def _peer(stream: Stream) -> tuple[str, int] | None:
    return stream.peername if isinstance(stream, SocketStream) else None


class WSClient:
    """``ws``: websocket upgrade on ``path`` (default /ws), Host = metadata ``host`` or the node."""

    info = TransportInfo("ws", tls=False, websocket=True, half_close=False)
    secure = False

    async def handshake(self, stream: Stream, plugin: Plugin, addr: Address) -> Stream:
        if self.secure:
            stream = await tls_client(stream, plugin, addr)
        host = plugin.metadata.get_str("host") or str(addr)
        path = _ws_path(plugin)
        timeout = handshake_timeout(plugin)
        try:
            async with asyncio.timeout(timeout):
                return await ws.client_handshake(
                    stream, host=host, path=path, headers=_ws_headers(plugin), secure=self.secure
                )
        except TimeoutError as exc:
            raise DialError(f"ws {addr}: handshake timed out after {timeout:g}s") from exc
        except (OSError, ProtocolError) as exc:
            raise DialError(f"ws {addr}: handshake failed: {exc}") from exc


class WSSClient(WSClient):
    """``wss``: TLS (GOST's client rules) then the websocket upgrade."""

    info = TransportInfo("wss", tls=True, websocket=True, half_close=False)
    secure = True


class WSServer:
    """``ws`` listener side: serves only ``path`` (404 otherwise), adds metadata ``header``."""

    info = WSClient.info
    secure = False

    async def accept(self, stream: Stream, plugin: Plugin) -> Stream:
        if self.secure:
            stream = await tls_server(stream, plugin)
        peer = _peer(stream)
        timeout = handshake_timeout(plugin)
        try:
            async with asyncio.timeout(timeout):
                return await ws.server_handshake(
                    stream, path=_ws_path(plugin), headers=_ws_headers(plugin), peer=peer
                )
        except TimeoutError as exc:
            raise ProtocolError(f"ws from {peer}: handshake timed out after {timeout:g}s") from exc
        except OSError as exc:
            raise ProtocolError(f"ws from {peer}: handshake failed: {exc}") from exc


class WSSServer(WSServer):
    info = WSSClient.info
    secure = True


CLIENT_TRANSPORTS: dict[str, ClientTransport] = {
    "tcp": TCPClient(),
    "tls": TLSClient(),
    "ws": WSClient(),
    "wss": WSSClient(),
}

SERVER_TRANSPORTS: dict[str, ServerTransport] = {
    "tcp": TCPServer(),
    "tls": TLSServer(),
    "ws": WSServer(),
    "wss": WSSServer(),
}


def validate(plugin: Plugin, *, server: bool) -> None:
    """Check a dialer (``server=False``) or listener plugin at start-up; ``ConfigError`` if unusable.

    Catches what would otherwise fail on the first flow: an unknown type, a bad ``handshakeTimeout``,
    TLS files that do not load, a ws ``path``/``header`` of the wrong shape or touching the headers
    the upgrade owns.
    """
    info = (server_transport(plugin.type) if server else client_transport(plugin.type)).info
    handshake_timeout(plugin)
    if info.tls:
        if server:
            tlsconf.server_context(plugin.tls)
        else:
            tlsconf.client_context(plugin.tls)
    if info.websocket:
        path = _ws_path(plugin)
        if not path.startswith("/"):
            raise ConfigError(f"{plugin.type}: metadata 'path' must start with '/', got {path!r}")
        ws.check_headers(_ws_headers(plugin), plugin.type)


def client_transport(name: str) -> ClientTransport:
    """The client transport called ``name``; ``ConfigError`` listing the known ones otherwise."""
    try:
        return CLIENT_TRANSPORTS[name]
    except KeyError:
        known = ", ".join(sorted(CLIENT_TRANSPORTS))
        raise ConfigError(f"unknown dialer {name!r} (supported: {known})") from None


def server_transport(name: str) -> ServerTransport:
    """The server transport called ``name``; ``ConfigError`` listing the known ones otherwise."""
    try:
        return SERVER_TRANSPORTS[name]
    except KeyError:
        known = ", ".join(sorted(SERVER_TRANSPORTS))
        raise ConfigError(f"unknown listener {name!r} (supported: {known})") from None
