"""The CRDs in crds/: valid CustomResourceDefinitions, structural, defaults equal to the model's,
and the examples/ manifests valid against them and parseable by the model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tungo_operator.model import chain as chain_model
from tungo_operator.model import conventions
from tungo_operator.model import gateway as gateway_model

ROOT = Path(__file__).resolve().parents[2]
CRDS = {
    "chains": ROOT / "crds" / "tungo.dev_chains.yaml",
    "tungateways": ROOT / "crds" / "tungo.dev_tungateways.yaml",
}


def load_crd(plural: str) -> dict[str, Any]:
    return yaml.safe_load(CRDS[plural].read_text())


def schema_of(plural: str) -> dict[str, Any]:
    (version,) = load_crd(plural)["spec"]["versions"]
    return (
        version["openAPIV3Schema"] if "openAPIV3Schema" in version else version["schema"]["openAPIV3Schema"]
    )


def examples() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema
    for part in dotted.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


@pytest.mark.parametrize("plural", sorted(CRDS))
def test_crd_is_a_valid_custom_resource_definition(plural: str) -> None:
    crd = load_crd(plural)
    kubernetes_validate.validate(crd, "1.30.0", strict=True)
    assert crd["metadata"]["name"] == f"{plural}.{conventions.GROUP}"
    assert crd["spec"]["group"] == conventions.GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == conventions.VERSION
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Ready", "Age"} <= columns


def test_names_match_the_conventions() -> None:
    assert load_crd("tungateways")["spec"]["names"]["kind"] == conventions.KIND_GATEWAY
    assert load_crd("tungateways")["spec"]["names"]["plural"] == conventions.PLURAL_GATEWAY
    assert load_crd("chains")["spec"]["names"]["kind"] == conventions.KIND_CHAIN
    assert load_crd("chains")["spec"]["names"]["plural"] == conventions.PLURAL_CHAIN
    columns = {
        c["name"]: c for c in load_crd("tungateways")["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert {"Ready", "Pods", "Chain", "Age"} <= set(columns)
    assert columns["Chain"]["jsonPath"] == ".spec.chainRef.name"


@pytest.mark.parametrize("plural", sorted(CRDS))
def test_schema_is_structural_and_described(plural: str) -> None:
    for path, node in walk(schema_of(plural)):
        # Structural schemas: every node has a type unless it explicitly keeps unknown fields.
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{plural}{path}: no type"
        if "default" in node:
            jsonschema.validate(node["default"], node)  # a default that fails its own schema is rejected
    spec = schema_of(plural)["properties"]["spec"]
    for path, node in walk(spec):
        if path.count(".") == 1 and not path.endswith("[]"):
            assert node.get("description"), f"{plural} spec{path}: top-level spec fields need a description"


def test_crd_defaults_equal_the_model_defaults() -> None:
    gw = schema_of("tungateways")["properties"]["spec"]
    assert at(gw, "tun.name")["default"] == gateway_model.DEFAULT_TUN_NAME
    assert at(gw, "tun.net")["default"] == gateway_model.DEFAULT_TUN_NET
    assert at(gw, "tun.mtu")["default"] == gateway_model.DEFAULT_MTU
    assert (at(gw, "tun.mtu")["minimum"], at(gw, "tun.mtu")["maximum"]) == (
        gateway_model.MIN_MTU,
        gateway_model.MAX_MTU,
    )
    assert at(gw, "tun.routes")["default"] == list(gateway_model.DEFAULT_ROUTES)
    assert at(gw, "handler.udpTimeout")["default"] == gateway_model.DEFAULT_UDP_TIMEOUT
    assert at(gw, "excludedCIDRs")["default"] == list(gateway_model.DEFAULT_EXCLUDED_CIDRS)
    assert at(gw, "clusterExclusions")["default"] is gateway_model.DEFAULT_CLUSTER_EXCLUSIONS is True
    assert at(gw, "tun")["default"] == {} and at(gw, "handler")["default"] == {}

    ch = schema_of("chains")["properties"]["spec"]
    node = "hops.[].nodes.[]"
    assert at(ch, f"{node}.connector.type")["enum"] == list(chain_model.CONNECTOR_TYPES)
    assert at(ch, f"{node}.dialer.type")["enum"] == list(chain_model.DIALER_TYPES)
    assert at(ch, f"{node}.dialer.tls.secure")["default"] is True
    assert at(ch, f"{node}.dialer.tls.caSecretRef.key")["default"] == chain_model.DEFAULT_CA_KEY
    assert at(ch, f"{node}.dialer.ws.path")["default"] == chain_model.DEFAULT_WS_PATH
    assert at(ch, f"{node}.connector.auth.usernameKey")["default"] == chain_model.DEFAULT_USERNAME_KEY
    assert at(ch, f"{node}.connector.auth.passwordKey")["default"] == chain_model.DEFAULT_PASSWORD_KEY
    assert at(ch, "hops.[].selector.strategy")["enum"] == list(chain_model.STRATEGIES)
    assert at(ch, "hops.[].selector.strategy")["default"] == chain_model.DEFAULT_STRATEGY
    assert at(ch, "hops.[].selector.failTimeout")["default"] == chain_model.DEFAULT_FAIL_TIMEOUT


def test_cel_rules_are_declared_where_the_model_checks_the_same() -> None:
    (name_rule,) = schema_of("tungateways")["x-kubernetes-validations"]
    assert name_rule["rule"] == f"self.metadata.name.size() <= {conventions.MAX_GATEWAY_NAME}"
    dialer = at(schema_of("chains")["properties"]["spec"], "hops.[].nodes.[].dialer")
    messages = {rule["message"] for rule in dialer["x-kubernetes-validations"]}
    assert messages == {"tls options need dialer type tls or wss", "ws options need dialer type ws or wss"}
    sniffing = at(schema_of("tungateways")["properties"]["spec"], "handler.sniffing")
    assert sniffing["x-kubernetes-validations"][0]["message"] == "sniffing.udp needs sniffing.enabled"


def test_status_the_controller_writes_fits_the_status_schema() -> None:
    from tungo_operator.handlers import reconcile
    from tungo_operator.model import exclusions

    (doc,) = [d for d in examples() if d["kind"] == "TunGateway"]
    doc["metadata"]["namespace"] = "demo"
    facts = exclusions.ClusterFacts(nodes=(("worker-1", ("10.244.1.0/24",)),))
    found = exclusions.cluster_exclusions(gateway_model.parse_gateway(doc), facts)
    assert found.problems  # no service range, no DNS: the Incomplete condition, with its message
    conditions = reconcile.ready_condition(
        None, ready=True, reason="ConfigRendered", message="m", generation=2
    )
    status = {
        "observedGeneration": 2,
        "configHash": "0" * 64,
        "namespaces": ["demo"],
        "injectedPods": 0,
        "exclusions": found.as_status(),
        "conditions": reconcile.exclusions_condition(conditions, found, generation=2),
    }
    schema = schema_of("tungateways")["properties"]["status"]
    jsonschema.validate(status, schema)
    assert {"cidr", "source"} == set(at(schema, "exclusions.[]")["required"])
    assert [c["type"] for c in status["conditions"]] == ["Ready", "ClusterExclusions"]


def test_examples_validate_against_the_crds_and_parse() -> None:
    docs = examples()
    kinds = [doc["kind"] for doc in docs]
    assert kinds.count("Chain") >= 1 and kinds.count("TunGateway") >= 1 and kinds.count("Secret") >= 1
    for doc in docs:
        doc.setdefault("metadata", {}).setdefault("namespace", "demo")
        if doc["kind"] == "Chain":
            jsonschema.validate(doc, schema_of("chains"))
            parsed = chain_model.parse_chain(doc)
            assert parsed.secret_names() == {"relay-auth", "relay-ca"}
        elif doc["kind"] == "TunGateway":
            jsonschema.validate(doc, schema_of("tungateways"))
            assert gateway_model.parse_gateway(doc).chain == "egress"
        else:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)


@pytest.mark.parametrize(
    ("plural", "mutate", "field"),
    [
        ("chains", lambda d: d["spec"]["hops"][0]["nodes"][0]["connector"].update(type="vmess"), "type"),
        ("chains", lambda d: d["spec"]["hops"][0]["nodes"][0].update(addr="no-port"), "addr"),
        ("tungateways", lambda d: d["spec"]["tun"].update(mtu="1420"), "mtu"),
        ("tungateways", lambda d: d["spec"].update(excludedCIDRs=["10.0.0.0"]), "excludedCIDRs"),
        ("tungateways", lambda d: d["spec"].update(clusterExclusions="yes"), "clusterExclusions"),
    ],
)
def test_crd_schema_rejects_bad_examples(plural: str, mutate: Any, field: str) -> None:
    kind = {"chains": "Chain", "tungateways": "TunGateway"}[plural]
    doc = next(d for d in examples() if d["kind"] == kind)
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(doc, schema_of(plural))
    assert field in "/".join(str(p) for p in info.value.absolute_path)


def cel_rules(plural: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, rule)
        for path, node in walk(schema_of(plural))
        for rule in node.get("x-kubernetes-validations", [])
    ]


def objects_at(doc: Any, path: str) -> list[Any]:
    """Every value at a schema path (``.spec.hops[].nodes[].dialer``) of a document."""
    values = [doc]
    for part in [p for p in path.replace("[]", ".[]").split(".") if p]:
        if part == "[]":
            values = [item for value in values for item in value]
        else:
            values = [value[part] for value in values if isinstance(value, dict) and part in value]
    return values


def evaluate(rule: str, value: Any) -> bool:
    env = celpy.Environment()
    result = env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(value)})
    assert isinstance(result, celpy.celtypes.BoolType), f"{rule}: evaluated to {result!r}, not a boolean"
    return bool(result)


@pytest.mark.parametrize("plural", sorted(CRDS))
def test_cel_rules_compile_and_hold_for_the_examples(plural: str) -> None:
    kind = {"chains": "Chain", "tungateways": "TunGateway"}[plural]
    (doc,) = [d for d in examples() if d["kind"] == kind]
    checked = 0
    for path, rule in cel_rules(plural):
        for value in objects_at(doc, path):
            assert evaluate(rule["rule"], value), f"{plural}{path}: {rule['rule']} fails on the example"
            checked += 1
    assert checked >= 1


@pytest.mark.parametrize(
    ("plural", "path", "value", "message"),
    [
        (
            "chains",
            ".spec.hops[].nodes[].dialer",
            {"type": "tcp", "tls": {}},
            "tls options need dialer type tls or wss",
        ),
        (
            "chains",
            ".spec.hops[].nodes[].dialer",
            {"type": "tls", "ws": {}},
            "ws options need dialer type ws or wss",
        ),
        (
            "tungateways",
            ".spec.handler.sniffing",
            {"enabled": False, "udp": True},
            "sniffing.udp needs sniffing.enabled",
        ),
        ("tungateways", ".spec.handler.sniffing", {"udp": True}, "sniffing.udp needs sniffing.enabled"),
        ("tungateways", "", {"metadata": {"name": "g" * 58}}, "metadata.name must be at most 57 characters"),
    ],
)
def test_cel_rules_refuse_what_the_model_refuses(plural: str, path: str, value: Any, message: str) -> None:
    (rule,) = [r for p, r in cel_rules(plural) if p == path and r["message"].startswith(message)]
    assert not evaluate(rule["rule"], value)
