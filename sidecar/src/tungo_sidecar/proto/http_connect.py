"""HTTP/1.1 CONNECT tunnelling (RFC 9110 §9.3.6, RFC 9112 message syntax), both sides, sans-I/O.

Owns the bytes of a CONNECT exchange: the client's request head, the proxy's response head, Basic
proxy credentials (RFC 7617). Called by the http connector (client: ``ConnectRequest.encode()``,
``ResponseHeadReader``, ``raise_for_status``) and the http handler (server: ``RequestHeadReader``,
``RequestHead.connect_address()`` / ``.credentials()``, ``ResponseHead`` factories). Never reads,
writes, resolves names or imports asyncio/socket/ssl; never handles message bodies: after a 2xx the
stream is the tunnel, and bytes that arrived behind the head stay in the reader's ``leftover``.

Heads are limited to ``MAX_HEAD_SIZE`` (64 KiB, the order of what common servers allow, e.g. nginx's
default large_client_header_buffers is 4 x 8 KiB and Go's DefaultMaxHeaderBytes is 1 MiB): a CONNECT
head is normally ~200 bytes, so anything near the limit is an attack or a wrong protocol. Malformed
or oversized heads raise ``errors.HttpProtocolError`` whose ``status`` is the answer a server should
send (400 / 431), None on the client side. Header text is ISO-8859-1 (RFC 9110 §5.5: octets, not
UTF-8), so every byte sequence decodes and round-trips.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from tungo_sidecar import errors
from tungo_sidecar.proto.address import Address
from tungo_sidecar.proto.reader import MessageReader

MAX_HEAD_SIZE = 64 * 1024

STATUS_OK = 200
STATUS_BAD_REQUEST = 400
STATUS_FORBIDDEN = 403
STATUS_METHOD_NOT_ALLOWED = 405
STATUS_PROXY_AUTH_REQUIRED = 407
STATUS_HEADERS_TOO_LARGE = 431
STATUS_BAD_GATEWAY = 502
STATUS_GATEWAY_TIMEOUT = 504

REASONS: dict[int, str] = {
    STATUS_OK: "Connection established",
    STATUS_BAD_REQUEST: "Bad Request",
    STATUS_FORBIDDEN: "Forbidden",
    STATUS_METHOD_NOT_ALLOWED: "Method Not Allowed",
    STATUS_PROXY_AUTH_REQUIRED: "Proxy Authentication Required",
    STATUS_HEADERS_TOO_LARGE: "Request Header Fields Too Large",
    STATUS_BAD_GATEWAY: "Bad Gateway",
    STATUS_GATEWAY_TIMEOUT: "Gateway Timeout",
}

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 tchar
_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")  # bare LF line ends are accepted, as most servers do
_FORBIDDEN_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB


@dataclass(frozen=True, slots=True)
class Headers:
    """Header fields in wire order; lookups are case-insensitive."""

    items: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name, value in self.items:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"http: bad header name {name!r}")
            if _FORBIDDEN_VALUE_CHARS.search(value) or value != value.strip(" \t"):
                raise ValueError(f"http: bad value for header {name!r}")

    def get(self, name: str) -> str | None:
        """The first value of ``name``, or None."""
        lowered = name.lower()
        for key, value in self.items:
            if key.lower() == lowered:
                return value
        return None

    def get_all(self, name: str) -> tuple[str, ...]:
        lowered = name.lower()
        return tuple(value for key, value in self.items if key.lower() == lowered)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def encode(self) -> bytes:
        return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in self.items)


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    """RFC 7617 user-id / password. Text is UTF-8 with ``surrogateescape`` so any bytes round-trip."""

    username: str
    password: str

    def __post_init__(self) -> None:
        if ":" in self.username:
            raise ValueError("http: a Basic user-id cannot contain ':'")

    def header_value(self) -> str:
        raw = f"{self.username}:{self.password}".encode("utf-8", "surrogateescape")
        return "Basic " + base64.b64encode(raw).decode("ascii")

    @classmethod
    def from_header_value(cls, value: str) -> BasicCredentials | None:
        """Decode ``Basic <base64>``; None for another scheme. Raises HttpProtocolError(400) when the
        scheme is Basic but the token is not valid base64 of ``user:password``."""
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            raw = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise errors.HttpProtocolError(
                "http: Basic credentials are not base64", STATUS_BAD_REQUEST
            ) from exc
        user, sep, password = raw.decode("utf-8", "surrogateescape").partition(":")
        if not sep:
            raise errors.HttpProtocolError("http: Basic credentials lack ':'", STATUS_BAD_REQUEST)
        return cls(user, password)

    def __repr__(self) -> str:
        return f"BasicCredentials(username={self.username!r}, password=***)"


# ---------------------------------------------------------------------------------------------------
# Client side


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """What the client sends: ``CONNECT host:port HTTP/1.1`` with Host, optional Basic
    Proxy-Authorization, ``Proxy-Connection: keep-alive`` (as GOST's http connector sends) and any
    extra headers (e.g. from node metadata)."""

    target: Address
    credentials: BasicCredentials | None = None
    extra_headers: Headers = field(default_factory=Headers)

    def __post_init__(self) -> None:
        if not self.target.host or any(c in self.target.host for c in " \t\r\n/"):
            raise ValueError(f"http: cannot CONNECT to host {self.target.host!r}")

    def encode(self) -> bytes:
        authority = str(self.target)  # brackets IPv6 literals
        fields: list[tuple[str, str]] = [("Host", authority)]
        if self.credentials is not None:
            fields.append(("Proxy-Authorization", self.credentials.header_value()))
        fields.append(("Proxy-Connection", "keep-alive"))
        fields.extend(self.extra_headers)
        head = f"CONNECT {authority} HTTP/1.1\r\n".encode("latin-1")
        return head + Headers(tuple(fields)).encode() + b"\r\n"


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A response status line and headers. Encoded by the server, parsed by the client."""

    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    version: str = "HTTP/1.1"

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 999:
            raise ValueError(f"http: status {self.status} is not three digits")
        if _FORBIDDEN_VALUE_CHARS.search(self.reason):
            raise ValueError("http: control character in reason phrase")
        if not _VERSION.fullmatch(self.version):
            raise ValueError(f"http: bad version {self.version!r}")

    @property
    def ok(self) -> bool:
        """Any 2xx establishes the tunnel (RFC 9110 §9.3.6). GOST's client insists on exactly 200;
        every server we know sends 200."""
        return 200 <= self.status <= 299

    def encode(self) -> bytes:
        line = f"{self.version} {self.status} {self.reason}\r\n".encode("latin-1")
        return line + self.headers.encode() + b"\r\n"

    # Server-side factories: what the http handler answers.

    @classmethod
    def connection_established(cls) -> ResponseHead:
        return cls(STATUS_OK, REASONS[STATUS_OK])

    @classmethod
    def proxy_auth_required(cls, realm: str = "tungo") -> ResponseHead:
        if '"' in realm or "\\" in realm:
            raise ValueError("http: realm must not contain quotes or backslashes")
        return cls._error(STATUS_PROXY_AUTH_REQUIRED, ("Proxy-Authenticate", f'Basic realm="{realm}"'))

    @classmethod
    def forbidden(cls) -> ResponseHead:
        return cls._error(STATUS_FORBIDDEN)

    @classmethod
    def bad_gateway(cls) -> ResponseHead:
        return cls._error(STATUS_BAD_GATEWAY)

    @classmethod
    def error(cls, status: int) -> ResponseHead:
        """Any error answer (400, 405, 431, 504...) with the standard reason phrase."""
        return cls._error(status)

    @classmethod
    def _error(cls, status: int, *extra: tuple[str, str]) -> ResponseHead:
        # No body, and the connection ends: the tunnel was refused, so nothing else follows.
        fields = (*extra, ("Content-Length", "0"), ("Connection", "close"))
        return cls(status, REASONS.get(status, "Error"), Headers(fields))


def raise_for_status(response: ResponseHead) -> None:
    """Client side: a non-2xx answer becomes ``errors.ProxyRefusedError(code=status)``."""
    if not response.ok:
        message = f"http: proxy refused CONNECT: {response.status} {response.reason}".rstrip()
        raise errors.ProxyRefusedError(message, response.status)


# ---------------------------------------------------------------------------------------------------
# Server side


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request line and headers as the proxy received them."""

    method: str
    target: str
    headers: Headers = field(default_factory=Headers)
    version: str = "HTTP/1.1"

    def connect_address(self, default_port: int | None = None) -> Address:
        """The authority-form target of a CONNECT (``host:port``, ``[v6]:port``).

        ``default_port`` fills in a missing port (GOST's handler uses 80); None requires one, as RFC
        9110 does. Raises HttpProtocolError: 405 for another method, 400 for a bad target.
        """
        if self.method != "CONNECT":
            raise errors.HttpProtocolError(
                f"http: method {self.method} is not CONNECT", STATUS_METHOD_NOT_ALLOWED
            )
        try:
            address = Address.parse(self.target, default_port=default_port)
        except ValueError as exc:
            raise errors.HttpProtocolError(
                f"http: bad CONNECT target {self.target!r}", STATUS_BAD_REQUEST
            ) from exc
        if not address.host:
            raise errors.HttpProtocolError(
                f"http: CONNECT target {self.target!r} has no host", STATUS_BAD_REQUEST
            )
        return address

    def credentials(self) -> BasicCredentials | None:
        """Basic Proxy-Authorization, None when absent or another scheme (the handler answers 407)."""
        value = self.headers.get("Proxy-Authorization")
        return None if value is None else BasicCredentials.from_header_value(value)

    def encode(self) -> bytes:
        line = f"{self.method} {self.target} {self.version}\r\n".encode("latin-1")
        return line + self.headers.encode() + b"\r\n"


# ---------------------------------------------------------------------------------------------------
# Incremental head readers


_Head = TypeVar("_Head", RequestHead, ResponseHead)


class _HeadReader(MessageReader[_Head]):
    """Buffers bytes until an empty line ends the head; keeps what followed it as ``leftover``."""

    _protocol = "http"
    _server = False

    def __init__(self, max_size: int = MAX_HEAD_SIZE) -> None:
        if max_size < 4:
            raise ValueError("http: max_size must allow at least an empty head")
        super().__init__()
        self._max = max_size
        self._scanned = 0

    def _error(self, message: str, status: int = STATUS_BAD_REQUEST) -> errors.HttpProtocolError:
        return errors.HttpProtocolError(f"http: {message}", status if self._server else None)

    def _parse(self, buf: bytearray) -> tuple[_Head, int] | None:
        # Rescan only the tail that could complete a terminator: linear in the bytes fed.
        match = _HEAD_END.search(buf, max(0, self._scanned - 3))
        if match is None:
            self._scanned = len(buf)
            if len(buf) > self._max:
                raise self._error(f"head exceeds {self._max} bytes", STATUS_HEADERS_TOO_LARGE)
            return None
        if match.end() > self._max:
            raise self._error(f"head exceeds {self._max} bytes", STATUS_HEADERS_TOO_LARGE)
        head = bytes(buf[: match.start()]).decode("latin-1")
        lines = [line.removesuffix("\r") for line in head.split("\n")]
        return self._head(lines[0], self._parse_fields(lines[1:])), match.end()

    def _head(self, start: str, fields: list[tuple[str, str]]) -> _Head:
        raise NotImplementedError

    def _parse_fields(self, lines: list[str]) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        for line in lines:
            if line[:1] in (" ", "\t"):
                # RFC 9112 §5.2: obsolete line folding may be rejected; folding invites smuggling.
                raise self._error("obsolete header line folding")
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                # Also rejects whitespace before the colon (RFC 9112 §5.1 requires a 400).
                raise self._error(f"malformed header line {line[:80]!r}")
            value = value.strip(" \t")
            if _FORBIDDEN_VALUE_CHARS.search(value):
                raise self._error(f"control character in header {name!r}")
            fields.append((name, value))
        return fields


class RequestHeadReader(_HeadReader[RequestHead]):
    """Server side. ``feed(chunk)`` returns the ``RequestHead`` once complete, None before.

    Raises HttpProtocolError (status 400, or 431 past ``max_size``)."""

    _server = True

    def _head(self, start: str, fields: list[tuple[str, str]]) -> RequestHead:
        parts = start.split(" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
            raise self._error(f"malformed request line {start[:80]!r}")
        method, target, version = parts
        if not _VERSION.fullmatch(version):
            raise self._error(f"unsupported version {version[:20]!r}")
        if _FORBIDDEN_VALUE_CHARS.search(target):
            raise self._error("control character in request target")
        return RequestHead(method, target, Headers(tuple(fields)), version)


class ResponseHeadReader(_HeadReader[ResponseHead]):
    """Client side. ``feed(chunk)`` returns the ``ResponseHead`` once complete, None before; raises
    HttpProtocolError (``status`` None) on a malformed or oversized head. Interim 1xx responses are
    returned like any other; CONNECT proxies do not send them."""

    def _head(self, start: str, fields: list[tuple[str, str]]) -> ResponseHead:
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        if not _VERSION.fullmatch(version):
            raise self._error(f"malformed status line {start[:80]!r}")
        if len(code) != 3 or not code.isascii() or not code.isdigit() or code[0] == "0":
            raise self._error(f"bad status code in {start[:80]!r}")
        if _FORBIDDEN_VALUE_CHARS.search(reason):
            raise self._error("control character in reason phrase")
        return ResponseHead(int(code), reason, Headers(tuple(fields)), version)
