"""What a connector is: the client half of a proxy protocol spoken over an already-open stream.

A connector takes the stream a transport produced (TCP, TLS, websocket...) to one proxy node and asks
that node for a target: a TCP stream (``connect_tcp``) or a UDP session (``connect_udp``). The chain
router (``net.router``) calls connectors hop by hop; the registry lives in ``net.connectors``.
Connectors never open the first socket, never pick nodes and never resolve names: the node does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar

from tungo_sidecar.config.model import Plugin
from tungo_sidecar.errors import ProtocolError
from tungo_sidecar.net.stream import CHUNK, Datagrams, Stream, half_closes
from tungo_sidecar.proto.address import Address
from tungo_sidecar.proto.reader import MessageReader


@dataclass(frozen=True, slots=True)
class HopContext:
    """Where the connector's stream leads, for protocols that open side sockets (socks5's UDP relay).

    ``node`` is the proxy node's own address; ``first_hop`` is False when the stream already runs
    through earlier hops (then no side socket can reach the node); ``mark``/``interface`` are what
    every socket tungo opens must carry so it never loops back into the TUN.
    """

    node: Address
    first_hop: bool = True
    mark: int | None = None
    interface: str | None = None


class Connector(Protocol):
    """The client side of one proxy protocol. Errors: ``DialError``, ``ProxyRefusedError``, relay
    status errors, ``ProtocolError`` (the node answered garbage)."""

    #: Whether ``connect_udp`` works (config validation and the router check it).
    supports_udp: ClassVar[bool]

    async def connect_tcp(self, stream: Stream, target: Address) -> Stream:
        """Ask the node for a TCP connection to ``target``; return the stream that reaches it."""
        ...

    async def connect_udp(self, stream: Stream, target: Address, hop: HopContext) -> Datagrams:
        """Ask the node for a UDP session to ``target``; return whole datagrams to and from it."""
        ...


#: Builds a connector from its config block (``Node.connector``); raises ``ConfigError`` on bad options.
ConnectorFactory = Callable[[Plugin], Connector]


class PrefixedStream:
    """A ``Stream`` whose first reads return bytes already taken off ``inner`` (a parser's leftover:
    data the peer sent in the same packet or websocket message as its protocol header)."""

    __slots__ = ("_inner", "_prefix")

    def __init__(self, inner: Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    @property
    def half_close(self) -> bool:
        return half_closes(self._inner)

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        return await self._inner.read(max_bytes)

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def write_eof(self) -> None:
        await self._inner.write_eof()

    async def close(self) -> None:
        await self._inner.close()


def prefixed(stream: Stream, prefix: bytes) -> Stream:
    """``stream`` itself when there is nothing to replay, else a ``PrefixedStream``."""
    return PrefixedStream(stream, prefix) if prefix else stream


_Message = TypeVar("_Message")


async def read_message(stream: Stream, reader: MessageReader[_Message], what: str) -> tuple[_Message, bytes]:
    """Feed ``stream`` into ``reader`` until it yields its message; return it with the bytes behind it.

    The peer closing first raises ``ProtocolError`` naming ``what`` was expected; the reader's own
    errors (malformed, oversized) propagate as they are.
    """
    while True:
        chunk = await stream.read(CHUNK)
        if not chunk:
            raise ProtocolError(
                f"{what}: peer closed the connection ({reader.buffered} bytes of it received)"
            )
        message = reader.feed(chunk)
        if message is not None:
            return message, reader.leftover
