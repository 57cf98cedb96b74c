"""The address -> name map: TTL clamping and expiry on a fake clock, LRU order, the capacity bound."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tungo_sidecar.proto.dns import DnsAnswer
from tungo_sidecar.rules.dnsmap import DEFAULT_MAX_TTL, DEFAULT_MIN_TTL, DnsMap


def answer(name: str, *entries: tuple[str, int]) -> DnsAnswer:
    return DnsAnswer(name, tuple((ip_address(ip), ttl) for ip, ttl in entries))


def test_learn_and_lookup() -> None:
    names = DnsMap()
    assert names.learn(answer("a.example", ("192.0.2.1", 300), ("2001:db8::1", 300)), now=0.0) == 2
    assert len(names) == 2
    assert names.lookup(IPv4Address("192.0.2.1"), now=1.0) == "a.example"
    assert names.lookup(IPv6Address("2001:db8::1"), now=1.0) == "a.example"
    assert names.lookup(IPv4Address("192.0.2.2"), now=1.0) is None


def test_ttl_is_clamped() -> None:
    names = DnsMap(min_ttl=60, max_ttl=3600)
    names.learn(answer("zero.example", ("192.0.2.1", 0)), now=100.0)
    names.learn(answer("huge.example", ("192.0.2.2", 0x7FFFFFFF)), now=100.0)
    names.learn(answer("mid.example", ("192.0.2.3", 600)), now=100.0)
    # TTL 0 still names the flow that follows the lookup: it lives min_ttl.
    assert names.lookup(IPv4Address("192.0.2.1"), now=159.9) == "zero.example"
    assert names.lookup(IPv4Address("192.0.2.1"), now=160.0) is None
    assert names.lookup(IPv4Address("192.0.2.3"), now=699.9) == "mid.example"
    assert names.lookup(IPv4Address("192.0.2.3"), now=700.0) is None
    assert names.lookup(IPv4Address("192.0.2.2"), now=3699.9) == "huge.example"
    assert names.lookup(IPv4Address("192.0.2.2"), now=3700.0) is None
    assert len(names) == 0  # expired entries are dropped when looked up


def test_defaults() -> None:
    assert (DEFAULT_MIN_TTL, DEFAULT_MAX_TTL) == (60.0, 86400.0)
    names = DnsMap()
    assert names.capacity == 65536
    names.learn(answer("d.example", ("192.0.2.1", 10**9)), now=0.0)
    assert names.lookup(IPv4Address("192.0.2.1"), now=86399.0) == "d.example"
    assert names.lookup(IPv4Address("192.0.2.1"), now=86400.0) is None


def test_a_later_answer_refreshes_and_wins() -> None:
    names = DnsMap()
    names.learn(answer("first.example", ("192.0.2.1", 60)), now=0.0)
    names.learn(answer("second.example", ("192.0.2.1", 600)), now=30.0)
    assert names.lookup(IPv4Address("192.0.2.1"), now=100.0) == "second.example"
    assert len(names) == 1
    # Back to the first name with a short TTL: the latest answer wins, expiry included.
    names.learn(answer("first.example", ("192.0.2.1", 60)), now=200.0)
    assert names.lookup(IPv4Address("192.0.2.1"), now=259.0) == "first.example"
    assert names.lookup(IPv4Address("192.0.2.1"), now=260.0) is None


def test_ipv4_mapped_ipv6_is_ipv4() -> None:
    names = DnsMap()
    names.learn(answer("v4.example", ("192.0.2.1", 300)), now=0.0)
    assert names.lookup(IPv6Address("::ffff:192.0.2.1"), now=1.0) == "v4.example"
    names.learn(answer("mapped.example", ("::ffff:192.0.2.2", 300)), now=0.0)
    assert names.lookup(IPv4Address("192.0.2.2"), now=1.0) == "mapped.example"
    assert len(names) == 2
    # Not every IPv6 address that embeds an IPv4 one is mapped (NAT64 stays IPv6).
    assert names.lookup(IPv6Address("64:ff9b::192.0.2.1"), now=1.0) is None


def test_lru_eviction_order() -> None:
    names = DnsMap(capacity=3)
    for i in range(1, 4):
        names.learn(answer(f"n{i}.example", (f"192.0.2.{i}", 300)), now=float(i))
    assert names.lookup(IPv4Address("192.0.2.1"), now=5.0) == "n1.example"  # 1 is now the most recent
    names.learn(answer("n4.example", ("192.0.2.4", 300)), now=6.0)  # evicts 2, the least recently used
    assert len(names) == 3
    assert names.lookup(IPv4Address("192.0.2.2"), now=7.0) is None
    names.learn(answer("n3.example", ("192.0.2.3", 300)), now=8.0)  # a refresh counts as a use
    names.learn(answer("n5.example", ("192.0.2.5", 300)), now=9.0)  # evicts 1
    assert [names.lookup(IPv4Address(f"192.0.2.{i}"), now=10.0) for i in range(1, 6)] == [
        None,
        None,
        "n3.example",
        "n4.example",
        "n5.example",
    ]


def test_one_answer_larger_than_the_map() -> None:
    names = DnsMap(capacity=2)
    many = answer("rr.example", *((f"198.51.100.{i}", 300) for i in range(10)))
    assert names.learn(many, now=0.0) == 10
    assert len(names) == 2
    assert names.lookup(IPv4Address("198.51.100.9"), now=0.0) == "rr.example"
    assert names.lookup(IPv4Address("198.51.100.0"), now=0.0) is None


def test_constructor_validation() -> None:
    for bad in ({"capacity": 0}, {"min_ttl": -1.0}, {"min_ttl": 10.0, "max_ttl": 5.0}):
        with pytest.raises(ValueError):
            DnsMap(**bad)
    assert DnsMap(min_ttl=0, max_ttl=0).learn(answer("x.example", ("192.0.2.1", 5)), now=0.0) == 1


_ips = st.one_of(
    st.integers(0, 31).map(lambda i: IPv4Address(f"10.0.0.{i}")),
    st.integers(0, 31).map(lambda i: IPv6Address(f"::ffff:10.0.0.{i}")),
    st.integers(0, 31).map(lambda i: IPv6Address(f"2001:db8::{i}")),
)
_steps = st.lists(
    st.tuples(
        st.booleans(),
        st.sampled_from(["a.example", "b.example"]),
        _ips,
        st.integers(0, 200),
        st.floats(0, 50),
    ),
    max_size=60,
)


@given(st.integers(1, 16), _steps)
@settings(max_examples=300, deadline=None)
def test_matches_a_simple_model(
    capacity: int, steps: list[tuple[bool, str, IPv4Address | IPv6Address, int, float]]
) -> None:
    """Against a list kept in LRU order by brute force: same answers, never over capacity."""
    names = DnsMap(capacity, min_ttl=10, max_ttl=100)
    model: list[tuple[IPv4Address | IPv6Address, str, float]] = []  # least recently used first
    now = 0.0
    for is_learn, name, ip, ttl, advance in steps:
        now += advance
        key = ip.ipv4_mapped if isinstance(ip, IPv6Address) and ip.ipv4_mapped else ip
        found = next((entry for entry in model if entry[0] == key), None)
        if is_learn:
            assert names.learn(DnsAnswer(name, ((ip, ttl),)), now) == 1
            if found:
                model.remove(found)
            model.append((key, name, now + min(max(ttl, 10), 100)))
            model = model[-capacity:]
        else:
            expected = None
            if found and now < found[2]:
                expected = found[1]
                model.remove(found)
                model.append(found)
            elif found:
                model.remove(found)
            assert names.lookup(ip, now) == expected
        assert len(names) == len(model) <= capacity
