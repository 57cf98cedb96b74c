"""DNS queries, and the replies a forwarding stub writes itself (RFC 1035, 2181, 6891, 7766), sans-I/O.

Owns what the DNS service (``net.dnsserver``, GOST's ``dns`` handler and listener) needs from the wire
format: reading a client's query (header, its one question, the EDNS OPT record's UDP size), checking
that an upstream's answer belongs to that query, the replies tungo writes itself (FORMERR, NOTIMP,
SERVFAIL, and the empty NOERROR of a bypassed name), cutting an answer down to the client's UDP limit
with TC set so that it asks again over TCP, the two-octet length framing of DNS over TCP, and reading
a reverse-lookup name (``in-addr.arpa``, ``ip6.arpa``) back into the network it names. Queries are
forwarded as received, byte for byte; this module never re-encodes a client's message. Names are read
by ``proto.dns.read_name``: one walker, one set of bounds for every DNS byte tungo reads.

Pure: no I/O, no clock, no asyncio/socket. Errors: ``parse_query`` raises ``QueryError`` (a
``proto.dns.DnsError``), whose ``reply`` is what to answer (FORMERR, NOTIMP) or None when the bytes
deserve no answer at all (shorter than a header, or a response); ``check_answer`` and
``TcpFramer.feed`` raise ``DnsError``. Work is linear in the message: names are skipped without
following pointers wherever only their length matters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from tungo_sidecar.proto.dns import DnsError, read_name

HEADER = 12
#: RFC 1035 §4.2.1: what a UDP message may carry when the query has no EDNS OPT record.
CLASSIC_UDP = 512
#: The largest UDP answer written to a client, whatever its EDNS size says: the DNS service listens on
#: loopback, where nothing fragments; GOST's ``bufferSize`` default is the same 4096.
MAX_UDP_ANSWER = 4096
#: The largest query read (UDP or TCP). Real queries stay below 300 octets (512 with RFC 8467
#: padding); this leaves room for EDNS options while bounding what one client can make us hold.
MAX_QUERY = 4096
#: The largest message the TCP framing can carry (its length prefix is 16 bits).
MAX_MESSAGE = 0xFFFF
#: The UDP size tungo's own replies advertise in their OPT record: the largest query it reads.
ADVERTISED_UDP = MAX_QUERY

# RCODEs (RFC 1035 §4.1.1).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
RCODE_NAMES = {
    NOERROR: "NOERROR",
    FORMERR: "FORMERR",
    SERVFAIL: "SERVFAIL",
    NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP",
    REFUSED: "REFUSED",
}
# Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD/CD).
QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
OPCODE_MASK = 0x7800
OPCODE_QUERY = 0
TYPE_PTR = 12
TYPE_OPT = 41
CLASS_IN = 1
TYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV"}
TYPE_NAMES |= {41: "OPT", 64: "SVCB", 65: "HTTPS", 255: "ANY"}

_HEADER_FORMAT = struct.Struct("!6H")
_POINTER = 0xC0
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdef")

Labels = tuple[bytes, ...]  # a name's labels, lower-cased, the root excluded


class QueryError(DnsError):
    """A client's message that is not a query tungo can forward. ``reply`` is the answer to send
    (FORMERR, NOTIMP), or None when there is no header to answer or the message is itself a response."""

    def __init__(self, message: str, reply: bytes | None) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Question:
    """A query's question: ``name`` lower-cased (matching is case-insensitive), type and class."""

    name: Labels
    qtype: int
    qclass: int

    def __str__(self) -> str:
        kind = TYPE_NAMES.get(self.qtype, f"TYPE{self.qtype}")
        return f"{name_text(self.name)} {kind}" + ("" if self.qclass == CLASS_IN else f" CLASS{self.qclass}")


@dataclass(frozen=True, slots=True)
class Query:
    """A client's query as forwarded. ``wire_question`` is its question section as received (the
    client's letter case kept: RFC 5452's 0x20 trick); ``edns_size`` is the UDP size of its OPT record,
    None without one."""

    id: int
    flags: int
    question: Question
    wire_question: bytes
    edns_size: int | None = None

    @property
    def udp_limit(self) -> int:
        """How large a UDP answer this client takes (RFC 6891 §6.2.3/§6.2.5: below 512 means 512)."""
        if self.edns_size is None:
            return CLASSIC_UDP
        return min(max(self.edns_size, CLASSIC_UDP), MAX_UDP_ANSWER)


@dataclass(frozen=True, slots=True)
class AnswerInfo:
    """What ``check_answer`` found in an upstream's answer."""

    rcode: int
    truncated: bool


def name_text(name: Labels) -> str:
    """``name`` in presentation form without the final dot (``.`` for the root); octets outside
    letters, digits, ``-`` and ``_`` are written ``\\DDD`` (RFC 1035 §5.1), so a label holding a dot
    can never read as two labels."""
    if not name:
        return "."
    parts = []
    for label in name:
        if all(octet in _PLAIN for octet in label):
            parts.append(label.decode("ascii"))
        else:
            parts.append("".join(chr(o) if o in _PLAIN else f"\\{o:03d}" for o in label))
    return ".".join(parts)


def rcode_text(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, f"RCODE{rcode}")


def _header(ident: int, flags: int, *, qd: int = 0, ar: int = 0) -> bytes:
    """A header of tungo's own making: its replies carry no answer or authority records."""
    return _HEADER_FORMAT.pack(ident, flags, qd, 0, 0, ar)


def _reply_flags(flags: int, rcode: int) -> int:
    # QR, the query's opcode, RD and CD copied (RFC 1035 §4.1.1, RFC 4035 §3.2.2), RA: tungo recurses
    # (through its upstreams) for the client.
    return QR | (flags & (OPCODE_MASK | RD | CD)) | RA | (rcode & 0xF)


# An OPT record for tungo's own replies to an EDNS query (RFC 6891 §6.1.1: a responder MUST include
# one): root owner, the UDP size tungo reads, extended RCODE 0, version 0, no flags, no options.
_OPT = b"\x00" + struct.pack("!HHIH", TYPE_OPT, ADVERTISED_UDP, 0, 0)


def reply(query: Query, rcode: int) -> bytes:
    """tungo's own answer to ``query``: its question echoed, no records, ``rcode`` (NOERROR for a
    bypassed name, as GOST's handler answers, SERVFAIL when no upstream answered)."""
    opt = _OPT if query.edns_size is not None else b""
    head = _header(query.id, _reply_flags(query.flags, rcode), qd=1, ar=1 if opt else 0)
    return head + query.wire_question + opt


def _skip_name(message: bytes, pos: int) -> int:
    """The offset just past the name at ``pos``, without following pointers (its length in place)."""
    while True:
        if pos >= len(message):
            raise DnsError("dns: name runs past the end")
        length = message[pos]
        if length & _POINTER == _POINTER:
            if pos + 2 > len(message):
                raise DnsError("dns: compression pointer runs past the end")
            return pos + 2
        if length & _POINTER:
            raise DnsError(f"dns: reserved label type {length >> 6:#x}")
        pos += 1 + length
        if length == 0:
            return pos


def _record(message: bytes, pos: int) -> tuple[int, int, int, int]:
    """The resource record at ``pos``: (its type, the offset of its name's end, of its RDATA, past it)."""
    name_end = _skip_name(message, pos)
    if name_end + 10 > len(message):
        raise DnsError("dns: record header runs past the end")
    rtype, rdlength = struct.unpack_from("!H6xH", message, name_end)
    rdata = name_end + 10
    if rdata + rdlength > len(message):
        raise DnsError("dns: record data runs past the end")
    return rtype, name_end, rdata, rdata + rdlength


def parse_query(payload: bytes, max_size: int = MAX_QUERY) -> Query:
    """``payload`` as a query to forward; ``QueryError`` (with the reply to send, or None) otherwise.

    Accepted: QR clear, opcode QUERY, exactly one question (RFC 9619), any records after it well
    formed, at most one OPT record (root owner, in the additional section), nothing after the last
    record, at most ``max_size`` octets.
    """
    if len(payload) < HEADER:
        raise QueryError(f"dns: {len(payload)} bytes is shorter than a header", None)
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER_FORMAT.unpack_from(payload)
    if flags & QR:
        raise QueryError("dns: a response where a query was expected", None)

    def refuse(reason: str, rcode: int = FORMERR) -> QueryError:
        return QueryError(f"dns: {reason}", _header(ident, _reply_flags(flags, rcode)))

    if len(payload) > max_size:
        raise refuse(f"query of {len(payload)} bytes is larger than {max_size}")
    opcode = (flags & OPCODE_MASK) >> 11
    if opcode != OPCODE_QUERY:
        raise refuse(f"opcode {opcode} is not QUERY", NOTIMP)
    if qdcount != 1:
        raise refuse(f"{qdcount} questions (a query has exactly one)")
    try:
        name, pos = read_name(payload, HEADER)
    except DnsError as exc:
        raise refuse(str(exc).removeprefix("dns: ")) from exc
    if pos + 4 > len(payload):
        raise refuse("question runs past the end")
    qtype, qclass = struct.unpack_from("!HH", payload, pos)
    pos += 4
    wire_question = payload[HEADER:pos]
    edns_size: int | None = None
    try:
        for index in range(ancount + nscount + arcount):
            start = pos
            rtype, name_end, _, pos = _record(payload, pos)
            if rtype != TYPE_OPT:
                continue
            if index < ancount + nscount or edns_size is not None or name_end != start + 1:
                raise DnsError("dns: an OPT record out of place (one, root-owned, in the additional section)")
            edns_size = int.from_bytes(payload[name_end + 2 : name_end + 4], "big")
    except DnsError as exc:
        raise refuse(str(exc).removeprefix("dns: ")) from exc
    if pos != len(payload):
        raise refuse(f"{len(payload) - pos} bytes after the last record")
    question = Question(name, qtype, qclass)
    return Query(ident, flags, question, wire_question, edns_size)


def check_answer(query: Query, payload: bytes) -> AnswerInfo:
    """That ``payload`` answers ``query``: a response with its ID, opcode and question (any letter
    case); a question-less answer only with an error RCODE. ``DnsError`` otherwise (a stray or forged
    datagram, a broken upstream)."""
    if len(payload) < HEADER:
        raise DnsError(f"dns: answer of {len(payload)} bytes is shorter than a header")
    ident, flags, qdcount = struct.unpack_from("!3H", payload)
    rcode = flags & 0xF
    if not flags & QR:
        raise DnsError("dns: the upstream sent a query, not an answer")
    if ident != query.id:
        raise DnsError(f"dns: answer id {ident:#06x} is not the query's {query.id:#06x}")
    if flags & OPCODE_MASK != query.flags & OPCODE_MASK:
        raise DnsError("dns: answer opcode differs from the query's")
    if qdcount == 0 and rcode != NOERROR:
        return AnswerInfo(rcode, bool(flags & TC))
    if qdcount != 1:
        raise DnsError(f"dns: answer has {qdcount} questions")
    name, pos = read_name(payload, HEADER)
    if pos + 4 > len(payload):
        raise DnsError("dns: answer question runs past the end")
    qtype, qclass = struct.unpack_from("!HH", payload, pos)
    if Question(name, qtype, qclass) != query.question:
        raise DnsError(f"dns: answer is for {Question(name, qtype, qclass)}, not {query.question}")
    return AnswerInfo(rcode, bool(flags & TC))


def _find_opt(message: bytes, pos: int, ancount: int, nscount: int, arcount: int) -> bytes | None:
    """The OPT record of ``message``'s additional section (records from ``pos``), None when absent or
    when the records do not parse."""
    try:
        for index in range(ancount + nscount + arcount):
            start = pos
            rtype, name_end, _, pos = _record(message, pos)
            if rtype == TYPE_OPT and index >= ancount + nscount and name_end == start + 1:
                return message[start:pos]
    except DnsError:
        return None
    return None


def truncate(answer: bytes, limit: int) -> bytes:
    """``answer`` as a UDP client of ``limit`` octets may receive it: unchanged when it fits, else its
    header with TC set, its question and its OPT record (RFC 6891 §7) and no other record (RFC 2181
    §9: a client must not use a partial RRset), so the client asks again over TCP (RFC 7766 §5)."""
    if len(answer) <= limit:
        return answer
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER_FORMAT.unpack_from(answer)
    question = b""
    end = HEADER
    if qdcount == 1:
        try:
            _, end = read_name(answer, HEADER)
        except DnsError:
            end = -1
        if end > 0 and end + 4 <= len(answer):
            end += 4
            question = answer[HEADER:end]
    opt = _find_opt(answer, end, ancount, nscount, arcount) if question else None
    head = _header(ident, flags | TC, qd=1 if question else 0, ar=1 if opt else 0)
    cut = head + question + (opt or b"")
    if len(cut) > limit and opt:
        cut = _header(ident, flags | TC, qd=1) + question
    return cut


def frame(message: bytes) -> bytes:
    """``message`` with its two-octet length prefix, as DNS over TCP sends it (RFC 1035 §4.2.2)."""
    if not 0 < len(message) <= MAX_MESSAGE:
        raise ValueError(f"a DNS message over TCP holds 1 to {MAX_MESSAGE} bytes, not {len(message)}")
    return len(message).to_bytes(2, "big") + message


class TcpFramer:
    """Splits a DNS-over-TCP byte stream into messages (RFC 7766 §8: each after its 16-bit length).

    ``feed`` returns the messages completed by ``data`` (any number, pipelined queries included) and
    raises ``DnsError`` at a length prefix of 0 or above ``max_message``: such a stream cannot be
    resynchronised, the connection must end. ``buffered`` is what an incomplete message holds.
    """

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self._max = max_message

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages: list[bytes] = []
        while len(self._buffer) >= 2:
            length = int.from_bytes(self._buffer[:2], "big")
            if length == 0 or length > self._max:
                raise DnsError(f"dns: a {length}-byte message over TCP (1 to {self._max} accepted)")
            if len(self._buffer) < 2 + length:
                break
            messages.append(bytes(self._buffer[2 : 2 + length]))
            del self._buffer[: 2 + length]
        return messages


def _octet(label: bytes) -> int | None:
    if not 1 <= len(label) <= 3 or not all(c in _DIGITS for c in label):
        return None
    if len(label) > 1 and label.startswith(b"0"):
        return None  # "010": not how an octet is written (and some read it as octal)
    value = int(label)
    return value if value <= 0xFF else None


def reverse_network(name: Labels) -> IPv4Network | IPv6Network | None:
    """The network a reverse-lookup name stands for: ``10.96.in-addr.arpa`` → 10.96.0.0/16 (one
    decimal label per octet, RFC 1035 §3.5), ``a.b.ip6.arpa`` → one nibble per label (RFC 3596 §2.5);
    None for any other name, including RFC 2317 classless labels such as ``0/25``."""
    if name[-2:] == (b"in-addr", b"arpa"):
        labels = name[:-2]
        if not 1 <= len(labels) <= 4:
            return None
        octets = [_octet(label) for label in reversed(labels)]
        if any(octet is None for octet in octets):
            return None
        packed = bytes(octet or 0 for octet in octets) + bytes(4 - len(octets))
        return IPv4Network((IPv4Address(packed), 8 * len(octets)))
    if name[-2:] == (b"ip6", b"arpa"):
        labels = name[:-2]
        if not 1 <= len(labels) <= 32 or not all(len(label) == 1 and label[0] in _HEX for label in labels):
            return None
        value = int(b"".join(reversed(labels)), 16) << (4 * (32 - len(labels)))
        return IPv6Network((IPv6Address(value), 4 * len(labels)))
    return None


__all__ = [
    "CLASSIC_UDP",
    "MAX_MESSAGE",
    "MAX_QUERY",
    "MAX_UDP_ANSWER",
    "AnswerInfo",
    "Labels",
    "Query",
    "QueryError",
    "Question",
    "TcpFramer",
    "check_answer",
    "frame",
    "name_text",
    "parse_query",
    "reply",
    "reverse_network",
    "truncate",
]
