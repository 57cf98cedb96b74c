"""The DNS service's codec: queries read, answers checked, tungo's own replies and cuts written, TCP
framing, reverse names — byte vectors both ways, byte-at-a-time framing, and fuzzing that allows only
the declared errors."""

from __future__ import annotations

import contextlib
import struct
from ipaddress import ip_network

import dnswire as w
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tungo_sidecar.proto import dnsmsg
from tungo_sidecar.proto.dns import DnsError
from tungo_sidecar.proto.dnsmsg import Query, QueryError, Question

# "example.com A IN", ID 0x1234, RD: what `dig +noedns example.com` sends.
PLAIN = bytes.fromhex("1234 0100 0001 0000 0000 0000 076578616d706c6503636f6d00 0001 0001")
PLAIN_QUERY = Query(
    id=0x1234,
    flags=0x0100,
    question=Question((b"example", b"com"), 1, 1),
    wire_question=bytes.fromhex("076578616d706c6503636f6d00 0001 0001"),
)
# The same with EDNS (OPT, UDP size 1232, DO set) and the client's mixed case (0x20).
EDNS = bytes.fromhex(
    "1234 0120 0001 0000 0000 0001 07457841 6d706c6503636f6d00 001c 0001 00 0029 04d0 00008000 0000"
)


def test_a_plain_query_parses_to_its_parts() -> None:
    assert dnsmsg.parse_query(PLAIN) == PLAIN_QUERY
    assert PLAIN_QUERY.udp_limit == 512
    assert str(PLAIN_QUERY.question) == "example.com A"


def test_an_edns_query_keeps_its_letter_case_on_the_wire_and_its_udp_size() -> None:
    query = dnsmsg.parse_query(EDNS)
    assert query.question == Question((b"example", b"com"), 28, 1)  # matched case-insensitively
    assert query.wire_question == bytes.fromhex("07457841 6d706c6503636f6d00 001c 0001")  # echoed as sent
    assert query.edns_size == 1232 and query.udp_limit == 1232
    assert query.flags == 0x0120  # RD, AD


@pytest.mark.parametrize(
    ("size", "limit"), [(0, 512), (511, 512), (4096, 4096), (65535, dnsmsg.MAX_UDP_ANSWER)]
)
def test_udp_limit_follows_rfc6891(size: int, limit: int) -> None:
    assert Query(1, 0, Question((), 1, 1), b"", edns_size=size).udp_limit == limit


def test_replies_written_by_tungo_vectors() -> None:
    # SERVFAIL: QR, RD copied, RA, question echoed, no records.
    assert dnsmsg.reply(PLAIN_QUERY, dnsmsg.SERVFAIL) == bytes.fromhex(
        "1234 8182 0001 0000 0000 0000 076578616d706c6503636f6d00 0001 0001"
    )
    # A bypassed name: NOERROR, and an OPT record since the query had one (RFC 6891 §6.1.1). AD is not
    # copied (tungo validated nothing), CD would be.
    assert dnsmsg.reply(dnsmsg.parse_query(EDNS), dnsmsg.NOERROR) == bytes.fromhex(
        "1234 8180 0001 0000 0000 0001 07457841 6d706c6503636f6d00 001c 0001 00 0029 1000 00000000 0000"
    )


def formerr(ident: int, flags: int = 0x8181) -> bytes:
    return struct.pack("!6H", ident, flags, 0, 0, 0, 0)


QUESTION = w.wire_name("example.com") + struct.pack("!HH", 1, 1)


@pytest.mark.parametrize(
    ("payload", "reply", "reason"),
    [
        (b"", None, "shorter than a header"),
        (PLAIN[:11], None, "shorter than a header"),
        (struct.pack("!6H", 7, 0x8100, 1, 0, 0, 0) + QUESTION, None, "a response"),
        (struct.pack("!6H", 7, 0x0100, 0, 0, 0, 0), formerr(7), "0 questions"),
        (struct.pack("!6H", 7, 0x0100, 2, 0, 0, 0) + QUESTION * 2, formerr(7), "2 questions"),
        (struct.pack("!6H", 7, 0x1100, 1, 0, 0, 0) + QUESTION, formerr(7, 0x9184), "opcode 2"),  # STATUS
        (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + QUESTION[:-2], formerr(7), "question runs past"),
        (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + b"\x05ab", formerr(7), "label runs past"),
        (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", formerr(7), "pointer"),
        (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + QUESTION + b"\x00", formerr(7), "1 bytes after"),
        (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 1) + QUESTION, formerr(7), "name runs past"),
        (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 2) + QUESTION + w.opt_record() * 2, formerr(7), "OPT"),
        (struct.pack("!6H", 7, 0x0100, 1, 1, 0, 0) + QUESTION + w.opt_record(), formerr(7), "OPT"),
        (
            struct.pack("!6H", 7, 0x0100, 1, 0, 0, 1) + QUESTION + b"\xc0\x0c" + w.opt_record()[1:],
            formerr(7),
            "OPT",
        ),
        (
            struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + QUESTION + b"\x00" * 4096,
            formerr(7),
            "larger than 4096",
        ),
    ],
)
def test_malformed_queries_get_formerr_or_nothing(payload: bytes, reply: bytes | None, reason: str) -> None:
    with pytest.raises(QueryError, match=reason) as info:
        dnsmsg.parse_query(payload)
    assert info.value.reply == reply
    assert isinstance(info.value, DnsError)


def test_records_before_the_opt_are_skipped_and_any_type_is_forwarded() -> None:
    # A query carrying an answer record (legal, if odd) and an OPT; TYPE65 (HTTPS) in class CH.
    body = w.wire_name("x.test") + struct.pack("!HH", 65, 3) + w.a_record("192.0.2.1") + w.opt_record(4096)
    query = dnsmsg.parse_query(struct.pack("!6H", 9, 0, 1, 1, 0, 1) + body)
    assert query.question == Question((b"x", b"test"), 65, 3) and query.edns_size == 4096
    assert str(query.question) == "x.test HTTPS CLASS3"


def test_check_answer_accepts_only_the_answer_to_the_query() -> None:
    query = dnsmsg.parse_query(PLAIN)
    good = w.answer(PLAIN, w.a_record("192.0.2.1"))
    assert dnsmsg.check_answer(query, good) == dnsmsg.AnswerInfo(dnsmsg.NOERROR, truncated=False)
    shouting = good[:12] + good[12:].replace(b"example", b"EXAMPLE")
    assert dnsmsg.check_answer(query, shouting).rcode == dnsmsg.NOERROR
    cut = w.answer(PLAIN, flags=w.TC)
    assert dnsmsg.check_answer(query, cut) == dnsmsg.AnswerInfo(dnsmsg.NOERROR, truncated=True)
    # An error answer may leave the question out.
    assert dnsmsg.check_answer(query, formerr(0x1234)).rcode == dnsmsg.FORMERR
    bad = {
        "shorter": good[:11],
        "not the query's": b"\x99\x99" + good[2:],
        "sent a query": PLAIN,
        "opcode": good[:2] + struct.pack("!H", 0x8900) + good[4:],
        "is for": w.answer(w.query("example.org", qid=0x1234)),
        "0 questions": formerr(0x1234, 0x8180)[:4] + b"\x00\x00" + formerr(0x1234)[6:],
        "runs past": good[:12] + b"\x07example\x03com\x00\x00",
    }
    for reason, payload in bad.items():
        with pytest.raises(DnsError, match=reason.replace("0 questions", "has 0 questions")):
            dnsmsg.check_answer(query, payload)


def test_truncate_keeps_header_question_and_opt_and_sets_tc() -> None:
    query = w.query("big.test", edns=1232)
    records = [w.txt_record(b"x" * 200) for _ in range(10)]
    full = w.answer(query, *records, extra=w.opt_record(1232))
    assert dnsmsg.truncate(full, 4096) is full
    cut = dnsmsg.truncate(full, 512)
    assert cut == (
        struct.pack("!6H", 0x4242, 0x8180 | w.TC, 1, 0, 0, 1)
        + w.wire_name("big.test")
        + struct.pack("!HH", 1, 1)
        + w.opt_record(1232)
    )
    # Without an OPT (no EDNS): header and question only.
    plain = w.answer(w.query("big.test"), *records)
    assert dnsmsg.truncate(plain, 512) == struct.pack("!6H", 0x4242, 0x8380, 1, 0, 0, 0) + plain[12:26]
    # A question that does not parse: the header alone, TC set.
    broken = plain[:12] + b"\x3f" + plain[13:]
    assert dnsmsg.truncate(broken, 512) == struct.pack("!6H", 0x4242, 0x8380, 0, 0, 0, 0)


def test_frame_vectors_and_bounds() -> None:
    assert dnsmsg.frame(PLAIN) == b"\x00\x1d" + PLAIN
    for bad in (b"", b"x" * 65536):
        with pytest.raises(ValueError, match="holds 1 to 65535"):
            dnsmsg.frame(bad)


def test_tcp_framer_byte_at_a_time_and_pipelined() -> None:
    stream = dnsmsg.frame(PLAIN) + dnsmsg.frame(EDNS)
    framer = dnsmsg.TcpFramer()
    got: list[bytes] = []
    for i in range(len(stream)):
        got += framer.feed(stream[i : i + 1])
        assert framer.buffered == (0 if i + 1 in (len(PLAIN) + 2, len(stream)) else framer.buffered)
    assert got == [PLAIN, EDNS] and framer.buffered == 0
    assert dnsmsg.TcpFramer().feed(stream) == [PLAIN, EDNS]  # both in one read


@pytest.mark.parametrize("prefix", [b"\x00\x00", b"\x10\x01"])
def test_tcp_framer_refuses_lengths_it_cannot_take(prefix: bytes) -> None:
    framer = dnsmsg.TcpFramer(dnsmsg.MAX_QUERY)
    assert framer.feed(prefix[:1]) == []
    with pytest.raises(DnsError, match=r"over TCP \(1 to 4096 accepted\)"):
        framer.feed(prefix[1:])


@pytest.mark.parametrize(
    ("name", "network"),
    [
        ("10.0.96.10.in-addr.arpa", "10.96.0.10/32"),
        ("96.10.in-addr.arpa", "10.96.0.0/16"),
        ("10.in-addr.arpa", "10.0.0.0/8"),
        ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", "fd00::1/128"),
        ("d.f.ip6.arpa", "fd00::/8"),
        ("in-addr.arpa", None),
        ("1.2.3.4.5.in-addr.arpa", None),
        ("256.in-addr.arpa", None),
        ("010.in-addr.arpa", None),
        ("0/25.2.0.192.in-addr.arpa", None),
        ("g.ip6.arpa", None),
        ("10.ip6.arpa", None),
        ("example.com", None),
    ],
)
def test_reverse_names(name: str, network: str | None) -> None:
    labels = tuple(label.encode() for label in name.split("."))
    assert dnsmsg.reverse_network(labels) == (ip_network(network) if network else None)


def test_name_text_escapes_what_is_not_a_host_name_character() -> None:
    assert dnsmsg.name_text(()) == "."
    assert dnsmsg.name_text((b"_sip", b"x-1")) == "_sip.x-1"
    assert dnsmsg.name_text((b"a.b", b"c d\\")) == "a\\046b.c\\032d\\092"


# -- fuzzing --------------------------------------------------------------------------------------

labels = st.binary(min_size=1, max_size=63)


@given(st.binary(max_size=600))
@settings(max_examples=400)
def test_parse_query_on_any_bytes_raises_only_query_error(payload: bytes) -> None:
    try:
        query = dnsmsg.parse_query(payload)
    except QueryError as exc:
        assert exc.reply is None or (len(exc.reply) == 12 and exc.reply[:2] == payload[:2])
    else:
        assert query.wire_question in payload


@given(st.lists(labels, max_size=4), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_queries_round_trip_through_the_codec(name: list[bytes], qtype: int, qid: int, flags: int) -> None:
    flags &= ~(dnsmsg.QR | dnsmsg.OPCODE_MASK)
    wire = b"".join(bytes([len(label)]) + label for label in name) + b"\x00" + struct.pack("!HH", qtype, 1)
    query = dnsmsg.parse_query(struct.pack("!6H", qid, flags, 1, 0, 0, 0) + wire)
    assert query == Query(qid, flags, Question(tuple(label.lower() for label in name), qtype, 1), wire)
    servfail = dnsmsg.reply(query, dnsmsg.SERVFAIL)
    assert dnsmsg.check_answer(query, servfail) == dnsmsg.AnswerInfo(dnsmsg.SERVFAIL, truncated=False)


@given(st.binary(min_size=12, max_size=700), st.sampled_from([512, 1232]))
@settings(max_examples=400)
def test_check_answer_and_truncate_on_any_bytes(payload: bytes, limit: int) -> None:
    with contextlib.suppress(DnsError):
        dnsmsg.check_answer(PLAIN_QUERY, payload)
    cut = dnsmsg.truncate(payload, limit)
    assert len(cut) <= limit
    assert cut is payload or (cut[:2] == payload[:2] and cut[2] & 0x02)


@given(st.lists(st.binary(max_size=40), max_size=12))
def test_tcp_framer_on_any_chunks_yields_messages_or_refuses(chunks: list[bytes]) -> None:
    framer = dnsmsg.TcpFramer(300)
    try:
        for chunk in chunks:
            for message in framer.feed(chunk):
                assert 0 < len(message) <= 300
    except DnsError:
        pass
