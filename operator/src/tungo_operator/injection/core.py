"""The injection decision: pod manifest + known gateways + namespace -> skip, deny, or a JSON Patch.

Owns every rule of DESIGN.md §4 "Injector": which pods are injected, which gateway they get, which are
refused and with what advice, and the patch itself. Called by the webhook's kopf ``on.mutate`` handler
(tungo_operator.webhook.handlers), which feeds it from kopf indexes; tests call it directly. Pure: it
must never do I/O, read the clock or the environment, or import kopf.

Gateways are the TunGateway objects reduced to what injection needs (``GatewayInfo``). A gateway
serves pods of its own namespace, and of the namespaces its ``spec.namespaceSelector`` matches.

Which gateway a pod gets, in order:

1. Without the annotation ``tungo.dev/gateway``: the one gateway serving the namespace whose
   ``spec.podSelector`` selects the pod; none or several is a denial (``gateway-missing``,
   ``gateway-ambiguous``).
2. With it (``name`` or ``namespace/name``): the name is resolved first, own namespace before shared
   ones (``gateway-missing``, ``gateway-ambiguous``), then that gateway's ``podSelector`` must select
   the pod: it decides which pods may use the gateway, and the annotation only picks among those
   (``gateway-selector-mismatch`` otherwise, never a silent fallback to another gateway).
3. The chosen gateway must be Ready for its current spec, or the pod is denied: its config Secret may
   not exist yet (the pod would sit in ContainerCreating) or may be for an older spec. The webhook
   cannot post Events (it has no write access), so a denial, seen at ``kubectl apply`` or in the
   ReplicaSet's events, is how the user learns it. Readiness never changes *which* gateway is chosen
   (a pod must not silently move to another tunnel); it only decides whether the pod may start now:

   * no ``Ready`` condition yet (the controller has not reconciled it: just created, or the operator
     is down or does not watch that namespace) → ``gateway-not-reconciled``;
   * a ``Ready`` condition for an older ``metadata.generation`` than the current one (the spec changed
     and the controller has not caught up; whatever it said is about the old spec) →
     ``gateway-stale``. A generation unknown on either side (no ``metadata.generation``, no
     ``observedGeneration``) is not judged stale;
   * ``Ready`` not ``True`` → ``gateway-not-ready``, quoting the condition's reason and message.

   All three tell the user to retry: controllers (ReplicaSets, Jobs...) do so on their own.
"""

from __future__ import annotations

import enum
import ipaddress
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
# How a user finds the controller's pods: the labels charts/kube-tungo puts on them (default name).
OPERATOR_PODS: Final = (
    "kubectl get pods -A -l app.kubernetes.io/component=operator,app.kubernetes.io/name=kube-tungo"
)


@dataclass(frozen=True, slots=True)
class ReadyCondition:
    """A TunGateway's ``status.conditions[type=Ready]``, as handlers.controller writes it."""

    status: str  # "True", "False" (or "Unknown")
    reason: str = ""
    message: str = ""
    observed_generation: int | None = None  # the metadata.generation it describes; None: not said

    @classmethod
    def from_status(cls, status: object) -> ReadyCondition | None:
        """The Ready condition of a raw ``status``, or None if there is none (yet). Never raises: a
        malformed status is the controller's (or a hand edit's) problem, reported as "none"."""
        if not isinstance(status, Mapping):
            return None
        conditions = status.get("conditions")
        found = next(
            (
                cond
                for cond in (conditions if isinstance(conditions, list) else ())
                if isinstance(cond, Mapping) and cond.get("type") == "Ready"
            ),
            None,
        )
        if found is None or not isinstance(found.get("status"), str):
            return None
        # The controller writes both; the status-level one stands in for a condition without its own.
        observed = _generation(found.get("observedGeneration"))
        return cls(
            status=found["status"],
            reason=str(found.get("reason") or ""),
            message=str(found.get("message") or ""),
            observed_generation=observed
            if observed is not None
            else _generation(status.get("observedGeneration")),
        )

    @property
    def ready(self) -> bool:
        return self.status == "True"

    def describe(self) -> str:
        """``SecretNotFound: Secret shop/x not found``, or whichever part is there, or ``Ready=False``."""
        return ": ".join(part for part in (self.reason, self.message) if part) or f"Ready={self.status}"


#: ``spec.dns.mode`` that points the pod's resolver at the sidecar's DNS service.
DNS_TUNNEL: Final = "tunnel"


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """What the injector needs to know about one TunGateway."""

    name: str
    namespace: str
    pod_selector: LabelSelector = field(default_factory=LabelSelector)  # empty: every opted-in pod
    namespace_selector: LabelSelector | None = None  # None: only pods of its own namespace
    ready: ReadyCondition | None = None  # None: the controller has not reported on it (yet)
    generation: int | None = None  # metadata.generation: the spec version ``ready`` must be about
    dns_tunnel: bool = False  # spec.dns.mode == tunnel: the pod resolves through the sidecar

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
            ready=ReadyCondition.from_status(body.get("status")),
            generation=_generation(meta.get("generation")),
            dns_tunnel=isinstance(spec.get("dns"), Mapping) and spec["dns"].get("mode") == DNS_TUNNEL,
        )

    def serves(self, namespace: NamespaceInfo) -> bool:
        """Whether pods of ``namespace`` may use this gateway at all."""
        if namespace.name == self.namespace:
            return True
        return self.namespace_selector is not None and self.namespace_selector.matches(dict(namespace.labels))

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def stale(self) -> bool:
        """Whether its Ready condition describes an older spec than the current one."""
        observed = None if self.ready is None else self.ready.observed_generation
        return self.generation is not None and observed is not None and observed < self.generation


def _generation(value: object) -> int | None:
    # bool is an int in Python, never a generation.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
    routing = _pod_routing(who, annotations)
    if isinstance(routing, Decision):
        return routing
    # Problems of the pod itself first: they need a fix, whereas an unready gateway may just need time.
    problem = _conflict(who, spec) or _unready(who, chosen)
    if problem is not None:
        return problem
    return Decision(
        Verdict.INJECT,
        "injected",
        f"{who}: injected with TunGateway {chosen.ref!r}",
        patch=_patch(pod, chosen, namespace, settings, routing),
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
    matching = [g for g in visible if g.pod_selector.matches(labels)]
    if wanted is not None:
        # "name", or "namespace/name" to pick one shared from another namespace.
        ns_part, _, name_part = wanted.rpartition("/")
        named = [g for g in visible if g.name == name_part and ns_part in ("", g.namespace)]
        local = [g for g in named if g.namespace == namespace.name]
        if local or len(named) == 1:
            return _selecting(who, (local or named)[0], labels, matching)
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


def _selecting(
    who: str, named: GatewayInfo, labels: Mapping[str, str], matching: list[GatewayInfo]
) -> GatewayInfo | Decision:
    """The gateway the annotation named, if its podSelector lets this pod use it."""
    if named.pod_selector.matches(labels):
        return named
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
    others = (
        f"gateways that select it: {', '.join(g.ref for g in matching)}"
        if matching
        else "no gateway serving its namespace selects it"
    )
    return Decision(
        Verdict.DENY,
        "gateway-selector-mismatch",
        f"tungo injector: {who} asks for TunGateway {named.ref!r} (annotation {c.GATEWAY_ANNOTATION}), but "
        f"that gateway's spec.podSelector ({_selector_text(named.pod_selector)}) does not select it (pod "
        f"labels: {shown}): podSelector decides which pods may use a gateway, and the annotation only "
        f"chooses among those. Give the pod (or its Deployment's pod template) matching labels, widen the "
        f"gateway's podSelector, or name another gateway ({others}).",
    )


def _selector_text(selector: LabelSelector) -> str:
    """kubectl's ``-l`` syntax: ``app=web,tier in (db,cache),env notin (prod),team,!legacy``."""
    parts = [f"{key}={value}" for key, value in selector.match_labels]
    for req in selector.match_expressions:
        values = ",".join(req.values)
        parts.append(
            {
                "In": f"{req.key} in ({values})",
                "NotIn": f"{req.key} notin ({values})",
                "Exists": req.key,
                "DoesNotExist": f"!{req.key}",
            }.get(req.operator, f"{req.key} {req.operator} ({values})")
        )
    return ",".join(parts) or "empty: every pod"


def _unready(who: str, gateway: GatewayInfo) -> Decision | None:
    """Deny when ``gateway`` is not known Ready for its current spec (see the module docstring)."""
    ready, ref = gateway.ready, gateway.ref
    if ready is None:
        return Decision(
            Verdict.DENY,
            "gateway-not-reconciled",
            f"tungo injector: TunGateway {ref} has no Ready condition yet: the tungo operator has not "
            f"reconciled it, so its config Secret {c.config_secret_name(gateway.name)} may not exist and "
            f"{who} would wait in ContainerCreating. This is normal for a few seconds after a gateway is "
            f"created: retry (controllers retry on their own). If it lasts, the operator is not "
            f"running or does not watch namespace {gateway.namespace!r}: {OPERATOR_PODS}, then read its "
            f"logs.",
        )
    if gateway.stale:
        return Decision(
            Verdict.DENY,
            "gateway-stale",
            f"tungo injector: TunGateway {ref} was changed (generation {gateway.generation}) but the tungo "
            f"operator has last reported on generation {ready.observed_generation} "
            f"(Ready={ready.status}: {ready.reason or 'no reason'}), so its config Secret may not match "
            f"the new spec yet and {who} could start with an outdated tunnel or wait in ContainerCreating. "
            f"Retry in a few seconds (controllers retry on their own); if it lasts, check that the "
            f"operator is running: {OPERATOR_PODS}, then read its logs.",
        )
    if not ready.ready:
        return Decision(
            Verdict.DENY,
            "gateway-not-ready",
            f"tungo injector: TunGateway {ref} is not Ready ({ready.describe()}): {who} and other pods "
            f"using it would wait in ContainerCreating for a config Secret that may not exist, or start "
            f"with one the operator could not update. Fix the gateway (kubectl describe tungateway -n "
            f"{gateway.namespace} {gateway.name}), then retry; controllers retry on their own.",
        )
    return None


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


def _patch(
    pod: Mapping[str, Any],
    chosen: GatewayInfo,
    namespace: str,
    settings: sidecar.SidecarSettings,
    routing: tuple[str, ...] = (),
) -> tuple[PatchOp, ...]:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    gateway = chosen.name
    ops: list[PatchOp] = []
    ctr = sidecar.container(settings, dns=chosen.dns_tunnel)
    if routing:
        ctr["args"] = list(routing)
    if "initContainers" in spec and spec["initContainers"] is not None:
        ops.append(PatchOp("add", pointer("spec", "initContainers", 0), ctr))
    else:
        ops.append(PatchOp("add", pointer("spec", "initContainers"), [ctr]))
    vols = sidecar.volumes(gateway)
    if "volumes" in spec and spec["volumes"] is not None:
        ops.extend(PatchOp("add", pointer("spec", "volumes", "-"), v) for v in vols)
    else:
        ops.append(PatchOp("add", pointer("spec", "volumes"), vols))
    if chosen.dns_tunnel and spec.get("dnsPolicy") != "None":
        # The pod resolves through the sidecar's DNS service (127.0.0.1:53): cluster names go to the
        # cluster DNS unchanged, every other name through the chain. Search domains and ndots as the
        # kubelet would set them for ClusterFirst; the pod's own extra ones are kept. A pod that set
        # ``dnsPolicy: None`` chose its resolvers itself: left as it is.
        ops.extend(_dns_config(spec, namespace, settings.cluster_domain))
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


def _dns_config(spec: Mapping[str, Any], namespace: str, domain: str) -> list[PatchOp]:
    own = spec.get("dnsConfig") or {}
    searches = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]
    searches += [s for s in own.get("searches") or () if s not in searches]
    options = [o for o in own.get("options") or () if isinstance(o, Mapping) and o.get("name") != "ndots"]
    config = {
        "nameservers": [sidecar.DNS_ADDRESS],
        "searches": searches,
        "options": [{"name": "ndots", "value": "5"}, *options],
    }
    return [
        PatchOp("add", pointer("spec", "dnsPolicy"), "None"),
        PatchOp("add", pointer("spec", "dnsConfig"), config),
    ]


#: Entries a per-pod routing annotation may hold (a pod spec is no place for a routing table).
MAX_POD_CIDRS = 64


def _pod_routing(who: str, annotations: Mapping[str, Any]) -> tuple[str, ...] | Decision:
    """The sidecar arguments a pod's routing annotations ask for (``--exclude``/``--route``), or the
    denial naming the bad value: a sidecar capturing other than what the pod asked for is worse than
    no pod."""
    args: list[str] = []
    flags = (
        (c.EXCLUDE_ANNOTATION, "--exclude"),
        (c.INCLUDE_ANNOTATION, "--route"),
        (c.EXCLUDE_PORTS_ANNOTATION, "--exclude-ports"),
    )
    for key, flag in flags:
        value = annotations.get(key)
        if value is None:
            continue
        text = str(value).strip()
        if flag == "--route" and text == "*":
            text = "0.0.0.0/0,::/0"
        parts = [part.strip() for part in text.split(",") if part.strip()]
        problem = None
        if not parts:
            problem = "is empty"
        elif len(parts) > MAX_POD_CIDRS:
            problem = f"lists {len(parts)} ranges; at most {MAX_POD_CIDRS}"
        check = _bad_port_range if flag == "--exclude-ports" else _bad_cidr
        for part in parts if problem is None else ():
            problem = check(part)
            if problem is not None:
                break
        if problem is not None:
            return Decision(
                Verdict.DENY,
                "annotation-invalid",
                f"tungo injector: {who}: annotation {key} {problem}: give {_EXAMPLES[flag]}.",
            )
        args.append(f"{flag}={','.join(parts)}")
    return tuple(args)


_EXAMPLES = {
    "--exclude": "comma-separated CIDRs such as 10.0.0.0/8,fd00::/8",
    "--route": "comma-separated CIDRs such as 10.0.0.0/8,fd00::/8 (or * for everything)",
    "--exclude-ports": "comma-separated ports or ranges such as 5432,8000-8100",
}


def _bad_cidr(text: str) -> str | None:
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return f"{text!r} is not a CIDR ({exc})"
    return None


def _bad_port_range(text: str) -> str | None:
    low, _, high = text.partition("-")
    ports = (low, high or low)
    if not all(p.isdigit() and 1 <= int(p) <= 65535 for p in ports) or int(ports[0]) > int(ports[1]):
        return f"{text!r} is not a port or a range of ports (1-65535, low-high)"
    return None
