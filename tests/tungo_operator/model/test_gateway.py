"""parse_gateway: the CRD's defaults, every option, bad input with a message naming the field, and
the label-selector matcher."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tungo_operator.model.errors import SpecError
from tungo_operator.model.gateway import (
    DEFAULT_EXCLUDED_CIDRS,
    LabelSelector,
    Requirement,
    Sniffing,
    Tun,
    parse_gateway,
    parse_label_selector,
)

BASE: dict[str, Any] = {
    "metadata": {"name": "gw", "namespace": "demo"},
    "spec": {"chainRef": {"name": "egress"}},
}


def with_spec(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["spec"].update(spec)
    return doc


def test_minimal_gateway_gets_gost_defaults() -> None:
    gw = parse_gateway(BASE)
    assert (gw.namespace, gw.name, gw.chain) == ("demo", "gw", "egress")
    assert gw.tun == Tun(name="tungo", net="192.168.123.1/24", mtu=1420, routes=("0.0.0.0/0",))
    assert gw.handler.udp_timeout == "30s"
    assert gw.handler.sniffing == Sniffing()
    assert gw.excluded_cidrs == DEFAULT_EXCLUDED_CIDRS == ()  # the cluster's ranges are discovered
    assert gw.cluster_exclusions is True
    assert gw.bypass is None and gw.interface is None and gw.namespace_selector is None
    assert gw.pod_selector.matches({"anything": "x"})


def test_full_gateway() -> None:
    gw = parse_gateway(
        with_spec(
            tun={
                "name": "tun0",
                "net": "fd00::1/64",
                "mtu": 9000,
                "dns": ["1.1.1.1", "2606:4700:4700::1111"],
                "routes": ["0.0.0.0/0", "::/0"],
                "gw": "192.168.123.2",
                "postUp": ["echo up"],
                "postDown": ["echo down"],
            },
            handler={
                "udpTimeout": "1m",
                "sniffing": {"enabled": True, "udp": True, "timeout": "2s", "fallback": True},
            },
            interface="eth0",
            bypass={"matchers": ["10.1.0.0/16"]},
            excludedCIDRs=["10.0.0.0/8"],
            clusterExclusions=False,
            podSelector={"matchLabels": {"app": "web"}},
            namespaceSelector={"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]},
        )
    )
    assert gw.tun.net == "fd00::1/64" and gw.tun.mtu == 9000 and gw.tun.routes == ("0.0.0.0/0", "::/0")
    assert gw.tun.dns == ("1.1.1.1", "2606:4700:4700::1111")
    assert gw.handler.sniffing == Sniffing(True, True, "2s", True)
    assert gw.excluded_cidrs == ("10.0.0.0/8",) and gw.cluster_exclusions is False
    assert gw.namespace_selector == LabelSelector((), (Requirement("team", "In", ("a", "b")),))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"chainRef": None}, "spec.chainRef: required"),
        ({"chainRef": "egress"}, "spec.chainRef: expected an object, got string"),
        ({"tun": {"mtu": "1420"}}, "spec.tun.mtu: expected an integer, got string '1420'"),
        ({"tun": {"mtu": 100}}, "spec.tun.mtu: 100 is out of range [576, 65535]"),
        ({"tun": {"mtu": True}}, "spec.tun.mtu: expected an integer, got boolean"),
        (
            {"tun": {"name": "a-very-long-interface"}},
            "spec.tun.name: 'a-very-long-interface' is not an interface name",
        ),
        ({"tun": {"net": "192.168.123.0/24"}}, "is the network address, not a usable TUN address"),
        ({"tun": {"net": "192.168.123.1"}}, "spec.tun.net: '192.168.123.1' is not an address/prefix"),
        ({"tun": {"net": "300.1.1.1/24"}}, "spec.tun.net: '300.1.1.1/24' is not an address/prefix"),
        ({"tun": {"routes": ["0.0.0.0/33"]}}, "spec.tun.routes[0]: '0.0.0.0/33' is not a CIDR"),
        ({"tun": {"dns": ["dns.google"]}}, "spec.tun.dns[0]: 'dns.google' is not an IP address"),
        (
            {"excludedCIDRs": ["10.96.0.1/12"]},
            "spec.excludedCIDRs[0]: '10.96.0.1/12' has host bits set (did you mean 10.96.0.0/12?)",
        ),
        ({"excludedCIDRs": ["10.96.0.0"]}, "spec.excludedCIDRs[0]: '10.96.0.0' is not a CIDR"),
        ({"excludedCIDRs": ["banana/8"]}, "spec.excludedCIDRs[0]: 'banana/8' is not a CIDR"),
        ({"excludedCIDRs": "10.0.0.0/8"}, "spec.excludedCIDRs: expected a list of strings, got string"),
        ({"clusterExclusions": "no"}, "spec.clusterExclusions: expected true or false, got string 'no'"),
        ({"handler": {"udpTimeout": 30}}, "spec.handler.udpTimeout: expected a string, got integer 30"),
        ({"handler": {"udpTimeout": "30 seconds"}}, "is not a duration like 30s"),
        (
            {"handler": {"sniffing": {"udp": True}}},
            "spec.handler.sniffing.udp: sniffing.udp needs sniffing.enabled",
        ),
        ({"interface": "eth 0"}, "spec.interface: 'eth 0' is not an interface name"),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals"}]}},
            "operator: unknown value 'Equals'",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "operator In needs at least one value",
        ),
        ({"chainref": {"name": "x"}}, "spec.chainref: unknown field"),
    ],
)
def test_bad_gateway_is_rejected_with_the_field_path(spec: dict[str, Any], message: str) -> None:
    doc = copy.deepcopy(BASE)
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key)
        else:
            doc["spec"][key] = value
    with pytest.raises(SpecError) as info:
        parse_gateway(doc)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
        # Empty label values are valid in Kubernetes, in matchLabels and in expression values alike.
        ({"matchLabels": {"a": ""}}, {"a": ""}, True),
        ({"matchLabels": {"a": ""}}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": [""]}]}, {"a": ""}, True),
    ],
)
def test_label_selector(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector, "sel").matches(labels) is expected


def test_label_selector_values_longer_than_a_label_value_are_refused() -> None:
    with pytest.raises(SpecError, match=r"sel.matchLabels.a: longer than 63 characters"):
        parse_label_selector({"matchLabels": {"a": "v" * 64}}, "sel")


def test_gateway_name_must_fit_a_label_and_the_secret_name() -> None:
    doc = copy.deepcopy(BASE)
    doc["metadata"]["name"] = "g" * 57
    assert parse_gateway(doc).name == "g" * 57
    doc["metadata"]["name"] = "g" * 58
    with pytest.raises(SpecError, match=r"metadata\.name: 'g{58}' is longer than 57 characters"):
        parse_gateway(doc)
