from __future__ import annotations

import http.client
import io

import pytest
from chunks import chunked, feed_until_done
from hypothesis import given, settings
from hypothesis import strategies as st

from tungo_sidecar import errors
from tungo_sidecar.proto import http_connect as hc
from tungo_sidecar.proto.address import Address

# "u:p" -> dTpw ; "Aladdin:open sesame" -> QWxhZGRpbjpvcGVuIHNlc2FtZQ== (RFC 7617 §2's example)
CONNECT_WITH_AUTH = (
    b"CONNECT example.com:443 HTTP/1.1\r\n"
    b"Host: example.com:443\r\n"
    b"Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"\r\n"
)
CONNECT_V6 = (
    b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\nProxy-Connection: keep-alive\r\n\r\n"
)
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
AUTH_REQUIRED = (
    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
    b'Proxy-Authenticate: Basic realm="tungo"\r\n'
    b"Content-Length: 0\r\n"
    b"Connection: close\r\n"
    b"\r\n"
)


def test_client_request_encodes_like_the_wire() -> None:
    request = hc.ConnectRequest(Address("example.com", 443), hc.BasicCredentials("Aladdin", "open sesame"))
    assert request.encode() == CONNECT_WITH_AUTH
    assert hc.ConnectRequest(Address("2001:db8::1", 8443)).encode() == CONNECT_V6
    extra = hc.ConnectRequest(Address("1.2.3.4", 80), extra_headers=hc.Headers((("User-Agent", "tungo"),)))
    assert extra.encode().endswith(b"Proxy-Connection: keep-alive\r\nUser-Agent: tungo\r\n\r\n")


def test_server_parses_the_client_request() -> None:
    reader = hc.RequestHeadReader()
    head = reader.feed(CONNECT_WITH_AUTH + b"\x16\x03\x01early tls")
    assert head == hc.RequestHead(
        "CONNECT",
        "example.com:443",
        hc.Headers(
            (
                ("Host", "example.com:443"),
                ("Proxy-Authorization", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
                ("Proxy-Connection", "keep-alive"),
            )
        ),
    )
    assert head.encode() == CONNECT_WITH_AUTH
    assert reader.leftover == b"\x16\x03\x01early tls"
    assert head.connect_address() == Address("example.com", 443)
    assert head.credentials() == hc.BasicCredentials("Aladdin", "open sesame")
    v6 = hc.RequestHeadReader().feed(CONNECT_V6)
    assert v6 is not None and v6.connect_address() == Address("2001:db8::1", 8443)
    assert v6.credentials() is None


@pytest.mark.parametrize(
    ("head", "wire"),
    [
        (hc.ResponseHead.connection_established(), ESTABLISHED),
        (hc.ResponseHead.proxy_auth_required(), AUTH_REQUIRED),
        (
            hc.ResponseHead.forbidden(),
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        (
            hc.ResponseHead.bad_gateway(),
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        (
            hc.ResponseHead.error(431),
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
    ],
)
def test_server_responses_round_trip(head: hc.ResponseHead, wire: bytes) -> None:
    assert head.encode() == wire
    reader = hc.ResponseHeadReader()
    assert reader.feed(wire) == head
    assert reader.leftover == b""


def test_response_one_byte_at_a_time_keeps_leftover() -> None:
    stream = AUTH_REQUIRED + b"rest"
    reader = hc.ResponseHeadReader()
    results = [reader.feed(stream[i : i + 1]) for i in range(len(AUTH_REQUIRED))]
    assert results[:-1] == [None] * (len(AUTH_REQUIRED) - 1)
    head = results[-1]
    assert head is not None and head.status == 407
    assert head.headers.get("proxy-authenticate") == 'Basic realm="tungo"'
    assert "CONTENT-LENGTH" in head.headers and "X-Missing" not in head.headers
    assert reader.leftover == b""
    with pytest.raises(RuntimeError):
        reader.feed(b"rest")


def test_request_one_byte_at_a_time() -> None:
    reader = hc.RequestHeadReader()
    results = [reader.feed(CONNECT_WITH_AUTH[i : i + 1]) for i in range(len(CONNECT_WITH_AUTH))]
    assert results[:-1] == [None] * (len(CONNECT_WITH_AUTH) - 1)
    assert results[-1] is not None and results[-1].target == "example.com:443"


def test_lenient_forms_a_real_proxy_sends() -> None:
    # Bare LF line ends, no reason phrase, repeated headers, OWS around values.
    reader = hc.ResponseHeadReader()
    head = reader.feed(b"HTTP/1.0 200\nVia:  a \nVia:\tb\n\nDATA")
    assert head == hc.ResponseHead(200, "", hc.Headers((("Via", "a"), ("Via", "b"))), "HTTP/1.0")
    assert head.headers.get_all("via") == ("a", "b") and reader.leftover == b"DATA"
    assert hc.ResponseHeadReader().feed(b"HTTP/1.1 204 \r\n\r\n") == hc.ResponseHead(204)


def test_raise_for_status() -> None:
    hc.raise_for_status(hc.ResponseHead.connection_established())
    hc.raise_for_status(hc.ResponseHead(204))
    for status in (407, 403, 502, 301, 101):
        with pytest.raises(errors.ProxyRefusedError) as info:
            hc.raise_for_status(hc.ResponseHead.error(status))
        assert info.value.code == status


def test_credentials_codec() -> None:
    creds = hc.BasicCredentials("u", "p:with:colons")
    assert hc.BasicCredentials.from_header_value(creds.header_value()) == creds
    assert creds.header_value() == "Basic dTpwOndpdGg6Y29sb25z"
    assert hc.BasicCredentials.from_header_value("basic   dTpw ") == hc.BasicCredentials("u", "p")
    assert hc.BasicCredentials.from_header_value("Bearer abc") is None
    odd = hc.BasicCredentials("\u00e9", "\udcff")
    assert hc.BasicCredentials.from_header_value(odd.header_value()) == odd
    assert "p" not in repr(hc.BasicCredentials("u", "p")).replace("password", "")
    with pytest.raises(ValueError):
        hc.BasicCredentials("a:b", "")
    for bad in ("Basic !!!", "Basic dTp", "Basic dXNlcg=="):  # not base64, truncated, no colon
        with pytest.raises(errors.HttpProtocolError) as info:
            hc.BasicCredentials.from_header_value(bad)
        assert info.value.status == 400


def test_default_port_like_gost() -> None:
    head = hc.RequestHead("CONNECT", "example.com")
    assert head.connect_address(default_port=80) == Address("example.com", 80)
    assert hc.RequestHead("CONNECT", "[::1]").connect_address(default_port=80) == Address("::1", 80)


def test_gost_handler_responses_parse() -> None:
    # go-gost/x handler/http buildConnectResponse(), and a Go http.Response.Write of its 407.
    reader = hc.ResponseHeadReader()
    head = reader.feed(b"HTTP/1.1 200 Connection established\r\nProxy-Agent: gost/3.0\r\n\r\n\x16\x03")
    assert head == hc.ResponseHead(200, "Connection established", hc.Headers((("Proxy-Agent", "gost/3.0"),)))
    assert reader.leftover == b"\x16\x03"
    refused = hc.ResponseHeadReader().feed(
        b"HTTP/1.1 407 Proxy Authentication Required\r\nConnection: close\r\n"
        b'Proxy-Agent: gost/3.0\r\nProxy-Authenticate: Basic realm="gost"\r\n\r\n'
    )
    assert refused is not None and refused.status == 407 and not refused.ok


class _FakeSocket:
    """Just enough of a socket for http.client to read a canned response from memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self._data))


@pytest.mark.parametrize(
    "head",
    [
        hc.ResponseHead.connection_established(),
        hc.ResponseHead.proxy_auth_required("corp"),
        hc.ResponseHead.forbidden(),
        hc.ResponseHead.bad_gateway(),
    ],
)
def test_stdlib_client_reads_our_responses(head: hc.ResponseHead) -> None:
    # An independent parser (CPython's http.client, which urllib's proxy tunnelling uses) agrees.
    response = http.client.HTTPResponse(_FakeSocket(head.encode()), method="CONNECT")  # type: ignore[arg-type]
    response.begin()
    assert (response.status, response.reason) == (head.status, head.reason)
    assert sorted(response.getheaders()) == sorted(head.headers.items)


def test_stdlib_parses_our_request_headers() -> None:
    wire = hc.ConnectRequest(Address("example.com", 443), hc.BasicCredentials("u", "p")).encode()
    request_line, _, rest = wire.partition(b"\r\n")
    assert request_line == b"CONNECT example.com:443 HTTP/1.1"
    parsed = http.client.parse_headers(io.BytesIO(rest))
    assert parsed["Host"] == "example.com:443"
    assert parsed["Proxy-Authorization"] == "Basic dTpw"


@pytest.mark.parametrize(
    ("target", "method", "status"),
    [
        ("example.com", "CONNECT", 400),
        (":443", "CONNECT", 400),
        ("example.com:http", "CONNECT", 400),
        ("example.com:99999", "CONNECT", 400),
        ("[::1", "CONNECT", 400),
        ("http://example.com/", "GET", 405),
    ],
)
def test_bad_connect_targets(target: str, method: str, status: int) -> None:
    head = hc.RequestHead(method, target)
    with pytest.raises(errors.HttpProtocolError) as info:
        head.connect_address()
    assert info.value.status == status


@pytest.mark.parametrize(
    "wire",
    [
        b"\r\n\r\n",
        b"CONNECT example.com:443\r\n\r\n",
        b"CONNECT  example.com:443 HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:443 HTTP/2\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost : x\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nNoColon\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nA: b\x00c\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nA: b\rc\r\n\r\n",
        b"CONN\x01ECT example.com:443 HTTP/1.1\r\n\r\n",
        b"CONNECT exa\rmple.com:443 HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests_answer_400(wire: bytes) -> None:
    with pytest.raises(errors.HttpProtocolError) as info:
        hc.RequestHeadReader().feed(wire)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 O\x01K\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
    ],
)
def test_malformed_responses_raise_without_status(wire: bytes) -> None:
    with pytest.raises(errors.HttpProtocolError) as info:
        hc.ResponseHeadReader().feed(wire)
    assert info.value.status is None


def test_head_size_limit() -> None:
    reader = hc.RequestHeadReader()
    line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    assert reader.feed(b"CONNECT a:1 HTTP/1.1\r\n") is None
    assert reader.buffered == 22
    with pytest.raises(errors.HttpProtocolError, match="exceeds 65536") as info:
        for _ in range(70):  # bounded: 70 KB > 64 KiB
            assert reader.feed(line) is None
    assert info.value.status == 431
    # A head that completes in the same chunk but is too long is refused as well.
    small = hc.ResponseHeadReader(max_size=32)
    with pytest.raises(errors.HttpProtocolError, match="exceeds 32"):
        small.feed(ESTABLISHED)
    # At the limit exactly it parses.
    assert hc.ResponseHeadReader(max_size=len(ESTABLISHED)).feed(ESTABLISHED + b"x") is not None
    with pytest.raises(ValueError):
        hc.RequestHeadReader(max_size=3)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        hc.Headers((("Bad Name", "x"),))
    with pytest.raises(ValueError):
        hc.Headers((("A", "x\r\nInjected: 1"),))
    with pytest.raises(ValueError):
        hc.ResponseHead(99)
    with pytest.raises(ValueError):
        hc.ResponseHead(200, "a\x00b")
    with pytest.raises(ValueError):
        hc.ResponseHead(200, version="HTTP/11")
    with pytest.raises(ValueError):
        hc.ResponseHead.proxy_auth_required('a"b')
    with pytest.raises(ValueError):
        hc.ConnectRequest(Address("", 443))
    with pytest.raises(ValueError):
        hc.ConnectRequest(Address("a b", 443))


# ---------------------------------------------------------------------------------------------------
# Property tests

names = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True)
values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
).map(lambda v: v.strip(" \t"))
headers = st.lists(st.tuples(names, values), max_size=6).map(lambda items: hc.Headers(tuple(items)))
responses = st.builds(
    hc.ResponseHead,
    st.integers(100, 999),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=30),
    headers,
)
hosts = st.one_of(st.ip_addresses().map(str), st.from_regex(r"[a-z0-9.-]{1,40}", fullmatch=True))


@given(responses, st.lists(st.integers(0, 2000), max_size=8), st.binary(max_size=20))
@settings(max_examples=200, deadline=None)
def test_responses_round_trip_through_any_chunking(
    head: hc.ResponseHead, cuts: list[int], tail: bytes
) -> None:
    wire = head.encode()
    reader = hc.ResponseHeadReader()
    result, after = feed_until_done(reader, chunked(wire + tail, cuts))
    assert result is not None
    assert result == head
    assert reader.leftover + after == tail


@given(hosts, st.integers(0, 0xFFFF), headers, st.lists(st.integers(0, 2000), max_size=8))
@settings(max_examples=200, deadline=None)
def test_connect_requests_round_trip(host: str, port: int, extra: hc.Headers, cuts: list[int]) -> None:
    request = hc.ConnectRequest(Address(host, port), hc.BasicCredentials("user", "pw"), extra)
    reader = hc.RequestHeadReader()
    result, _ = feed_until_done(reader, chunked(request.encode(), cuts))
    assert result is not None
    assert result.connect_address() == Address(host, port)
    assert result.credentials() == hc.BasicCredentials("user", "pw")
    assert result.headers.items[3:] == extra.items


@given(st.binary(max_size=400), st.lists(st.integers(0, 500), max_size=6))
@settings(max_examples=400, deadline=None)
def test_random_bytes_only_raise_declared_errors(data: bytes, cuts: list[int]) -> None:
    for reader in (hc.RequestHeadReader(max_size=256), hc.ResponseHeadReader(max_size=256)):
        try:
            result, _ = feed_until_done(reader, chunked(data, cuts))
        except errors.HttpProtocolError:
            continue
        if isinstance(result, hc.RequestHead):
            try:
                result.connect_address()
                result.credentials()
            except errors.HttpProtocolError:
                pass
        if result is not None:
            assert type(reader)().feed(result.encode()) == result
