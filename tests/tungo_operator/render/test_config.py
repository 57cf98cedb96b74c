"""render_config / config_secret: golden GOST YAML for the examples, Secret references resolved into
the rendered Secret only, and every broken reference reported with what to do."""

from __future__ import annotations

import base64
import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tungo_operator.model import conventions
from tungo_operator.model.chain import parse_chain
from tungo_operator.model.errors import InvalidSecretError, MissingReferenceError, SpecError
from tungo_operator.model.exclusions import ClusterFacts, ServiceLookup, cluster_exclusions
from tungo_operator.model.gateway import parse_gateway
from tungo_operator.render.config import config_secret, decode_secret, render_config

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # regenerate: UPDATE_GOLDEN=1 pytest this file


def example_docs() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["metadata"]["namespace"] = "demo"
                docs[doc["kind"], doc["metadata"]["name"]] = doc
    return docs


def example_inputs() -> tuple[Any, Any, dict[str, dict[str, bytes]]]:
    docs = example_docs()
    secrets = {name: decode_secret(doc) for (kind, name), doc in docs.items() if kind == "Secret"}
    return parse_gateway(docs["TunGateway", "egress"]), parse_chain(docs["Chain", "egress"]), secrets


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 to accept)"


def test_examples_render_to_the_golden_config() -> None:
    gateway, chain, secrets = example_inputs()
    rendered = render_config(gateway, chain, secrets)
    check_golden("examples-config.yaml", rendered.config_yaml)
    assert set(rendered.files) == {"config.yaml", "ca-relay-primary.pem"}
    assert rendered.files["ca-relay-primary.pem"] == secrets["relay-ca"]["ca.crt"].decode()


def test_rendered_config_has_gost_shape() -> None:
    gateway, chain, secrets = example_inputs()
    doc = yaml.safe_load(render_config(gateway, chain, secrets).config_yaml)
    (service,) = doc["services"]
    assert service["addr"] == ":0"
    assert service["handler"] == {
        "type": "tungo",
        "chain": "egress",
        "metadata": {
            "udpTimeout": "30s",
            "sniffing": True,
            "sniffing.udp": False,
            "sniffing.fallback": True,
            "sniffing.timeout": "1s",
        },
    }
    assert service["listener"]["type"] == "tungo"
    assert service["listener"]["metadata"] == {
        "name": "tungo",
        "net": "192.168.123.1/24",
        "mtu": 1420,
        "dns": "1.1.1.1",
        "route": "0.0.0.0/0",
        "exclude": "172.31.0.0/16",  # rendered alone (no cluster facts): the gateway's own list
    }
    # The gateway's bypass means "direct": GOST's first-hop bypass (a service bypass would refuse).
    assert "bypass" not in service and "bypasses" not in service
    (chain_doc,) = doc["chains"]
    (hop,) = chain_doc["hops"]
    assert hop["bypasses"] == ["bypass-egress", "bypass-egress-relay"]
    primary, backup = hop["nodes"]
    assert primary["connector"] == {"type": "relay", "auth": {"username": "tungo", "password": "change-me"}}
    assert primary["dialer"] == {
        "type": "wss",
        "tls": {
            "secure": True,
            "serverName": "relay.example.com",
            "caFile": "/etc/tungo/ca-relay-primary.pem",
        },
        "metadata": {"path": "/ws", "host": "relay.example.com"},
    }
    # No CA given: still verified (system roots), SNI from the address.
    assert backup["dialer"]["tls"] == {"secure": True, "serverName": "relay-backup.example.com"}
    assert {b["name"] for b in doc["bypasses"]} == {"bypass-egress", "bypass-egress-relay"}


def test_minimal_gateway_over_plain_socks5_renders_golden() -> None:
    gateway = parse_gateway(
        {"metadata": {"name": "gw", "namespace": "ns"}, "spec": {"chainRef": {"name": "c"}}}
    )
    chain = parse_chain(
        {
            "metadata": {"name": "c", "namespace": "ns"},
            "spec": {
                "hops": [
                    {
                        "name": "h",
                        "nodes": [
                            {
                                "name": "n",
                                "addr": "10.0.0.1:1080",
                                "connector": {"type": "socks5"},
                                "dialer": {"type": "tcp"},
                            }
                        ],
                    }
                ]
            },
        }
    )
    rendered = render_config(gateway, chain, {})
    check_golden("minimal-config.yaml", rendered.config_yaml)
    assert set(rendered.files) == {"config.yaml"}


def test_missing_secret_and_missing_key_say_what_to_create() -> None:
    gateway, chain, secrets = example_inputs()
    without = {k: v for k, v in secrets.items() if k != "relay-auth"}
    with pytest.raises(MissingReferenceError) as info:
        render_config(gateway, chain, without)
    assert info.value.kind == "Secret" and info.value.name == "relay-auth"
    assert (
        "Secret demo/relay-auth not found (needed by Chain egress spec.hops[0].nodes[0].connector.auth)"
        in str(info.value)
    )

    no_password = dict(secrets, **{"relay-auth": {"username": b"u"}})
    with pytest.raises(
        MissingReferenceError, match=r"Secret demo/relay-auth has no key 'password' .* it has: username"
    ):
        render_config(gateway, chain, no_password)


def test_unusable_secret_content_is_reported() -> None:
    gateway, chain, secrets = example_inputs()
    with pytest.raises(InvalidSecretError, match=r"key 'ca\.crt' is not a PEM certificate bundle"):
        render_config(gateway, chain, dict(secrets, **{"relay-ca": {"ca.crt": b"not a certificate"}}))
    with pytest.raises(InvalidSecretError, match="Secret relay-auth key password is not UTF-8"):
        render_config(
            gateway, chain, dict(secrets, **{"relay-auth": {"username": b"u", "password": b"\xff\xfe"}})
        )
    with pytest.raises(InvalidSecretError, match="key 'x' is not valid base64"):
        decode_secret({"metadata": {"name": "s"}, "data": {"x": "!!!"}})


def test_config_secret_body_and_owner_reference() -> None:
    gateway, chain, secrets = example_inputs()
    rendered = render_config(gateway, chain, secrets)
    local = config_secret(gateway, rendered, "demo", owner_uid="uid-1")
    assert local["metadata"]["name"] == conventions.config_secret_name("egress") == "tungo-egress"
    assert local["metadata"]["labels"][conventions.GATEWAY_LABEL] == "egress"
    assert local["metadata"]["annotations"][conventions.CONFIG_HASH_ANNOTATION] == rendered.config_hash
    assert local["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert base64.b64decode(local["data"]["config.yaml"]).decode() == rendered.config_yaml
    assert decode_secret(local)["ca-relay-primary.pem"] == secrets["relay-ca"]["ca.crt"]
    # Owner references cannot cross namespaces.
    assert "ownerReferences" not in config_secret(gateway, rendered, "other", owner_uid="uid-1")["metadata"]


def test_hash_follows_every_input() -> None:
    gateway, chain, secrets = example_inputs()
    base = render_config(gateway, chain, secrets).config_hash
    assert render_config(gateway, chain, copy.deepcopy(secrets)).config_hash == base  # deterministic
    changed = dict(secrets, **{"relay-auth": {"username": b"tungo", "password": b"rotated"}})
    assert render_config(gateway, chain, changed).config_hash != base
    doc = example_docs()["TunGateway", "egress"]
    doc["spec"]["tun"]["mtu"] = 9000
    assert render_config(parse_gateway(doc), chain, secrets).config_hash != base


def test_exclusions_decided_by_the_model_go_to_the_listener_and_the_hash() -> None:
    gateway, chain, secrets = example_inputs()
    facts = ClusterFacts(
        service_cidrs=(("kubernetes", ("10.96.0.0/12",)),),
        nodes=(("worker-1", ("10.244.1.0/24",)),),
        dns=ServiceLookup("kube-system", "kube-dns", ("10.96.0.10",)),
    )
    decided = cluster_exclusions(gateway, facts)
    rendered = render_config(gateway, chain, secrets, excluded=decided.cidrs)
    listener = yaml.safe_load(rendered.config_yaml)["services"][0]["listener"]["metadata"]
    assert listener["exclude"] == (
        "10.96.0.0/12,10.96.0.10/32,10.244.1.0/24,169.254.0.0/16,172.31.0.0/16,fe80::/10"
    )
    base = render_config(gateway, chain, secrets).config_hash
    assert rendered.config_hash != base  # a new node's range reaches the sidecars as a new config
    # Nothing to exclude at all: no exclude key (the sidecar's default, nothing carved out).
    none = yaml.safe_load(render_config(gateway, chain, secrets, excluded=()).config_yaml)
    assert "exclude" not in none["services"][0]["listener"]["metadata"]


def test_credentials_never_leave_the_rendered_secret() -> None:
    gateway, chain, secrets = example_inputs()
    assert "change-me" not in repr(gateway) + repr(chain)  # the model holds references only
    assert "change-me" in render_config(gateway, chain, secrets).config_yaml


def test_oversized_config_is_refused_before_the_api_server_would() -> None:
    gateway, chain, secrets = example_inputs()
    pem = secrets["relay-ca"]["ca.crt"]
    huge = dict(secrets, **{"relay-ca": {"ca.crt": pem * (2 * 1024 * 1024 // len(pem))}})  # a 2 MiB bundle
    with pytest.raises(SpecError, match=r"the rendered config is \d+ bytes; a Secret holds at most 1 MiB"):
        render_config(gateway, chain, huge)
