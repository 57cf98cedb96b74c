"""GOST relay protocol v1: request/response headers and UDP-over-stream datagram framing.

Owns the bytes of go-gost/relay (``relay.go``, ``feature.go``) as go-gost/x's relay connector and
handler use them; ``shared/spec/relay.md`` summarises them. Called by the relay connector (client
side: build a ``Request``, read a ``Response``) and the relay handler (server side: read a ``Request``,
answer a ``Response``), both of which own the sockets. Sans-I/O: this module never reads, writes,
waits or resolves names, and never imports asyncio/socket/ssl.

Wire format (big-endian)::

    request   VER(1)=1 | CMD/FLAGS(1) | FEALEN(2) | FEATURES
    response  VER(1)=1 | STATUS(1)    | FEALEN(2) | FEATURES
    feature   TYPE(1) | LEN(2) | DATA(LEN)
    datagram  LEN(2) | PAYLOAD(LEN)          (UDP-oriented streams, after the headers)

Features keep their wire order in ``Request.features`` / ``Response.features`` so that parse and
encode are exact inverses; typed properties (``.auth``, ``.address``, ...) read them the way the GOST
handler does (the last feature of a type wins). ``Request.connect()`` builds what the current GOST
connector sends.

UDP: current go-gost/x ``connector/relay`` sends BOTH the FUDP command flag (0x80) and a network
feature (udp), the network feature first; its handler treats the request as UDP when the flag is set,
else takes the network feature (unknown ids fall back to tcp). ``Request.connect(network=UDP)`` sends
both, and ``Request.network_id`` accepts either, exactly like the handler.

Where we differ from GOST on input only: GOST rejects a request carrying an unknown feature type
("unknown feature"); we keep it as an ``UnknownFeature`` so that a newer client still parses, and
leave the decision to the caller. And we bound FEALEN (``MAX_FEATURES_LEN``) before buffering it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from tungo_sidecar import errors
from tungo_sidecar.proto.address import Address, decode_address, encode_address
from tungo_sidecar.proto.reader import MessageReader

VERSION = 0x01

CMD_CONNECT = 0x01
CMD_BIND = 0x02
CMD_ASSOCIATE = 0x03
CMD_MASK = 0x0F
FLAG_UDP = 0x80  # FUDP: "the request is UDP-oriented"; deprecated by the network feature, still sent

HEADER_LEN = 4  # VER, CMD|STATUS, FEALEN(2)
FEATURE_HEADER_LEN = 3  # TYPE, LEN(2)

# The largest header a GOST client can legitimately send is well under 1 KiB: auth 3+1+255+1+255,
# address 3+1+1+255+2, tunnel id 3+20, network 3+2 = 808 bytes. 4 KiB leaves room for features a
# newer GOST may add, while a server never buffers more than this from an unauthenticated peer
# (the wire format alone would allow 64 KiB per connection before any check).
MAX_FEATURES_LEN = 4096

MAX_DATAGRAM = 0xFFFF  # LEN is 16 bits

TUNNEL_ID_LEN = 16  # the UUID part; GOST reads any length >= 16 and writes 20
TUNNEL_ID_WIRE_LEN = 20  # 16-byte id | flag | 2 reserved | weight
TUNNEL_FLAG_PRIVATE = 0x80
CONNECTOR_FLAG_UDP = 0x01


class Command(IntEnum):
    """Request commands (low 4 bits of CMD/FLAGS). GOST's handler treats 0 like CONNECT."""

    CONNECT = CMD_CONNECT
    BIND = CMD_BIND
    ASSOCIATE = CMD_ASSOCIATE


class Status(IntEnum):
    """Response statuses; each non-OK one maps to a class in ``errors.RELAY_STATUS_ERRORS``."""

    OK = 0
    BAD_REQUEST = 1
    UNAUTHORIZED = 2
    FORBIDDEN = 3
    TIMEOUT = 4
    SERVICE_UNAVAILABLE = 5
    HOST_UNREACHABLE = 6
    NETWORK_UNREACHABLE = 7
    INTERNAL_SERVER_ERROR = 8


class FeatureType(IntEnum):
    USER_AUTH = 0x01
    ADDRESS = 0x02
    TUNNEL = 0x03
    NETWORK = 0x04


class NetworkID(IntEnum):
    """Network feature codes (2 bytes on the wire)."""

    TCP = 0x00
    UDP = 0x01
    IP = 0x02
    UNIX = 0x10
    SERIAL = 0x11


# ---------------------------------------------------------------------------------------------------
# Features


@dataclass(frozen=True, slots=True)
class UserAuth:
    """Feature 0x01: ``ULEN(1) UNAME PLEN(1) PASSWD``.

    Strings travel as UTF-8; undecodable bytes survive a round trip via ``surrogateescape`` so a
    password compares byte-exactly whatever the peer sent.
    """

    username: str
    password: str

    def __post_init__(self) -> None:
        for what, value in (("username", self.username), ("password", self.password)):
            if len(_text_bytes(value)) > 0xFF:
                raise ValueError(f"relay: {what} longer than 255 bytes")

    def encode_data(self) -> bytes:
        user, password = _text_bytes(self.username), _text_bytes(self.password)
        return bytes([len(user)]) + user + bytes([len(password)]) + password

    @classmethod
    def decode_data(cls, data: bytes) -> UserAuth:
        # Same bounds as GOST's UserAuthFeature.Decode; bytes after PASSWD are ignored as GOST does.
        if len(data) < 2:
            raise errors.RelayProtocolError("relay: user auth feature shorter than 2 bytes")
        ulen = data[0]
        if len(data) < 1 + ulen + 1:
            raise errors.RelayProtocolError("relay: user auth feature truncated in username")
        plen = data[1 + ulen]
        if len(data) < 2 + ulen + plen:
            raise errors.RelayProtocolError("relay: user auth feature truncated in password")
        return cls(_text(data[1 : 1 + ulen]), _text(data[2 + ulen : 2 + ulen + plen]))

    def __repr__(self) -> str:  # never print a password into a log
        return f"UserAuth(username={self.username!r}, password=***)"


@dataclass(frozen=True, slots=True)
class AddressFeature:
    """Feature 0x02: ``ATYP(1) ADDR PORT(2)``; the ATYP follows from the host (IP literal or name)."""

    address: Address

    def __post_init__(self) -> None:
        self.encode_data()  # reject a domain longer than 255 bytes at construction

    def encode_data(self) -> bytes:
        return encode_address(self.address)

    @classmethod
    def decode_data(cls, data: bytes) -> AddressFeature:
        address, _ = decode_address(data, errors.RelayProtocolError, allow_trailing=True)
        return cls(address)


@dataclass(frozen=True, slots=True)
class TunnelFeature:
    """Feature 0x03: a tunnel id (request) or connector id (response).

    GOST writes 20 bytes (16-byte UUID, flag, 2 reserved, weight) and accepts any length >= 16; the
    bytes are kept exactly as sent.
    """

    id: bytes

    def __post_init__(self) -> None:
        if len(self.id) < TUNNEL_ID_LEN:
            raise ValueError(f"relay: tunnel id must be at least {TUNNEL_ID_LEN} bytes")

    def encode_data(self) -> bytes:
        return self.id

    @classmethod
    def decode_data(cls, data: bytes) -> TunnelFeature:
        if len(data) < TUNNEL_ID_LEN:
            raise errors.RelayProtocolError(f"relay: tunnel id feature shorter than {TUNNEL_ID_LEN} bytes")
        return cls(bytes(data))


@dataclass(frozen=True, slots=True)
class NetworkFeature:
    """Feature 0x04: a 2-byte network id. ``network`` is a raw int so unknown ids survive."""

    network: int

    def __post_init__(self) -> None:
        if not 0 <= self.network <= 0xFFFF:
            raise ValueError("relay: network id out of range 0-65535")

    def encode_data(self) -> bytes:
        return struct.pack("!H", self.network)

    @classmethod
    def decode_data(cls, data: bytes) -> NetworkFeature:
        # GOST reads the first two bytes and ignores the rest.
        if len(data) < 2:
            raise errors.RelayProtocolError("relay: network feature shorter than 2 bytes")
        return cls(struct.unpack_from("!H", data)[0])


@dataclass(frozen=True, slots=True)
class UnknownFeature:
    """A feature type this codec does not know, kept raw (GOST would reject the whole request)."""

    type: int
    data: bytes

    def __post_init__(self) -> None:
        if self.type in _KNOWN_FEATURE_TYPES or not 0 <= self.type <= 0xFF:
            raise ValueError(f"relay: {self.type} is not an unknown feature type")
        if len(self.data) > 0xFFFF:
            raise ValueError("relay: feature data longer than 65535 bytes")

    def encode_data(self) -> bytes:
        return self.data


Feature = UserAuth | AddressFeature | TunnelFeature | NetworkFeature | UnknownFeature

_KNOWN_FEATURE_TYPES = frozenset(int(t) for t in FeatureType)


def _feature_type(feature: Feature) -> int:
    match feature:
        case UserAuth():
            return FeatureType.USER_AUTH
        case AddressFeature():
            return FeatureType.ADDRESS
        case TunnelFeature():
            return FeatureType.TUNNEL
        case NetworkFeature():
            return FeatureType.NETWORK
        case UnknownFeature():
            return feature.type


def encode_features(features: tuple[Feature, ...]) -> bytes:
    """``FEALEN(2) | FEATURES``. ValueError past the 16-bit length, as GOST's WriteTo errors."""
    body = bytearray()
    for feature in features:
        data = feature.encode_data()
        body += struct.pack("!BH", _feature_type(feature), len(data))
        body += data
    if len(body) > 0xFFFF:
        raise ValueError("relay: features longer than 65535 bytes")
    return struct.pack("!H", len(body)) + bytes(body)


def decode_features(data: bytes) -> tuple[Feature, ...]:
    """Parse a complete FEATURES block (exactly FEALEN bytes)."""
    features: list[Feature] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < FEATURE_HEADER_LEN:
            raise errors.RelayProtocolError("relay: truncated feature header")
        ftype, flen = struct.unpack_from("!BH", data, pos)
        pos += FEATURE_HEADER_LEN
        if len(data) - pos < flen:
            raise errors.RelayProtocolError(
                f"relay: feature {ftype} declares {flen} bytes, only {len(data) - pos} left"
            )
        body = data[pos : pos + flen]
        pos += flen
        feature: Feature
        match ftype:
            case FeatureType.USER_AUTH:
                feature = UserAuth.decode_data(body)
            case FeatureType.ADDRESS:
                feature = AddressFeature.decode_data(body)
            case FeatureType.TUNNEL:
                feature = TunnelFeature.decode_data(body)
            case FeatureType.NETWORK:
                feature = NetworkFeature.decode_data(body)
            case _:
                feature = UnknownFeature(ftype, bytes(body))
        features.append(feature)
    return tuple(features)


def _last(features: tuple[Feature, ...], kind: type[Feature]) -> Feature | None:
    # The GOST handler loops over all features and keeps the last one of each type.
    for feature in reversed(features):
        if isinstance(feature, kind):
            return feature
    return None


# ---------------------------------------------------------------------------------------------------
# Request / response


@dataclass(frozen=True, slots=True)
class Request:
    """A relay request header. ``cmd`` is the raw low nibble (0..15) so a server can answer an unknown
    command with BadRequest; ``udp`` is the FUDP flag bit. Other flag bits are ignored, as GOST does."""

    cmd: int
    udp: bool = False
    features: tuple[Feature, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.cmd <= CMD_MASK:
            raise ValueError(f"relay: command {self.cmd} out of range 0-15")

    @classmethod
    def connect(
        cls,
        address: Address | None,
        *,
        udp: bool = False,
        auth: UserAuth | None = None,
        tunnel_id: bytes | None = None,
    ) -> Request:
        """A CONNECT as go-gost/x's relay connector builds it: for UDP the FUDP flag AND a network
        feature (first), then auth, then address; a tunnel id (the tunnel connector's) last."""
        features: list[Feature] = []
        if udp:
            features.append(NetworkFeature(NetworkID.UDP))
        if auth is not None:
            features.append(auth)
        if address is not None:
            features.append(AddressFeature(address))
        if tunnel_id is not None:
            features.append(TunnelFeature(tunnel_id))
        return cls(CMD_CONNECT, udp=udp, features=tuple(features))

    @property
    def auth(self) -> UserAuth | None:
        found = _last(self.features, UserAuth)
        return found if isinstance(found, UserAuth) else None

    @property
    def address(self) -> Address | None:
        found = _last(self.features, AddressFeature)
        return found.address if isinstance(found, AddressFeature) else None

    @property
    def tunnel_id(self) -> bytes | None:
        found = _last(self.features, TunnelFeature)
        return found.id if isinstance(found, TunnelFeature) else None

    @property
    def network_feature(self) -> int | None:
        """The raw network feature value, or None when the request has none."""
        found = _last(self.features, NetworkFeature)
        return found.network if isinstance(found, NetworkFeature) else None

    @property
    def network_id(self) -> NetworkID:
        """The network a GOST handler would use: UDP when the FUDP flag is set, else the network
        feature, where a missing or unknown id means TCP (GOST's ``NetworkID.String`` fallback)."""
        if self.udp:
            return NetworkID.UDP
        value = self.network_feature
        if value is None or value not in NetworkID._value2member_map_:
            return NetworkID.TCP
        return NetworkID(value)

    @property
    def unknown_features(self) -> tuple[UnknownFeature, ...]:
        return tuple(f for f in self.features if isinstance(f, UnknownFeature))

    def encode(self) -> bytes:
        first = self.cmd | (FLAG_UDP if self.udp else 0)
        return bytes([VERSION, first]) + encode_features(self.features)

    @classmethod
    def decode(cls, data: bytes) -> Request:
        """Parse exactly one complete header (no trailing bytes); use ``RequestReader`` on streams."""
        reader = RequestReader(max_features_len=0xFFFF)
        return _exact(reader, reader.feed(data), data)


@dataclass(frozen=True, slots=True)
class Response:
    """A relay response header. ``status`` is the raw byte (unknown codes are kept)."""

    status: int
    features: tuple[Feature, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.status <= 0xFF:
            raise ValueError(f"relay: status {self.status} out of range 0-255")

    @classmethod
    def ok(cls, address: Address | None = None) -> Response:
        return cls(Status.OK, (AddressFeature(address),) if address is not None else ())

    @property
    def address(self) -> Address | None:
        """The first address (BIND's second reply carries the peer first, then the target)."""
        for feature in self.features:
            if isinstance(feature, AddressFeature):
                return feature.address
        return None

    @property
    def addresses(self) -> tuple[Address, ...]:
        return tuple(f.address for f in self.features if isinstance(f, AddressFeature))

    @property
    def connector_id(self) -> bytes | None:
        found = _last(self.features, TunnelFeature)
        return found.id if isinstance(found, TunnelFeature) else None

    def encode(self) -> bytes:
        return bytes([VERSION, self.status]) + encode_features(self.features)

    @classmethod
    def decode(cls, data: bytes) -> Response:
        """Parse exactly one complete header (no trailing bytes); use ``ResponseReader`` on streams."""
        reader = ResponseReader(max_features_len=0xFFFF)
        return _exact(reader, reader.feed(data), data)


STATUS_TEXT: dict[int, str] = {
    Status.OK: "OK",
    Status.BAD_REQUEST: "Bad Request",
    Status.UNAUTHORIZED: "Unauthorized",
    Status.FORBIDDEN: "Forbidden",
    Status.TIMEOUT: "Timeout",
    Status.SERVICE_UNAVAILABLE: "Service Unavailable",
    Status.HOST_UNREACHABLE: "Host Unreachable",
    Status.NETWORK_UNREACHABLE: "Network Unreachable",
    Status.INTERNAL_SERVER_ERROR: "Internal Server Error",
}


def raise_for_status(response: Response) -> None:
    """Return on OK; raise the ``errors.RelayStatusError`` subclass of the status otherwise.

    An unknown non-zero status raises the base ``RelayStatusError`` with ``.status`` set, since the
    GOST client also fails on any non-zero status.
    """
    if response.status == Status.OK:
        return
    text = STATUS_TEXT.get(response.status, "unknown status")
    message = f"relay: server answered status {response.status} ({text})"
    cls = errors.RELAY_STATUS_ERRORS.get(response.status)
    if cls is not None:
        raise cls(message)
    error = errors.RelayStatusError(message)
    error.status = response.status
    raise error


# ---------------------------------------------------------------------------------------------------
# Incremental readers


_Header = TypeVar("_Header", Request, Response)


class _HeaderReader(MessageReader[_Header]):
    """Buffers bytes until one header is complete; keeps whatever followed it as ``leftover``."""

    _protocol = "relay"
    _what = "header"

    def __init__(self, max_features_len: int = MAX_FEATURES_LEN) -> None:
        if not 0 <= max_features_len <= 0xFFFF:
            raise ValueError("max_features_len must be within 0-65535")
        super().__init__()
        self._max = max_features_len

    def _parse(self, buf: bytearray) -> tuple[_Header, int] | None:
        if buf and buf[0] != VERSION:
            # Checked on the first byte so a non-relay peer fails fast (GOST closes silently).
            raise errors.RelayProtocolError(f"relay: bad version {buf[0]:#04x}, expected 0x01")
        if len(buf) < HEADER_LEN:
            return None
        fealen = struct.unpack_from("!H", buf, 2)[0]
        if fealen > self._max:
            raise errors.RelayProtocolError(
                f"relay: {self._what} features of {fealen} bytes exceed the {self._max}-byte limit"
            )
        end = HEADER_LEN + fealen
        if len(buf) < end:
            return None
        return self._header(buf[1], decode_features(bytes(buf[HEADER_LEN:end]))), end

    def _header(self, second: int, features: tuple[Feature, ...]) -> _Header:
        raise NotImplementedError


class RequestReader(_HeaderReader[Request]):
    """Server side: ``feed(chunk)`` returns the ``Request`` once complete, None before.

    Raises ``errors.RelayProtocolError`` on a bad version, FEALEN over ``max_features_len`` or a
    malformed feature. After it returns a request, ``leftover`` holds the client's first data.
    """

    _what = "request"

    def _header(self, second: int, features: tuple[Feature, ...]) -> Request:
        return Request(second & CMD_MASK, udp=bool(second & FLAG_UDP), features=features)


class ResponseReader(_HeaderReader[Response]):
    """Client side: ``feed(chunk)`` returns the ``Response`` once complete, None before; then
    ``leftover`` holds the first bytes from the target (a GOST server sends them in the same write)."""

    _what = "response"

    def _header(self, second: int, features: tuple[Feature, ...]) -> Response:
        return Response(second, features)


def _exact(reader: _HeaderReader[_Header], parsed: _Header | None, data: bytes) -> _Header:
    """Require ``data`` to be exactly one header: the ``decode`` classmethods' contract."""
    if parsed is None:
        raise errors.RelayProtocolError(f"relay: truncated header ({len(data)} bytes)")
    if reader.leftover:
        raise errors.RelayProtocolError(f"relay: {len(reader.leftover)} bytes after the header")
    return parsed


# ---------------------------------------------------------------------------------------------------
# UDP datagrams on a relay stream


def encode_datagram(payload: bytes) -> bytes:
    """``LEN(2) | PAYLOAD``. ValueError over 65535 bytes (GOST: "data maximum exceeded")."""
    if len(payload) > MAX_DATAGRAM:
        raise ValueError(f"relay: datagram of {len(payload)} bytes exceeds {MAX_DATAGRAM}")
    return struct.pack("!H", len(payload)) + payload


class DatagramReader:
    """Reassembles ``LEN(2) | PAYLOAD`` datagrams from a byte stream chunked in any way (TCP reads,
    websocket messages: GOST writes length and payload as separate messages after the first one).
    Holds at most one incomplete datagram (< 64 KiB + 2)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete datagram held back (non-zero at EOF means the peer cut one)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        pos = 0
        buf = self._buffer
        while len(buf) - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            if len(buf) - pos - 2 < size:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + size]))
            pos += 2 + size
        if pos:
            del buf[:pos]
        return out


def _text_bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
