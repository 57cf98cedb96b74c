from __future__ import annotations

import fnmatch
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tungo_sidecar.rules.matchers import MatcherSet, Pattern, Problem, Target, parse_lines


def target(host: str | None = None, ip: str | None = None, port: int = 80) -> Target:
    return Target(host=host, ip=None if ip is None else ip_address(ip), port=port)


def compiled(*texts: str) -> MatcherSet:
    matchers, problems = MatcherSet.compile(Pattern(text, f"t[{i}]") for i, text in enumerate(texts))
    assert problems == []
    return matchers


def matched_text(matchers: MatcherSet, flow: Target) -> str | None:
    found = matchers.match(flow)
    return None if found is None else found.text


# --- which pattern ------------------------------------------------------------------------------------


def test_match_returns_the_pattern_with_its_origin() -> None:
    pattern = Pattern("*.example.com", "/etc/tungo/bypass.txt:12")
    matchers, _ = MatcherSet.compile([Pattern("10.0.0.0/8", "x"), pattern])
    assert matchers.match(target("www.example.com")) == pattern
    assert matchers.match(target("example.org")) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.example.com", "www.example.com"),
        ("a.example.com", ".example.com"),
        ("a.other.com", ".com"),
        ("x.cdn.example.com", ".example.com"),
    ],
)
def test_the_most_specific_name_pattern_is_reported(host: str, expected: str) -> None:
    matchers = compiled(".com", "*.example.com", ".example.com", "www.example.com", "*.cdn.example.com")
    assert matched_text(matchers, target(host)) == expected


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("10.1.9.9", "10.1.0.0/16"),
        ("10.1.0.5", "10.1.0.0-10.1.0.10"),
        ("10.9.9.9", "10.0.0.0/8"),
        ("11.0.0.0", None),
    ],
)
def test_the_narrowest_ip_pattern_is_reported(ip: str, expected: str | None) -> None:
    matchers = compiled("10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "10.1.0.0-10.1.0.10")
    assert matched_text(matchers, target(ip=ip)) == expected


def test_an_ip_pattern_is_reported_before_a_name_pattern() -> None:
    matchers = compiled("example.com", "192.0.2.0/24")
    assert matched_text(matchers, target("example.com", ip="192.0.2.1")) == "192.0.2.0/24"
    assert matched_text(matchers, target("example.com", ip="198.51.100.1")) == "example.com"


def test_entries_of_one_name_keep_their_own_ports() -> None:
    matchers = compiled("example.com:443", "example.com:80", "*.example.com:8000-8100", "*.example.com:53")
    assert matched_text(matchers, target("example.com", port=80)) == "example.com:80"
    assert matched_text(matchers, target("example.com", port=443)) == "example.com:443"
    assert matched_text(matchers, target("example.com", port=8080)) is None
    assert matched_text(matchers, target("a.example.com", port=53)) == "*.example.com:53"
    assert matched_text(matchers, target("a.example.com", port=8050)) == "*.example.com:8000-8100"


def test_wildcards_without_a_literal_suffix_are_still_found() -> None:
    matchers = compiled("*cdn*", "api.*", "10.1.*", "???")
    assert matched_text(matchers, target("static.cdn77.org")) == "*cdn*"
    assert matched_text(matchers, target("api.example.org")) == "api.*"
    assert matched_text(matchers, target(ip="10.1.200.3")) == "10.1.*"
    assert matched_text(matchers, target("abc")) == "???"
    assert matched_text(matchers, target("example.org")) is None
    assert matched_text(matchers, target(ip="10.2.0.1")) is None


def test_overlapping_ranges_and_cidrs_cover_their_union() -> None:
    matchers = compiled("10.0.0.0-10.0.0.100", "10.0.0.50-10.0.1.20", "10.0.1.0/30", "2001:db8::/126")
    base = int(IPv4Address("10.0.0.0"))
    hits = [n for n in range(512) if matchers.match(Target(None, IPv4Address(base + n), 1)) is not None]
    assert hits == list(range(277))  # 10.0.0.0 to 10.0.1.20
    assert matched_text(matchers, target(ip="2001:db8::3")) == "2001:db8::/126"
    assert matched_text(matchers, target(ip="2001:db8::4")) is None


def test_a_pathological_glob_answers_at_once() -> None:
    # A backtracking translation of this glob takes minutes on a 250-character name.
    matchers = compiled("*a*a*a*a*a*a*a*b")
    assert matchers.match(target("a" * 250)) is None
    assert matched_text(matchers, target("a" * 250 + "b")) == "*a*a*a*a*a*a*a*b"


# gobwas/glob's own vectors (glob_test.go, v0.2.3) that have a "*" or "?" and no separators, with
# spaces and slashes (which no host has) spelt "-".
GOBWAS_VECTORS = [
    (True, "a*c", "abc"),
    (True, "a*c", "a12345c"),
    (True, "a?c", "a1c"),
    (True, "?at", "cat"),
    (False, "?at", "at"),
    (True, "*", "abc"),
    (True, "**", "a.b.c"),
    (True, "a.*", "a.b.c"),
    (True, "a.?.c", "a.b.c"),
    (False, "a.?.c", "a.bb.c"),
    (True, "*test", "this-is-a-test"),
    (True, "this*", "this-is-a-test"),
    (True, "*is-*", "this-is-a-test"),
    (True, "*is*a*", "this-is-a-test"),
    (True, "**test**", "this-is-a-test"),
    (True, "**is**a***test*", "this-is-a-test"),
    (False, "*is", "this-is-a-test"),
    (False, "*no*", "this-is-a-test"),
    (True, "[!a]*", "this-is-a-test3"),
    (True, "*abc", "abcabc"),
    (True, "**abc", "abcabc"),
    (True, "???", "abc"),
    (True, "?*?", "abc"),
    (True, "?*?", "ac"),
    (True, "sta*", "stagnation"),
    (False, "sta?", "stagnation"),
    (False, "sta?n", "stagnation"),
    (True, "{*,**}{a,b}", "ab"),
    (False, "{*,**}{a,b}", "ac"),
    (True, "-{rate,[a-z][a-z][a-z]}*", "-rate"),
    (True, "-{rate,[0-9][0-9][0-9]}*", "-rate"),
    (True, "-{rate,[a-z][a-z][a-z]}*", "-usd"),
    (True, "{*.google.*,*.yandex.*}", "www.google.com"),
    (True, "{*.google.*,*.yandex.*}", "www.yandex.com"),
    (False, "{*.google.*,*.yandex.*}", "yandex.com"),
    (False, "{*.google.*,*.yandex.*}", "google.com"),
    (True, "{*.google.*,yandex.*}", "www.google.com"),
    (True, "{*.google.*,yandex.*}", "yandex.com"),
    (False, "{*.google.*,yandex.*}", "www.yandex.com"),
    (False, "{*.google.*,yandex.*}", "google.com"),
    (True, "*--{,*.}example.com", "https--www.example.com"),
    (True, "*--{,*.}example.com", "http--example.com"),
    (False, "*--{,*.}example.com", "http--example.com.net"),
]


@pytest.mark.parametrize(("should", "glob", "name"), GOBWAS_VECTORS)
def test_gobwas_vectors(should: bool, glob: str, name: str) -> None:
    assert (compiled(glob).match(target(name)) is not None) is should


@pytest.mark.parametrize(
    ("glob", "name", "should"),
    [
        ("*ab*b", "ab", False),
        ("*ab*b", "abb", True),
        ("a*a", "a", False),
        ("a*a", "aa", True),
        ("*.a.*.a", "x.a.a", False),
        ("*.a.*.a", "x.a..a", True),
        ("a*b*c", "acb", False),
    ],
)
def test_a_character_serves_one_part_of_a_glob_only(glob: str, name: str, should: bool) -> None:
    assert (compiled(glob).match(target(name)) is not None) is should


def test_len_counts_the_compiled_patterns() -> None:
    matchers, problems = MatcherSet.compile(
        [Pattern("example.com"), Pattern("example.com"), Pattern("bad name"), Pattern("10.0.0.0/8")]
    )
    assert len(matchers) == 3
    assert len(problems) == 1


# --- problems -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty pattern"),
        ("   ", "empty pattern"),
        ("exa mple.com", "neither an IP address nor a host name"),
        ("exa$mple.com", "neither an IP address nor a host name"),
        ("a..b.com", "neither an IP address nor a host name"),
        ("a" * 64 + ".com", "neither an IP address nor a host name"),
        ("a." * 127 + "com", "at most 253 characters"),
        ("1.2.3", "its last label is a number"),
        (".", "no host name"),
        ("a" * 1025, "longer than 1024 characters"),
        ("example.com:99999", "out of range 0-65535"),
        ("example.com:90-80", "ends before it starts"),
        ("example.com:http", "bad port 'http'"),
        ("example.com:-80", "bad port '-80'"),
        ("example.com:", "empty port"),
        (":80", "no host name"),
        ("a::b::c", "too many colons"),
        ("[example.com]:80", "make a wildcard only with a * or ?"),
        ("[ab].com", "make a wildcard only with a * or ?"),
        ("{a,b}.com", "make a wildcard only with a * or ?"),
        ("[::1]x", "only :port may follow"),
        ("[::1]:65536", "out of range"),
        ("fe80::1%eth0", "IPv6 zone"),
        ("10.0.0.9-10.0.0.1", "ends before it starts"),
        ("10.0.0.1-2001:db8::1", "may not mix IPv4 and IPv6"),
        ("10.0.0.1-foo", "'foo' is no IP address"),
        ("10.0.0.1-10.0.0.2-10.0.0.3", "FIRST-LAST"),
        ("10.0.0.0/33", "longer than the address"),
        ("2001:db8::/129", "longer than the address"),
        ("10.0.0.0/x", "prefix length 'x'"),
        ("example.com/24", "'example.com' is no IP address"),
        ("10.0.0.0/8:80", "a CIDR takes no port"),
        ("*.[ab.com", "unbalanced ["),
        ("*.[a-bc].com", "unbalanced ["),
        ("[]*.com", "empty class"),
        ("[b-a]*.com", "ends before it starts"),
        ("{a,b*.com", "unbalanced {"),
        ("*.a.com]", "unbalanced ]"),
        ("*}.com", "outside {...}"),
        ("*,x.com", "outside {...}"),
        ("*/24", "'/' cannot appear in a host name"),
        ("*.a.com:8*", "bad port '8*'"),
        ("*.a.com:70000", "out of range"),
        ("[2001:db8::*]x", "only :port may follow"),
        ("*:", "bad port ''"),
    ],
)
def test_invalid_patterns_are_problems_and_the_rest_compiles(text: str, reason: str) -> None:
    bad = Pattern(text, "/etc/tungo/bypass.txt:7")
    matchers, problems = MatcherSet.compile([Pattern("keep.example", "inline"), bad])
    assert len(problems) == 1
    assert problems[0].pattern == bad
    assert reason in problems[0].reason
    assert len(matchers) == 1
    assert matched_text(matchers, target("keep.example")) == "keep.example"


def test_problem_reads_as_one_log_line() -> None:
    problem = Problem(Pattern("a b", "/etc/x.txt:12"), "neither an IP address nor a host name")
    assert str(problem) == '/etc/x.txt:12: bad pattern "a b": neither an IP address nor a host name'
    assert str(Problem(Pattern("a b"), "why")) == 'bad pattern "a b": why'
    long = str(Problem(Pattern("x" * 2000, "o"), "why"))
    assert long == f'o: bad pattern "{"x" * 77}...": why'


def test_parse_lines_follows_gosts_file_format() -> None:
    text = "# header\nexample.com\n\n  .example.org  # a comment\n\t\r\n10.0.0.0/8\r\n#only\n*.a.com#x\n"
    assert parse_lines(text, "/etc/tungo/bypass.txt") == [
        Pattern("example.com", "/etc/tungo/bypass.txt:2"),
        Pattern(".example.org", "/etc/tungo/bypass.txt:4"),
        Pattern("10.0.0.0/8", "/etc/tungo/bypass.txt:6"),
        Pattern("*.a.com", "/etc/tungo/bypass.txt:8"),
    ]
    assert parse_lines("", "f") == []
    assert parse_lines("# nothing\n\n", "f") == []


# --- properties: the index agrees with a plain scan of the same patterns ------------------------------

LABELS = st.sampled_from(["a", "b", "ab", "c0", "x-y"])
NAMES = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
PORTS = st.sampled_from([None, (80, 80), (443, 443), (80, 443)])


def _name_rule(kind: str, base: str, ports: tuple[int, int] | None, host: str, port: int) -> bool:
    if ports is not None and not ports[0] <= port <= ports[1]:
        return False
    return host == base or (kind == "suffix" and host.endswith("." + base))


def _port_text(ports: tuple[int, int] | None) -> str:
    if ports is None:
        return ""
    return f":{ports[0]}" if ports[0] == ports[1] else f":{ports[0]}-{ports[1]}"


@settings(max_examples=200, deadline=None)
@given(
    rules=st.lists(st.tuples(st.sampled_from(["exact", "suffix"]), NAMES, PORTS), max_size=8),
    host=NAMES,
    port=st.sampled_from([80, 443, 8080]),
    upper=st.booleans(),
    dot=st.booleans(),
)
def test_name_index_agrees_with_a_scan(
    rules: list[tuple[str, str, tuple[int, int] | None]], host: str, port: int, upper: bool, dot: bool
) -> None:
    texts = [("." if kind == "suffix" else "") + base + _port_text(ports) for kind, base, ports in rules]
    matchers = compiled(*texts)
    expected = {text for text, rule in zip(texts, rules, strict=True) if _name_rule(*rule, host, port)}
    flow = Target(host=(host.upper() if upper else host) + ("." if dot else ""), ip=None, port=port)
    found = matchers.match(flow)
    assert (found is not None) == bool(expected)
    assert found is None or found.text in expected


V4_BASE = int(IPv4Address("10.0.0.0"))
V6_BASE = int(IPv6Address("2001:db8::"))


@st.composite
def ip_rules(draw: st.DrawFn, family: int) -> tuple[str, int, int]:
    """``(pattern text, first, last)`` over a small block, so rules overlap and targets hit them."""
    base, width = (V4_BASE, 32) if family == 4 else (V6_BASE, 128)
    make = IPv4Address if family == 4 else IPv6Address
    kind = draw(st.sampled_from(["cidr", "range", "ip"]))
    first = base + draw(st.integers(0, 1023))
    if kind == "cidr":
        prefix = draw(st.integers(width - 10, width))
        first = first >> (width - prefix) << (width - prefix)
        return f"{make(first)}/{prefix}", first, first + (1 << (width - prefix)) - 1
    if kind == "range":
        last = first + draw(st.integers(0, 200))
        return f"{make(first)}-{make(last)}", first, last
    return str(make(first)), first, first


@settings(max_examples=200, deadline=None)
@given(data=st.data(), family=st.sampled_from([4, 6]), offset=st.integers(0, 1300), mapped=st.booleans())
def test_ip_index_agrees_with_a_scan(data: st.DataObject, family: int, offset: int, mapped: bool) -> None:
    rules = data.draw(st.lists(ip_rules(family), max_size=8))
    matchers = compiled(*(text for text, _, _ in rules))
    value = (V4_BASE if family == 4 else V6_BASE) + offset
    address: IPv4Address | IPv6Address = IPv4Address(value) if family == 4 else IPv6Address(value)
    if family == 4 and mapped:
        address = IPv6Address((0xFFFF << 32) | value)
    expected = {text for text, first, last in rules if first <= value <= last}
    found = matchers.match(Target(host=None, ip=address, port=80))
    assert (found is not None) == bool(expected)
    assert found is None or found.text in expected


GLOB_NAMES = st.lists(st.text("ab", min_size=1, max_size=3), min_size=1, max_size=4).map(".".join)
GLOBS = st.text("ab.*?", min_size=1, max_size=8).filter(lambda text: "*" in text or "?" in text)


@settings(max_examples=200, deadline=None)
@given(globs=st.lists(GLOBS, min_size=1, max_size=5), name=GLOB_NAMES)
def test_globs_agree_with_fnmatch(globs: list[str], name: str) -> None:
    # fnmatch has gobwas's meaning of "*" and "?" when there are no separators: any run, any character.
    matchers = compiled(*globs)
    expected = {glob for glob in globs if fnmatch.fnmatchcase(name, glob)}
    found = matchers.match(Target(host=name, ip=None, port=80))
    assert (found is not None) == bool(expected)
    assert found is None or found.text in expected


OCTETS = st.sampled_from([n for n in range(256) if set(str(n)) <= set("0129")])
V4_GLOBS = st.text("0129.*?", min_size=1, max_size=9).filter(lambda text: "*" in text or "?" in text)


@settings(max_examples=200, deadline=None)
@given(globs=st.lists(V4_GLOBS, min_size=1, max_size=5), octets=st.lists(OCTETS, min_size=4, max_size=4))
def test_globs_on_an_ipv4_address_agree_with_fnmatch(globs: list[str], octets: list[int]) -> None:
    address = IPv4Address(".".join(map(str, octets)))
    matchers = compiled(*globs)
    expected = {glob for glob in globs if fnmatch.fnmatchcase(str(address), glob)}
    found = matchers.match(Target(host=None, ip=address, port=80))
    assert (found is not None) == bool(expected)
    assert found is None or found.text in expected


WORDS = st.lists(st.one_of(st.just(0), st.integers(0, 0xFFFF)), min_size=8, max_size=8)


@settings(max_examples=100, deadline=None)
@given(words=WORDS)
def test_a_glob_sees_an_ipv6_address_as_python_and_go_spell_it(words: list[int]) -> None:
    value = sum(word << (16 * (7 - index)) for index, word in enumerate(words))
    address = IPv6Address(value)
    assume(address.ipv4_mapped is None)  # an IPv4 flow: its text is the IPv4 one
    text = str(address)  # RFC 5952, which Go's netip also follows
    assume(text != "::")  # every glob of it ("?:", ":?") has one colon: a port
    # Keep both colons of a trailing "::" ("1:?" would be host "1", port "?", as in GOST).
    glob = "?" + text[1:] if text.endswith("::") else text[:-1] + "?"
    matchers = compiled(glob)
    assert matched_text(matchers, Target(host=None, ip=address, port=80)) == glob
