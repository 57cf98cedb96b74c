"""The ``socks5`` connector: RFC 1928 CONNECT and UDP ASSOCIATE, RFC 1929 username/password.

Called by the chain router for hops whose connector is ``socks5``. Owns the client-side exchange
(greeting, optional auth, request, reply) over the stream it is given, using ``proto.socks5`` for
every byte. UDP ASSOCIATE opens a side UDP socket to the relay address the server names (marked like
every socket tungo opens), so it only works when this node is the chain's first hop; the TCP control
connection is held open for the association's lifetime, as RFC 1928 requires.

GOST's own socks5 connector defaults to a GOST-only "UDP over TCP" extension; standard UDP ASSOCIATE
(what we speak) is what GOST uses with ``relay=udp`` and what every other socks5 server offers.
"""

from __future__ import annotations

from typing import ClassVar

from tungo_sidecar import errors
from tungo_sidecar.config.model import Plugin
from tungo_sidecar.net import sockopts
from tungo_sidecar.net.connectors.base import HopContext, prefixed, read_message
from tungo_sidecar.net.direct import UDPDatagrams
from tungo_sidecar.net.stream import Stream
from tungo_sidecar.proto import socks5
from tungo_sidecar.proto.address import Address


class Socks5Datagrams:
    """A UDP association: each payload wrapped in the socks5 UDP header for one fixed target."""

    __slots__ = ("_control", "_target", "_udp")

    def __init__(self, control: Stream, udp: UDPDatagrams, target: Address) -> None:
        self._control = control
        self._udp = udp
        self._target = target

    async def send(self, payload: bytes) -> None:
        await self._udp.send(socks5.UdpDatagram(self._target, payload).encode())

    async def recv(self) -> bytes:
        # Bounded: a server flooding malformed or fragmented packets cannot spin this forever
        # without a socket read between iterations (each recv waits for a packet).
        while True:
            packet = await self._udp.recv()
            try:
                datagram = socks5.UdpDatagram.decode(packet)
            except errors.Socks5ProtocolError:
                continue  # UDP: drop what does not parse, as a lossy link would
            if datagram.frag == 0:
                return datagram.data

    async def close(self) -> None:
        await self._udp.close()
        await self._control.close()


class Socks5Connector:
    """``connector: socks5``. Options: ``auth`` (RFC 1929)."""

    supports_udp: ClassVar[bool] = True

    def __init__(self, plugin: Plugin) -> None:
        self._auth = plugin.auth
        self._methods: tuple[int, ...] = (
            (socks5.Method.NO_AUTH, socks5.Method.USER_PASS) if plugin.auth else (socks5.Method.NO_AUTH,)
        )

    async def _negotiate(self, stream: Stream, request: socks5.Request) -> tuple[socks5.Reply, bytes]:
        await stream.write(socks5.Greeting(self._methods).encode())
        selection, _ = await read_message(stream, socks5.MethodSelectionReader(), "socks5 method selection")
        socks5.raise_for_method(selection, self._methods)
        if selection.method == socks5.Method.USER_PASS:
            assert self._auth is not None  # only offered with credentials
            await stream.write(socks5.UserPassAuth(self._auth.username, self._auth.password).encode())
            status, _ = await read_message(stream, socks5.AuthStatusReader(), "socks5 auth status")
            socks5.raise_for_auth_status(status)
        await stream.write(request.encode())
        reply, leftover = await read_message(stream, socks5.ReplyReader(), "socks5 reply")
        socks5.raise_for_reply(reply)
        return reply, leftover

    async def connect_tcp(self, stream: Stream, target: Address) -> Stream:
        _, leftover = await self._negotiate(stream, socks5.Request(socks5.Command.CONNECT, target))
        return prefixed(stream, leftover)

    async def connect_udp(self, stream: Stream, target: Address, hop: HopContext) -> Socks5Datagrams:
        if not hop.first_hop:
            raise errors.DialError(
                f"socks5 node {hop.node}: UDP ASSOCIATE needs a direct UDP path, so only as the first hop"
            )
        reply, _ = await self._negotiate(
            stream, socks5.Request(socks5.Command.UDP_ASSOCIATE, socks5.UNSPECIFIED)
        )
        relay_at = reply.address
        ip = relay_at.ip
        if ip is None or ip.is_unspecified:
            # "0.0.0.0" means "where you reached me" (common behind NAT and on wildcard binds).
            relay_at = Address(hop.node.host, relay_at.port)
        sock = await sockopts.open_udp(relay_at, mark=hop.mark, interface=hop.interface)
        try:
            udp = await UDPDatagrams.open(sock, relay_at)
        except OSError as exc:
            sock.close()
            raise errors.DialError(f"socks5 UDP relay {relay_at}: {exc}") from exc
        return Socks5Datagrams(stream, udp, target)
