"""Which host name a new TCP flow is for: the HTTP/1.x ``Host`` or the TLS ClientHello's SNI, sans-I/O.

Owns the reading of a flow's first client bytes for the split tunnel (``sniffing=true``): the TUN handler
feeds what the client sent before any upstream exists, routes on ``Sniffed.host`` (domain rules), then
replays ``Sniffer.buffered`` upstream unchanged. Detection follows GOST's ``internal/util/sniffing``: TLS
when the first record is a handshake record with version 0x0301..0x0304, HTTP when the stream opens with
a method GOST knows (or the HTTP/2 preface, whose names hide in HPACK: HTTP without a host). Anything
else is decided at once, so server-speaks-first protocols (SSH, SMTP) only wait for ``sniffing.timeout``
when they send nothing at all.

A name is a routing input an attacker controls, so ambiguity yields no name rather than a guess: a
head a compliant server would refuse (duplicate conflicting ``Host``, folded or malformed header lines,
RFC 9112 §3.2 / §5.1), a host with characters outside ``[A-Za-z0-9_.-]``, an SNI that is an IP literal
(RFC 6066 §3) or appears twice. Hostile input never raises: the worst verdict is ``Sniffed(None, None)``.

Bounded: the sniffer looks at no more than ``max_bytes`` of the stream, never allocates from a claimed
length, and does O(1) amortised work per byte fed (records and head terminators are scanned once).
Never reads, writes or imports asyncio/socket/ssl/time/logging.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

#: The most bytes of a flow the sniffer looks at: one full-size TLS record (2^14 bytes of plaintext,
#: RFC 8446 §5.1, plus its 5-byte header). Today's largest ClientHellos fit easily (a post-quantum
#: X25519MLKEM768 hello is ~1.8 KB, with ECH and padding a few KB), and so do HTTP heads with big
#: cookies: nginx answers 400 to a single header line over 8 KiB (large_client_header_buffers). Past
#: this the flow is routed by address; waiting longer would only hold a client's bytes hostage.
MAX_SNIFF_BYTES = (1 << 14) + 5

#: The smallest useful ``max_bytes``: enough to tell every recognised prefix apart (the HTTP/2 preface
#: "PRI * HTTP/2.0" is the longest, 14 bytes).
MIN_SNIFF_BYTES = 16


class Protocol(StrEnum):
    HTTP = "http"
    TLS = "tls"


@dataclass(frozen=True, slots=True)
class Sniffed:
    """A sniff verdict.

    ``protocol`` is None when the stream is neither HTTP nor TLS (or too short to tell). ``host`` is the
    name the client asked for, lower-case, without port or trailing dot, IDNA A-labels as sent (an IPv6
    literal from HTTP in its compressed form); None when absent, invalid or ambiguous.
    """

    protocol: Protocol | None
    host: str | None


NOT_SNIFFABLE = Sniffed(None, None)

# Record layer (RFC 8446 §5.1) and handshake (§4) constants.
_RECORD_HEADER = 5
_CONTENT_HANDSHAKE = 0x16
_MAX_RECORD_PAYLOAD = 1 << 14
_HANDSHAKE_HEADER = 4
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0  # RFC 6066 §3
_NAME_TYPE_HOST = 0

# GOST's method list, each with the space that must follow it (a method token ends at SP).
_HTTP_METHODS = (
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"HEAD ",
    b"CONNECT ",
    b"TRACE ",
)
_H2_PREFACE = b"PRI * HTTP/2.0"  # RFC 9113 §3.4: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_HEAD_END = re.compile(rb"\r?\n\r?\n")  # bare LF line ends too, as most servers accept
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_VERSION = re.compile(r"HTTP/1\.[0-9]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # RFC 3986 §3.1, absolute-form
_PORT = re.compile(r"[0-9]{0,5}")  # RFC 3986 §3.2.3 allows an empty port
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")  # DNS label, as names appear in Host and SNI
_MAX_NAME = 253  # RFC 1035 §2.3.4: 255 wire octets = 253 text characters


def host_name(text: str) -> str | None:
    """``text`` as a DNS host name (lower-case, trailing dot dropped), None if it is not one.

    Only letters, digits, ``-`` and ``_`` in 1..63-character labels, 253 characters at most: the names
    DNS and SNI carry. Percent-encoding, userinfo and non-ASCII text (unencoded IDNs) are refused.
    """
    if not text.isascii():
        return None
    name = text.lower().removesuffix(".")
    if not 0 < len(name) <= _MAX_NAME:
        return None
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name


def _is_numeric_label(label: str) -> bool:
    # A top-level label is never all-numeric (RFC 3696 §2), so this marks an IPv4 literal in any form.
    return label.isdigit()


# ---------------------------------------------------------------------------------------------------
# HTTP/1.x


def _authority_host(authority: str) -> str | None:
    """The host of ``host[:port]`` / ``[v6][:port]``, normalised; None if malformed."""
    if authority.startswith("["):
        literal, sep, rest = authority[1:].partition("]")
        if not sep or "%" in literal or (rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:]))):
            return None  # a zone id ("%25eth0", RFC 6874) names an interface of the client, not a host
        try:
            return str(ipaddress.IPv6Address(literal))
        except ValueError:
            return None
    host, _, port = authority.partition(":")
    if not _PORT.fullmatch(port) or (port and int(port) > 0xFFFF):
        return None  # also catches a second ':' (an unbracketed IPv6 literal)
    name = host_name(host)
    if name is None:
        return None
    if _is_numeric_label(name.rpartition(".")[2]):
        try:
            return str(ipaddress.IPv4Address(name))  # dotted quad only: no "127.1" or octal forms
        except ValueError:
            return None
    return name


def _target_authority(method: str, target: str) -> str | None:
    """The authority a request target carries (absolute- or authority-form), None for origin-form."""
    if method == "CONNECT":
        return target  # RFC 9112 §3.2.3 authority-form
    scheme = _SCHEME.match(target)
    if scheme is None:
        return None
    rest = target[scheme.end() :]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:end]


def _http_host(head: str) -> str | None:
    """The host a request head is for: the target's authority, else the single ``Host`` value."""
    lines = [line.removesuffix("\r") for line in head.split("\n")]
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
        return None
    method, target, _ = parts
    hosts: set[str] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        # Folding and whitespace before the colon get a 400 from a compliant server (RFC 9112 §5.1,
        # §5.2); parsers disagree on them, which is how requests are smuggled. No name then.
        if not sep or not _TOKEN.fullmatch(name):
            return None
        if name.lower() == "host":
            hosts.add(value.strip(" \t"))
    if len(hosts) > 1:
        return None  # RFC 9112 §3.2: more than one Host is a 400; with different values, ambiguous
    authority = _target_authority(method, target)
    if authority is None:  # origin-form ("/x") or asterisk-form ("*"): the Host header names it
        if not hosts:
            return None
        authority = hosts.pop()
    if "@" in authority:
        return None  # userinfo (deprecated, RFC 9110 §4.2.4) hides the host from naive parsers
    return _authority_host(authority)


class _HttpHead:
    """Finds the end of the first request head, scanning each byte once."""

    def __init__(self) -> None:
        self._scanned = 0

    def advance(self, stream: bytearray, end: int) -> Sniffed | None:
        match = _HEAD_END.search(stream, max(0, self._scanned - 3), end)
        if match is None:
            self._scanned = end
            return None
        return Sniffed(Protocol.HTTP, _http_host(stream[: match.start()].decode("latin-1")))


# ---------------------------------------------------------------------------------------------------
# TLS


class _Cursor:
    """Reads big-endian fields from a bounded view; ``None`` results mean "ran past the end"."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def uint(self, size: int) -> int | None:
        if self.remaining < size:
            return None
        value = int.from_bytes(self._data[self._pos : self._pos + size], "big")
        self._pos += size
        return value

    def block(self, length_size: int) -> memoryview | None:
        """A length-prefixed vector. The length is checked against what is there before any slice."""
        length = self.uint(length_size)
        if length is None or self.remaining < length:
            return None
        view = self._data[self._pos : self._pos + length]
        self._pos += length
        return view


def _server_name(body: memoryview) -> str | None:
    """The validated host_name of a complete ClientHello body (RFC 8446 §4.1.2), None if absent/bad."""
    hello = _Cursor(body)
    if hello.uint(2) is None or hello.uint(32) is None:  # legacy_version, random
        return None
    session_id = hello.block(1)
    suites = hello.block(2)
    compression = hello.block(1)
    if session_id is None or len(session_id) > 32 or suites is None or compression is None:
        return None
    if len(suites) < 2 or len(suites) % 2 or len(compression) < 1:
        return None
    if hello.remaining == 0:
        return None  # a TLS 1.2 hello may omit extensions: then there is no SNI
    extensions = hello.block(2)
    if extensions is None or hello.remaining:
        return None
    walk = _Cursor(extensions)
    server_names: list[memoryview] = []
    while walk.remaining:
        ext_type = walk.uint(2)
        data = walk.block(2)
        if ext_type is None or data is None:
            return None
        if ext_type == _EXT_SERVER_NAME:
            server_names.append(data)
    if len(server_names) != 1:
        return None  # absent, or sent twice (RFC 8446 §4.2: a server aborts; no name to trust)
    listing = _Cursor(server_names[0])
    names = listing.block(2)
    if names is None or listing.remaining:
        return None
    entries = _Cursor(names)
    host: bytes | None = None
    while entries.remaining:
        name_type = entries.uint(1)
        name = entries.block(2)
        if name_type is None or name is None:
            return None
        if name_type == _NAME_TYPE_HOST:
            if host is not None:
                return None  # RFC 6066 §3: at most one name per type
            host = bytes(name)
    if host is None:
        return None
    text = host_name(host.decode("latin-1"))
    if text is None or _is_numeric_label(text.rpartition(".")[2]):
        return None  # RFC 6066 §3: "Literal IPv4 and IPv6 addresses are not permitted"
    return text


class _TlsHello:
    """Reassembles the first handshake message from handshake records, each byte copied once.

    ``advance`` reads the stream up to ``end`` (the sniffer's window), resuming where it stopped."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._pos = 0  # stream offset of the next unread record byte
        self._record_left = 0  # payload bytes of the current record not yet read
        self._handshake = bytearray()  # never longer than the window it is copied from

    def advance(self, stream: bytearray, end: int) -> Sniffed | None:
        give_up = Sniffed(Protocol.TLS, None)
        while self._pos < end:
            if self._record_left == 0:
                if end - self._pos < _RECORD_HEADER:
                    return None
                content_type = stream[self._pos]
                length = int.from_bytes(stream[self._pos + 3 : self._pos + 5], "big")
                if content_type != _CONTENT_HANDSHAKE or not 0 < length <= _MAX_RECORD_PAYLOAD:
                    return give_up  # an alert or CCS before the hello, or a record a server refuses
                self._pos += _RECORD_HEADER
                self._record_left = length
                continue
            take = min(self._record_left, end - self._pos)
            self._handshake += stream[self._pos : self._pos + take]
            self._pos += take
            self._record_left -= take
            verdict = self._check()
            if verdict is not None:
                return verdict
        return None

    def _check(self) -> Sniffed | None:
        hs = self._handshake
        if hs[0] != _CLIENT_HELLO:
            return Sniffed(Protocol.TLS, None)
        if len(hs) < _HANDSHAKE_HEADER:
            return None
        length = int.from_bytes(hs[1:4], "big")
        if _RECORD_HEADER + _HANDSHAKE_HEADER + length > self._max:
            return Sniffed(Protocol.TLS, None)  # it can never fit: do not wait for it
        end = _HANDSHAKE_HEADER + length
        if len(hs) < end:
            return None
        return Sniffed(Protocol.TLS, _server_name(memoryview(bytes(hs[_HANDSHAKE_HEADER:end]))))


# ---------------------------------------------------------------------------------------------------
# The sniffer


def _classify(prefix: bytes) -> Protocol | Sniffed | None:
    """What the first bytes say: a protocol to parse, a final verdict, or None to wait for more."""
    if not prefix:
        return None
    if prefix[0] == _CONTENT_HANDSHAKE:
        if len(prefix) >= 2 and prefix[1] != 0x03:
            return NOT_SNIFFABLE
        if len(prefix) < 3:
            return None
        return Protocol.TLS if 0x01 <= prefix[2] <= 0x04 else NOT_SNIFFABLE
    if prefix.startswith(_H2_PREFACE):
        return Sniffed(Protocol.HTTP, None)
    undecided = _H2_PREFACE.startswith(prefix)
    for method in _HTTP_METHODS:
        if prefix.startswith(method):
            return Protocol.HTTP
        undecided = undecided or method.startswith(prefix)
    return None if undecided else NOT_SNIFFABLE


class Sniffer:
    """Feeds a flow's first bytes; says which protocol and host name they are for.

    ``feed(data)`` returns None while more bytes are needed, then a ``Sniffed`` verdict; once decided it
    keeps returning that verdict and stops buffering. ``finish()`` gives the verdict when no more bytes
    will come (EOF, ``sniffing.timeout``). ``buffered`` is everything fed up to the decision, for the
    caller to replay upstream: at most ``max_bytes`` plus the last chunk fed (only the first
    ``max_bytes`` of the stream are looked at, so the verdict never depends on how it was chunked).
    """

    def __init__(self, max_bytes: int = MAX_SNIFF_BYTES) -> None:
        if max_bytes < MIN_SNIFF_BYTES:
            raise ValueError(f"sniff: max_bytes must be at least {MIN_SNIFF_BYTES}")
        self._max = max_bytes
        self._buffer = bytearray()
        self._protocol: Protocol | None = None
        self._parser: _HttpHead | _TlsHello | None = None
        self._result: Sniffed | None = None

    @property
    def buffered(self) -> bytes:
        return bytes(self._buffer)

    @property
    def result(self) -> Sniffed | None:
        """The verdict once decided, None before."""
        return self._result

    def feed(self, data: bytes) -> Sniffed | None:
        if self._result is not None:
            return self._result
        self._buffer += data
        end = min(len(self._buffer), self._max)  # the parsers never look past the first max_bytes
        verdict: Sniffed | None = None
        if self._parser is None:
            kind = _classify(bytes(self._buffer[: min(end, len(_H2_PREFACE))]))
            if isinstance(kind, Sniffed):
                verdict = kind
            elif kind is not None:
                self._protocol = kind
                self._parser = _HttpHead() if kind is Protocol.HTTP else _TlsHello(self._max)
        if self._parser is not None and verdict is None:
            verdict = self._parser.advance(self._buffer, end)
        if verdict is None and end >= self._max:
            verdict = Sniffed(self._protocol, None)
        self._result = verdict
        return verdict

    def finish(self) -> Sniffed:
        """The verdict from what was seen: a truncated hello or head is its protocol without a host."""
        if self._result is None:
            self._result = Sniffed(self._protocol, None)
        return self._result


__all__ = [
    "MAX_SNIFF_BYTES",
    "MIN_SNIFF_BYTES",
    "NOT_SNIFFABLE",
    "Protocol",
    "Sniffed",
    "Sniffer",
    "host_name",
]
