"""Sniffer vectors from real clients: ClientHellos made by CPython's ssl (OpenSSL) in memory, HTTP heads as
http.client writes them; hand-built hellos for what a library will not send (IP literal SNI, twice)."""

from __future__ import annotations

import http.client
import io
import itertools
import ssl
import struct

import pytest
from chunks import chunked
from hypothesis import given, settings
from hypothesis import strategies as st

from tungo_sidecar.proto.sniff import (
    MAX_SNIFF_BYTES,
    NOT_SNIFFABLE,
    Protocol,
    Sniffed,
    Sniffer,
    host_name,
)

# ---------------------------------------------------------------------------------------------------
# Vector builders


def client_hello(server_hostname: str | None, *, tls12: bool = False, alpn: bool = False) -> bytes:
    """The first flight an OpenSSL client sends (one TLS record holding the ClientHello)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(["h2", "http/1.1"])
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def records(stream: bytes) -> list[tuple[int, bytes, bytes]]:
    """(content type, version, payload) of each TLS record in ``stream``."""
    out = []
    while stream:
        content_type, version, length = stream[0], stream[1:3], int.from_bytes(stream[3:5], "big")
        out.append((content_type, version, stream[5 : 5 + length]))
        stream = stream[5 + length :]
    return out


def reframe(hello: bytes, *cuts: int) -> bytes:
    """``hello``'s handshake bytes re-cut into several handshake records at ``cuts`` (payload offsets)."""
    [(content_type, version, payload)] = records(hello)
    points = [0, *cuts, len(payload)]
    return b"".join(
        bytes([content_type]) + version + struct.pack("!H", b - a) + payload[a:b]
        for a, b in itertools.pairwise(points)
    )


def record(payload: bytes, content_type: int = 0x16, version: bytes = b"\x03\x01") -> bytes:
    return bytes([content_type]) + version + struct.pack("!H", len(payload)) + payload


def vec(data: bytes, size: int) -> bytes:
    return len(data).to_bytes(size, "big") + data


def sni_extension(*entries: tuple[int, bytes]) -> tuple[int, bytes]:
    return 0, vec(b"".join(bytes([kind]) + vec(name, 2) for kind, name in entries), 2)


def hand_hello(
    *extensions: tuple[int, bytes],
    with_extensions: bool = True,
    session_id: bytes = bytes(32),
    suites: bytes = b"\x13\x01\xc0\x2f",
    compression: bytes = b"\x00",
    trailer: bytes = b"",
) -> bytes:
    """A ClientHello handshake message (type, length, body) with ``extensions``, as a TLS 1.3 client
    sends it (legacy version 1.2, a 32-byte session id, null compression)."""
    body = b"\x03\x03" + bytes(32) + vec(session_id, 1) + vec(suites, 2) + vec(compression, 1)
    if with_extensions:
        body += vec(b"".join(struct.pack("!H", t) + vec(d, 2) for t, d in extensions), 2)
    return b"\x01" + vec(body + trailer, 3)


def sni_hello(name: bytes) -> bytes:
    return record(hand_hello(sni_extension((0, name))))


class _Capture(http.client.HTTPConnection):
    """An HTTPConnection whose bytes land in ``wire``; a canned 200 answers a tunnel's CONNECT."""

    def __init__(self, host: str, port: int | None = None) -> None:
        super().__init__(host, port)
        self.wire = bytearray()

    def send(self, data: object) -> None:
        assert isinstance(data, bytes)
        self.wire += data

    def connect(self) -> None:
        self.sock = _CannedSocket(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self._tunnel_host:  # type: ignore[attr-defined]
            self._tunnel()  # type: ignore[attr-defined]


class _CannedSocket:
    def __init__(self, reply: bytes) -> None:
        self._reply = reply

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self._reply))

    def close(self) -> None:
        pass


def http_request(host: str, port: int | None, method: str, url: str, **headers: str) -> bytes:
    conn = _Capture(host, port)
    conn.request(method, url, headers=headers)
    return bytes(conn.wire)


def sniff(data: bytes, max_bytes: int = MAX_SNIFF_BYTES) -> Sniffed:
    sniffer = Sniffer(max_bytes)
    result = sniffer.feed(data)
    return result if result is not None else sniffer.finish()


def sniff_chunks(chunks: list[bytes], max_bytes: int = MAX_SNIFF_BYTES) -> tuple[Sniffed, bytes]:
    """The verdict after feeding ``chunks`` until one decides, and what the sniffer buffered."""
    sniffer = Sniffer(max_bytes)
    fed = b""
    for chunk in chunks:
        fed += chunk
        result = sniffer.feed(chunk)
        if result is not None:
            assert sniffer.buffered == fed
            return result, sniffer.buffered
    assert sniffer.buffered == fed
    return sniffer.finish(), sniffer.buffered


# ---------------------------------------------------------------------------------------------------
# TLS

OPENSSL_HELLOS = {
    "tls13": (client_hello("example.com"), "example.com"),
    "tls12": (client_hello("Example.COM", tls12=True), "example.com"),
    "alpn": (client_hello("api.example.org", alpn=True), "api.example.org"),
    "idn": (client_hello("bücher.example"), "xn--bcher-kva.example"),
}


@pytest.mark.parametrize("variant", sorted(OPENSSL_HELLOS))
def test_openssl_hello_one_piece(variant: str) -> None:
    hello, host = OPENSSL_HELLOS[variant]
    assert sniff(hello) == Sniffed(Protocol.TLS, host)


def test_openssl_hello_decides_on_its_last_byte() -> None:
    hello, _ = OPENSSL_HELLOS["tls13"]
    sniffer = Sniffer()
    results = [sniffer.feed(hello[i : i + 1]) for i in range(len(hello))]
    assert results[:-1] == [None] * (len(hello) - 1)
    assert results[-1] == Sniffed(Protocol.TLS, "example.com")
    assert sniffer.buffered == hello
    # Decided: the same verdict again, and what follows is not buffered (the caller forwards it).
    assert sniffer.feed(b"\x17\x03\x03\x00\x01x") == results[-1]
    assert sniffer.buffered == hello and sniffer.finish() == results[-1]


@pytest.mark.parametrize("variant", ["tls13", "tls12"])
def test_openssl_hello_split_at_every_byte(variant: str) -> None:
    hello, host = OPENSSL_HELLOS[variant]
    for cut in range(len(hello) + 1):
        assert sniff_chunks([hello[:cut], hello[cut:]]) == (Sniffed(Protocol.TLS, host), hello)


@pytest.mark.parametrize(
    "cuts",
    [(1,), (4,), (40,), (100, 101), (3, 200, 400)],
    ids=["type|length", "header|body", "mid-random", "one-byte-record", "three-records"],
)
def test_hello_across_records_split_at_every_byte(cuts: tuple[int, ...]) -> None:
    hello = reframe(OPENSSL_HELLOS["tls13"][0], *cuts)
    assert len(records(hello)) == len(cuts) + 1
    for cut in range(len(hello) + 1):
        assert sniff_chunks([hello[:cut], hello[cut:]]) == (Sniffed(Protocol.TLS, "example.com"), hello)
    sniffer = Sniffer()
    results = [sniffer.feed(hello[i : i + 1]) for i in range(len(hello))]
    assert results[:-1] == [None] * (len(hello) - 1) and results[-1] == Sniffed(Protocol.TLS, "example.com")


def test_hello_without_sni() -> None:
    assert sniff(client_hello(None)) == Sniffed(Protocol.TLS, None)
    assert sniff(record(hand_hello(with_extensions=False))) == Sniffed(Protocol.TLS, None)
    assert sniff(record(hand_hello((16, vec(vec(b"h2", 1), 2))))) == Sniffed(Protocol.TLS, None)


def test_large_hello_many_records() -> None:
    # A padded hello (as big post-quantum or ECH hellos are) in one record and across five.
    padding = (21, bytes(9000))  # RFC 7685 padding extension
    message = hand_hello(padding, sni_extension((0, b"big.example")))
    assert sniff(record(message)) == Sniffed(Protocol.TLS, "big.example")
    pieces = b"".join(record(message[i : i + 2000]) for i in range(0, len(message), 2000))
    assert sniff(pieces) == Sniffed(Protocol.TLS, "big.example")
    assert sniff_chunks([pieces[i : i + 700] for i in range(0, len(pieces), 700)])[0].host == "big.example"


def test_max_bytes_too_small_gives_up_at_once() -> None:
    hello = OPENSSL_HELLOS["tls13"][0]  # claims 508 handshake bytes
    sniffer = Sniffer(max_bytes=100)
    # The handshake header is enough: the claimed length can never fit, so no waiting for more.
    assert sniffer.feed(hello[:8]) is None
    assert sniffer.feed(hello[8:9]) == Sniffed(Protocol.TLS, None)
    assert sniffer.buffered == hello[:9]
    # Fits the claim but not with the record headers of a many-record hello: decided at max_bytes.
    spread = reframe(hello, *range(50, 500, 50))
    assert sniff_chunks([spread[i : i + 7] for i in range(0, len(spread), 7)], len(hello))[0] == Sniffed(
        Protocol.TLS, None
    )
    # Exactly enough room: found.
    assert sniff(hello, max_bytes=len(hello)) == Sniffed(Protocol.TLS, "example.com")
    assert sniff(hello, max_bytes=len(hello) - 1) == Sniffed(Protocol.TLS, None)
    with pytest.raises(ValueError):
        Sniffer(max_bytes=15)


def test_max_bytes_verdict_does_not_depend_on_chunking() -> None:
    hello = OPENSSL_HELLOS["tls13"][0]
    one_shot = Sniffer(max_bytes=300)
    assert one_shot.feed(hello) == Sniffed(Protocol.TLS, None)
    assert one_shot.buffered == hello  # the whole chunk is replayed, though only 300 bytes were read


@pytest.mark.parametrize(
    ("name", "host"),
    [
        (b"Example.COM", "example.com"),
        (b"example.com.", "example.com"),
        (b"_sip._tcp.example", "_sip._tcp.example"),
        (b"a" * 63 + b".example", "a" * 63 + ".example"),
        (b".".join([b"a" * 63] * 3 + [b"b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),  # 253
        (b".".join([b"a" * 63] * 3 + [b"b" * 62]), None),  # 254
        (b"a" * 64 + b".example", None),
        (b"192.0.2.1", None),  # RFC 6066: no IP literals
        (b"127.1", None),
        (b"2001:db8::1", None),
        (b"", None),
        (b".", None),
        (b"a..b", None),
        (b".example", None),
        (b"exa mple.com", None),
        (b"example.com\x00.evil", None),
        (b"user@example.com", None),
        (b"b\xc3\xbccher.example", None),  # raw UTF-8: IDNs must be sent as A-labels
    ],
)
def test_sni_validation(name: bytes, host: str | None) -> None:
    assert sniff(sni_hello(name)) == Sniffed(Protocol.TLS, host)


def test_ambiguous_or_odd_sni_lists() -> None:
    twice = hand_hello(sni_extension((0, b"a.example")), sni_extension((0, b"b.example")))
    assert sniff(record(twice)) == Sniffed(Protocol.TLS, None)
    two_names = hand_hello(sni_extension((0, b"a.example"), (0, b"b.example")))
    assert sniff(record(two_names)) == Sniffed(Protocol.TLS, None)
    other_type_first = hand_hello(sni_extension((7, b"opaque"), (0, b"c.example")))
    assert sniff(record(other_type_first)) == Sniffed(Protocol.TLS, "c.example")
    only_other_type = hand_hello(sni_extension((7, b"opaque")))
    assert sniff(record(only_other_type)) == Sniffed(Protocol.TLS, None)
    empty_list = hand_hello((0, vec(b"", 2)))
    assert sniff(record(empty_list)) == Sniffed(Protocol.TLS, None)
    trailing = hand_hello((0, vec(b"\x00" + vec(b"d.example", 2), 2) + b"x"))
    assert sniff(record(trailing)) == Sniffed(Protocol.TLS, None)


def test_malformed_hello_bodies_give_no_host() -> None:
    sni = sni_extension((0, b"ok.example"))
    assert sniff(record(hand_hello(sni))) == Sniffed(Protocol.TLS, "ok.example")
    for broken in (
        hand_hello(sni, session_id=bytes(33)),  # longer than 32
        hand_hello(sni, suites=b"\x13\x01\x13"),  # odd length
        hand_hello(sni, suites=b""),
        hand_hello(sni, compression=b""),
        hand_hello(sni, trailer=b"\x00"),  # bytes after the extensions block
        hand_hello(sni)[:-1],  # the extensions block claims one byte more than there is
    ):
        fixed = broken[:1] + vec(broken[4:], 3)  # keep the handshake length honest
        assert sniff(record(fixed)) == Sniffed(Protocol.TLS, None)
    # Truncated inside every field of the body: never a host, never an exception.
    message = hand_hello(sni)
    for cut in range(4, len(message)):
        assert sniff(record(message[:1] + vec(message[4:cut], 3))) == Sniffed(Protocol.TLS, None)


def test_tls_record_layer_rules() -> None:
    hello = record(hand_hello(sni_extension((0, b"r.example"))))
    assert sniff(record(b"\x02\x28", content_type=0x15) + hello) == NOT_SNIFFABLE  # alert first: not 0x16
    # Inside a TLS stream, a non-handshake record before the hello is complete ends the hunt.
    split = reframe(hello, 10)
    first = records(split)[0]
    alert_between = record(first[2]) + record(b"\x02\x28", content_type=0x15) + split
    assert sniff(alert_between) == Sniffed(Protocol.TLS, None)
    assert sniff(record(b"\x02" + vec(b"", 3))) == Sniffed(Protocol.TLS, None)  # a ServerHello
    assert sniff(record(b"")) == Sniffed(Protocol.TLS, None)  # zero-length handshake record
    assert sniff(b"\x16\x03\x01\x40\x01" + bytes(64)) == Sniffed(Protocol.TLS, None)  # record > 2^14
    for version in (b"\x03\x01", b"\x03\x02", b"\x03\x03", b"\x03\x04"):
        assert (
            sniff(record(hand_hello(sni_extension((0, b"v.example"))), version=version)).host == "v.example"
        )
    for version in (b"\x03\x00", b"\x03\x05", b"\x02\x00", b"\x00\x00"):
        assert sniff(record(hand_hello(sni_extension((0, b"v.example"))), version=version)) == NOT_SNIFFABLE


def test_truncated_hello_finishes_as_tls() -> None:
    hello = OPENSSL_HELLOS["tls13"][0]
    for cut in (3, 5, 9, 100, len(hello) - 1):
        sniffer = Sniffer()
        assert sniffer.feed(hello[:cut]) is None
        assert sniffer.finish() == Sniffed(Protocol.TLS, None)
        assert sniffer.feed(hello[cut:]) == Sniffed(Protocol.TLS, None)  # finished stays finished
        assert sniffer.buffered == hello[:cut]


# ---------------------------------------------------------------------------------------------------
# HTTP


def test_http_client_requests() -> None:
    get = http_request("example.com", 8080, "GET", "/x")
    assert get.startswith(b"GET /x HTTP/1.1\r\nHost: example.com:8080\r\n")
    assert sniff(get) == Sniffed(Protocol.HTTP, "example.com")
    assert sniff(http_request("WWW.Example.com", None, "POST", "/")) == Sniffed(
        Protocol.HTTP, "www.example.com"
    )
    v6 = http_request("2001:DB8::1", 8080, "GET", "/")
    assert b"Host: [2001:DB8::1]:8080\r\n" in v6
    assert sniff(v6) == Sniffed(Protocol.HTTP, "2001:db8::1")
    assert sniff(http_request("192.0.2.7", 80, "HEAD", "/")) == Sniffed(Protocol.HTTP, "192.0.2.7")
    # Through a forward proxy: the absolute-form target names the host (RFC 9112 §3.2.2).
    proxied = http_request("proxy.local", 3128, "GET", "http://Origin.example:8080/x?y")
    assert proxied.startswith(b"GET http://Origin.example:8080/x?y HTTP/1.1\r\n")
    assert sniff(proxied) == Sniffed(Protocol.HTTP, "origin.example")
    for method in ("PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"):
        assert sniff(http_request("m.example", 80, method, "/")) == Sniffed(Protocol.HTTP, "m.example")


def test_http_client_connect() -> None:
    tunnel = _Capture("proxy.local", 3128)
    tunnel.set_tunnel("secure.example", 443)
    tunnel.connect()
    assert bytes(tunnel.wire).startswith(b"CONNECT secure.example:443 HTTP/1.")
    assert sniff(bytes(tunnel.wire)) == Sniffed(Protocol.HTTP, "secure.example")
    # putrequest names the proxy in Host; the CONNECT target is what the flow is for.
    conn = _Capture("proxy.local", 3128)
    conn.putrequest("CONNECT", "target.example:443")
    conn.endheaders()
    assert b"Host: proxy.local:3128" in conn.wire
    assert sniff(bytes(conn.wire)) == Sniffed(Protocol.HTTP, "target.example")


@pytest.mark.parametrize(
    ("head", "host"),
    [
        (b"GET / HTTP/1.1\nHost: bare-lf.example\n\n", "bare-lf.example"),
        (b"GET / HTTP/1.1\r\nhOsT:  \t spaced.example \t\r\n\r\n", "spaced.example"),
        (b"GET / HTTP/1.1\r\nHost: dup.example\r\nHost: dup.example\r\n\r\n", "dup.example"),
        (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "::1"),
        (b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", "::1"),
        (b"GET / HTTP/1.1\r\nHost: host.example:\r\n\r\n", "host.example"),  # RFC 3986: empty port
        (b"GET / HTTP/1.1\r\nHost: dot.example.:80\r\n\r\n", "dot.example"),
        (b"GET / HTTP/1.0\r\nUser-Agent: x\r\n\r\n", None),  # HTTP/1.0 without Host
        (b"OPTIONS * HTTP/1.1\r\nHost: star.example\r\n\r\n", "star.example"),
        (b"GET http://uri.example/ HTTP/1.1\r\nHost: header.example\r\n\r\n", "uri.example"),
        (b"GET https://[2001:db8::2]:8443/ HTTP/1.1\r\n\r\n", "2001:db8::2"),
        (b"GET http://q.example?x=1 HTTP/1.1\r\n\r\n", "q.example"),
        (b"GET http://u:p@user.example/ HTTP/1.1\r\n\r\n", None),
        (b"GET http://[::1/ HTTP/1.1\r\n\r\n", None),
        (b"CONNECT [2001:db8::3]:443 HTTP/1.1\r\nHost: [2001:db8::3]:443\r\n\r\n", "2001:db8::3"),
        (b"CONNECT 2001:db8::3:443 HTTP/1.1\r\n\r\n", None),  # unbracketed v6 is ambiguous
        (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: exa mple.com\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: evil.example@good.example\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: a.example/b\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: a\x01.example\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: caf\xe9.example\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: " + b"a" * 254 + b"\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: [example.com]\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: 127.1\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: 010.0.0.1\r\n\r\n", None),
        # Heads a compliant server refuses: folding, space before the colon, a bad request line.
        (b"GET / HTTP/1.1\r\nHost: fold.example\r\n x\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost : space.example\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nNoColon\r\nHost: c.example\r\n\r\n", None),
        (b"GET /  HTTP/1.1\r\nHost: line.example\r\n\r\n", None),
        (b"GET / HTTP/2\r\nHost: v2.example\r\n\r\n", None),
        (b"GET /\r\nHost: v09.example\r\n\r\n", None),
    ],
)
def test_http_heads(head: bytes, host: str | None) -> None:
    assert sniff(head + b"body") == Sniffed(Protocol.HTTP, host)
    sniffer = Sniffer()
    results = [sniffer.feed(head[i : i + 1]) for i in range(len(head))]
    assert results[:-1] == [None] * (len(head) - 1) and results[-1] == Sniffed(Protocol.HTTP, host)


def test_http2_prior_knowledge_decided_on_the_preface() -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    sniffer = Sniffer()
    assert [sniffer.feed(preface[i : i + 1]) for i in range(13)] == [None] * 13
    assert sniffer.feed(preface[13:14]) == Sniffed(Protocol.HTTP, None)
    assert sniffer.buffered == preface[:14]


def test_http_head_too_large() -> None:
    head = b"GET / HTTP/1.1\r\nHost: big.example\r\nCookie: " + b"c" * 20000 + b"\r\n\r\n"
    assert sniff(head) == Sniffed(Protocol.HTTP, None)
    sniffer = Sniffer(max_bytes=64)
    assert sniffer.feed(head[:63]) is None
    assert sniffer.feed(head[63:70]) == Sniffed(Protocol.HTTP, None)
    small = b"GET / HTTP/1.1\r\nHost: big.example\r\n\r\n"
    assert sniff(small, max_bytes=len(small)) == Sniffed(Protocol.HTTP, "big.example")
    assert sniff(small, max_bytes=len(small) - 1) == Sniffed(Protocol.HTTP, None)
    # EOF or the sniffing timeout before the blank line: HTTP, but no host to trust yet.
    sniffer = Sniffer()
    assert sniffer.feed(head[:40]) is None
    assert sniffer.finish() == Sniffed(Protocol.HTTP, None)


# ---------------------------------------------------------------------------------------------------
# Neither


@pytest.mark.parametrize(
    "first",
    [
        b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
        b"S",
        b"\x00",
        b"get / HTTP/1.1\r\n",  # methods are case-sensitive
        b"GETS / HTTP/1.1\r\n",
        b"GEX",
        b"PRI / HTTP/1.1",
        b"\r\nGET / HTTP/1.1\r\n",
        b"\x16\x04",
        b"\x16\x03\x00",
        b"\x17\x03\x03\x00\x10",
        b"\x80\x2e\x01\x03\x01",  # SSLv2-compatible hello: GOST does not sniff it either
        b"*1\r\n$4\r\nPING\r\n",
    ],
)
def test_other_protocols_are_decided_at_once(first: bytes) -> None:
    sniffer = Sniffer()
    assert sniffer.feed(first) == NOT_SNIFFABLE
    assert sniffer.buffered == first
    assert sniffer.feed(b"more") == NOT_SNIFFABLE and sniffer.buffered == first


@pytest.mark.parametrize(
    "prefix", [b"G", b"GE", b"GET", b"P", b"PO", b"PR", b"PRI * HTTP/2.", b"\x16", b"\x16\x03"]
)
def test_ambiguous_prefixes_wait(prefix: bytes) -> None:
    sniffer = Sniffer()
    assert sniffer.feed(prefix) is None
    assert sniffer.feed(b"") is None
    assert sniffer.finish() == NOT_SNIFFABLE  # too few bytes to tell


def test_empty_stream() -> None:
    sniffer = Sniffer()
    assert sniffer.feed(b"") is None
    assert sniffer.finish() == NOT_SNIFFABLE
    assert sniffer.buffered == b"" and sniffer.result == NOT_SNIFFABLE


def test_host_name() -> None:
    assert host_name("Foo.Example.") == "foo.example"
    assert host_name("foo") == "foo"
    for bad in ("", ".", "..", "a..b", "a b", "a/b", "ü.example", "a" * 64, "a:1"):
        assert host_name(bad) is None


# ---------------------------------------------------------------------------------------------------
# Property tests: any input, any chunking, only declared outcomes, and the same verdict in one piece.

_VALID_STREAMS = [hello for hello, _ in OPENSSL_HELLOS.values()] + [
    reframe(OPENSSL_HELLOS["tls13"][0], 5, 300),
    http_request("example.com", 8080, "GET", "/x", Cookie="a=b"),
    b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n",
]


def _check_verdict(data: bytes, cuts: list[int], max_bytes: int) -> None:
    verdict, buffered = sniff_chunks(chunked(data, cuts), max_bytes)
    assert verdict == sniff(data, max_bytes)
    assert data.startswith(buffered)
    assert verdict.protocol in (None, Protocol.HTTP, Protocol.TLS)
    if verdict.protocol is None:
        assert verdict.host is None
    if verdict.host is not None:
        assert verdict.host == verdict.host.lower() and not verdict.host.endswith(".")
        assert ":" in verdict.host or host_name(verdict.host) == verdict.host


@given(st.binary(max_size=600), st.lists(st.integers(0, 700), max_size=6), st.sampled_from([16, 64, 4096]))
@settings(max_examples=400, deadline=None)
def test_random_bytes(data: bytes, cuts: list[int], max_bytes: int) -> None:
    _check_verdict(data, cuts, max_bytes)


@given(
    st.sampled_from(_VALID_STREAMS),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
    st.integers(0, 1 << 16),
    st.lists(st.integers(0, 1 << 16), max_size=4),
)
@settings(max_examples=400, deadline=None)
def test_mutated_vectors(stream: bytes, flips: list[tuple[int, int]], keep: int, cuts: list[int]) -> None:
    data = bytearray(stream)
    for at, value in flips:
        data[at % len(data)] = value
    _check_verdict(bytes(data[: keep % (len(data) + 1)]), cuts, MAX_SNIFF_BYTES)
