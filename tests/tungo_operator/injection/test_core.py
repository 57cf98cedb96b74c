"""The injection decision on real pod manifests: patches applied with a real JSON Patch implementation."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tungo_operator.injection import core, sidecar
from tungo_operator.injection.jsonpatch import pointer
from tungo_operator.model import conventions as c
from tungo_operator.model.errors import SpecError
from tungo_operator.model.gateway import parse_label_selector

HERE = Path(__file__).parent
PODS = HERE / "pods"
GOLDEN = HERE / "golden"
SETTINGS = sidecar.SidecarSettings(image="ghcr.io/kube-tungo/kube-tungo:0.1.0")
EDGE = core.GatewayInfo(name="edge", namespace="shop")


def ns(name: str = "shop", **labels: str) -> core.NamespaceInfo:
    return core.NamespaceInfo.from_body({"metadata": {"name": name, "labels": labels}})


SHOP = ns()
SHOP_OPTED_IN = core.NamespaceInfo(
    "shop", ((c.INJECT_LABEL, "enabled"), ("pod-security.kubernetes.io/enforce", "privileged"))
)


def sel(raw: object) -> Any:
    return parse_label_selector(raw, "spec.podSelector")


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((PODS / name).read_text()))


def decide(pod: dict[str, Any], **kw: Any) -> core.Decision:
    args: dict[str, Any] = {
        "operation": "CREATE",
        "pod": pod,
        "namespace": "shop",
        "namespace_info": SHOP,
        "gateways": [EDGE],
        "settings": SETTINGS,
    }
    args.update(kw)
    return core.decide(**args)


def apply(pod: dict[str, Any], decision: core.Decision) -> dict[str, Any]:
    # Round-trip through JSON as the apiserver would receive it.
    ops = json.loads(json.dumps(decision.patch_json()))
    result: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    return result


def test_plain_pod_gets_native_sidecar_config_and_tun_volumes_matching_golden() -> None:
    pod = load("plain.yaml")
    before = copy.deepcopy(pod)
    decision = decide(pod)
    assert decision.verdict is core.Verdict.INJECT and decision.allowed and decision.gateway == "edge"
    out = apply(pod, decision)
    assert pod == before, "decide must not mutate its input"

    golden = GOLDEN / "plain.injected.yaml"
    if os.environ.get("TUNGO_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(yaml.safe_dump(out, sort_keys=True))
    assert out == yaml.safe_load(golden.read_text())

    (tungo,) = out["spec"]["initContainers"]
    assert tungo["name"] == c.SIDECAR_CONTAINER_NAME and tungo["restartPolicy"] == "Always"
    assert tungo["command"] == ["tungo", "-C", "/etc/tungo/config.yaml", "--health", ":9190"]
    assert tungo["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 9190, "scheme": "HTTP"}
    assert tungo["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert tungo["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in tungo["volumeMounts"]}
    assert mounts["/etc/tungo"]["readOnly"] is True and "/dev/net/tun" in mounts
    vols = {v["name"]: v for v in out["spec"]["volumes"]}
    assert set(vols) == {"kube-api-access-7x2kq", "tungo-config", "tungo-tun"}
    assert vols["tungo-config"]["secret"]["secretName"] == "tungo-edge"
    assert vols["tungo-tun"]["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    assert out["spec"]["containers"] == before["spec"]["containers"]
    assert out["metadata"]["annotations"] == {c.STATUS_ANNOTATION: "injected", c.GATEWAY_ANNOTATION: "edge"}


def test_deployment_pod_opted_in_by_namespace_gets_sidecar_before_existing_init_containers() -> None:
    pod = load("from-deployment.yaml")
    decision = decide(pod, namespace_info=SHOP_OPTED_IN)
    assert decision.verdict is core.Verdict.INJECT
    assert "pod shop/api-7d9f8c6b5d-*" in decision.message
    out = apply(pod, decision)
    assert [i["name"] for i in out["spec"]["initContainers"]] == ["tungo", "migrate"]
    # The pod keeps runAsNonRoot for its own containers; only the sidecar runs as root.
    assert out["spec"]["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000}
    assert out["spec"]["initContainers"][0]["securityContext"]["runAsNonRoot"] is False
    assert [v["name"] for v in out["spec"]["volumes"]] == ["tungo-config", "tungo-tun"]
    assert set(out["metadata"]["annotations"]) == {c.STATUS_ANNOTATION, c.GATEWAY_ANNOTATION}


@pytest.mark.parametrize("name", ["plain.yaml", "from-deployment.yaml"])
def test_injecting_twice_adds_one_sidecar(name: str) -> None:
    pod = load(name)
    once = apply(pod, decide(pod, namespace_info=SHOP_OPTED_IN))
    again = decide(once, namespace_info=SHOP_OPTED_IN)
    assert again.verdict is core.Verdict.SKIP and again.reason == "already-injected" and again.patch == ()
    names = [x["name"] for k in ("initContainers", "containers") for x in once["spec"].get(k, [])]
    assert names.count("tungo") == 1


def test_copied_status_annotation_without_the_container_still_injects() -> None:
    pod = load("plain.yaml")
    pod["metadata"]["annotations"] = {c.STATUS_ANNOTATION: "injected"}
    out = apply(pod, decide(pod))
    assert out["metadata"]["annotations"] == {c.STATUS_ANNOTATION: "injected", c.GATEWAY_ANNOTATION: "edge"}
    assert out["spec"]["initContainers"][0]["name"] == "tungo"


def test_host_network_pods_are_left_alone_with_a_reason() -> None:
    decision = decide(load("host-network.yaml"))
    assert decision.verdict is core.Verdict.SKIP and decision.reason == "host-network"
    assert decision.patch == () and "hostNetwork" in decision.message


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_only_create_is_handled(operation: str) -> None:
    decision = decide(load("plain.yaml"), operation=operation)
    assert decision.verdict is core.Verdict.SKIP and decision.reason == "not-create"


def test_pods_not_opted_in_and_pods_opted_out_are_skipped() -> None:
    pod = load("from-deployment.yaml")
    assert decide(pod, namespace_info=SHOP).reason == "not-selected"
    pod["metadata"]["labels"][c.INJECT_LABEL] = "disabled"
    decision = decide(pod, namespace_info=SHOP_OPTED_IN)
    assert decision.verdict is core.Verdict.SKIP and decision.reason == "opted-out"


def test_unknown_namespace_is_denied_with_retry_advice() -> None:
    decision = decide(load("plain.yaml"), namespace_info=None)
    assert not decision.allowed and decision.reason == "namespace-unknown" and "retry" in decision.message


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_pod_security_levels_that_refuse_net_admin_deny_with_the_fix(level: str) -> None:
    shop = core.NamespaceInfo("shop", (("pod-security.kubernetes.io/enforce", level),))
    decision = decide(load("plain.yaml"), namespace_info=shop)
    assert not decision.allowed and decision.reason == "pod-security" and decision.patch == ()
    assert f"enforces Pod Security level '{level}'" in decision.message
    assert "kubectl label namespace shop pod-security.kubernetes.io/enforce=privileged" in decision.message
    assert "tungo.dev/inject=disabled" in decision.message


def test_privileged_namespace_is_injected() -> None:
    shop = core.NamespaceInfo("shop", (("pod-security.kubernetes.io/enforce", "privileged"),))
    assert not shop.inject
    assert decide(load("plain.yaml"), namespace_info=shop).verdict is core.Verdict.INJECT


def test_missing_named_gateway_is_denied_naming_it_and_the_visible_ones() -> None:
    pod = load("plain.yaml")
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "corp"}
    other_ns = core.GatewayInfo(name="corp", namespace="billing")
    decision = decide(pod, gateways=[EDGE, other_ns])
    assert not decision.allowed and decision.reason == "gateway-missing"
    assert "'corp'" in decision.message and "visible: shop/edge)" in decision.message


def test_named_gateway_wins_and_a_namespaced_one_shadows_a_cluster_scoped_one() -> None:
    pod = load("plain.yaml")
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "edge"}
    shared = core.GatewayInfo("edge", "infra", namespace_selector=sel({}))
    decision = decide(pod, gateways=[shared, EDGE])
    assert decision.gateway == "edge" and "'shop/edge'" in decision.message
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "infra/edge"}
    assert "'infra/edge'" in decide(pod, gateways=[shared, EDGE]).message
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "edge"}
    twin = core.GatewayInfo("edge", "infra2", namespace_selector=sel({}))
    decision = decide(pod, gateways=[shared, twin])
    assert decision.reason == "gateway-ambiguous" and "<namespace>/<name>" in decision.message
    out = apply(pod, decide(pod, gateways=[shared, EDGE]))
    assert out["metadata"]["annotations"] == {c.STATUS_ANNOTATION: "injected", c.GATEWAY_ANNOTATION: "edge"}


def test_no_gateway_at_all_is_denied_with_what_to_do() -> None:
    decision = decide(load("plain.yaml"), gateways=[])
    assert not decision.allowed and decision.reason == "gateway-missing"
    assert "Create one" in decision.message and c.GATEWAY_ANNOTATION in decision.message


def test_several_matching_gateways_are_ambiguous_until_one_is_named() -> None:
    pod = load("plain.yaml")
    corp = core.GatewayInfo.from_body({"metadata": {"name": "corp", "namespace": "shop"}, "spec": {}})
    decision = decide(pod, gateways=[EDGE, corp])
    assert not decision.allowed and decision.reason == "gateway-ambiguous"
    assert "(shop/corp, shop/edge)" in decision.message
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "corp"}
    assert decide(pod, gateways=[EDGE, corp]).gateway == "corp"


def test_pod_selectors_pick_the_gateway() -> None:
    web_only = core.GatewayInfo.from_body(
        {
            "metadata": {"name": "web-gw", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"run": "web"}}},
        }
    )
    api_only = core.GatewayInfo.from_body(
        {
            "metadata": {"name": "api-gw", "namespace": "shop"},
            "spec": {
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]}
            },
        }
    )
    gws = [web_only, api_only]
    assert decide(load("plain.yaml"), gateways=gws).gateway == "web-gw"
    assert (
        decide(load("from-deployment.yaml"), gateways=gws, namespace_info=SHOP_OPTED_IN).gateway == "api-gw"
    )


def test_gateways_of_other_namespaces_serve_only_the_namespaces_they_select() -> None:
    elsewhere = core.GatewayInfo(name="edge", namespace="billing")
    assert decide(load("plain.yaml"), gateways=[elsewhere]).reason == "gateway-missing"
    shared = core.GatewayInfo.from_body(
        {
            "metadata": {"name": "edge", "namespace": "infra"},
            "spec": {"namespaceSelector": {"matchLabels": {"t": "y"}}},
        }
    )
    assert decide(load("plain.yaml"), gateways=[shared]).reason == "gateway-missing"
    decision = decide(load("plain.yaml"), gateways=[shared], namespace_info=ns(t="y"))
    assert decision.verdict is core.Verdict.INJECT and "'infra/edge'" in decision.message


def test_volume_and_port_conflicts_are_denied() -> None:
    pod = load("plain.yaml")
    pod["spec"]["volumes"].append({"name": "tungo-config", "emptyDir": {}})
    decision = decide(pod)
    assert (
        not decision.allowed and decision.reason == "volume-conflict" and "tungo-config" in decision.message
    )
    pod = load("plain.yaml")
    pod["spec"]["containers"][0]["ports"].append({"containerPort": 9190})
    decision = decide(pod)
    assert not decision.allowed and decision.reason == "port-conflict" and "'web'" in decision.message


def test_pod_without_volumes_or_init_containers_or_annotations() -> None:
    pod = {"metadata": {"name": "tiny", "labels": {c.INJECT_LABEL: "enabled"}}, "spec": {"containers": []}}
    out = apply(pod, decide(pod))
    assert [x["name"] for x in out["spec"]["initContainers"]] == ["tungo"]
    assert [v["name"] for v in out["spec"]["volumes"]] == ["tungo-config", "tungo-tun"]


def test_gateway_bodies_with_bad_selectors_raise_clear_errors() -> None:
    bad = {
        "metadata": {"name": "x"},
        "spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}},
    }
    with pytest.raises(
        SpecError, match=r"^spec\.podSelector\.matchExpressions\[0\]\.operator: unknown value"
    ):
        core.GatewayInfo.from_body(bad)
    bad = {"metadata": {"name": "x"}, "spec": {"namespaceSelector": []}}
    with pytest.raises(SpecError, match=r"^spec\.namespaceSelector: expected an object"):
        core.GatewayInfo.from_body(bad)


def test_pointer_escapes_slash_and_tilde() -> None:
    assert pointer("metadata", "annotations", "tungo.dev/status") == "/metadata/annotations/tungo.dev~1status"
    assert pointer("a~b", 0, "-") == "/a~0b/0/-"


label_keys = st.sampled_from(["app", "tier", c.INJECT_LABEL])
labels = st.dictionaries(label_keys, st.sampled_from(["enabled", "x", ""]))


@settings(max_examples=150, deadline=None)
@given(
    pod_labels=labels,
    ns_inject=st.booleans(),
    ns_level=st.sampled_from([None, "privileged", "baseline"]),
    with_init=st.booleans(),
    with_annotations=st.booleans(),
    # Selector values are non-empty: the model's parser refuses "" (Kubernetes would allow it).
    selectors=st.lists(
        st.one_of(st.none(), st.dictionaries(label_keys, st.sampled_from(["enabled", "x"]))), max_size=3
    ),
)
def test_any_pod_gets_a_decision_whose_patch_applies_once(
    pod_labels: dict[str, str],
    ns_inject: bool,
    ns_level: str | None,
    with_init: bool,
    with_annotations: bool,
    selectors: list[dict[str, str] | None],
) -> None:
    pod: dict[str, Any] = {
        "metadata": {"generateName": "p-", "labels": pod_labels},
        "spec": {"containers": []},
    }
    if with_init:
        pod["spec"]["initContainers"] = [{"name": "init", "image": "busybox"}]
    if with_annotations:
        pod["metadata"]["annotations"] = {"x": "y"}
    gws = [
        core.GatewayInfo(f"g{i}", "shop", sel({} if s is None else {"matchLabels": s}))
        for i, s in enumerate(selectors)
    ]
    ns_labels = {c.INJECT_LABEL: "enabled"} if ns_inject else {}
    if ns_level:
        ns_labels["pod-security.kubernetes.io/enforce"] = ns_level
    shop = ns(**ns_labels)
    decision = decide(pod, namespace_info=shop, gateways=gws)
    assert decision.message
    if decision.verdict is not core.Verdict.INJECT:
        assert decision.patch == ()
        return
    out = apply(pod, decision)
    assert out["spec"]["initContainers"][0]["name"] == "tungo"
    assert decide(out, namespace_info=shop, gateways=gws).reason == "already-injected"


@pytest.mark.parametrize("name", ["plain.yaml", "from-deployment.yaml"])
def test_own_apply_agrees_with_the_jsonpatch_library(name: str) -> None:
    from tungo_operator.injection import jsonpatch as ours

    pod = load(name)
    decision = decide(pod, namespace_info=SHOP_OPTED_IN)
    mine = copy.deepcopy(pod)
    ours.apply(mine, decision.patch)
    assert mine == apply(pod, decision)


def test_own_apply_rejects_paths_that_do_not_fit() -> None:
    from tungo_operator.injection import jsonpatch as ours

    with pytest.raises(ValueError, match="out of range"):
        ours.apply({"a": []}, (ours.PatchOp("add", "/a/3", 1),))
    with pytest.raises(ValueError, match="neither"):
        ours.apply({"a": "x"}, (ours.PatchOp("add", "/a/b", 1),))


@pytest.mark.parametrize("version", ["1.29.0", "1.35.0"])
def test_injected_pods_are_valid_kubernetes_pods(version: str) -> None:
    import kubernetes_validate

    # Strict: an unknown or misplaced field (say, restartPolicy on an old API) would fail here.
    for name in ("plain.yaml", "from-deployment.yaml"):
        pod = load(name)
        kubernetes_validate.validate(
            apply(pod, decide(pod, namespace_info=SHOP_OPTED_IN)), version, strict=True
        )
