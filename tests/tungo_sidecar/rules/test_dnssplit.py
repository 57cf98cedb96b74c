"""Split DNS decisions: which query names go to the local servers (label-wise suffixes, reverse zones)."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from tungo_sidecar.rules.dnssplit import DnsSplit

SPLIT = DnsSplit(
    ["cluster.local", "corp.example"], [ip_network("10.96.0.0/12"), ip_network("fd00:10:96::/112")]
)


def labels(name: str) -> tuple[bytes, ...]:
    return tuple(label.encode() for label in name.split(".") if label)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("cluster.local", "under cluster.local"),
        ("x.svc.cluster.local", "under cluster.local"),
        ("db.corp.example", "under corp.example"),
        ("10.0.96.10.in-addr.arpa", "reverse lookup in 10.96.0.0/12"),
        ("111.10.in-addr.arpa", "reverse lookup in 10.96.0.0/12"),  # 10.111.0.0/16 is inside /12
        (
            "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa",
            "reverse lookup in fd00:10:96::/112",
        ),
        ("evilcluster.local", None),
        ("cluster.local.evil.test", None),
        ("local", None),
        ("example.com", None),
        ("10.in-addr.arpa", None),  # 10.0.0.0/8 is wider than the local /12
        ("1.1.1.1.in-addr.arpa", None),
        ("", None),
    ],
)
def test_local_names(name: str, reason: str | None) -> None:
    assert SPLIT.local(labels(name)) == reason


def test_an_empty_split_sends_nothing_local() -> None:
    empty = DnsSplit()
    assert not empty and SPLIT
    assert empty.local(labels("x.cluster.local")) is None
