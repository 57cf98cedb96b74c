"""The webhook's kopf registry: two indexes and the mutating handler that calls the pure core.

Owns the glue between kopf and tungo_operator.injection: TunGateways and Namespaces are indexed as
``GatewayInfo`` / ``NamespaceInfo`` (so a request never waits on the API), and ``inject`` turns a
``core.Decision`` into kopf's vocabulary (a body transformation, an AdmissionError, a warning).
``make_registry()`` builds a fresh registry so the webhook process runs these handlers only, never the
controller's. Called by ``webhook.app`` and the tests. Reads the cluster; never writes to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, cast

import kopf

from tungo_operator.injection import core, sidecar
from tungo_operator.injection import jsonpatch as patches
from tungo_operator.model import conventions as c
from tungo_operator.model.errors import OperatorError

# The webhook's URL path is /<handler id>: the chart's MutatingWebhookConfiguration uses it.
HANDLER_ID: Final = "tungo-inject"
logger = logging.getLogger(__name__)


def index_gateway(*, body: kopf.Body, **_: Any) -> dict[str, core.GatewayInfo]:
    """kopf index function: ``{gateway namespace: GatewayInfo}``; a bad selector leaves it out."""
    try:
        info = core.GatewayInfo.from_body(body)
    except OperatorError as exc:
        # The controller reports this on the TunGateway's status; pods asking for it get "missing".
        logger.warning(
            "TunGateway %s/%s ignored by the injector: %s", body.meta.namespace, body.meta.name, exc
        )
        return {}
    return {info.namespace: info}


def index_namespace(*, body: kopf.Body, **_: Any) -> dict[str, core.NamespaceInfo]:
    """kopf index function: ``{namespace name: NamespaceInfo}``."""
    info = core.NamespaceInfo.from_body(body)
    return {info.name: info}


def inject(*, body: kopf.Body, patch: kopf.Patch, warnings: list[str], memo: Any, **kwargs: Any) -> None:
    """kopf on.mutate handler for pods: decide, then patch, deny or warn."""
    # kopf passes each index as a keyword named after its handler id (see make_registry).
    tungo_gateways: kopf.Index[str, core.GatewayInfo] = kwargs["tungo_gateways"]
    tungo_namespaces: kopf.Index[str, core.NamespaceInfo] = kwargs["tungo_namespaces"]
    operation = kwargs.get("operation")
    pod = dict(body)
    namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
    ns_store = tungo_namespaces.get(namespace, ())
    ns_info = next(iter(ns_store), None)
    gateways = [g for store in tungo_gateways.values() for g in store]
    try:
        decision = core.decide(
            operation=operation or "CREATE",
            pod=pod,
            namespace=namespace,
            namespace_info=ns_info,
            gateways=gateways,
            settings=memo.sidecar,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # The apiserver only sends well-typed pods; anything else is a client bug: say what broke.
        raise kopf.AdmissionError(f"tungo injector: malformed pod object: {exc!r}", code=400) from exc
    logger.info("%s (%s)", decision.message, decision.reason)
    if decision.verdict is core.Verdict.DENY:
        raise kopf.AdmissionError(decision.message, code=403)
    if decision.reason == "host-network":
        warnings.append(decision.message)
    if decision.verdict is core.Verdict.INJECT:
        ops = decision.patch
        # kopf applies this to a copy of the pod and returns the difference as the JSON Patch.
        patch.fns.append(lambda raw: patches.apply(cast(dict[str, Any], raw), ops))


def make_registry(*, login: Callable[..., Any] | None = None) -> kopf.OperatorRegistry:
    """A registry with the webhook's handlers only; ``login`` replaces kopf's in-cluster/kubeconfig one."""
    registry = kopf.OperatorRegistry()
    kopf.index(c.GROUP, c.VERSION, c.PLURAL_GATEWAY, id="tungo_gateways", registry=registry)(index_gateway)
    kopf.index("", "v1", "namespaces", id="tungo_namespaces", registry=registry)(index_namespace)
    kopf.on.mutate(
        "", "v1", "pods", id=HANDLER_ID, operations=["CREATE"], side_effects=False, registry=registry
    )(inject)
    kopf.on.login(registry=registry)(login or _login)
    return registry


def _login(**kwargs: Any) -> Any:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def sidecar_memo(settings: sidecar.SidecarSettings) -> kopf.Memo:
    """The operator memo the handler reads its sidecar settings from."""
    return kopf.Memo(sidecar=settings)
