"""SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), both sides, sans-I/O.

Owns the bytes of every socks5 message: greeting, method selection, auth sub-negotiation, request,
reply, and the UDP request header. Called by the socks5 connector (client side: encode greeting,
auth, request; read selection, auth status, reply) and the socks5 handler (server side: the reverse);
they own the sockets and the order of the exchange. Never reads, writes, resolves names or imports
asyncio/socket/ssl.

Conversation (each message has an encoder and an incremental reader of the same name)::

    client                                    server
    Greeting(methods)              ------->   GreetingReader
    MethodSelectionReader          <-------   MethodSelection(method)
    UserPassAuth(user, password)   ------->   UserPassAuthReader           (method 0x02 only)
    AuthStatusReader               <-------   AuthStatus(status)
    Request(cmd, address)          ------->   RequestReader
    ReplyReader                    <-------   Reply(code, bound address)     (codes: ReplyCode)
    raw TCP bytes / UDP datagrams with ``UdpDatagram`` headers to the bound address

Readers return the message once complete (None before) and keep the bytes that followed it in
``leftover``: a client may pipeline its request behind the greeting. Malformed input raises
``errors.Socks5ProtocolError``, whose ``reply`` is the REP code a server should still answer with.
A refused reply, failed auth or "no acceptable methods" become ``errors.ProxyRefusedError(code)``
through ``raise_for_reply`` / ``raise_for_auth_status`` / ``raise_for_method``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from tungo_sidecar import errors
from tungo_sidecar.proto.address import Address, address_length, decode_address, encode_address
from tungo_sidecar.proto.reader import MessageReader

VERSION = 0x05
AUTH_VERSION = 0x01  # RFC 1929 sub-negotiation version


class Method(IntEnum):
    NO_AUTH = 0x00
    GSSAPI = 0x01
    USER_PASS = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class ReplyCode(IntEnum):
    """REP codes. Everything but SUCCEEDED is a refusal (``ProxyRefusedError.code``)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


REPLY_TEXT: dict[int, str] = {
    ReplyCode.SUCCEEDED: "succeeded",
    ReplyCode.GENERAL_FAILURE: "general SOCKS server failure",
    ReplyCode.NOT_ALLOWED: "connection not allowed by ruleset",
    ReplyCode.NETWORK_UNREACHABLE: "network unreachable",
    ReplyCode.HOST_UNREACHABLE: "host unreachable",
    ReplyCode.CONNECTION_REFUSED: "connection refused",
    ReplyCode.TTL_EXPIRED: "TTL expired",
    ReplyCode.COMMAND_NOT_SUPPORTED: "command not supported",
    ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}

AUTH_SUCCESS = 0x00
AUTH_FAILURE = 0x01  # RFC 1929: any non-zero status is a failure; 1 is what servers commonly send

# The address a reply carries when there is nothing meaningful to bind (e.g. on failure).
UNSPECIFIED = Address("0.0.0.0", 0)


def _error(message: str) -> errors.Socks5ProtocolError:
    return errors.Socks5ProtocolError(f"socks5: {message}")


def _text_bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _text(raw: bytes | bytearray) -> str:
    # surrogateescape: credentials compare byte-exactly whatever encoding the peer used.
    return bytes(raw).decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class Greeting:
    """``VER NMETHODS METHODS``: the methods the client offers, in its order of preference."""

    methods: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.methods) > 0xFF or not all(0 <= m <= 0xFF for m in self.methods):
            raise ValueError("socks5: at most 255 methods, each 0-255")

    def encode(self) -> bytes:
        return bytes([VERSION, len(self.methods), *self.methods])

    def choose(self, supported: tuple[int, ...]) -> int:
        """The server's pick: the first of ``supported`` (server preference) the client offers."""
        for method in supported:
            if method in self.methods:
                return method
        return Method.NO_ACCEPTABLE


@dataclass(frozen=True, slots=True)
class MethodSelection:
    """``VER METHOD``."""

    method: int

    def __post_init__(self) -> None:
        if not 0 <= self.method <= 0xFF:
            raise ValueError("socks5: method out of range 0-255")

    def encode(self) -> bytes:
        return bytes([VERSION, self.method])


@dataclass(frozen=True, slots=True)
class UserPassAuth:
    """RFC 1929 ``VER=1 ULEN UNAME PLEN PASSWD``. Empty strings are accepted (RFC: 1-255) because
    clients in the wild send an empty password; the server's auth check decides."""

    username: str
    password: str

    def __post_init__(self) -> None:
        if len(_text_bytes(self.username)) > 0xFF or len(_text_bytes(self.password)) > 0xFF:
            raise ValueError("socks5: username and password are limited to 255 bytes")

    def encode(self) -> bytes:
        user, password = _text_bytes(self.username), _text_bytes(self.password)
        return bytes([AUTH_VERSION, len(user)]) + user + bytes([len(password)]) + password

    def __repr__(self) -> str:  # keep passwords out of logs
        return f"UserPassAuth(username={self.username!r}, password=***)"


@dataclass(frozen=True, slots=True)
class AuthStatus:
    """RFC 1929 ``VER=1 STATUS``; 0 is success, anything else a failure."""

    status: int

    def __post_init__(self) -> None:
        if not 0 <= self.status <= 0xFF:
            raise ValueError("socks5: auth status out of range 0-255")

    @property
    def ok(self) -> bool:
        return self.status == AUTH_SUCCESS

    def encode(self) -> bytes:
        return bytes([AUTH_VERSION, self.status])


@dataclass(frozen=True, slots=True)
class Request:
    """``VER CMD RSV ATYP DST.ADDR DST.PORT``. ``cmd`` is the raw byte so a server can answer an
    unknown command with COMMAND_NOT_SUPPORTED. For UDP ASSOCIATE the address is the client's
    expected source (often 0.0.0.0:0)."""

    cmd: int
    address: Address

    def __post_init__(self) -> None:
        if not 0 <= self.cmd <= 0xFF:
            raise ValueError("socks5: command out of range 0-255")
        encode_address(self.address)  # reject a domain over 255 bytes now, not at encode time

    def encode(self) -> bytes:
        return bytes([VERSION, self.cmd, 0]) + encode_address(self.address)


@dataclass(frozen=True, slots=True)
class Reply:
    """``VER REP RSV ATYP BND.ADDR BND.PORT``. ``code`` is the raw REP byte (``ReplyCode`` when known)."""

    code: int
    address: Address = UNSPECIFIED

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFF:
            raise ValueError("socks5: reply code out of range 0-255")
        encode_address(self.address)

    @property
    def ok(self) -> bool:
        return self.code == ReplyCode.SUCCEEDED

    def encode(self) -> bytes:
        return bytes([VERSION, self.code, 0]) + encode_address(self.address)


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A UDP ASSOCIATE packet: ``RSV(2) FRAG(1) ATYP DST.ADDR DST.PORT DATA``. One per UDP packet,
    so it is parsed whole (``decode``), not incrementally. ``frag`` 0 means standalone; servers that
    do not reassemble (most, and ours) drop fragments (``frag != 0``)."""

    address: Address
    data: bytes
    frag: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.frag <= 0xFF:
            raise ValueError("socks5: frag out of range 0-255")
        encode_address(self.address)

    def encode(self) -> bytes:
        return bytes([0, 0, self.frag]) + encode_address(self.address) + self.data

    @classmethod
    def decode(cls, packet: bytes) -> UdpDatagram:
        """Parse one UDP packet. RSV is ignored (RFC: must be 0; some clients do not care)."""
        if len(packet) < 4:
            raise _error(f"UDP packet of {len(packet)} bytes is shorter than its header")
        view = memoryview(packet)[3:]
        try:
            address, used = decode_address(view, errors.Socks5ProtocolError, allow_trailing=True)
        except errors.Socks5ProtocolError as exc:
            raise _error(f"UDP header: {exc}") from exc
        return cls(address, bytes(view[used:]), packet[2])


# ---------------------------------------------------------------------------------------------------
# Refusals → errors.ProxyRefusedError


def raise_for_method(selection: MethodSelection, offered: tuple[int, ...]) -> None:
    """Client side: refuse NO_ACCEPTABLE (code 0xFF); a method we did not offer is a protocol error."""
    if selection.method == Method.NO_ACCEPTABLE:
        raise errors.ProxyRefusedError(
            "socks5: server accepts none of our auth methods", Method.NO_ACCEPTABLE
        )
    if selection.method not in offered:
        raise _error(f"server chose method {selection.method:#04x} that we did not offer")


def raise_for_auth_status(status: AuthStatus) -> None:
    """Client side: a non-zero RFC 1929 status becomes ``ProxyRefusedError(code=status)``."""
    if not status.ok:
        raise errors.ProxyRefusedError(
            f"socks5: authentication failed (status {status.status})", status.status
        )


def raise_for_reply(reply: Reply) -> None:
    """Client side: a non-zero REP becomes ``ProxyRefusedError(code=REP)``."""
    if not reply.ok:
        text = REPLY_TEXT.get(reply.code, "unknown reply")
        raise errors.ProxyRefusedError(f"socks5: request refused: {text} ({reply.code})", reply.code)


# ---------------------------------------------------------------------------------------------------
# Incremental readers

_T = TypeVar("_T")


class _Reader(MessageReader[_T]):
    """Every socks5 message is at most 513 bytes (auth: 3 + 255 + 255), so the buffer is bounded by
    construction: ``_parse`` decides completeness from lengths inside the first bytes."""

    _protocol = "socks5"


def _check_version(buf: bytearray, version: int, what: str) -> None:
    if buf and buf[0] != version:
        raise _error(f"{what}: bad version {buf[0]:#04x}, expected {version:#04x}")


class GreetingReader(_Reader[Greeting]):
    """Server side. A bad version raises with ``reply=None``: the peer is not speaking socks5."""

    def _parse(self, buf: bytearray) -> tuple[Greeting, int] | None:
        _check_version(buf, VERSION, "greeting")
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return None
        return Greeting(tuple(buf[2 : 2 + buf[1]])), 2 + buf[1]


class MethodSelectionReader(_Reader[MethodSelection]):
    """Client side."""

    def _parse(self, buf: bytearray) -> tuple[MethodSelection, int] | None:
        _check_version(buf, VERSION, "method selection")
        if len(buf) < 2:
            return None
        return MethodSelection(buf[1]), 2


class UserPassAuthReader(_Reader[UserPassAuth]):
    """Server side (after selecting USER_PASS). A bad sub-negotiation version raises."""

    def _parse(self, buf: bytearray) -> tuple[UserPassAuth, int] | None:
        _check_version(buf, AUTH_VERSION, "user/password auth")
        if len(buf) < 2:
            return None
        ulen = buf[1]
        if len(buf) < 2 + ulen + 1:
            return None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        return UserPassAuth(_text(buf[2 : 2 + ulen]), _text(buf[3 + ulen : end])), end


class AuthStatusReader(_Reader[AuthStatus]):
    """Client side."""

    def _parse(self, buf: bytearray) -> tuple[AuthStatus, int] | None:
        _check_version(buf, AUTH_VERSION, "auth status")
        if len(buf) < 2:
            return None
        return AuthStatus(buf[1]), 2


def _parse_command_like(buf: bytearray, what: str) -> tuple[int, Address, int] | None:
    """``VER X RSV ATYP ADDR PORT`` (request and reply share it). RSV is ignored."""
    _check_version(buf, VERSION, what)
    if len(buf) < 4:
        return None
    try:
        size = address_length(memoryview(buf)[3:], errors.Socks5ProtocolError)
    except errors.Socks5ProtocolError as exc:
        raise errors.Socks5ProtocolError(
            f"socks5: {what}: {exc}", reply=ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED
        ) from exc
    if size is None or len(buf) < 3 + size:
        return None
    try:
        address, used = decode_address(memoryview(buf)[3 : 3 + size], errors.Socks5ProtocolError)
    except errors.Socks5ProtocolError as exc:
        raise errors.Socks5ProtocolError(f"socks5: {what}: {exc}", reply=ReplyCode.GENERAL_FAILURE) from exc
    return buf[1], address, 3 + used


class RequestReader(_Reader[Request]):
    """Server side. An unknown ATYP raises with ``reply=ADDRESS_TYPE_NOT_SUPPORTED``; an unknown
    command parses (the server answers COMMAND_NOT_SUPPORTED itself)."""

    def _parse(self, buf: bytearray) -> tuple[Request, int] | None:
        parsed = _parse_command_like(buf, "request")
        if parsed is None:
            return None
        cmd, address, used = parsed
        return Request(cmd, address), used


class ReplyReader(_Reader[Reply]):
    """Client side; then ``leftover`` holds any first bytes from the target."""

    def _parse(self, buf: bytearray) -> tuple[Reply, int] | None:
        parsed = _parse_command_like(buf, "reply")
        if parsed is None:
            return None
        code, address, used = parsed
        return Reply(code, address), used


__all__ = [
    "AUTH_FAILURE",
    "AUTH_SUCCESS",
    "AUTH_VERSION",
    "REPLY_TEXT",
    "UNSPECIFIED",
    "VERSION",
    "AuthStatus",
    "AuthStatusReader",
    "Command",
    "Greeting",
    "GreetingReader",
    "Method",
    "MethodSelection",
    "MethodSelectionReader",
    "Reply",
    "ReplyCode",
    "ReplyReader",
    "Request",
    "RequestReader",
    "UdpDatagram",
    "UserPassAuth",
    "UserPassAuthReader",
    "raise_for_auth_status",
    "raise_for_method",
    "raise_for_reply",
]
