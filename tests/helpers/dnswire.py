"""DNS messages built by hand (RFC 1035 wire format; no DNS library in the venv), DNS clients that
speak UDP and TCP from any socket, and a fake DNS server that records who asked what.

Shared by the codec tests (tests/tungo_sidecar/proto/test_dnsmsg.py), the DNS service's tests
(tests/tungo_sidecar/net/test_dnsserver.py) and the namespace test (tests/integration/test_split_dns.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import cast

A, NS, CNAME, PTR, TXT, AAAA, OPT = 1, 2, 5, 12, 16, 28, 41
IN = 1
QR, TC, RD, RA = 0x8000, 0x0200, 0x0100, 0x0080
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5


def wire_name(text: str) -> bytes:
    labels = [label.encode() for label in text.split(".") if label]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def opt_record(size: int = 1232) -> bytes:
    return b"\x00" + struct.pack("!HHIH", OPT, size, 0, 0)


def query(name: str, qtype: int = A, *, qid: int = 0x4242, flags: int = RD, edns: int | None = None) -> bytes:
    """A standard query for ``name``; with ``edns``, an OPT record advertising that UDP size."""
    head = struct.pack("!6H", qid, flags, 1, 0, 0, 1 if edns is not None else 0)
    return head + wire_name(name) + struct.pack("!HH", qtype, IN) + (opt_record(edns) if edns else b"")


def question_end(message: bytes) -> int:
    """The offset just past the (uncompressed) question of ``message``."""
    pos = 12
    while message[pos]:
        pos += 1 + message[pos]
    return pos + 5


def qname(message: bytes) -> str:
    labels, pos = [], 12
    while message[pos]:
        labels.append(message[pos + 1 : pos + 1 + message[pos]].decode(errors="replace"))
        pos += 1 + message[pos]
    return ".".join(labels).lower()


def rr(rtype: int, rdata: bytes, ttl: int = 300, owner: bytes = b"\xc0\x0c") -> bytes:
    """A record owned by the question name (a pointer to offset 12) unless ``owner`` says otherwise."""
    return owner + struct.pack("!HHIH", rtype, IN, ttl, len(rdata)) + rdata


def a_record(ip: str, ttl: int = 300) -> bytes:
    return rr(A, IPv4Address(ip).packed, ttl)


def txt_record(text: bytes) -> bytes:
    return rr(TXT, bytes([len(text)]) + text)


def answer(
    request: bytes, *records: bytes, rcode: int = NOERROR, flags: int = 0, extra: bytes = b""
) -> bytes:
    """A response to ``request``: its ID and question, ``records`` as answers, ``extra`` (already
    encoded records, e.g. an OPT) as the additional section."""
    qid, qflags = struct.unpack("!HH", request[:4])
    end = question_end(request)
    arcount = 1 if extra else 0
    head = struct.pack("!6H", qid, QR | (qflags & RD) | RA | flags | rcode, 1, len(records), 0, arcount)
    return head + request[12:end] + b"".join(records) + extra


@dataclass(frozen=True)
class Header:
    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def tc(self) -> bool:
        return bool(self.flags & TC)

    @property
    def qr(self) -> bool:
        return bool(self.flags & QR)


def header(message: bytes) -> Header:
    return Header(*struct.unpack("!6H", message[:12]))


def addresses(message: bytes) -> list[str]:
    """The A records' addresses in the answer section of a simple answer (owners not checked)."""
    found: list[str] = []
    pos = question_end(message)
    for _ in range(header(message).ancount):
        while message[pos] and message[pos] < 0xC0:
            pos += 1 + message[pos]
        pos += 2 if message[pos] >= 0xC0 else 1
        rtype, _, _, length = struct.unpack("!HHIH", message[pos : pos + 10])
        pos += 10
        if rtype == A:
            found.append(str(IPv4Address(message[pos : pos + length])))
        pos += length
    return found


# -- clients ---------------------------------------------------------------------------------------


async def ask_udp(sock: socket.socket, server: tuple[str, int], message: bytes, wait: float = 5.0) -> bytes:
    """Send ``message`` from ``sock`` (non-blocking UDP) and return the first datagram back."""
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, server)
    await loop.sock_sendall(sock, message)
    return await asyncio.wait_for(loop.sock_recv(sock, 65536), wait)


async def ask_tcp(
    sock: socket.socket, server: tuple[str, int], *messages: bytes, wait: float = 5.0
) -> list[bytes]:
    """Send ``messages`` (pipelined, framed) on ``sock`` (non-blocking TCP); return as many answers."""
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.sock_connect(sock, server), wait)
    await loop.sock_sendall(sock, b"".join(len(m).to_bytes(2, "big") + m for m in messages))
    buffer, answers = b"", []
    async with asyncio.timeout(wait):
        while len(answers) < len(messages):
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise EOFError(f"closed after {len(answers)} answers")
            buffer += data
            while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                size = int.from_bytes(buffer[:2], "big")
                answers.append(buffer[2 : 2 + size])
                buffer = buffer[2 + size :]
    return answers


def udp_socket(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def tcp_socket(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


# -- a fake DNS server -----------------------------------------------------------------------------

#: Decides a fake server's answer: (the query, "udp"/"tcp") -> the answer, or None to stay silent.
Responder = Callable[[bytes, str], bytes | None]


@dataclass
class Seen:
    network: str
    peer: str
    name: str


@dataclass
class FakeDns:
    """A DNS server on UDP and TCP at one address; ``seen`` lists every query it got.

    ``make_socket(kind, port)`` returns a bound, non-blocking socket (listening, for TCP): tests give
    one that creates it inside a namespace, or on loopback (``bind_socket``). ``port`` 0: any.
    """

    responder: Responder
    make_socket: Callable[[int, int], socket.socket]
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _closers: list[asyncio.AbstractServer | asyncio.BaseTransport] = field(default_factory=list)

    async def __aenter__(self) -> FakeDns:
        loop = asyncio.get_running_loop()
        for _ in range(8):  # port 0: TCP must get the port the kernel gave UDP, which may be taken
            udp = self.make_socket(socket.SOCK_DGRAM, self.port)
            try:
                tcp = self.make_socket(socket.SOCK_STREAM, udp.getsockname()[1])
            except OSError:
                udp.close()
                if self.port:
                    raise
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        self.port = udp.getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(lambda: _FakeUdp(self), sock=udp)
        self._closers.append(transport)
        self._closers.append(await asyncio.start_server(self._tcp, sock=tcp))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for closer in self._closers:
            closer.close()

    def names(self) -> set[str]:
        return {seen.name for seen in self.seen}

    def peers(self) -> set[str]:
        return {seen.peer for seen in self.seen}

    def record(self, network: str, peer: str, message: bytes) -> None:
        try:
            name = qname(message)
        except IndexError:
            name = "?"
        self.seen.append(Seen(network, peer.removeprefix("::ffff:"), name))

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername")[0])
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                message = await reader.readexactly(size)
                self.record("tcp", peer, message)
                reply = self.responder(message, "tcp")
                if reply is not None:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class _FakeUdp(asyncio.DatagramProtocol):
    def __init__(self, server: FakeDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.record("udp", addr[0], data)
        reply = self.server.responder(data, "udp")
        if reply is not None and self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.sendto(reply, addr)


def bind_socket(host: str) -> Callable[[int, int], socket.socket]:
    """``make_socket`` for ``FakeDns`` in this namespace, on ``host``."""

    def make(kind: int, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    return make


#: ~2.1 KB of TXT records: more than a plain UDP answer may carry (512), less than 4096.
BIG = [txt_record(b"x" * 200) for _ in range(10)]


def external_resolver(address: str) -> Responder:
    """A fake "external" resolver: an oversized answer for big.* whatever the client can take (a
    broken server), a proper TC over UDP for tc.*, silence for silent.*, an A record ``address`` else."""

    def answer_for(message: bytes, network: str) -> bytes | None:
        name = qname(message)
        if name.startswith("big."):
            return answer(message, *BIG)
        if name.startswith("tc."):
            return answer(message, flags=TC) if network == "udp" else answer(message, *BIG)
        if name.startswith("silent."):
            return None
        return answer(message, a_record(address))

    return answer_for
