"""The ``socks5`` server handler: RFC 1928 CONNECT and UDP ASSOCIATE, RFC 1929 username/password.

Called by ``net.service`` for ``-L socks5://...`` services (the usual front of ``-F relay+wss``).
Owns the server-side exchange (``proto.socks5`` does the bytes) and the association's UDP socket;
targets are reached through the service's ``FlowDialer``, so ``-F`` chains carry both TCP and UDP.

Answers: no acceptable method → 0xFF; bad credentials → auth status 1; BIND or an unknown command →
7 (command not supported); a target the dialer cannot reach → 3 (network unreachable, what GOST's
socks5 handler sends); a malformed request → the REP code the codec names. A UDP association lives
as long as its TCP control connection; datagrams are accepted only from the client's own IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from tungo_sidecar import errors
from tungo_sidecar.config.model import Service
from tungo_sidecar.net.connectors.base import prefixed, read_message
from tungo_sidecar.net.dialer import FlowDialer
from tungo_sidecar.net.handlers.base import first_completed, proxy_streams
from tungo_sidecar.net.stream import CHUNK, Datagrams, SocketStream, Stream
from tungo_sidecar.proto import socks5
from tungo_sidecar.proto.address import Address

log = logging.getLogger(__name__)

#: Bound on the request exchange of a client that connects and stalls.
DEFAULT_READ_TIMEOUT = 15.0

#: Targets one UDP association may talk to at once (DNS to a few resolvers, QUIC to a few hosts);
#: past it new targets are dropped rather than opening sockets without bound.
MAX_UDP_TARGETS = 256

#: Datagrams queued from the client before new ones are dropped (UDP: lossy rather than unbounded).
UDP_QUEUE = 512


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue(UDP_QUEUE)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((data, addr))


class Socks5Handler:
    """``handler: socks5``. Options: ``auth`` (one user), metadata ``readTimeout``."""

    def __init__(self, service: Service, dialer: FlowDialer) -> None:
        self._auth = service.handler.auth
        self._dialer = dialer
        timeout = service.handler.metadata.get_duration("readTimeout", DEFAULT_READ_TIMEOUT)
        self._read_timeout = timeout if timeout and timeout > 0 else DEFAULT_READ_TIMEOUT
        try:
            host = Address.parse(service.addr).host
        except ValueError:
            host = ""
        self._listen_host = host

    async def handle(self, stream: Stream, client: str) -> None:
        try:
            async with asyncio.timeout(self._read_timeout):
                request, leftover = await self._handshake(stream, client)
        except TimeoutError:
            raise errors.Socks5ProtocolError(
                f"socks5: no complete request within {self._read_timeout:g}s"
            ) from None
        except errors.Socks5ProtocolError as exc:
            if exc.reply is not None:
                await _reply(stream, exc.reply)
            raise
        if request.cmd == socks5.Command.CONNECT:
            await self._connect(stream, leftover, request.address)
        elif request.cmd == socks5.Command.UDP_ASSOCIATE:
            await self._associate(stream, client)
        else:
            await _reply(stream, socks5.ReplyCode.COMMAND_NOT_SUPPORTED)
            raise errors.ProxyRefusedError(
                f"socks5: {client}: command {request.cmd} not supported",
                socks5.ReplyCode.COMMAND_NOT_SUPPORTED,
            )

    async def _handshake(self, stream: Stream, client: str) -> tuple[socks5.Request, bytes]:
        greeting_reader = socks5.GreetingReader()
        greeting, leftover = await read_message(stream, greeting_reader, "socks5 greeting")
        stream = prefixed(stream, leftover)
        supported = (socks5.Method.USER_PASS,) if self._auth else (socks5.Method.NO_AUTH,)
        method = greeting.choose(supported)
        await stream.write(socks5.MethodSelection(method).encode())
        if method == socks5.Method.NO_ACCEPTABLE:
            raise errors.ProxyRefusedError(
                f"socks5: {client}: none of the offered methods {list(greeting.methods)} is accepted",
                socks5.Method.NO_ACCEPTABLE,
            )
        if method == socks5.Method.USER_PASS:
            auth, leftover = await read_message(stream, socks5.UserPassAuthReader(), "socks5 auth")
            stream = prefixed(stream, leftover)
            if not self._authorized(auth):
                await stream.write(socks5.AuthStatus(socks5.AUTH_FAILURE).encode())
                raise errors.ProxyRefusedError(
                    f"socks5: {client}: wrong credentials (user {auth.username!r})", socks5.AUTH_FAILURE
                )
            await stream.write(socks5.AuthStatus(socks5.AUTH_SUCCESS).encode())
        return await read_message(stream, socks5.RequestReader(), "socks5 request")

    def _authorized(self, auth: socks5.UserPassAuth) -> bool:
        assert self._auth is not None
        user_ok = hmac.compare_digest(auth.username.encode(), self._auth.username.encode())
        pass_ok = hmac.compare_digest(auth.password.encode(), self._auth.password.encode())
        return user_ok and pass_ok

    async def _connect(self, stream: Stream, leftover: bytes, target: Address) -> None:
        try:
            upstream = await self._dialer.dial_tcp(target)
        except (errors.TungoError, OSError) as exc:
            await _reply(stream, _refusal(exc))
            raise errors.DialError(f"socks5: cannot reach {target}: {exc}") from exc
        await stream.write(socks5.Reply(socks5.ReplyCode.SUCCEEDED).encode())
        await proxy_streams(prefixed(stream, leftover), upstream)

    def _udp_bind_host(self, stream: Stream) -> str:
        # Answer with the address the client reached us on, so the reply is usable as it is.
        if isinstance(stream, SocketStream) and stream.sockname:
            return stream.sockname[0]
        return self._listen_host or "0.0.0.0"

    async def _associate(self, stream: Stream, client: str) -> None:
        loop = asyncio.get_running_loop()
        host = self._udp_bind_host(stream)
        transport, inbox = await loop.create_datagram_endpoint(_Inbox, local_addr=(host, 0))
        try:
            port = transport.get_extra_info("sockname")[1]
            await stream.write(socks5.Reply(socks5.ReplyCode.SUCCEEDED, Address(host, port)).encode())
            client_ip = client.rpartition(":")[0].strip("[]")
            await first_completed(
                lambda: _until_eof(stream),
                lambda: self._pump_udp(transport, inbox, client_ip),
            )
        finally:
            transport.close()

    async def _pump_udp(self, transport: asyncio.DatagramTransport, inbox: _Inbox, client_ip: str) -> None:
        sessions: dict[Address, Datagrams] = {}

        async def replies(target: Address, session: Datagrams, to: tuple[str, int]) -> None:
            with contextlib.suppress(EOFError):
                while True:
                    payload = await session.recv()
                    transport.sendto(socks5.UdpDatagram(target, payload).encode(), to)

        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    packet, source = await inbox.queue.get()
                    if client_ip and source[0] != client_ip:
                        continue  # RFC 1928: only the client that asked may use the association
                    try:
                        datagram = socks5.UdpDatagram.decode(packet)
                    except errors.Socks5ProtocolError as exc:
                        log.debug("socks5: dropped a malformed UDP packet from %s: %s", source, exc)
                        continue
                    if datagram.frag != 0:
                        continue  # no reassembly (RFC 1928 makes it optional)
                    session = sessions.get(datagram.address)
                    if session is None:
                        if len(sessions) >= MAX_UDP_TARGETS:
                            continue
                        try:
                            session = await self._dialer.dial_udp(datagram.address)
                        except (errors.TungoError, OSError) as exc:
                            log.info("socks5: UDP to %s failed: %s", datagram.address, exc)
                            continue
                        sessions[datagram.address] = session
                        group.create_task(replies(datagram.address, session, source))
                    await session.send(datagram.data)
        finally:
            await asyncio.gather(*(s.close() for s in sessions.values()), return_exceptions=True)


async def _until_eof(stream: Stream) -> None:
    """The control connection: the association ends when the client closes it."""
    while await stream.read(CHUNK):
        pass


async def _reply(stream: Stream, code: int) -> None:
    with contextlib.suppress(OSError, errors.TungoError):
        await stream.write(socks5.Reply(code).encode())


def _refusal(exc: BaseException) -> socks5.ReplyCode:
    """A bypass refusal is "not allowed by ruleset" (as GOST answers it); anything else "unreachable"."""
    if isinstance(exc, errors.RouteRefusedError):
        return socks5.ReplyCode.NOT_ALLOWED
    return socks5.ReplyCode.NETWORK_UNREACHABLE
