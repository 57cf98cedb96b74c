"""Which names a DNS response gave addresses for (RFC 1035 wire format), sans-I/O.

Owns the reading of DNS responses the TUN engine sees on UDP port 53 (``sniffing.udp``): GOST's tungo
handler only records them; tungo learns from them, so that a later flow to an answered address can
match domain rules (``rules.dnsmap`` keeps the map). Called with one UDP payload; never reads, writes,
resolves or imports asyncio/socket/ssl/time/logging.

Only what is safe to learn is returned: a standard query's response (QR=1, opcode QUERY, RCODE
NOERROR) with exactly one question in class IN, and the A/AAAA records of that question name or of
names its CNAME chain reaches (at most ``MAX_CNAME_HOPS``, no loops). Anything else (other record
types, additional and authority sections, other classes) is ignored: a resolver may add records for
names nobody asked about, and those must not rename addresses.

Errors: ``parse_response`` raises ``DnsError`` (and nothing else) when the header or question does not
parse, and returns None for a well-formed message with nothing to learn. An answer record that is
truncated or malformed ends the walk: the complete records before it still count, as they would in a
response cut short by a middlebox. Work is bounded whatever the counts claim: at most ``MAX_ANSWERS``
records are looked at, names are at most 255 octets / 127 labels, and compression pointers must point
strictly before the start of the name segment that holds them, so every pointer walk ends.
That name walker, ``read_name``, is also what ``proto.dnsmsg`` (the DNS service's codec) reads names with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from tungo_sidecar.errors import ProtocolError

#: Answer records looked at per response: real answers hold a few (a CNAME chain and a handful of
#: addresses); 64 covers large round-robin sets while bounding the work on a hostile ANCOUNT.
MAX_ANSWERS = 64
#: CNAME hops followed from the question name: CDN chains rarely exceed 3, and resolvers give up on
#: chains a little longer than this themselves; a longer chain is broken or hostile.
MAX_CNAME_HOPS = 8
MAX_NAME_OCTETS = 255  # RFC 1035 §2.3.4, counting length octets and the root
MAX_LABELS = 127  # 255 octets / (1 length + 1 character)

_HEADER = 12
_TYPE_A = 1
_TYPE_CNAME = 5
_TYPE_AAAA = 28
_CLASS_IN = 1
_POINTER = 0xC0
_LABEL = re.compile(rb"[a-z0-9_-]{1,63}")  # host-name characters (after lower-casing)


class DnsError(ProtocolError, ValueError):
    """A DNS message's header or question does not parse: too short, a bad label or pointer."""


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The addresses a response gave for its question name.

    ``name`` is the question name, lower-case, without the trailing dot. ``addresses`` holds each
    distinct A/AAAA address with its TTL in seconds, in answer order.
    """

    name: str
    addresses: tuple[tuple[IPv4Address | IPv6Address, int], ...]


_Name = tuple[bytes, ...]  # lower-cased labels, the root excluded


def read_name(message: bytes, start: int) -> tuple[_Name, int]:
    """The name at ``start`` (lower-cased labels, the root excluded) and the offset just past it in
    place (after its first pointer, if any). ``DnsError`` when it runs past the end, is longer than 255
    octets, uses a reserved label type or a pointer that does not point strictly backward into the body.
    Shared with ``proto.dnsmsg`` (the DNS service's query codec): one walker, one set of bounds."""
    labels: list[bytes] = []
    octets = 1  # the root's zero octet
    pos = start
    segment = start  # where the labels being read began; a pointer must go strictly before it
    end: int | None = None
    while True:
        if pos >= len(message):
            raise DnsError("dns: name runs past the end")
        length = message[pos]
        if length & _POINTER == _POINTER:
            if pos + 1 >= len(message):
                raise DnsError("dns: compression pointer runs past the end")
            target = ((length & 0x3F) << 8) | message[pos + 1]
            if not _HEADER <= target < segment:
                raise DnsError(f"dns: compression pointer at {pos} does not point backward into the body")
            if end is None:
                end = pos + 2
            segment = pos = target
            continue
        if length & _POINTER:
            raise DnsError(f"dns: reserved label type {length >> 6:#x}")  # 0x40 / 0x80 (RFC 6891)
        pos += 1
        if length == 0:
            return tuple(labels), (end if end is not None else pos)
        octets += 1 + length
        if octets > MAX_NAME_OCTETS or len(labels) >= MAX_LABELS:
            raise DnsError("dns: name longer than 255 octets")
        if pos + length > len(message):
            raise DnsError("dns: label runs past the end")
        labels.append(message[pos : pos + length].lower())
        pos += length


def _text(name: _Name) -> str | None:
    """``name`` as a host name, None when it is the root or holds other characters (a label with a
    dot or a space would read as a different name once joined)."""
    if not name or not all(_LABEL.fullmatch(label) for label in name):
        return None
    return b".".join(name).decode("ascii")


def _ttl(raw: int) -> int:
    # RFC 2181 §8: a TTL with the most significant bit set is treated as zero.
    return 0 if raw & 0x8000_0000 else raw


def parse_response(payload: bytes) -> DnsAnswer | None:
    """What ``payload`` (one DNS message) answered; None when there is nothing to learn.

    Raises ``DnsError`` when the header or the question section is malformed.
    """
    if len(payload) < _HEADER:
        raise DnsError(f"dns: {len(payload)} bytes is shorter than a header")
    flags = int.from_bytes(payload[2:4], "big")
    qdcount = int.from_bytes(payload[4:6], "big")
    ancount = int.from_bytes(payload[6:8], "big")
    is_response, opcode, rcode = flags >> 15, (flags >> 11) & 0xF, flags & 0xF
    if not is_response or opcode != 0 or rcode != 0 or qdcount != 1:
        return None
    qname, pos = read_name(payload, _HEADER)
    if pos + 4 > len(payload):
        raise DnsError("dns: question runs past the end")
    qclass = int.from_bytes(payload[pos + 2 : pos + 4], "big")
    pos += 4
    name = _text(qname)
    if name is None or qclass != _CLASS_IN:
        return None

    cnames: dict[_Name, _Name] = {}
    records: list[tuple[_Name, IPv4Address | IPv6Address, int]] = []
    for _ in range(min(ancount, MAX_ANSWERS)):
        try:
            owner, pos = read_name(payload, pos)
        except DnsError:
            break
        if pos + 10 > len(payload):
            break
        rtype = int.from_bytes(payload[pos : pos + 2], "big")
        rclass = int.from_bytes(payload[pos + 2 : pos + 4], "big")
        ttl = _ttl(int.from_bytes(payload[pos + 4 : pos + 8], "big"))
        rdlength = int.from_bytes(payload[pos + 8 : pos + 10], "big")
        rdata_at = pos + 10
        pos = rdata_at + rdlength
        if pos > len(payload):
            break
        if rclass != _CLASS_IN:
            continue
        if rtype == _TYPE_A and rdlength == 4:
            records.append((owner, IPv4Address(payload[rdata_at:pos]), ttl))
        elif rtype == _TYPE_AAAA and rdlength == 16:
            records.append((owner, IPv6Address(payload[rdata_at:pos]), ttl))
        elif rtype == _TYPE_CNAME:
            try:
                target, used = read_name(payload, rdata_at)
            except DnsError:
                break
            if used != pos:
                break  # RDLENGTH disagrees with the name: the records after it cannot be trusted
            cnames.setdefault(owner, target)  # a second CNAME for one owner is illegal: keep the first

    chain = {qname}
    current = qname
    for _ in range(MAX_CNAME_HOPS + 1):
        if current not in cnames:
            break
        current = cnames[current]
        if current in chain:
            return None  # a loop: the response contradicts itself
        chain.add(current)
    else:
        return None  # longer than MAX_CNAME_HOPS: the addresses at its end are out of reach

    addresses: dict[IPv4Address | IPv6Address, int] = {}
    for owner, address, ttl in records:
        if owner in chain:
            addresses.setdefault(address, ttl)
    if not addresses:
        return None
    return DnsAnswer(name, tuple(addresses.items()))


__all__ = ["MAX_ANSWERS", "MAX_CNAME_HOPS", "DnsAnswer", "DnsError", "parse_response", "read_name"]
