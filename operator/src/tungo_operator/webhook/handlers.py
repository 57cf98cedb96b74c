"""The webhook's kopf registry: two indexes and the mutating handler that calls the pure core.

Owns the glue between kopf and tungo_operator.injection: TunGateways and Namespaces are indexed as
``GatewayInfo`` / ``NamespaceInfo`` (so a request never waits on the API), and ``inject`` turns a
``core.Decision`` into kopf's vocabulary (a body transformation, an AdmissionError, a warning).
``make_registry()`` builds a fresh registry so the webhook process runs these handlers only, never the
controller's. Called by ``webhook.app`` and the tests. Reads the cluster; never writes to it.
"""

from __future__ import annotations

import collections
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

#: Why a pod is turned away while the indexes fill (a new replica's first moments, before /readyz).
STARTING = (
    "tungo injector: starting up, its view of TunGateways and Namespaces is not complete yet; retry in "
    "a few seconds (controllers retry on their own)"
)


class IndexGate:
    """Open once kopf has filled every index of the registry.

    kopf runs no handler but the indexing ones until the initial listing of every indexed resource is
    indexed, so the first call of any other handler (``indexes_filled``, on Namespace events: a cluster
    always has namespaces) proves the indexes are complete. Read by ``inject`` and by the server's
    ``/readyz``; a plain flag, as both run on kopf's loop.
    """

    def __init__(self) -> None:
        self.open = False

    def problem(self) -> str | None:
        """``None`` once open, else why not (the server's readiness callable)."""
        return None if self.open else "TunGateway and Namespace indexes not filled yet"


class QuietDenials(logging.Filter):
    """Keeps kopf's routine lines out of the log, so what is left means something. Install it on the
    ``kopf.objects`` logger (``webhook.app`` does).

    kopf logs every ``AdmissionError`` at ERROR ("... failed permanently: <message>"); a denial is
    routine and ``inject`` has logged it at INFO with its reason, so kopf's copy is dropped. Real errors
    (a malformed pod, a crash in a handler) keep their ERROR line. kopf also logs "succeeded" at INFO
    for every Namespace event the index gate sees: dropped too."""

    def __init__(self, remembered: int = 256) -> None:
        super().__init__()
        self._recent: collections.deque[str] = collections.deque(maxlen=remembered)

    def denied(self, message: str) -> None:
        self._recent.append(f" failed permanently: {message}")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return record.getMessage() != _GATE_SUCCEEDED
        text = record.getMessage()
        return not any(text.endswith(tail) for tail in self._recent)


QUIET_DENIALS = QuietDenials()
_GATE_ID: Final = "tungo_indexes_filled"
_GATE_SUCCEEDED: Final = f"Handler {_GATE_ID!r} succeeded."


def index_gateway(*, body: kopf.Body, **_: Any) -> dict[str, core.GatewayInfo]:
    """kopf index function: ``{gateway namespace: GatewayInfo}``; a bad selector leaves it out.

    kopf calls it on every watch event, status-only ones included, so the Ready condition and
    generations in the entry follow the controller's reports (pods wait for a Ready gateway).
    """
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
    if not memo.indexes.open:
        _deny(STARTING, "starting", 503)
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
    if decision.verdict is core.Verdict.DENY:
        _deny(decision.message, decision.reason, 403)
    logger.info("%s (%s)", decision.message, decision.reason)
    if decision.reason == "host-network":
        warnings.append(decision.message)
    if decision.verdict is core.Verdict.INJECT:
        ops = decision.patch
        # kopf applies this to a copy of the pod and returns the difference as the JSON Patch.
        patch.fns.append(lambda raw: patches.apply(cast(dict[str, Any], raw), ops))


def _deny(message: str, reason: str, code: int) -> None:
    """Turn the pod away: one INFO line with the reason (kopf's own ERROR copy is filtered out)."""
    logger.info("denied (%s): %s", reason, message)
    QUIET_DENIALS.denied(message)
    raise kopf.AdmissionError(message, code=code)


def indexes_filled(*, memo: Any, **_: Any) -> None:
    """kopf event handler on Namespaces: kopf calls it only once every index is filled."""
    if not memo.indexes.open:
        memo.indexes.open = True
        logger.info("indexes filled: TunGateways and Namespaces known; answering reviews")


def make_registry(*, login: Callable[..., Any] | None = None) -> kopf.OperatorRegistry:
    """A registry with the webhook's handlers only; ``login`` replaces kopf's in-cluster/kubeconfig one."""
    registry = kopf.OperatorRegistry()
    kopf.index(c.GROUP, c.VERSION, c.PLURAL_GATEWAY, id="tungo_gateways", registry=registry)(index_gateway)
    kopf.index("", "v1", "namespaces", id="tungo_namespaces", registry=registry)(index_namespace)
    kopf.on.event("", "v1", "namespaces", id=_GATE_ID, registry=registry)(indexes_filled)
    kopf.on.mutate(
        "", "v1", "pods", id=HANDLER_ID, operations=["CREATE"], side_effects=False, registry=registry
    )(inject)
    kopf.on.login(registry=registry)(login or _login)
    return registry


def _login(**kwargs: Any) -> Any:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def sidecar_memo(settings: sidecar.SidecarSettings, indexes: IndexGate | None = None) -> kopf.Memo:
    """The operator memo the handlers read their sidecar settings and index gate from."""
    return kopf.Memo(sidecar=settings, indexes=indexes if indexes is not None else IndexGate())
