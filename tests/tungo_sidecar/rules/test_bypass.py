from __future__ import annotations

import dataclasses
from ipaddress import ip_address

import pytest

from tungo_sidecar.rules.bypass import Bypass, Verdict, compile_bypass
from tungo_sidecar.rules.matchers import Pattern, Target


def target(host: str | None = None, ip: str | None = None, port: int = 80) -> Target:
    return Target(host=host, ip=None if ip is None else ip_address(ip), port=port)


def bypass_of(patterns: list[str], *, reverse: bool = False) -> Bypass:
    compiled, problems = compile_bypass("b", [Pattern(text) for text in patterns], reverse=reverse)
    assert problems == []
    return compiled


# (patterns, reverse, target, bypass): GOST's localBypass semantics, row by row.
GOST_TABLE = [
    # exact names: that name only, any case, a trailing dot on either side ignored
    (["example.com"], False, target("example.com"), True),
    (["example.com"], False, target("www.example.com"), False),
    (["example.com"], False, target("xexample.com"), False),
    (["Example.COM"], False, target("EXAMPLE.com"), True),
    (["example.com"], False, target("example.com."), True),
    (["example.com."], False, target("Example.Com"), True),
    # ".suffix": the name itself and every subdomain, nothing else
    ([".example.com"], False, target("example.com"), True),
    ([".example.com"], False, target("a.b.example.com"), True),
    ([".example.com"], False, target("notexample.com"), False),
    ([".example.com"], False, target("example.com.evil.org"), False),
    ([".EXAMPLE.com"], False, target("WWW.example.COM."), True),
    # gobwas globs: "*" is any run of characters, dots included; "?" one character
    (["*.example.com"], False, target("www.example.com"), True),
    (["*.example.com"], False, target("example.com"), False),
    (["*.example.com"], False, target("a.b.example.com"), True),
    (["*example.com"], False, target("a.b.example.com"), True),
    (["*example.com"], False, target("example.com"), True),
    (["*example.com"], False, target("badexample.com"), True),
    (["*example.com"], False, target("example.com.org"), False),
    (["www.*"], False, target("www.a.b"), True),
    (["www.*"], False, target("awww.a"), False),
    (["img-?.example.com"], False, target("img-1.example.com"), True),
    (["img-?.example.com"], False, target("img-12.example.com"), False),
    (["img-??.cdn.example.com"], False, target("IMG-12.cdn.example.com"), True),
    (["*.ex?mple.com"], False, target("a.exemple.com"), True),
    (["[ab]*.example.com"], False, target("a1.example.com"), True),
    (["[ab]*.example.com"], False, target("c1.example.com"), False),
    (["[!ab]*.example.com"], False, target("c1.example.com"), True),
    (["[!ab]*.example.com"], False, target("a1.example.com"), False),
    (["[a-c]*.example.com"], False, target("b.example.com"), True),
    (["[a-c]*.example.com"], False, target("d.example.com"), False),
    (["{api,www}.*.com"], False, target("api.x.com"), True),
    (["{api,www}.*.com"], False, target("web.x.com"), False),
    (["{a,b{c,d}}*.com"], False, target("bd1.com"), True),
    (["{a,b{c,d}}*.com"], False, target("b1.com"), False),
    (["{,www.}example.*"], False, target("example.org"), True),
    (["{,www.}example.*"], False, target("www.example.org"), True),
    (["**.example.com"], False, target("a.b.example.com"), True),
    (["*\\.example.com"], False, target("a.example.com"), True),
    (["*a*a*b"], False, target("xxaxxaxxb"), True),
    (["*a*a*b"], False, target("aba"), False),
    # ports: a pattern without one matches every port
    (["example.com"], False, target("example.com", port=1), True),
    (["example.com:443"], False, target("example.com", port=443), True),
    (["example.com:443"], False, target("example.com", port=80), False),
    (["example.com:80-90"], False, target("example.com", port=80), True),
    (["example.com:80-90"], False, target("example.com", port=90), True),
    (["example.com:80-90"], False, target("example.com", port=91), False),
    ([".example.com:443"], False, target("a.example.com", port=443), True),
    ([".example.com:443"], False, target("a.example.com", port=80), False),
    (["*.example.com:443"], False, target("www.example.com", port=443), True),
    (["*.example.com:443"], False, target("www.example.com", port=80), False),
    (["*.example.com:400-500"], False, target("www.example.com", port=450), True),
    (["*:53"], False, target(ip="10.0.0.1", port=53), True),
    (["*:53"], False, target("example.com", port=54), False),
    # exact IPs, compared by value; IPv4-mapped IPv6 is IPv4 on either side
    (["10.0.0.1"], False, target(ip="10.0.0.1"), True),
    (["10.0.0.1"], False, target(ip="10.0.0.2"), False),
    (["2001:db8::1"], False, target(ip="2001:db8:0:0:0:0:0:1"), True),
    (["2001:DB8::1"], False, target(ip="2001:db8::1"), True),
    (["10.0.0.1"], False, target(ip="::ffff:10.0.0.1"), True),
    (["::ffff:10.0.0.1"], False, target(ip="10.0.0.1"), True),
    (["10.0.0.1:53"], False, target(ip="10.0.0.1", port=53), True),
    (["10.0.0.1:53"], False, target(ip="10.0.0.1", port=54), False),
    (["[2001:db8::1]:53"], False, target(ip="2001:db8::1", port=53), True),
    (["[2001:db8::1]:53"], False, target(ip="2001:db8::1", port=54), False),
    (["[2001:db8::1]"], False, target(ip="2001:db8::1", port=54), True),
    # CIDRs (host bits ignored, as Go's ParseCIDR does)
    (["192.168.0.0/16"], False, target(ip="192.168.3.4"), True),
    (["192.168.0.0/16"], False, target(ip="192.169.0.0"), False),
    (["192.168.1.1/24"], False, target(ip="192.168.1.200"), True),
    (["2001:db8::/32"], False, target(ip="2001:db8:ffff::1"), True),
    (["2001:db8::/32"], False, target(ip="2001:db9::1"), False),
    (["0.0.0.0/0"], False, target(ip="203.0.113.9"), True),
    (["0.0.0.0/0"], False, target(ip="2001:db8::1"), False),
    (["::/0"], False, target(ip="2001:db8::1"), True),
    (["::/0"], False, target(ip="203.0.113.9"), False),
    (["::ffff:10.0.0.0/104"], False, target(ip="10.1.2.3"), True),
    (["10.0.0.0/8"], False, target(ip="::ffff:10.1.2.3"), True),
    # IP ranges, both families, ends included
    (["10.0.0.5-10.0.0.10"], False, target(ip="10.0.0.5"), True),
    (["10.0.0.5-10.0.0.10"], False, target(ip="10.0.0.10"), True),
    (["10.0.0.5-10.0.0.10"], False, target(ip="10.0.0.11"), False),
    (["10.0.0.5-10.0.0.10"], False, target(ip="10.0.0.4"), False),
    (["10.0.0.5 - 10.0.0.10"], False, target(ip="10.0.0.7"), True),
    (["2001:db8::5-2001:db8::a"], False, target(ip="2001:db8::7"), True),
    (["2001:db8::5-2001:db8::a"], False, target(ip="2001:db8::b"), False),
    # wildcards see an IP's text when the flow has no name (GOST matches the whole address string)
    (["192.168.*"], False, target(ip="192.168.1.1"), True),
    (["192.168.*"], False, target(ip="192.169.1.1"), False),
    (["*.1"], False, target(ip="10.0.0.1"), True),
    (["2001:db8::*"], False, target(ip="2001:db8::1"), True),
    (["[2001:db8::*]:443"], False, target(ip="2001:db8::1", port=443), True),
    (["[2001:db8::*]:443"], False, target(ip="2001:db8::1", port=80), False),
    (["192.168.*"], False, target("example.com", ip="192.168.1.1"), False),
    # a name that is an IP literal is an IP
    (["10.0.0.0/8"], False, target("10.1.2.3"), True),
    (["10.0.0.1"], False, target("[::ffff:10.0.0.1]"), True),
    (["10.0.0.0/8"], False, target("10.1.2.3", ip="192.0.2.1"), True),
    # only one side known: the other side's patterns never match
    (["10.0.0.0/8", "10.0.0.1", "10.0.0.0-10.0.0.9"], False, target("example.com"), False),
    (["example.com", ".example.com", "*.example.com"], False, target(ip="93.184.216.34"), False),
    # both known: either side may match
    (["example.com"], False, target("example.com", ip="192.0.2.1"), True),
    (["192.0.2.0/24"], False, target("example.com", ip="192.0.2.1"), True),
    (["other.com", "198.51.100.1"], False, target("example.com", ip="192.0.2.1"), False),
    # whitelist (GOST's "whitelist", tungo's "reverse"): a match proxies, the rest bypasses
    (["example.com"], True, target("example.com"), False),
    (["example.com"], True, target("other.com"), True),
    (["10.0.0.0/8"], True, target(ip="10.0.0.1"), False),
    (["10.0.0.0/8"], True, target(ip="11.0.0.1"), True),
    (["example.com"], True, target("example.com", ip="192.0.2.1"), False),
    # no patterns at all: never bypass, even reversed
    ([], False, target("example.com", ip="192.0.2.1"), False),
    ([], True, target("example.com", ip="192.0.2.1"), False),
    ([], True, target(ip="192.0.2.1"), False),
]


@pytest.mark.parametrize(("patterns", "reverse", "flow", "expected"), GOST_TABLE)
def test_gost_decision_table(patterns: list[str], reverse: bool, flow: Target, expected: bool) -> None:
    verdict = bypass_of(patterns, reverse=reverse).check(flow)
    assert verdict.bypass is expected


def test_verdict_names_the_rule_and_the_pattern_with_its_origin() -> None:
    pattern = Pattern(".example.com", "bypass-0 matchers[1]")
    compiled, _ = compile_bypass(
        "bypass-0", [Pattern("10.0.0.0/8", "bypass-0 matchers[0]"), pattern], reverse=False
    )
    assert compiled.check(target("www.example.com")) == Verdict(bypass=True, pattern=pattern, rule="bypass-0")
    assert compiled.check(target("example.org")) == Verdict(bypass=False, pattern=None, rule="bypass-0")


def test_whitelist_verdict_keeps_the_pattern_that_kept_the_flow_on_the_chain() -> None:
    pattern = Pattern("*.corp.example", "f:3")
    compiled, _ = compile_bypass("wl", [pattern], reverse=True)
    assert compiled.check(target("git.corp.example")) == Verdict(bypass=False, pattern=pattern, rule="wl")
    assert compiled.check(target("example.org")) == Verdict(bypass=True, pattern=None, rule="wl")


def test_compile_bypass_reports_problems_and_keeps_the_rest() -> None:
    bad = Pattern("exa mple.com", "f:1")
    compiled, problems = compile_bypass("b", [bad, Pattern("example.com", "f:2")], reverse=False)
    assert [problem.pattern for problem in problems] == [bad]
    assert len(compiled.matchers) == 1
    assert compiled.check(target("example.com")).bypass


def test_a_whitelist_whose_every_pattern_is_invalid_is_empty_and_bypasses_nothing() -> None:
    # GOST would keep the lines as never-matching addresses and send every flow direct.
    compiled, problems = compile_bypass("wl", [Pattern("not a name"), Pattern("x.com:http")], reverse=True)
    assert len(problems) == 2
    assert len(compiled.matchers) == 0
    assert not compiled.check(target("example.com", ip="192.0.2.1")).bypass


def test_bypass_is_immutable() -> None:
    compiled = bypass_of(["example.com"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        compiled.reverse = True  # type: ignore[misc]
    assert compiled.name == "b"
    assert not compiled.reverse
