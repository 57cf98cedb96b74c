"""The DNS service: GOST's ``dns`` handler on its ``dns`` listener, a stub resolver that forwards.

What one ``-L "dns://127.0.0.1:53?dns=udp://1.1.1.1:53"`` becomes (settings: ``config.dns``): it
answers on UDP and on TCP (RFC 7766: two-octet length prefix, pipelined queries answered as they
complete) at the same address, and forwards each query, byte for byte, to an upstream server:

* a name the service's ``bypass`` matches gets an empty NOERROR answer at once (GOST's handler);
* a name the split (``rules.dnssplit``: ``dns.localDomains``, ``dns.localNets``) calls local goes to
  the ``dns.local`` servers through the **direct** dialer — marked like every socket tungo opens, so
  it never enters a TUN, and never through the chain;
* every other name goes to the ``dns`` servers through the service's **routed** dialer: its chain
  (``udp://`` servers as UDP over the relay, ``tcp://`` servers as a TCP stream through it), so no
  external name leaves the pod outside the tunnel.

Servers are tried in order, each attempt bounded by ``timeout``, for at most two rounds, and the whole
query by ``dns.budget``: when nothing answered by then the client gets SERVFAIL (a server's own
SERVFAIL or REFUSED sends the query on to the next server first). An answer must match the query's
ID, opcode and question (``proto.dnsmsg.check_answer``); anything else on the upstream session is
ignored. A UDP client gets at most what its EDNS size (512 without) allows: a longer answer is cut
to its question with TC set, so it asks again over TCP; a TCP client whose UDP upstream truncated
gets the answer fetched again over TCP from the same server. Every accepted answer is also handed to
``on_answer`` (the TUN's name map learns from it when ``sniffing.udp`` is on).

Bounded against bad clients: malformed queries get FORMERR (NOTIMP for another opcode) when their
header parses and are dropped otherwise; queries above 4096 bytes are refused; at most 512 UDP
queries are in flight (then SERVFAIL at once), 128 TCP connections, 16 queries pending per
connection (then it is not read until one completes); a TCP client that stays silent or stalls
mid-message for ``readTimeout`` is closed, as is one that sends a length prefix of 0 or above 4096.

Built by ``app.dns_service``, run by ``app.runner``. Never parses DNS bytes itself (``proto.dnsmsg``)
and never decides a route (``rules``, ``chain.route`` through the dialers).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import cast

from tungo_sidecar import errors
from tungo_sidecar.config.dns import DnsSettings, Upstream
from tungo_sidecar.config.model import Service
from tungo_sidecar.net import sockopts
from tungo_sidecar.net.dialer import FlowDialer
from tungo_sidecar.net.service import describe, listen_address
from tungo_sidecar.net.stream import SocketStream, Stream
from tungo_sidecar.proto import dnsmsg
from tungo_sidecar.proto.address import Network
from tungo_sidecar.proto.dns import DnsError
from tungo_sidecar.proto.dnsmsg import AnswerInfo, Query, QueryError
from tungo_sidecar.rules.bypass import Bypass
from tungo_sidecar.rules.dnssplit import DnsSplit
from tungo_sidecar.rules.group import check_group
from tungo_sidecar.rules.matchers import Target

log = logging.getLogger(__name__)

#: UDP queries being answered at once; one more gets SERVFAIL at once (each costs a task and, while it
#: waits, one upstream session; the budget bounds how long each is held).
MAX_INFLIGHT_UDP = 512
#: TCP clients served at once; a new one beyond this is closed at once.
MAX_TCP_CONNECTIONS = 128
#: Queries of one TCP connection being answered at once (RFC 7766 §6.2.1.1 pipelining); beyond it the
#: connection is not read until one completes, so the kernel's buffers push back on the client.
MAX_PENDING_PER_CONNECTION = 16
#: Rounds over the server list: a second round retries a server whose UDP answer may have been lost.
MAX_ROUNDS = 2
#: Datagrams on an upstream session that do not answer the query before the attempt gives up.
MAX_STRAY = 16
READ_SIZE = 16 * 1024
_PORT_PICKS = 8

#: Receives every answer accepted from an upstream (the full message, before any UDP cut).
AnswerHook = Callable[[bytes], None]


@dataclass(slots=True)
class DnsStats:
    """Counters, logged as one JSON line when the service stops."""

    dns_udp_queries: int = 0
    dns_tcp_queries: int = 0
    dns_forwarded: int = 0  # answered by a ``dns`` server (through the chain when there is one)
    dns_local: int = 0  # answered by a ``dns.local`` server (direct)
    dns_bypassed: int = 0  # empty NOERROR: the service's bypass matched the name
    dns_servfail: int = 0  # no server answered within the budget
    dns_malformed: int = 0  # FORMERR / NOTIMP answered, or dropped
    dns_truncated: int = 0  # UDP answers cut to the client's size, TC set
    dns_tcp_retries: int = 0  # truncated UDP upstream answers fetched again over TCP
    dns_busy: int = 0  # SERVFAIL / closed because too many queries or connections were open

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


class _Route:
    """Where a query goes: the servers, the dialer that reaches them, a word for logs and counters."""

    __slots__ = ("dialer", "name", "reason", "upstreams")

    def __init__(self, name: str, upstreams: tuple[Upstream, ...], dialer: FlowDialer, reason: str) -> None:
        self.name = name
        self.upstreams = upstreams
        self.dialer = dialer
        self.reason = reason


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, service: DnsService) -> None:
        self._service = service
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._service._udp_query(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns %s: udp: %s", self._service.name, exc)

    def send(self, payload: bytes, peer: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(payload, peer)


class _TcpClient:
    """One TCP client: its stream, the lock that keeps answers whole, its free query slots."""

    __slots__ = ("client", "slots", "stream", "writing")

    def __init__(self, stream: SocketStream, client: str) -> None:
        self.stream = stream
        self.client = client
        self.writing = asyncio.Lock()
        self.slots = asyncio.Semaphore(MAX_PENDING_PER_CONNECTION)


class DnsService:
    """One DNS service, runnable by ``app.runner``: ``start`` binds UDP and/or TCP, ``stop`` ends it.

    ``dialer`` reaches the ``dns`` servers (the service's routed dialer: its chain), ``direct`` the
    ``dns.local`` ones; ``bypasses`` is the service's bypass group, matched against query names.
    """

    def __init__(
        self,
        config: Service,
        settings: DnsSettings,
        *,
        dialer: FlowDialer,
        direct: FlowDialer,
        bypasses: Sequence[Bypass] = (),
        on_answer: AnswerHook | None = None,
        through: str = "",
    ) -> None:
        self.config = config
        self.settings = settings
        self.on_answer = on_answer
        self.dialer = dialer
        self.direct = direct
        self.stats = DnsStats()
        self._addr = listen_address(config)
        self._bypasses = tuple(bypasses)
        self._split = DnsSplit(settings.local_domains, settings.local_nets)
        self._forward = _Route("upstream", settings.upstreams, dialer, through or "direct")
        self._local = _Route("local", settings.local, direct, "direct")
        self._udp: list[_UdpServer] = []
        self._tcp: asyncio.Server | None = None
        self._udp_tasks: set[asyncio.Task[None]] = set()
        self._tcp_sessions: set[asyncio.Task[None]] = set()
        self._failing = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def bound(self) -> list[tuple[str, str, int]]:
        """(``udp``/``tcp``, host, port) for every socket listened on (port 0 resolved)."""
        found: list[tuple[str, str, int]] = []
        for server in self._udp:
            if server.transport is not None:
                host, port = server.transport.get_extra_info("sockname")[:2]
                found.append(("udp", host, port))
        if self._tcp is not None:
            found += [("tcp", *sock.getsockname()[:2]) for sock in self._tcp.sockets]
        return found

    @property
    def port(self) -> int:
        return self.bound[0][2]

    # -- start / stop ----------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._bind()
        except OSError as exc:
            await self.stop(quiet=True)
            raise errors.ConfigError(
                f"service {self.name!r}: cannot listen on {self.config.addr}: {exc}"
            ) from exc
        local = ""
        if self._split:
            local = (
                f"; {', '.join(self.settings.local_domains + tuple(map(str, self.settings.local_nets)))} → "
                f"{', '.join(map(str, self.settings.local))} (direct)"
            )
        log.info(
            "service %s: dns on %s: → %s (%s)%s; timeout %gs, budget %gs",
            self.name,
            ", ".join(f"{kind} {host}:{port}" for kind, host, port in self.bound),
            ", ".join(map(str, self.settings.upstreams)),
            self._forward.reason,
            local,
            self.settings.timeout,
            self.settings.budget,
        )

    async def _bind(self) -> None:
        # Port 0 (tests): the kernel picks the UDP port, and TCP must get the same one; another socket
        # may hold that TCP port already, so a few picks are tried before giving up.
        for _ in range(_PORT_PICKS if self._addr.port == 0 else 1):
            try:
                await self._bind_once()
                return
            except OSError as exc:
                await self.stop(quiet=True)
                if exc.errno != errno.EADDRINUSE or self._addr.port != 0:
                    raise
        raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")

    async def _bind_once(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self._addr.host, self._addr.port
        if self.settings.udp:
            for sock in _udp_sockets(host, port):
                try:
                    _, protocol = await loop.create_datagram_endpoint(lambda: _UdpServer(self), sock=sock)
                except BaseException:
                    sock.close()
                    raise
                self._udp.append(protocol)
                port = sock.getsockname()[1]
        if self.settings.tcp:
            self._tcp = await sockopts.serve_tcp(
                host or None, port, self._serve_tcp, backlog=MAX_TCP_CONNECTIONS
            )

    async def stop(self, *, quiet: bool = False) -> None:
        """Stop listening, cancel the queries still being answered and wait for them."""
        for server in self._udp:
            if server.transport is not None:
                server.transport.close()
        if self._tcp is not None:
            self._tcp.close()
        tasks = [*self._udp_tasks, *self._tcp_sessions]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
        self._udp.clear()
        self._tcp = None
        if not quiet:
            log.info("dns %s: stats %s", self.name, json.dumps(self.stats.snapshot(), sort_keys=True))

    # -- UDP -------------------------------------------------------------------------------------------

    def _udp_query(self, server: _UdpServer, data: bytes, peer: tuple[str, int]) -> None:
        self.stats.dns_udp_queries += 1
        client = f"udp {peer[0]}:{peer[1]}"
        try:
            query = dnsmsg.parse_query(data)
        except QueryError as exc:
            self._malformed(client, exc)
            if exc.reply is not None:
                server.send(exc.reply, peer)
            return
        if len(self._udp_tasks) >= MAX_INFLIGHT_UDP:
            self.stats.dns_busy += 1
            server.send(dnsmsg.reply(query, dnsmsg.SERVFAIL), peer)
            return
        task = asyncio.get_running_loop().create_task(self._answer_udp(server, query, data, peer, client))
        self._udp_tasks.add(task)  # owned: ``stop`` cancels and awaits what is left
        task.add_done_callback(self._udp_tasks.discard)

    async def _answer_udp(
        self, server: _UdpServer, query: Query, raw: bytes, peer: tuple[str, int], client: str
    ) -> None:
        answer = await self._resolve(query, raw, client, via_tcp=False)
        cut = dnsmsg.truncate(answer, query.udp_limit)
        if len(cut) != len(answer):
            self.stats.dns_truncated += 1
            log.debug(
                "dns %s: %s: %d-byte answer cut to %d (TC): ask over TCP",
                self.name,
                client,
                len(answer),
                len(cut),
            )
        server.send(cut, peer)

    # -- TCP -------------------------------------------------------------------------------------------

    async def _serve_tcp(self, stream: SocketStream) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = stream.peername
        client = f"tcp {peer[0]}:{peer[1]}" if peer else "tcp ?"
        if len(self._tcp_sessions) >= MAX_TCP_CONNECTIONS:
            self.stats.dns_busy += 1
            log.debug("dns %s: %s: %d connections open, closed", self.name, client, MAX_TCP_CONNECTIONS)
            return
        self._tcp_sessions.add(task)
        try:
            await self._tcp_session(stream, client)
        finally:
            self._tcp_sessions.discard(task)

    async def _tcp_session(self, stream: SocketStream, client: str) -> None:
        conn = _TcpClient(stream, client)
        framer = dnsmsg.TcpFramer(dnsmsg.MAX_QUERY)
        async with asyncio.TaskGroup() as answers:  # waits for the answers in flight (each within budget)
            try:
                while True:
                    async with asyncio.timeout(self.settings.read_timeout):
                        data = await stream.read(READ_SIZE)
                    if not data:
                        break
                    for message in framer.feed(data):
                        self.stats.dns_tcp_queries += 1
                        try:
                            query = dnsmsg.parse_query(message)
                        except QueryError as exc:
                            self._malformed(client, exc)
                            if exc.reply is None:
                                raise
                            await self._write(conn, exc.reply)
                            continue
                        await conn.slots.acquire()
                        answers.create_task(self._answer_tcp(conn, query, message))
            except TimeoutError:
                log.debug("dns %s: %s: silent for %gs, closed", self.name, client, self.settings.read_timeout)
            except (DnsError, OSError) as exc:
                log.debug("dns %s: %s: %s, closed", self.name, client, describe(exc))

    async def _answer_tcp(self, conn: _TcpClient, query: Query, raw: bytes) -> None:
        try:
            answer = await self._resolve(query, raw, conn.client, via_tcp=True)
            await self._write(conn, answer)
        finally:
            conn.slots.release()

    async def _write(self, conn: _TcpClient, message: bytes) -> None:
        """One framed message to a TCP client; a client that does not read for ``readTimeout`` is cut."""
        try:
            async with conn.writing, asyncio.timeout(self.settings.read_timeout):
                await conn.stream.write(dnsmsg.frame(message))
        except (OSError, TimeoutError) as exc:
            log.debug(
                "dns %s: %s: cannot write the answer (%s), closed", self.name, conn.client, describe(exc)
            )
            conn.stream.writer.transport.abort()

    # -- answering -------------------------------------------------------------------------------------

    def _malformed(self, client: str, exc: QueryError) -> None:
        self.stats.dns_malformed += 1
        what = "answered" if exc.reply is not None else "dropped"
        log.debug("dns %s: %s: %s (%s)", self.name, client, exc, what)

    def _route(self, query: Query) -> _Route:
        reason = self._split.local(query.question.name) if self._split else None
        if reason is None:
            return self._forward
        return _Route(self._local.name, self._local.upstreams, self._local.dialer, reason)

    async def _resolve(self, query: Query, raw: bytes, client: str, *, via_tcp: bool) -> bytes:
        """The answer to send: an upstream's, or tungo's own (bypass: NOERROR, none in time: SERVFAIL)."""
        question = query.question
        if self._bypasses and question.qclass == dnsmsg.CLASS_IN:
            target = Target(host=dnsmsg.name_text(question.name), ip=None, port=0)
            if (verdict := check_group(self._bypasses, target)) is not None:
                self.stats.dns_bypassed += 1
                pattern = f"matched {verdict.pattern.text!r}" if verdict.pattern else "not whitelisted"
                log.debug(
                    "dns %s: %s: %s: bypass %r %s: empty answer",
                    self.name,
                    client,
                    question,
                    verdict.rule,
                    pattern,
                )
                return dnsmsg.reply(query, dnsmsg.NOERROR)
        route = self._route(query)
        loop = asyncio.get_running_loop()
        started = loop.time()
        found, problems = await self._exchange_any(query, raw, route, via_tcp=via_tcp)
        elapsed_ms = (loop.time() - started) * 1000
        if found is None:
            self.stats.dns_servfail += 1
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            log.log(
                level,
                "dns %s: %s: %s: no answer from the %s servers in %.0f ms (%s): SERVFAIL",
                self.name,
                client,
                question,
                route.name,
                elapsed_ms,
                "; ".join(problems) or "budget spent",
            )
            return dnsmsg.reply(query, dnsmsg.SERVFAIL)
        upstream, answer, info = found
        if self._failing:
            self._failing = False
            log.info("dns %s: %s answers again", self.name, upstream)
        if route is self._forward:
            self.stats.dns_forwarded += 1
        else:
            self.stats.dns_local += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "dns %s: %s: %s → %s %s (%s): %s, %d bytes in %.0f ms",
                self.name,
                client,
                question,
                route.name,
                upstream,
                route.reason,
                dnsmsg.rcode_text(info.rcode),
                len(answer),
                elapsed_ms,
            )
        if self.on_answer is not None:
            try:
                self.on_answer(answer)
            except Exception as exc:  # a learner's bug must not cost the client its answer
                log.debug("dns %s: on_answer: %s", self.name, exc)
        return answer

    async def _exchange_any(
        self, query: Query, raw: bytes, route: _Route, *, via_tcp: bool
    ) -> tuple[tuple[Upstream, bytes, AnswerInfo] | None, list[str]]:
        """The first good answer of ``route``'s servers within the budget, and what went wrong before."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.budget
        problems: list[str] = []
        refused: tuple[Upstream, bytes, AnswerInfo] | None = None  # a SERVFAIL/REFUSED, kept as last resort
        for _ in range(MAX_ROUNDS):
            for upstream in route.upstreams:
                found = await self._attempt(
                    query, raw, upstream, route.dialer, deadline=deadline, problems=problems
                )
                if found is None:
                    continue
                answer, info = found
                if info.rcode in (dnsmsg.SERVFAIL, dnsmsg.REFUSED):
                    problems.append(f"{upstream}: {dnsmsg.rcode_text(info.rcode)}")
                    refused = (upstream, answer, info)
                    continue
                if info.truncated and via_tcp and upstream.network is Network.UDP:
                    again = Upstream(Network.TCP, upstream.addr)
                    full = await self._attempt(
                        query, raw, again, route.dialer, deadline=deadline, problems=problems
                    )
                    if full is not None and not full[1].truncated:
                        self.stats.dns_tcp_retries += 1
                        return (again, *full), problems
                return (upstream, answer, info), problems
            if loop.time() >= deadline:
                break
        return refused, problems

    async def _attempt(
        self,
        query: Query,
        raw: bytes,
        upstream: Upstream,
        dialer: FlowDialer,
        *,
        deadline: float,
        problems: list[str],
    ) -> tuple[bytes, AnswerInfo] | None:
        """One exchange with one server, bounded by ``timeout`` and by what is left of the budget."""
        wait = min(self.settings.timeout, deadline - asyncio.get_running_loop().time())
        if wait <= 0:
            return None
        try:
            async with asyncio.timeout(wait):
                return await _exchange(query, raw, upstream, dialer)
        except TimeoutError:
            problems.append(f"{upstream}: no answer in {wait:g}s")
        except (errors.TungoError, OSError, EOFError) as exc:
            problems.append(f"{upstream}: {describe(exc)}")
        return None


async def _exchange(
    query: Query, raw: bytes, upstream: Upstream, dialer: FlowDialer
) -> tuple[bytes, AnswerInfo]:
    """Ask ``upstream`` (reached through ``dialer``) and return its answer to ``query``."""
    if upstream.network is Network.UDP:
        session = await dialer.dial_udp(upstream.addr)
        try:
            await session.send(raw)
            stray: DnsError | None = None
            for _ in range(MAX_STRAY):
                data = await session.recv()
                try:
                    return data, dnsmsg.check_answer(query, data)
                except DnsError as exc:
                    stray = exc  # not our answer (late, forged, broken): keep listening
            raise DnsError(f"dns: {MAX_STRAY} datagrams, none the answer (last: {stray})")
        finally:
            await session.close()
    stream: Stream = await dialer.dial_tcp(upstream.addr)
    try:
        await stream.write(dnsmsg.frame(raw))
        framer = dnsmsg.TcpFramer()
        while True:
            data = await stream.read(READ_SIZE)
            if not data:
                raise EOFError("closed before answering")
            for message in framer.feed(data):
                return message, dnsmsg.check_answer(query, message)
    finally:
        await stream.close()


def _udp_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound UDP sockets for ``host`` (every IPv4 and IPv6 address when empty); ``port`` 0 picks one
    port for all of them (and then for TCP too). OSError when a bind fails (nothing left open)."""
    if host:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
        targets = [(infos[0][0], infos[0][4][0])]
    else:
        targets = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    made: list[socket.socket] = []
    try:
        for family, address in targets:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            made.append(sock)
            # No SO_REUSEADDR: on UDP it would let a second server share (and steal from) the port.
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if host or family == socket.AF_INET:
                    raise
                log.debug("dns: no IPv6 UDP socket on port %d: %s", port, exc)  # no IPv6 here: IPv4 only
                made.pop().close()
                continue
            sock.setblocking(False)
            port = sock.getsockname()[1]
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made
