"""parse_chain: defaults as in the CRD, and every bad input rejected with a message naming the field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tungo_operator.model.chain import TLS, Auth, SecretKeyRef, Selector, parse_chain
from tungo_operator.model.errors import SpecError

BASE: dict[str, Any] = {
    "metadata": {"name": "egress", "namespace": "demo"},
    "spec": {
        "hops": [
            {
                "name": "relay",
                "nodes": [
                    {
                        "name": "n1",
                        "addr": "relay.example.com:443",
                        "connector": {"type": "relay", "auth": {"secretRef": {"name": "auth"}}},
                        "dialer": {"type": "wss"},
                    }
                ],
            }
        ]
    },
}


def node(doc: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = doc["spec"]["hops"][0]["nodes"][0]
    return result


def test_minimal_chain_gets_the_crd_defaults() -> None:
    chain = parse_chain(BASE)
    assert (chain.namespace, chain.name) == ("demo", "egress")
    (hop,) = chain.hops
    assert hop.selector == Selector("round", 1, "10s")
    assert hop.bypass is None
    (n,) = hop.nodes
    assert (n.connector, n.dialer, n.host) == ("relay", "wss", "relay.example.com")
    assert n.tls == TLS(secure=True, server_name=None, ca=None)  # verify by default, unlike GOST's CLI
    assert n.ws_path == "/ws"
    assert n.auth == Auth(SecretKeyRef("auth", "username"), SecretKeyRef("auth", "password"))
    assert chain.secret_names() == {"auth"}


def test_full_node_options() -> None:
    doc = copy.deepcopy(BASE)
    node(doc)["addr"] = "[2001:db8::1]:8443"
    node(doc)["dialer"] = {
        "type": "wss",
        "tls": {"secure": False, "serverName": "relay", "caSecretRef": {"name": "ca", "key": "root.pem"}},
        "ws": {"path": "/tunnel", "host": "front.example.com"},
        "metadata": {"keepalive": "true"},
    }
    node(doc)["connector"]["metadata"] = {"nodelay": "true"}
    doc["spec"]["hops"][0]["selector"] = {"strategy": "fifo", "maxFails": 3, "failTimeout": "1m30s"}
    doc["spec"]["hops"][0]["bypass"] = {"matchers": ["*.local"], "reverse": True}
    (hop,) = parse_chain(doc).hops
    (n,) = hop.nodes
    assert n.host == "2001:db8::1"
    assert n.tls == TLS(False, "relay", SecretKeyRef("ca", "root.pem"))
    assert (n.ws_path, n.ws_host) == ("/tunnel", "front.example.com")
    assert n.dialer_metadata == (("keepalive", "true"),)
    assert n.connector_metadata == (("nodelay", "true"),)
    assert hop.selector == Selector("fifo", 3, "1m30s")
    assert hop.bypass is not None and hop.bypass.reverse
    assert parse_chain(doc).secret_names() == {"auth", "ca"}


def test_plain_tcp_node_has_no_tls_or_ws() -> None:
    doc = copy.deepcopy(BASE)
    node(doc)["dialer"] = {"type": "tcp"}
    node(doc)["connector"] = {"type": "socks5"}
    (n,) = parse_chain(doc).hops[0].nodes
    assert (n.tls, n.ws_path, n.auth) == (None, None, None)


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()
N = "spec.hops.0.nodes.0"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("spec", "hops"), "spec: expected an object, got string"),
        (_set("spec.hops", []), "spec.hops: expected a non-empty list"),
        (_set("spec.hops", {"name": "x"}), "spec.hops: expected a non-empty list"),
        (
            _set(f"{N}.connector.type", "vmess"),
            "connector.type: unknown value 'vmess' (expected one of: relay, socks5, http)",
        ),
        (_set(f"{N}.dialer.type", "quic"), "spec.hops[0].nodes[0].dialer.type: unknown value 'quic'"),
        (_set(f"{N}.dialer.type", 7), "dialer.type: expected a string, got integer 7"),
        (_set(f"{N}.addr", "relay.example.com"), "nodes[0].addr: 'relay.example.com' is not host:port"),
        (_set(f"{N}.addr", "relay:99999"), "is not host:port"),
        (_set(f"{N}.addr", "2001:db8::1:443"), "use [v6]:port for IPv6"),
        (_set(f"{N}.name", "Node_1"), "nodes[0].name: 'Node_1' is not a DNS label"),
        (
            _set(f"{N}.dialer", {"type": "tcp", "tls": {}}),
            "dialer.tls: tls options need dialer type tls or wss, not 'tcp'",
        ),
        (_set(f"{N}.dialer", {"type": "tls", "ws": {}}), "dialer.ws: ws options need dialer type ws or wss"),
        (
            _set(f"{N}.dialer", {"type": "wss", "tls": {"secure": "yes"}}),
            "dialer.tls.secure: expected true or false, got string 'yes'",
        ),
        (_set(f"{N}.dialer", {"type": "ws", "ws": {"path": "ws"}}), "ws.path: 'ws' must start with '/'"),
        (_set(f"{N}.connector.auth", {"secretRef": {}}), "connector.auth.secretRef.name: required"),
        (
            _set(f"{N}.connector.auth", {"username": "u", "password": "p"}),
            "connector.auth.username: unknown field",
        ),
        (
            _set(f"{N}.connector.auth.passwordKey", "pass word"),
            "passwordKey: 'pass word' is not a valid Secret key",
        ),
        (
            _set(f"{N}.connector.metadata", {"nodelay": True}),
            "connector.metadata.nodelay: expected a string, got boolean",
        ),
        (_set(f"{N}.conector", {}), "spec.hops[0].nodes[0].conector: unknown field"),
        (_set(f"{N}.dialer", _DELETE), "spec.hops[0].nodes[0].dialer: required"),
        (_set("spec.hops.0.selector", {"strategy": "best"}), "selector.strategy: unknown value 'best'"),
        (_set("spec.hops.0.selector", {"maxFails": 0}), "selector.maxFails: 0 is out of range [1, 1000]"),
        (_set("spec.hops.0.selector", {"failTimeout": "10"}), "failTimeout: '10' is not a duration like 30s"),
        (_set("spec.hops.0.bypass", {"matchers": "a.com"}), "bypass.matchers: expected a list of strings"),
        (_set("spec.hops.0.nodes", []), "spec.hops[0].nodes: expected a non-empty list of nodes"),
        (_set("metadata", {}), "metadata.name: required"),
    ],
)
def test_bad_chain_is_rejected_with_the_field_path(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    with pytest.raises(SpecError) as info:
        parse_chain(doc)
    assert message in str(info.value)


def test_duplicate_names_are_rejected() -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["hops"][0]["nodes"].append(copy.deepcopy(node(doc)))
    with pytest.raises(SpecError, match=r"spec.hops\[0\].nodes: duplicate node name 'n1'"):
        parse_chain(doc)
    doc = copy.deepcopy(BASE)
    doc["spec"]["hops"].append(copy.deepcopy(doc["spec"]["hops"][0]))
    with pytest.raises(SpecError, match=r"spec\.hops: duplicate hop name 'relay'"):
        parse_chain(doc)
