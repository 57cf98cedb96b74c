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
from gateway_status import ready_status as ready
from hypothesis import given, settings
from hypothesis import strategies as st

from tungo_operator.injection import core, sidecar
from tungo_operator.injection.jsonpatch import pointer
from tungo_operator.model import conventions as c
from tungo_operator.model.errors import SpecError

HERE = Path(__file__).parent
PODS = HERE / "pods"
GOLDEN = HERE / "golden"
SETTINGS = sidecar.SidecarSettings(image="ghcr.io/kube-tungo/kube-tungo:0.1.0")


READY = ready()


def gw(
    name: str,
    namespace: str = "shop",
    *,
    status: dict[str, Any] | None = READY,
    generation: int = 1,
    **spec: Any,
) -> core.GatewayInfo:
    """A gateway as the webhook's index sees it: Ready for its generation unless ``status`` says else."""
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace, "generation": generation},
        "spec": {"chainRef": {"name": "corp"}, **spec},
    }
    if status is not None:
        body["status"] = status
    return core.GatewayInfo.from_body(body)


EDGE = gw("edge")


def ns(name: str = "shop", **labels: str) -> core.NamespaceInfo:
    return core.NamespaceInfo.from_body({"metadata": {"name": name, "labels": labels}})


SHOP = ns()
SHOP_OPTED_IN = core.NamespaceInfo(
    "shop", ((c.INJECT_LABEL, "enabled"), ("pod-security.kubernetes.io/enforce", "privileged"))
)


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
    other_ns = gw("corp", "billing")
    decision = decide(pod, gateways=[EDGE, other_ns])
    assert not decision.allowed and decision.reason == "gateway-missing"
    assert "'corp'" in decision.message and "visible: shop/edge)" in decision.message


def test_named_gateway_wins_and_a_namespaced_one_shadows_a_cluster_scoped_one() -> None:
    pod = load("plain.yaml")
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "edge"}
    shared = gw("edge", "infra", namespaceSelector={})
    decision = decide(pod, gateways=[shared, EDGE])
    assert decision.gateway == "edge" and "'shop/edge'" in decision.message
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "infra/edge"}
    assert "'infra/edge'" in decide(pod, gateways=[shared, EDGE]).message
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "edge"}
    twin = gw("edge", "infra2", namespaceSelector={})
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
    corp = gw("corp")
    decision = decide(pod, gateways=[EDGE, corp])
    assert not decision.allowed and decision.reason == "gateway-ambiguous"
    assert "(shop/corp, shop/edge)" in decision.message
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "corp"}
    assert decide(pod, gateways=[EDGE, corp]).gateway == "corp"


def test_pod_selectors_pick_the_gateway() -> None:
    web_only = gw("web-gw", podSelector={"matchLabels": {"run": "web"}})
    api_only = gw(
        "api-gw", podSelector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]}
    )
    gws = [web_only, api_only]
    assert decide(load("plain.yaml"), gateways=gws).gateway == "web-gw"
    assert (
        decide(load("from-deployment.yaml"), gateways=gws, namespace_info=SHOP_OPTED_IN).gateway == "api-gw"
    )


def test_gateways_of_other_namespaces_serve_only_the_namespaces_they_select() -> None:
    elsewhere = gw("edge", "billing")
    assert decide(load("plain.yaml"), gateways=[elsewhere]).reason == "gateway-missing"
    shared = gw("edge", "infra", namespaceSelector={"matchLabels": {"t": "y"}})
    assert decide(load("plain.yaml"), gateways=[shared]).reason == "gateway-missing"
    decision = decide(load("plain.yaml"), gateways=[shared], namespace_info=ns(t="y"))
    assert decision.verdict is core.Verdict.INJECT and "'infra/edge'" in decision.message


# --- the annotation chooses only among gateways whose podSelector selects the pod (issue 8, item 2) ---


def test_annotation_naming_a_gateway_whose_pod_selector_does_not_match_is_denied() -> None:
    pod = load("plain.yaml")  # labels run=web, tungo.dev/inject=enabled
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "db-gw"}
    db_only = gw("db-gw", podSelector={"matchLabels": {"tier": "db"}})
    decision = decide(pod, gateways=[EDGE, db_only])
    assert not decision.allowed and decision.reason == "gateway-selector-mismatch" and decision.patch == ()
    assert "asks for TunGateway 'shop/db-gw'" in decision.message
    assert "spec.podSelector (tier=db) does not select it" in decision.message
    assert "run=web, tungo.dev/inject=enabled" in decision.message
    assert "gateways that select it: shop/edge" in decision.message
    # Alone, it still refuses, and says no gateway would do.
    decision = decide(pod, gateways=[db_only])
    assert decision.reason == "gateway-selector-mismatch" and "no gateway serving" in decision.message


def test_selector_mismatch_names_every_kind_of_requirement() -> None:
    pod = load("plain.yaml")
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "picky"}
    exprs = [
        {"key": "tier", "operator": "In", "values": ["db", "cache"]},
        {"key": "env", "operator": "NotIn", "values": ["prod"]},
        {"key": "team", "operator": "Exists"},
        {"key": "run", "operator": "DoesNotExist"},
    ]
    picky = gw("picky", podSelector={"matchLabels": {"a": "b"}, "matchExpressions": exprs})
    decision = decide(pod, gateways=[picky])
    assert decision.reason == "gateway-selector-mismatch"
    assert "(a=b,tier in (db,cache),env notin (prod),team,!run)" in decision.message


def test_annotation_chooses_among_several_selecting_gateways() -> None:
    pod = load("plain.yaml")
    web_a = gw("web-a", podSelector={"matchLabels": {"run": "web"}})
    web_b = gw("web-b", podSelector={"matchExpressions": [{"key": "run", "operator": "Exists"}]})
    db_gw = gw("db-gw", podSelector={"matchLabels": {"tier": "db"}})
    gateways = [web_a, web_b, db_gw]
    decision = decide(pod, gateways=gateways)
    assert decision.reason == "gateway-ambiguous" and "(shop/web-a, shop/web-b)" in decision.message
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "web-b"}
    decision = decide(pod, gateways=gateways)
    assert decision.verdict is core.Verdict.INJECT and decision.gateway == "web-b"
    assert apply(pod, decision)["spec"]["volumes"][-2]["secret"]["secretName"] == "tungo-web-b"
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "db-gw"}
    decision = decide(pod, gateways=gateways)
    assert decision.reason == "gateway-selector-mismatch"
    assert "gateways that select it: shop/web-a, shop/web-b" in decision.message


def test_without_annotation_the_one_selecting_gateway_is_chosen_as_before() -> None:
    web = gw("web-gw", podSelector={"matchLabels": {"run": "web"}})
    db_gw = gw("db-gw", podSelector={"matchLabels": {"tier": "db"}})
    decision = decide(load("plain.yaml"), gateways=[db_gw, web])
    assert decision.verdict is core.Verdict.INJECT and decision.gateway == "web-gw"


def test_a_local_name_shadows_a_shared_one_even_when_only_the_shared_one_selects_the_pod() -> None:
    # The annotation names a gateway (own namespace first), then its podSelector decides: the pod is
    # never silently moved to another gateway of the same name.
    pod = load("plain.yaml")
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "edge"}
    local = gw("edge", podSelector={"matchLabels": {"tier": "db"}})
    shared = gw("edge", "infra", namespaceSelector={})
    decision = decide(pod, gateways=[local, shared])
    assert decision.reason == "gateway-selector-mismatch"
    assert "'shop/edge'" in decision.message and "gateways that select it: infra/edge" in decision.message
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "infra/edge"}
    decision = decide(pod, gateways=[local, shared])
    assert decision.verdict is core.Verdict.INJECT and "'infra/edge'" in decision.message


# --- only a Ready gateway gets pods (issue 8, item 4) ----------------------------------------------


def test_gateway_not_ready_is_denied_with_its_condition_reason_and_message() -> None:
    failing = ready(
        "False",
        "SecretNotFound",
        "Secret shop/relay-auth not found; the last good config (if any) stays in place",
    )
    decision = decide(load("plain.yaml"), gateways=[gw("edge", status=failing)])
    assert not decision.allowed and decision.reason == "gateway-not-ready" and decision.patch == ()
    assert (
        "TunGateway shop/edge is not Ready (SecretNotFound: Secret shop/relay-auth not found; the last good "
        "config (if any) stays in place)" in decision.message
    )
    assert "ContainerCreating" in decision.message
    assert "kubectl describe tungateway -n shop edge" in decision.message and "retry" in decision.message


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (ready("Unknown", "", ""), "(Ready=Unknown)"),
        (ready("False", "InvalidSpec", ""), "(InvalidSpec)"),
        (ready("False", "", "spec.tun.mtu: too small"), "(spec.tun.mtu: too small)"),
    ],
)
def test_any_ready_status_but_true_is_not_ready(status: dict[str, Any], shown: str) -> None:
    decision = decide(load("plain.yaml"), gateways=[gw("edge", status=status)])
    assert decision.reason == "gateway-not-ready" and f"is not Ready {shown}" in decision.message


@pytest.mark.parametrize(
    "status",
    [
        None,  # just created: the controller has not written status at all
        {},
        {"conditions": []},
        {"conditions": [{"type": "Synced", "status": "True"}]},
        {"conditions": "garbage", "observedGeneration": "x"},  # never crash the index on a bad status
        {"conditions": [{"type": "Ready"}]},  # a condition without a status says nothing
    ],
)
def test_gateway_the_controller_has_not_reported_on_is_denied_with_retry_advice(
    status: dict[str, Any] | None,
) -> None:
    decision = decide(load("plain.yaml"), gateways=[gw("edge", status=status)])
    assert not decision.allowed and decision.reason == "gateway-not-reconciled"
    message = decision.message
    assert "TunGateway shop/edge has no Ready condition yet" in message
    assert "config Secret tungo-edge" in message and "ContainerCreating" in message
    assert "normal for a few seconds after a gateway is created: retry" in message
    # If it lasts, the operator is probably not running (or not watching): say how to look.
    assert "kubectl get pods -A -l app.kubernetes.io/component=operator" in message
    assert "does not watch namespace 'shop'" in message


def test_gateway_whose_status_is_for_an_older_generation_is_denied_as_stale() -> None:
    stale = gw("edge", generation=3, status=ready(generation=2))
    decision = decide(load("plain.yaml"), gateways=[stale])
    assert not decision.allowed and decision.reason == "gateway-stale"
    message = decision.message
    assert "TunGateway shop/edge was changed (generation 3)" in message
    assert "last reported on generation 2 (Ready=True: ConfigRendered)" in message
    assert "retry" in message and "kubectl get pods -A -l app.kubernetes.io/component=operator" in message
    # A stale failure is stale too: the change may be the fix.
    failed = gw("edge", generation=3, status=ready("False", "ChainNotFound", "no Chain", generation=2))
    decision = decide(load("plain.yaml"), gateways=[failed])
    assert decision.reason == "gateway-stale" and "(Ready=False: ChainNotFound)" in decision.message
    # The condition's own observedGeneration wins; the status-level one stands in when it is absent.
    status = ready(generation=3)
    del status["conditions"][0]["observedGeneration"]
    assert decide(load("plain.yaml"), gateways=[gw("edge", generation=3, status=status)]).allowed
    status["observedGeneration"] = 2
    decision = decide(load("plain.yaml"), gateways=[gw("edge", generation=3, status=status)])
    assert decision.reason == "gateway-stale"


def test_generations_unknown_on_either_side_do_not_make_a_gateway_stale() -> None:
    body: dict[str, Any] = {"metadata": {"name": "edge", "namespace": "shop"}, "spec": {}, "status": READY}
    assert decide(load("plain.yaml"), gateways=[core.GatewayInfo.from_body(body)]).allowed
    status = ready()
    del status["observedGeneration"], status["conditions"][0]["observedGeneration"]
    assert decide(load("plain.yaml"), gateways=[gw("edge", generation=5, status=status)]).allowed


def test_readiness_never_changes_which_gateway_a_pod_gets() -> None:
    # A not-Ready gateway is not skipped in favour of another: the pod would silently change tunnels.
    pod = load("plain.yaml")
    broken = gw("corp", status=ready("False", "ChainNotFound", "Chain shop/corp not found"))
    assert decide(pod, gateways=[EDGE, broken]).reason == "gateway-ambiguous"
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "corp"}
    assert decide(pod, gateways=[EDGE, broken]).reason == "gateway-not-ready"
    # ... and a not-Ready gateway that does not select the pod is none of its business.
    del pod["metadata"]["annotations"]
    other = gw("db-gw", status=None, podSelector={"matchLabels": {"tier": "db"}})
    assert decide(pod, gateways=[EDGE, other]).gateway == "edge"


def test_pod_problems_are_reported_before_a_gateway_that_is_not_ready_yet() -> None:
    pod = load("plain.yaml")
    pod["spec"]["volumes"].append({"name": "tungo-config", "emptyDir": {}})
    assert decide(pod, gateways=[gw("edge", status=None)]).reason == "volume-conflict"


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


@settings(max_examples=200, deadline=None)
@given(
    pod_labels=labels,
    ns_inject=st.booleans(),
    ns_level=st.sampled_from([None, "privileged", "baseline"]),
    with_init=st.booleans(),
    with_annotations=st.booleans(),
    wanted=st.sampled_from([None, "g0", "g1", "shop/g2", "nope"]),
    # (podSelector matchLabels or None for empty, Ready?). Values are non-empty: the model's parser
    # refuses "" (Kubernetes would allow it).
    gateways=st.lists(
        st.tuples(
            st.one_of(st.none(), st.dictionaries(label_keys, st.sampled_from(["enabled", "x"]))),
            st.booleans(),
        ),
        max_size=3,
    ),
)
def test_any_pod_gets_a_decision_whose_patch_applies_once(
    pod_labels: dict[str, str],
    ns_inject: bool,
    ns_level: str | None,
    with_init: bool,
    with_annotations: bool,
    wanted: str | None,
    gateways: list[tuple[dict[str, str] | None, bool]],
) -> None:
    pod: dict[str, Any] = {
        "metadata": {"generateName": "p-", "labels": pod_labels},
        "spec": {"containers": []},
    }
    if with_init:
        pod["spec"]["initContainers"] = [{"name": "init", "image": "busybox"}]
    if with_annotations:
        pod["metadata"]["annotations"] = {"x": "y"}
    if wanted is not None:
        pod["metadata"].setdefault("annotations", {})[c.GATEWAY_ANNOTATION] = wanted
    gws = [
        gw(
            f"g{i}",
            status=READY if up else ready("False", "ChainNotFound", "Chain shop/corp not found"),
            podSelector={} if s is None else {"matchLabels": s},
        )
        for i, (s, up) in enumerate(gateways)
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
    # Whatever chose it, the gateway a pod gets selects it and is Ready.
    (chosen,) = [g for g in gws if g.name == decision.gateway]
    assert chosen.pod_selector.matches(pod_labels) and chosen.ready is not None
    assert chosen.ready.status == "True"
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


def test_split_dns_points_the_pod_resolver_at_the_sidecar_and_lets_it_bind_port_53() -> None:
    pod = load("plain.yaml")
    pod["spec"]["dnsConfig"] = {"searches": ["corp.example"], "options": [{"name": "ndots", "value": "2"}]}
    settings = sidecar.SidecarSettings(image="tungo:test", cluster_domain="k8s.example")
    out = apply(pod, decide(pod, gateways=[gw("edge", dns={"mode": "tunnel"})], settings=settings))
    assert out["spec"]["dnsPolicy"] == "None"
    assert out["spec"]["dnsConfig"] == {
        "nameservers": ["127.0.0.1"],
        "searches": ["shop.svc.k8s.example", "svc.k8s.example", "k8s.example", "corp.example"],
        "options": [{"name": "ndots", "value": "5"}],
    }
    caps = out["spec"]["initContainers"][0]["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE"]}
    # The default mode leaves the pod's DNS alone and adds no capability; so does a pod that chose
    # its resolvers itself (dnsPolicy: None).
    plain = apply(load("plain.yaml"), decide(load("plain.yaml")))
    assert "dnsConfig" not in plain["spec"] and plain["spec"]["dnsPolicy"] == "ClusterFirst"
    assert plain["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    chosen = load("plain.yaml")
    chosen["spec"]["dnsPolicy"] = "None"
    chosen["spec"]["dnsConfig"] = {"nameservers": ["192.0.2.53"]}
    kept = apply(chosen, decide(chosen, gateways=[gw("edge", dns={"mode": "tunnel"})]))
    assert kept["spec"]["dnsConfig"] == {"nameservers": ["192.0.2.53"]}


def test_pod_routing_annotations_become_the_sidecars_exclude_and_route_flags() -> None:
    pod = load("plain.yaml")
    pod["metadata"]["annotations"] = {
        c.EXCLUDE_ANNOTATION: "10.20.0.0/16, fd00:20::/64",
        c.INCLUDE_ANNOTATION: "*",
        c.EXCLUDE_PORTS_ANNOTATION: "5432,8000-8100",
    }
    out = apply(pod, decide(pod))
    sidecar_ctr = out["spec"]["initContainers"][0]
    assert sidecar_ctr["command"] == list(c.SIDECAR_COMMAND)
    assert sidecar_ctr["args"] == [
        "--exclude=10.20.0.0/16,fd00:20::/64",
        "--route=0.0.0.0/0,::/0",
        "--exclude-ports=5432,8000-8100",
    ]
    # Without the annotations: no args at all (the golden patch is unchanged).
    assert "args" not in apply(load("plain.yaml"), decide(load("plain.yaml")))["spec"]["initContainers"][0]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (c.EXCLUDE_ANNOTATION, "10.0.0.1/8", "'10.0.0.1/8' is not a CIDR (10.0.0.1/8 has host bits set)"),
        (c.EXCLUDE_ANNOTATION, " , ", "is empty"),
        (c.INCLUDE_ANNOTATION, "*,10.0.0.0/8", "'*' is not a CIDR"),
        (c.INCLUDE_ANNOTATION, ",".join(f"10.{i}.0.0/16" for i in range(65)), "lists 65 ranges; at most 64"),
        (c.EXCLUDE_PORTS_ANNOTATION, "5432,0", "'0' is not a port or a range of ports"),
        (c.EXCLUDE_PORTS_ANNOTATION, "9000-8000", "'9000-8000' is not a port or a range of ports"),
        (c.EXCLUDE_PORTS_ANNOTATION, "http", "'http' is not a port or a range of ports"),
    ],
)
def test_bad_routing_annotations_deny_the_pod_naming_the_value(key: str, value: str, problem: str) -> None:
    pod = load("plain.yaml")
    pod["metadata"]["annotations"] = {key: value}
    decision = decide(pod)
    assert decision.verdict is core.Verdict.DENY and decision.reason == "annotation-invalid"
    assert f"annotation {key} {problem}" in decision.message
