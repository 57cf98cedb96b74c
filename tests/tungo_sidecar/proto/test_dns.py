"""DNS responses built by hand on the RFC 1035 wire format (no DNS library in the venv): what is learnt,
what is refused, and that hostile messages end in ``DnsError`` or None, never anything else."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tungo_sidecar import errors
from tungo_sidecar.proto.dns import MAX_ANSWERS, MAX_CNAME_HOPS, DnsAnswer, DnsError, parse_response
from tungo_sidecar.proto.sniff import host_name

A, CNAME, AAAA, TXT = 1, 5, 28, 16
IN, CH = 1, 3
RESPONSE = 0x8180  # QR, RD, RA, NOERROR: what a recursive resolver answers
QNAME_AT = 12  # the question name follows the header: the usual compression target


def wire_name(text: str) -> bytes:
    labels = [label.encode() for label in text.split(".") if label]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def header(*, flags: int = RESPONSE, qd: int = 1, an: int = 0) -> bytes:
    return struct.pack("!6H", 0xBEEF, flags, qd, an, 0, 0)


def question(qname: str | bytes, qtype: int = A, qclass: int = IN) -> bytes:
    raw = wire_name(qname) if isinstance(qname, str) else qname
    return raw + struct.pack("!HH", qtype, qclass)


def rr(owner: str | bytes, rtype: int, rdata: bytes, ttl: int = 300, rclass: int = IN) -> bytes:
    raw = wire_name(owner) if isinstance(owner, str) else owner
    return raw + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def a(owner: str | bytes, ip: str, ttl: int = 300) -> bytes:
    return rr(owner, A, IPv4Address(ip).packed, ttl)


def aaaa(owner: str | bytes, ip: str, ttl: int = 300) -> bytes:
    return rr(owner, AAAA, IPv6Address(ip).packed, ttl)


def cname(owner: str | bytes, target: str | bytes, ttl: int = 300) -> bytes:
    return rr(owner, CNAME, wire_name(target) if isinstance(target, str) else target, ttl)


def response(qname: str | bytes, *answers: bytes, flags: int = RESPONSE, an: int | None = None) -> bytes:
    count = len(answers) if an is None else an
    return header(flags=flags, an=count) + question(qname) + b"".join(answers)


def v4(ip: str, ttl: int = 300) -> tuple[IPv4Address, int]:
    return IPv4Address(ip), ttl


def v6(ip: str, ttl: int = 300) -> tuple[IPv6Address, int]:
    return IPv6Address(ip), ttl


# A response as a resolver compresses it: www.example.com CNAME edge.cdn.example.net, two A records
# and an AAAA at the target, every owner a pointer.
CDN_QNAME = "www.example.com"
_CDN_TARGET_AT = QNAME_AT + len(wire_name(CDN_QNAME)) + 4 + 12  # the CNAME's RDATA, past its fixed part
CDN_RESPONSE = response(
    CDN_QNAME,
    cname(ptr(QNAME_AT), wire_name("edge.cdn.example.net"), ttl=3600),
    a(ptr(_CDN_TARGET_AT), "192.0.2.10", ttl=20),
    a(ptr(_CDN_TARGET_AT), "192.0.2.11", ttl=20),
    aaaa(ptr(_CDN_TARGET_AT), "2001:db8::10", ttl=20),
)
CDN_ANSWER = DnsAnswer(
    "www.example.com", (v4("192.0.2.10", 20), v4("192.0.2.11", 20), v6("2001:db8::10", 20))
)


def test_declared_error_is_in_the_tree() -> None:
    assert issubclass(DnsError, errors.ProtocolError) and issubclass(DnsError, ValueError)


def test_compressed_cdn_response() -> None:
    assert CDN_RESPONSE[_CDN_TARGET_AT : _CDN_TARGET_AT + 5] == b"\x04edge"
    assert parse_response(CDN_RESPONSE) == CDN_ANSWER


def test_plain_a_and_aaaa() -> None:
    assert parse_response(response("example.org", a("example.org", "198.51.100.1", 60))) == DnsAnswer(
        "example.org", (v4("198.51.100.1", 60),)
    )
    v6_only = response("example.org", aaaa(ptr(QNAME_AT), "2001:DB8::1"), aaaa(ptr(QNAME_AT), "2001:db8::2"))
    assert parse_response(v6_only) == DnsAnswer("example.org", (v6("2001:db8::1"), v6("2001:db8::2")))


def test_names_are_compared_and_reported_case_insensitively() -> None:
    mixed = response("WWW.Example.COM.", a("www.EXAMPLE.com", "192.0.2.1"), a("Www.Example.Com", "192.0.2.2"))
    assert parse_response(mixed) == DnsAnswer("www.example.com", (v4("192.0.2.1"), v4("192.0.2.2")))


def test_duplicates_keep_the_first() -> None:
    twice = response("d.example", a("d.example", "192.0.2.1", 10), a("d.example", "192.0.2.1", 99))
    assert parse_response(twice) == DnsAnswer("d.example", (v4("192.0.2.1", 10),))


def test_ttl_is_unsigned_and_the_top_bit_means_zero() -> None:
    for raw, ttl in ((0, 0), (0x7FFFFFFF, 0x7FFFFFFF), (0x80000000, 0), (0xFFFFFFFF, 0)):
        answer = parse_response(response("t.example", a("t.example", "192.0.2.1", raw)))
        assert answer == DnsAnswer("t.example", (v4("192.0.2.1", ttl),))


def test_cname_chain_in_any_order() -> None:
    chain = [
        cname("a.example", "b.example"),
        cname("b.example", "c.example"),
        a("c.example", "192.0.2.3"),
        aaaa("b.example", "2001:db8::b"),  # illegal next to a CNAME, but reached: accepted
    ]
    assert parse_response(response("a.example", *chain)) == DnsAnswer(
        "a.example", (v4("192.0.2.3"), v6("2001:db8::b"))
    )
    assert parse_response(response("a.example", *reversed(chain))) == DnsAnswer(
        "a.example", (v6("2001:db8::b"), v4("192.0.2.3"))
    )


def test_records_for_other_names_are_not_learnt() -> None:
    # A resolver (or an attacker on the path) adding records nobody asked about must not rename them.
    extra = response("q.example", a("q.example", "192.0.2.1"), a("bank.example", "192.0.2.66"))
    assert parse_response(extra) == DnsAnswer("q.example", (v4("192.0.2.1"),))
    assert parse_response(response("q.example", a("bank.example", "192.0.2.66"))) is None
    side_chain = response("q.example", cname("x.example", "q.example"), a("x.example", "192.0.2.7"))
    assert parse_response(side_chain) is None  # a CNAME *to* the question name does not count


def test_cname_loops_and_long_chains_are_refused() -> None:
    loop = response("a.example", cname("a.example", "b.example"), cname("b.example", "a.example"))
    assert parse_response(loop + a("a.example", "192.0.2.1")) is None
    loop_with_address = response(
        "a.example",
        cname("a.example", "b.example"),
        cname("b.example", "A.example"),
        a("b.example", "192.0.2.1"),
    )
    assert parse_response(loop_with_address) is None
    self_loop = response("s.example", cname("s.example", "s.example"), a("s.example", "192.0.2.1"))
    assert parse_response(self_loop) is None

    def chain(hops: int) -> bytes:
        names = [f"h{i}.example" for i in range(hops + 1)]
        records = [cname(names[i], names[i + 1]) for i in range(hops)] + [a(names[-1], "192.0.2.9")]
        return response(names[0], *records)

    assert parse_response(chain(MAX_CNAME_HOPS)) == DnsAnswer("h0.example", (v4("192.0.2.9"),))
    assert parse_response(chain(MAX_CNAME_HOPS + 1)) is None


def test_second_cname_for_one_owner_is_ignored() -> None:
    two = response(
        "c.example", cname("c.example", "first.example"), cname("c.example", "second.example"),
        a("first.example", "192.0.2.1"), a("second.example", "192.0.2.2"),
    )  # fmt: skip
    assert parse_response(two) == DnsAnswer("c.example", (v4("192.0.2.1"),))


def test_not_worth_learning() -> None:
    good = response("n.example", a("n.example", "192.0.2.1"))
    assert parse_response(good) is not None
    assert parse_response(response("n.example", a("n.example", "192.0.2.1"), flags=0x0100)) is None  # query
    assert parse_response(response("n.example", flags=0x8183)) is None  # NXDOMAIN
    assert (
        parse_response(response("n.example", a("n.example", "192.0.2.1"), flags=0x8182)) is None
    )  # SERVFAIL
    assert (
        parse_response(response("n.example", a("n.example", "192.0.2.1"), flags=0x9180)) is None
    )  # opcode 2
    truncated_flag = response("n.example", a("n.example", "192.0.2.1"), flags=0x8380)  # TC: still true
    assert parse_response(truncated_flag) == DnsAnswer("n.example", (v4("192.0.2.1"),))
    two_questions = (
        header(qd=2, an=1) + question("n.example") + question("m.example") + a("n.example", "1.2.3.4")
    )
    assert parse_response(two_questions) is None
    assert parse_response(header(qd=0, an=1) + a("n.example", "192.0.2.1")) is None
    chaos = header(an=1) + question("n.example", qclass=CH) + a("n.example", "192.0.2.1")
    assert parse_response(chaos) is None
    assert parse_response(response("n.example")) is None  # NODATA
    assert parse_response(response(".", a(".", "192.0.2.1"))) is None  # the root is no host name
    odd = response("n.example", rr("n.example", A, b"\x01\x02\x03"), rr("n.example", AAAA, bytes(4)))
    assert parse_response(odd) is None  # wrong RDLENGTH for the type: skipped
    other = response("n.example", rr("n.example", TXT, b"\x03abc"), rr("n.example", A, bytes(4), rclass=CH))
    assert parse_response(other) is None
    # Skipped records do not stop the walk.
    assert parse_response(other[:6] + b"\x00\x03" + other[8:] + a("n.example", "192.0.2.5")) == DnsAnswer(
        "n.example", (v4("192.0.2.5"),)
    )


def test_question_names_that_are_not_host_names() -> None:
    for raw in (b"\x03a b\x07example\x00", b"\x03a.b\x07example\x00", b"\x02\xc3\xa9\x07example\x00"):
        assert parse_response(header(an=1) + question(raw) + a(ptr(QNAME_AT), "192.0.2.1")) is None
    underscore = response("_svc._tcp.example", a(ptr(QNAME_AT), "192.0.2.1"))
    assert parse_response(underscore) == DnsAnswer("_svc._tcp.example", (v4("192.0.2.1"),))


def test_name_length_limits() -> None:
    longest = ".".join(["a"] * 127)  # 127 labels, 255 octets on the wire
    assert len(wire_name(longest)) == 255
    assert parse_response(response(longest, a(ptr(QNAME_AT), "192.0.2.1"))) == DnsAnswer(
        longest, (v4("192.0.2.1"),)
    )
    with pytest.raises(DnsError, match="255"):
        parse_response(response(longest + ".b", a(ptr(QNAME_AT), "192.0.2.1")))
    with pytest.raises(DnsError, match="255"):
        parse_response(response("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 63))
    with pytest.raises(DnsError, match="reserved label type"):
        parse_response(header() + b"\x41x\x00" + struct.pack("!HH", A, IN))


def test_compression_pointers() -> None:
    # Suffix sharing: "cdn" + pointer to "example.com" inside the question name.
    q = "www.example.com"
    suffix = wire_name("cdn")[:-1] + ptr(QNAME_AT + 4)
    shared = response(q, cname(ptr(QNAME_AT), suffix), a(b"\x03CDN" + ptr(QNAME_AT + 4), "192.0.2.1"))
    assert parse_response(shared) == DnsAnswer(q, (v4("192.0.2.1"),))
    # Pointer to a pointer, each strictly before the segment holding it.
    first = response(q, cname(ptr(QNAME_AT), suffix))
    target_at = len(first) - len(suffix)
    hop = response(q, cname(ptr(QNAME_AT), suffix), a(ptr(target_at), "192.0.2.2"))
    assert parse_response(hop) == DnsAnswer(q, (v4("192.0.2.2"),))


def test_bad_pointers_in_the_question_are_errors() -> None:
    for pointer, match in (
        (ptr(QNAME_AT), "backward"),  # itself
        (ptr(QNAME_AT + 2), "backward"),  # forward
        (ptr(0x3FFF), "backward"),  # past the end
        (ptr(2), "backward"),  # into the header
    ):
        with pytest.raises(DnsError, match=match):
            parse_response(header() + pointer + struct.pack("!HH", A, IN))
    with pytest.raises(DnsError, match="past the end"):
        parse_response(header() + b"\xc0")


def test_bad_pointers_in_answers_end_the_walk() -> None:
    q = "p.example"
    good = a(ptr(QNAME_AT), "192.0.2.1")
    base = response(q, good)
    at = len(base)  # where the next record's owner starts
    for owner in (ptr(at), ptr(at + 2), ptr(0x3FFF), ptr(3)):  # self, forward, past the end, header
        broken = header(an=3) + base[12:] + a(owner, "192.0.2.2") + a(ptr(QNAME_AT), "192.0.2.3")
        assert parse_response(broken) == DnsAnswer(q, (v4("192.0.2.1"),))
    # Backward from the pointer but not from the name's start: "x" then a pointer to that "x" would
    # read x.x.x... for ever in a parser that only checks pointer < its own offset.
    looping = header(an=2) + base[12:] + a(b"\x01x" + ptr(at), "192.0.2.4") + good
    assert parse_response(looping) == DnsAnswer(q, (v4("192.0.2.1"),))
    # The same through two segments: "y" + pointer to the question, whose name is then read again.
    two_step = header(an=2) + base[12:] + a(b"\x01y" + ptr(QNAME_AT), "192.0.2.6") + good
    assert parse_response(two_step) == DnsAnswer(q, (v4("192.0.2.1"),))  # y.p.example: another name
    # A CNAME whose target points at itself, or whose RDLENGTH disagrees with its name.
    rdata_at = at + 2 + 10
    self_target = header(an=2) + base[12:] + cname(ptr(QNAME_AT), ptr(rdata_at)) + good
    assert parse_response(self_target) == DnsAnswer(q, (v4("192.0.2.1"),))
    long_rdata = header(an=2) + base[12:] + cname(ptr(QNAME_AT), wire_name("t.example") + b"\x00") + good
    assert parse_response(long_rdata) == DnsAnswer(q, (v4("192.0.2.1"),))


def test_answer_count_is_bounded() -> None:
    many = [a(ptr(QNAME_AT), f"10.0.{i // 256}.{i % 256}") for i in range(MAX_ANSWERS + 10)]
    answer = parse_response(response("many.example", *many))
    assert answer is not None and len(answer.addresses) == MAX_ANSWERS
    # ANCOUNT claims far more than there is: the walk stops at the end, the records found stand.
    lying = response("many.example", *many[:3], an=0xFFFF)
    assert parse_response(lying) == DnsAnswer(
        "many.example", (v4("10.0.0.0"), v4("10.0.0.1"), v4("10.0.0.2"))
    )


def test_truncated_at_every_byte() -> None:
    full = CDN_ANSWER.addresses
    question_end = QNAME_AT + len(wire_name(CDN_QNAME)) + 4
    for cut in range(len(CDN_RESPONSE)):
        data = CDN_RESPONSE[:cut]
        if cut < question_end:
            with pytest.raises(DnsError):
                parse_response(data)
            continue
        answer = parse_response(data)
        # Complete records before the cut are learnt; never a partial or invented one.
        assert answer is None or (
            answer.name == CDN_QNAME and full[: len(answer.addresses)] == answer.addresses
        )
    assert parse_response(CDN_RESPONSE[: len(CDN_RESPONSE) - 1]) == DnsAnswer(CDN_QNAME, full[:2])


# ---------------------------------------------------------------------------------------------------
# Property tests: only DnsError or None or a sane answer, whatever the bytes.


def _check(payload: bytes) -> None:
    try:
        answer = parse_response(payload)
    except DnsError:
        return
    if answer is not None:
        assert host_name(answer.name) == answer.name
        assert answer.addresses
        assert len({ip for ip, _ in answer.addresses}) == len(answer.addresses) <= MAX_ANSWERS
        assert all(0 <= ttl < 1 << 31 for _, ttl in answer.addresses)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bytes(payload: bytes) -> None:
    _check(payload)


@given(st.integers(0, 0xFFFF), st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bodies_behind_a_response_header(ancount: int, body: bytes) -> None:
    _check(header(an=ancount) + body)
    _check(header(an=ancount) + question("f.example") + body)


_VALID = [
    CDN_RESPONSE,
    response("a.example", cname("a.example", "b.example"), a("b.example", "192.0.2.1")),
    response("m.example", *(aaaa(ptr(QNAME_AT), f"2001:db8::{i}") for i in range(1, 5))),
]


@given(
    st.sampled_from(_VALID),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
    st.integers(0, 1 << 16),
)
@settings(max_examples=400, deadline=None)
def test_mutated_responses(payload: bytes, flips: list[tuple[int, int]], keep: int) -> None:
    data = bytearray(payload)
    for at, value in flips:
        data[at % len(data)] = value
    _check(bytes(data[: keep % (len(data) + 1)]))
