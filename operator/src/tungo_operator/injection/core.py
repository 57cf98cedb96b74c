"""The injection decision: pod manifest + known gateways + namespace -> skip, deny, or a JSON Patch.

Owns every rule of DESIGN.md §4 "Injector": which pods are injected, which gateway they get, which are
refused and with what advice, and the patch itself. Called by the webhook's kopf ``on.mutate`` handler
(tungo_operator.webhook.handlers), which feeds it from kopf indexes; tests call it directly. Pure: it
must never do I/O, read the clock or the environment, or import kopf.

Gateways are the TunGateway objects reduced to what injection needs (``GatewayInfo``). A gateway
serves pods of its own namespace, and of the namespaces its ``spec.namespaceSelector`` matches.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tungo_operator.injection import sidecar
from tungo_operator.injection.jsonpatch import PatchOp, pointer
from tungo_operator.model import conventions as c
from tungo_operator.model.gateway import LabelSelector, parse_label_selector

POD_SECURITY_ENFORCE_LABEL: Final = "pod-security.kubernetes.io/enforce"
# Pod Security levels that refuse NET_ADMIN and hostPath volumes ("privileged" allows both).
REFUSING_LEVELS: Final = frozenset({"baseline", "restricted"})


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """What the injector needs to know about one TunGateway."""

    name: str
    namespace: str
    pod_selector: LabelSelector = field(default_factory=LabelSelector)  # empty: every opted-in pod
    namespace_selector: LabelSelector | None = None  # None: only pods of its own namespace

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> GatewayInfo:
        """Reduce a TunGateway object; a bad selector raises model.errors.SpecError naming the field."""
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        raw_ns = spec.get("namespaceSelector")
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace") or "default"),
            pod_selector=parse_label_selector(spec.get("podSelector") or {}, "spec.podSelector"),
            namespace_selector=None
            if raw_ns is None
            else parse_label_selector(raw_ns, "spec.namespaceSelector"),
        )

    def serves(self, namespace: NamespaceInfo) -> bool:
        """Whether pods of ``namespace`` may use this gateway at all."""
        if namespace.name == self.namespace:
            return True
        return self.namespace_selector is not None and self.namespace_selector.matches(dict(namespace.labels))

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """A namespace's name and labels: opt-in, Pod Security level, and gateways' namespaceSelectors."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NamespaceInfo:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        return cls(
            name=str(meta.get("name", "")), labels=tuple(sorted((str(k), str(v)) for k, v in labels.items()))
        )

    @property
    def inject(self) -> bool:
        return dict(self.labels).get(c.INJECT_LABEL) == c.INJECT_ENABLED

    @property
    def pod_security_enforce(self) -> str | None:
        return dict(self.labels).get(POD_SECURITY_ENFORCE_LABEL)


class Verdict(enum.Enum):
    INJECT = "inject"  # allowed, with a patch
    SKIP = "skip"  # allowed unchanged
    DENY = "deny"  # refused, with a message saying what to do


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str  # a short stable code for logs, metrics and tests
    message: str  # for humans: the denial text, or why the pod was left alone
    patch: tuple[PatchOp, ...] = ()
    gateway: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.DENY

    def patch_json(self) -> list[dict[str, Any]]:
        return [op.to_json() for op in self.patch]


def decide(
    *,
    operation: str,
    pod: Mapping[str, Any],
    namespace: str,
    namespace_info: NamespaceInfo | None,
    gateways: Iterable[GatewayInfo],
    settings: sidecar.SidecarSettings,
) -> Decision:
    """Decide what happens to ``pod`` being created in ``namespace``.

    ``namespace_info`` is None when the caller has not seen the namespace yet (an index that lags
    right after the namespace was created): the pod is denied with "retry" rather than started
    without its tunnel, which would send its traffic out unencrypted (fail closed).
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    who = _describe(meta, namespace)

    if operation != "CREATE":
        return Decision(Verdict.SKIP, "not-create", f"{who}: only pod creation is handled, not {operation}")
    pod_choice = labels.get(c.INJECT_LABEL)
    if pod_choice is not None and pod_choice != c.INJECT_ENABLED:
        return Decision(Verdict.SKIP, "opted-out", f"{who}: label {c.INJECT_LABEL}={pod_choice}")
    if namespace_info is None:
        return Decision(
            Verdict.DENY,
            "namespace-unknown",
            f"tungo injector: namespace {namespace!r} is not known to the injector yet (it was probably "
            f"just created); retry in a few seconds. Controllers retry on their own.",
        )
    if pod_choice is None and not namespace_info.inject:
        return Decision(Verdict.SKIP, "not-selected", f"{who}: neither pod nor namespace opted in")
    if _has_sidecar(spec):
        return Decision(Verdict.SKIP, "already-injected", f"{who}: sidecar present")
    if spec.get("hostNetwork"):
        return Decision(
            Verdict.SKIP,
            "host-network",
            f"{who}: not injected: the pod uses hostNetwork, and a tungo sidecar would reroute the node's "
            f"own traffic. Remove the {c.INJECT_LABEL} label from hostNetwork pods.",
        )
    level = namespace_info.pod_security_enforce
    if level in REFUSING_LEVELS:
        return Decision(
            Verdict.DENY,
            "pod-security",
            f"tungo injector: namespace {namespace!r} enforces Pod Security level {level!r} "
            f"({POD_SECURITY_ENFORCE_LABEL}={level}), which refuses the NET_ADMIN capability and the "
            f"/dev/net/tun hostPath volume the tungo sidecar needs, so {who} would be rejected anyway. "
            f"Either allow it: kubectl label namespace {namespace} "
            f"{POD_SECURITY_ENFORCE_LABEL}=privileged --overwrite, or opt this pod out: set the label "
            f"{c.INJECT_LABEL}=disabled on it (or remove {c.INJECT_LABEL} from the pod and namespace).",
        )

    chosen = _choose_gateway(who, namespace_info, labels, annotations.get(c.GATEWAY_ANNOTATION), gateways)
    if isinstance(chosen, Decision):
        return chosen
    conflict = _conflict(who, spec)
    if conflict is not None:
        return conflict
    return Decision(
        Verdict.INJECT,
        "injected",
        f"{who}: injected with TunGateway {chosen.ref!r}",
        patch=_patch(pod, chosen.name, settings),
        gateway=chosen.name,
    )


def _describe(meta: Mapping[str, Any], namespace: str) -> str:
    # Pods made by controllers have only generateName at admission time.
    name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "<unnamed>")
    return f"pod {namespace}/{name}"


def _has_sidecar(spec: Mapping[str, Any]) -> bool:
    # The container is the truth, not the status annotation: an annotation copied into a template
    # without the container must not stop injection, and a second webhook call must add nothing.
    return any(
        ctr.get("name") == c.SIDECAR_CONTAINER_NAME
        for key in ("initContainers", "containers")
        for ctr in spec.get(key) or ()
    )


def _choose_gateway(
    who: str,
    namespace: NamespaceInfo,
    labels: Mapping[str, str],
    wanted: str | None,
    gateways: Iterable[GatewayInfo],
) -> GatewayInfo | Decision:
    # Own namespace first: a local gateway shadows a same-named one shared from elsewhere.
    visible = sorted(
        (g for g in gateways if g.serves(namespace)), key=lambda g: (g.namespace != namespace.name, g.ref)
    )
    if wanted is not None:
        # "name", or "namespace/name" to pick one shared from another namespace.
        ns_part, _, name_part = wanted.rpartition("/")
        named = [g for g in visible if g.name == name_part and ns_part in ("", g.namespace)]
        local = [g for g in named if g.namespace == namespace.name]
        if local or len(named) == 1:
            return (local or named)[0]
        if named:
            refs = ", ".join(g.ref for g in named)
            return Decision(
                Verdict.DENY,
                "gateway-ambiguous",
                f"tungo injector: several TunGateways named {wanted!r} serve namespace {namespace.name!r} "
                f"({refs}); write the annotation as {c.GATEWAY_ANNOTATION}: <namespace>/<name>.",
            )
        known = ", ".join(g.ref for g in visible) or "none"
        return Decision(
            Verdict.DENY,
            "gateway-missing",
            f"tungo injector: {who} asks for TunGateway {wanted!r} (annotation {c.GATEWAY_ANNOTATION}) "
            f"but no such gateway serves namespace {namespace.name!r} (visible: {known}). Create it in this "
            f"namespace, let it serve this one (spec.namespaceSelector), or fix the annotation.",
        )
    matching = [g for g in visible if g.pod_selector.matches(labels)]
    if len(matching) == 1:
        return matching[0]
    if not matching:
        return Decision(
            Verdict.DENY,
            "gateway-missing",
            f"tungo injector: no TunGateway selects {who}: none in namespace {namespace.name!r} (or shared "
            f"with it by a namespaceSelector) has a podSelector matching its labels. Create one, name one "
            f"with the annotation {c.GATEWAY_ANNOTATION}: <name>, or remove the {c.INJECT_LABEL} label.",
        )
    refs = ", ".join(g.ref for g in matching)
    return Decision(
        Verdict.DENY,
        "gateway-ambiguous",
        f"tungo injector: several TunGateways select {who} ({refs}); choose one with the annotation "
        f"{c.GATEWAY_ANNOTATION}: <name> on the pod (or its Deployment's pod template).",
    )


def _conflict(who: str, spec: Mapping[str, Any]) -> Decision | None:
    ours = {sidecar.CONFIG_VOLUME, sidecar.TUN_VOLUME}
    clash = sorted(ours & {v.get("name") for v in spec.get("volumes") or ()})
    if clash:
        return Decision(
            Verdict.DENY,
            "volume-conflict",
            f"tungo injector: {who} already has volume(s) {', '.join(clash)}, names the tungo sidecar needs; "
            f"rename them.",
        )
    for key in ("initContainers", "containers"):
        for ctr in spec.get(key) or ():
            for port in ctr.get("ports") or ():
                if port.get("containerPort") == c.HEALTH_PORT:
                    return Decision(
                        Verdict.DENY,
                        "port-conflict",
                        f"tungo injector: container {ctr.get('name')!r} of {who} uses port {c.HEALTH_PORT}, "
                        f"which the tungo sidecar's health endpoint needs in the shared pod network.",
                    )
    return None


def _patch(pod: Mapping[str, Any], gateway: str, settings: sidecar.SidecarSettings) -> tuple[PatchOp, ...]:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ops: list[PatchOp] = []
    ctr = sidecar.container(settings)
    if "initContainers" in spec and spec["initContainers"] is not None:
        ops.append(PatchOp("add", pointer("spec", "initContainers", 0), ctr))
    else:
        ops.append(PatchOp("add", pointer("spec", "initContainers"), [ctr]))
    vols = sidecar.volumes(gateway)
    if "volumes" in spec and spec["volumes"] is not None:
        ops.extend(PatchOp("add", pointer("spec", "volumes", "-"), v) for v in vols)
    else:
        ops.append(PatchOp("add", pointer("spec", "volumes"), vols))
    # The status says "injected" (the controller counts these); the gateway annotation records the
    # choice so the controller knows which gateway's Secret this namespace needs. Both are set even
    # when present: an annotation copied from elsewhere must not lie about this pod.
    new_annotations = {c.STATUS_ANNOTATION: c.STATUS_INJECTED, c.GATEWAY_ANNOTATION: gateway}
    if meta.get("annotations") is None:
        ops.append(PatchOp("add", pointer("metadata", "annotations"), new_annotations))
    else:
        ops.extend(
            PatchOp("add", pointer("metadata", "annotations", key), value)
            for key, value in new_annotations.items()
        )
    return tuple(ops)
