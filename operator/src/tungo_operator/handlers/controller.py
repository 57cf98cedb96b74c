"""The kopf handlers of the TunGateway controller: the only module of the operator that imports kopf.

``Controller.register(registry)`` puts every handler on a kopf registry (tests use a fresh one each):

* TunGateway create/update/resume → ``reconcile.apply_gateway`` (render + write the config Secrets),
  then ``status`` (``conditions[Ready]``, ``observedGeneration``, ``configHash``, ``namespaces``,
  ``injectedPods``) and an Event; delete → remove the config Secrets from every namespace served.
* Chain create/update/resume (and its DELETED event) → the Chain's status, then a re-render of its gateways.
* Secret events (except the ones we write) → a re-render of the gateways whose Chain names the Secret.
* Pod events in a served namespace → ``status.injectedPods`` (pods with ``tungo.dev/status: injected``).
* Namespace events (cluster-wide mode only) → a re-render of gateways with a ``namespaceSelector``.
* Node, ServiceCIDR and cluster Service (DNS, ``kubernetes``) events → a re-render of the gateways with
  ``spec.clusterExclusions`` whose cluster facts changed (``status.exclusions`` says what and why).

Cluster exclusions (``model.exclusions``): kopf indices hold every Node's ``spec.podCIDRs`` and every
ServiceCIDR's ``spec.cidrs`` (cluster-scoped, so kopf watches them cluster-wide in both modes) and, in
cluster-wide mode, the ClusterIPs of the DNS Service and of ``default/kubernetes`` (a Service watch
filtered to those two). A namespaced operator (``-n``) does not watch Services outside its namespaces:
it reads those two with a GET at each reconcile instead, so a DNS Service re-created with a new IP is
noticed at the gateway's next reconcile, not at once. ``DiscoveryConfig(enabled=False)``
(``--no-cluster-discovery``) registers none of these watches: only link-local and the configured
ranges are excluded, and the ``ClusterExclusions`` condition says so.

Lookups between resources use kopf indices (gateways by chain, chains by secret, injected pods by
gateway, namespace labels), so no handler lists the cluster. User errors (``OperatorError``) become
``Ready=False`` with the error's reason and message, a Warning Event, and ``kopf.PermanentError`` for
handlers kopf retries; API failures become ``kopf.TemporaryError`` (retried). Decisions live in the
``model``/``render`` layers and the I/O steps in ``reconcile``; this module only adapts them to kopf.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import kopf

from tungo_operator.handlers import reconcile
from tungo_operator.handlers.kube import ApiError, Connection, KubeApi, custom_path, service_path
from tungo_operator.model import conventions
from tungo_operator.model import exclusions as excl
from tungo_operator.model.chain import parse_chain
from tungo_operator.model.errors import MissingReferenceError, OperatorError
from tungo_operator.model.gateway import Gateway

LoginFn = Callable[..., Any]
GATEWAYS = (conventions.GROUP, conventions.VERSION, conventions.PLURAL_GATEWAY)
CHAINS = (conventions.GROUP, conventions.VERSION, conventions.PLURAL_CHAIN)
NODES = ("", "v1", "nodes")
SERVICE_CIDRS = ("networking.k8s.io", "v1", "servicecidrs")  # GA in Kubernetes 1.33
SERVICES = ("", "v1", "services")
API_RETRY_DELAY = 10.0  # seconds before kopf retries a handler after an API failure

log = logging.getLogger(__name__)


def make_settings() -> kopf.OperatorSettings:
    """kopf settings: our own finalizer and annotation prefixes (never kopf's defaults in our objects)."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = f"{conventions.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=conventions.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=conventions.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    return settings


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then a kubeconfig (kopf's own minimal login helpers)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def to_connection(info: kopf.ConnectionInfo) -> Connection:
    def text(value: object) -> str | None:
        return None if value is None else str(value)

    return Connection(
        server=info.server,
        token=info.token,
        scheme=info.scheme,
        username=info.username,
        password=info.password,
        ca_path=text(info.ca_path),
        ca_data=info.ca_data,
        insecure=bool(info.insecure),
        certificate_path=text(info.certificate_path),
        certificate_data=info.certificate_data,
        private_key_path=text(info.private_key_path),
        private_key_data=info.private_key_data,
    )


def _secret_refs(spec: object) -> set[str]:
    """Secret names a raw Chain spec mentions (best effort: the index must not fail on a bad spec)."""
    names: set[str] = set()
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            if (
                key in ("secretRef", "caSecretRef")
                and isinstance(value, Mapping)
                and isinstance(value.get("name"), str)
            ):
                names.add(value["name"])
            else:
                names |= _secret_refs(value)
    elif isinstance(spec, list):
        for item in spec:
            names |= _secret_refs(item)
    return names


def _as_body(body: Mapping[str, Any]) -> kopf.Body:
    return body if isinstance(body, kopf.Body) else kopf.Body(cast(kopf.RawBody, dict(body)))


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    # None in a merge patch deletes the field: leave unknown values (no generation on the object) out.
    return {key: value for key, value in values.items() if value is not None}


def _values(index: Any, key: object) -> list[Any]:
    return list(index[key]) if index is not None and key in index else []


def _pairs(index: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """An index of name → CIDRs as sorted pairs (objects without any left out): comparable facts."""
    if index is None:
        return ()
    return tuple(sorted((str(key), tuple(value)) for key in index for value in index[key] if value))


def _lookup(index: Any, namespace: str, name: str) -> excl.ServiceLookup:
    found = _values(index, (namespace, name))
    ips = tuple(found[0]) if found else ()
    return excl.ServiceLookup(namespace, name, ips, found=bool(found))


class Controller:
    """Handler state shared across resources: the API client, per-gateway locks, what each gateway serves."""

    def __init__(
        self,
        *,
        api: KubeApi | None = None,
        login: LoginFn = default_login,
        clusterwide: bool = False,
        discovery: excl.DiscoveryConfig | None = None,
    ) -> None:
        self.api = api or KubeApi()
        self.clusterwide = clusterwide
        self.discovery = discovery or excl.DiscoveryConfig()
        self._login = login
        self._locks: dict[tuple[str, str], asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._served: dict[tuple[str, str], tuple[str, ...]] = {}  # gateway → namespaces with its Secret
        self._selecting: set[tuple[str, str]] = set()  # gateways with a namespaceSelector
        self._pod_counts: dict[tuple[str, str], int] = {}
        self._secret_digests: dict[tuple[str, str], str] = {}
        self._chain_users: dict[tuple[str, str], int] = {}  # last status.gateways written per Chain
        self._rendered_facts: dict[tuple[str, str], excl.ClusterFacts] = {}  # gateways with exclusions
        self._cluster_seen: dict[tuple[str, str], tuple[str, ...]] = {}  # Node/ServiceCIDR/Service → CIDRs

    # --- cluster exclusions ------------------------------------------------------------------------

    async def discover(self, indices: Mapping[str, Any]) -> excl.ClusterFacts:
        """The cluster facts as of now: from the indices, plus two GETs when Services are not watched."""
        cfg = self.discovery
        if not cfg.enabled:
            return excl.ClusterFacts(config=cfg)
        services = indices.get("tungo_cluster_services")
        lookups = []
        for namespace, name in (cfg.dns_service, excl.KUBERNETES_SERVICE):
            if self.clusterwide:
                lookups.append(_lookup(services, namespace, name))
            else:
                lookups.append(await self._get_service(namespace, name))
        dns, kubernetes = lookups
        return excl.ClusterFacts(
            config=cfg,
            service_cidrs=_pairs(indices.get("tungo_service_cidrs")),
            nodes=_pairs(indices.get("tungo_pod_cidrs")),
            dns=dns,
            kubernetes=kubernetes,
        )

    async def _get_service(self, namespace: str, name: str) -> excl.ServiceLookup:
        try:
            body = await self.api.get(service_path(namespace, name))
        except ApiError as exc:
            return excl.ServiceLookup(namespace, name, found=False, error=str(exc))
        if body is None:
            return excl.ServiceLookup(namespace, name, found=False)
        return excl.ServiceLookup(namespace, name, excl.service_cluster_ips(body.get("spec") or {}))

    async def cluster_changed(
        self, what: tuple[str, str], cidrs: tuple[str, ...], type: str | None, indices: Mapping[str, Any]
    ) -> None:
        """A Node, ServiceCIDR or cluster Service event: re-render the gateways whose facts it changes."""
        if type == "DELETED":
            self._cluster_seen.pop(what, None)
        else:
            seen = self._cluster_seen.get(what)
            self._cluster_seen[what] = cidrs
            if type is None or seen == cidrs:
                return  # the initial listing (gateways resume on their own), or nothing we read changed
        facts = await self.discover(indices)
        for ns, name in sorted(self._rendered_facts):
            if self._rendered_facts.get((ns, name)) == facts:
                continue
            try:
                await self.reconcile_by_name(ns, name, indices)
            except ApiError as exc:  # the next cluster event (or the gateway's own) tries again
                log.warning("TunGateway %s/%s: not re-rendered after a %s change: %s", ns, name, what[0], exc)

    # --- reconciling one gateway -------------------------------------------------------------------

    def _serve(self, namespaces: Any) -> Callable[[Gateway], Iterable[str]]:
        def serve(gateway: Gateway) -> Iterable[str]:
            if gateway.namespace_selector is None or not self.clusterwide or namespaces is None:
                return ()
            selector = gateway.namespace_selector
            return [ns for ns in namespaces if any(selector.matches(labels) for labels in namespaces[ns])]

        return serve

    def injected_count(self, gateway_ns: str, gateway: str, pods: Any) -> int:
        served = self._served.get((gateway_ns, gateway), (gateway_ns,))
        return sum(len(_values(pods, (ns, gateway))) for ns in served)

    async def reconcile(
        self, body: Mapping[str, Any], indices: Mapping[str, Any]
    ) -> tuple[dict[str, Any], OperatorError | None]:
        """Render and write one gateway, post an Event; the status to patch, and the user error if any."""
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", "default"), meta["name"]
        status = body.get("status") or {}
        previous = [str(x) for x in status.get("namespaces") or [] if isinstance(x, str)]
        generation = meta.get("generation")
        async with self._locks[ns, name]:
            facts = await self.discover(indices)
            try:
                applied = await reconcile.apply_gateway(
                    self.api,
                    body,
                    serve=self._serve(indices.get("tungo_namespaces")),
                    facts=facts,
                    previous=previous,
                )
            except ApiError:
                raise
            except OperatorError as exc:
                reason = exc.reason_for_kind if isinstance(exc, MissingReferenceError) else exc.reason
                message = f"{exc}; the last good config (if any) stays in place"
                kopf.warn(_as_body(body), reason=reason, message=message)
                failed = {
                    "observedGeneration": generation,
                    "conditions": reconcile.ready_condition(
                        status.get("conditions"),
                        ready=False,
                        reason=reason,
                        message=message,
                        generation=generation,
                    ),
                }
                return _without_none(failed), exc
            self._served[ns, name] = applied.namespaces
            if applied.gateway.cluster_exclusions:
                self._rendered_facts[ns, name] = facts
            else:
                self._rendered_facts.pop((ns, name), None)
            if applied.gateway.namespace_selector is not None:
                self._selecting.add((ns, name))
            else:
                self._selecting.discard((ns, name))
            count = self.injected_count(ns, name, indices.get("tungo_injected_pods"))
            self._pod_counts[ns, name] = count
            users = len(_values(indices.get("tungo_gateways_by_chain"), (ns, applied.chain.name)))
            await self.sync_chain_users(ns, applied.chain.name, users)
            where = ", ".join(applied.namespaces)
            message = (
                f"config Secret {conventions.config_secret_name(name)} rendered for namespace(s) {where}"
            )
            if applied.gateway.namespace_selector is not None and not self.clusterwide:
                message += "; spec.namespaceSelector is ignored: the operator does not run cluster-wide"
            if applied.written or applied.removed:
                changed = f"written to {', '.join(applied.written) or 'none'}"
                if applied.removed:
                    changed += f", removed from {', '.join(applied.removed)}"
                kopf.info(
                    _as_body(body),
                    reason="ConfigRendered",
                    message=f"config {applied.config_hash[:12]} {changed}",
                )
            conditions = reconcile.ready_condition(
                status.get("conditions"),
                ready=True,
                reason="ConfigRendered",
                message=message,
                generation=generation,
            )
            conditions = reconcile.exclusions_condition(conditions, applied.exclusions, generation=generation)
            self._warn_incomplete(body, status.get("conditions"), conditions)
            succeeded = {
                "observedGeneration": generation,
                "configHash": applied.config_hash,
                "namespaces": list(applied.namespaces),
                "injectedPods": count,
                "exclusions": applied.exclusions.as_status(),
                "conditions": conditions,
            }
            return _without_none(succeeded), None

    @staticmethod
    def _warn_incomplete(body: Mapping[str, Any], before: object, after: list[dict[str, Any]]) -> None:
        """A Warning Event when the cluster exclusions become incomplete (or incomplete differently)."""

        def find(conditions: object) -> Mapping[str, Any]:
            items = conditions if isinstance(conditions, list) else []
            for cond in items:
                if isinstance(cond, Mapping) and cond.get("type") == reconcile.EXCLUSIONS_CONDITION:
                    return cond
            return {}

        old, new = find(before), find(after)
        changed = (old.get("reason"), old.get("message")) != (new.get("reason"), new.get("message"))
        if changed and new.get("reason") == "Incomplete":
            kopf.warn(_as_body(body), reason="ClusterExclusionsIncomplete", message=str(new.get("message")))

    async def reconcile_by_name(self, namespace: str, name: str, indices: Mapping[str, Any]) -> None:
        """Re-render a gateway because something it depends on changed (a Chain, a Secret, a namespace,
        a cluster range)."""
        body = await self.api.get(custom_path(conventions.PLURAL_GATEWAY, namespace, name))
        if body is None:
            return  # deleted meanwhile
        body.setdefault("apiVersion", conventions.API_VERSION)
        body.setdefault("kind", conventions.KIND_GATEWAY)
        status, error = await self.reconcile(body, indices)
        await self._patch_status(conventions.PLURAL_GATEWAY, namespace, name, status)
        if error is not None:
            log.warning("TunGateway %s/%s: %s", namespace, name, error)

    async def sync_pod_count(self, namespace: str, name: str, pods: Any) -> None:
        """Write a gateway's ``status.injectedPods`` when the index says it changed."""
        count = self.injected_count(namespace, name, pods)
        if self._pod_counts.get((namespace, name)) != count:
            self._pod_counts[namespace, name] = count
            await self._patch_status(conventions.PLURAL_GATEWAY, namespace, name, {"injectedPods": count})

    async def sync_chain_users(self, namespace: str, chain: str, users: int) -> None:
        """Keep a Chain's ``status.gateways`` current as gateways come and go (written on change only)."""
        if self._chain_users.get((namespace, chain)) != users:
            self._chain_users[namespace, chain] = users
            await self._patch_status(conventions.PLURAL_CHAIN, namespace, chain, {"gateways": users})

    async def _patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        try:
            await self.api.patch(
                custom_path(plural, namespace, name, status=True), {"status": _without_none(status)}
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            # Deleted while we worked: nothing to report on; whoever depends on it is re-rendered.
            log.info("%s %s/%s is gone; status not written", plural, namespace, name)

    # --- kopf wiring -------------------------------------------------------------------------------

    def register(self, registry: kopf.OperatorRegistry) -> None:
        ctl = self

        @kopf.on.login(id="tungo_login", registry=registry)
        async def tungo_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            info = ctl._login(**kwargs)
            if asyncio.iscoroutine(info):
                info = await info
            if info is not None:
                await ctl.api.configure(to_connection(info))
            return info  # type: ignore[no-any-return]

        @kopf.on.cleanup(id="tungo_cleanup", registry=registry)
        async def tungo_cleanup(**_: Any) -> None:
            await ctl.api.close()

        # --- indices: cross-resource lookups without listing the cluster ---
        @kopf.index(*GATEWAYS, id="tungo_gateways_by_chain", registry=registry)
        def tungo_gateways_by_chain(
            namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
        ) -> dict[Any, str]:
            ref = spec.get("chainRef")
            chain = ref.get("name") if isinstance(ref, Mapping) else None
            return {(namespace, chain): name} if isinstance(chain, str) else {}

        @kopf.index(*CHAINS, id="tungo_chains_by_secret", registry=registry)
        def tungo_chains_by_secret(
            namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
        ) -> dict[Any, str]:
            return {(namespace, secret): name for secret in _secret_refs(spec)}

        @kopf.index(
            "",
            "v1",
            "pods",
            annotations={conventions.STATUS_ANNOTATION: conventions.STATUS_INJECTED},
            id="tungo_injected_pods",
            registry=registry,
        )
        def tungo_injected_pods(
            namespace: str | None, name: str, annotations: Mapping[str, str], **_: Any
        ) -> dict[Any, str]:
            gateway = annotations.get(conventions.GATEWAY_ANNOTATION)
            return {(namespace, gateway): name} if gateway else {}

        if self.clusterwide:

            @kopf.index("", "v1", "namespaces", id="tungo_namespaces", registry=registry)
            def tungo_namespaces(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, dict[str, str]]:
                return {name: dict(labels)}

            @kopf.on.event("", "v1", "namespaces", id="tungo_namespace_event", registry=registry)
            async def tungo_namespace_event(type: str | None, **kwargs: Any) -> None:
                if type is None:
                    return  # the initial listing: gateways resume on their own
                for ns, name in sorted(ctl._selecting):
                    await ctl.reconcile_by_name(ns, name, kwargs)

        if self.discovery.enabled:
            self._register_discovery(registry)

        # --- TunGateway ---
        @kopf.on.resume(*GATEWAYS, id="tungo_gateway", registry=registry)
        @kopf.on.create(*GATEWAYS, id="tungo_gateway", registry=registry)
        @kopf.on.update(*GATEWAYS, field="spec", id="tungo_gateway", registry=registry)
        async def tungo_gateway(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
            # The status goes out with kopf's own patch of this object: one PATCH, one resourceVersion.
            try:
                status, error = await ctl.reconcile(body, kwargs)
            except ApiError as exc:
                raise kopf.TemporaryError(str(exc), delay=API_RETRY_DELAY) from exc
            for key, value in status.items():
                patch.status[key] = value
            if error is not None:
                raise kopf.PermanentError(str(error)) from error

        @kopf.on.delete(*GATEWAYS, id="tungo_gateway_deleted", registry=registry)
        async def tungo_gateway_deleted(
            namespace: str | None,
            name: str,
            spec: Mapping[str, Any],
            status: Mapping[str, Any],
            **kwargs: Any,
        ) -> None:
            namespace = namespace or ""
            served = {namespace, *ctl._served.pop((namespace, name), ()), *(status.get("namespaces") or [])}
            ctl._selecting.discard((namespace, name))
            ctl._pod_counts.pop((namespace, name), None)
            ctl._rendered_facts.pop((namespace, name), None)
            try:
                await reconcile.remove_gateway(ctl.api, Gateway(namespace, name, chain=""), sorted(served))
                ref = spec.get("chainRef")
                chain = ref.get("name") if isinstance(ref, Mapping) else None
                if isinstance(chain, str):  # the index still holds this gateway until it is gone
                    users = _values(kwargs.get("tungo_gateways_by_chain"), (namespace, chain))
                    await ctl.sync_chain_users(namespace, chain, len([u for u in users if u != name]))
            except ApiError as exc:
                raise kopf.TemporaryError(str(exc), delay=API_RETRY_DELAY) from exc

        # --- Chain ---
        async def chain_changed(
            body: kopf.Body, namespace: str, name: str, kwargs: Mapping[str, Any], *, deleted: bool
        ) -> None:
            users = sorted(_values(kwargs.get("tungo_gateways_by_chain"), (namespace, name)))
            error: OperatorError | None = None
            if not deleted:
                try:
                    chain = parse_chain(body)
                    hops, reason, ready = len(chain.hops), "Valid", True
                    message = f"{hops} hop(s); used by {len(users)} gateway(s)"
                except OperatorError as exc:
                    error, hops, reason, ready, message = exc, 0, exc.reason, False, str(exc)
                    kopf.warn(_as_body(body), reason=reason, message=message)
                status = body.get("status") or {}
                generation = body.get("metadata", {}).get("generation")
                await ctl._patch_status(
                    conventions.PLURAL_CHAIN,
                    namespace,
                    name,
                    {
                        "observedGeneration": generation,
                        "hops": hops,
                        "gateways": len(users),  # also kept current by sync_chain_users
                        "conditions": reconcile.ready_condition(
                            status.get("conditions"),
                            ready=ready,
                            reason=reason,
                            message=message,
                            generation=generation,
                        ),
                    },
                )
            ctl._chain_users[namespace, name] = len(users)
            for gateway in users:
                await ctl.reconcile_by_name(namespace, gateway, kwargs)
            if error is not None:
                raise kopf.PermanentError(str(error)) from error

        @kopf.on.resume(*CHAINS, id="tungo_chain", registry=registry)
        @kopf.on.create(*CHAINS, id="tungo_chain", registry=registry)
        @kopf.on.update(*CHAINS, field="spec", id="tungo_chain", registry=registry)
        async def tungo_chain(body: kopf.Body, namespace: str | None, name: str, **kwargs: Any) -> None:
            try:
                await chain_changed(body, namespace or "", name, kwargs, deleted=False)
            except ApiError as exc:
                raise kopf.TemporaryError(str(exc), delay=API_RETRY_DELAY) from exc

        # No finalizer on Chains (deleting one must not wait for us): the watch's DELETED event tells
        # the gateways, which then report ChainNotFound and keep their last good config.
        @kopf.on.event(*CHAINS, id="tungo_chain_deleted", registry=registry)
        async def tungo_chain_deleted(
            type: str | None, body: kopf.Body, namespace: str | None, name: str, **kwargs: Any
        ) -> None:
            if type == "DELETED":
                await chain_changed(body, namespace or "", name, kwargs, deleted=True)

        # --- Secrets the chains reference (never the config Secrets we write ourselves) ---
        # Filtered here, not with a kopf label filter: users' Secrets often carry a managed-by label
        # of their own (Helm, Argo CD...), and those must still trigger a re-render.
        @kopf.on.event("", "v1", "secrets", id="tungo_secret_event", registry=registry)
        async def tungo_secret_event(
            type: str | None,
            body: kopf.Body,
            labels: Mapping[str, str],
            namespace: str | None,
            name: str,
            **kwargs: Any,
        ) -> None:
            namespace = namespace or ""
            chains = sorted(_values(kwargs.get("tungo_chains_by_secret"), (namespace, name)))
            if labels.get(conventions.MANAGED_BY_LABEL) == conventions.MANAGED_BY or not chains:
                return
            data = json.dumps([body.get("data"), body.get("stringData")], sort_keys=True)
            digest = hashlib.sha256(data.encode()).hexdigest()
            if type == "DELETED":
                ctl._secret_digests.pop((namespace, name), None)
            else:
                seen = ctl._secret_digests.get((namespace, name))
                ctl._secret_digests[namespace, name] = digest
                if type is None or seen == digest:
                    return  # initial listing (gateways resume themselves) or no change to the data
            for chain in chains:
                for gateway in sorted(_values(kwargs.get("tungo_gateways_by_chain"), (namespace, chain))):
                    await ctl.reconcile_by_name(namespace, gateway, kwargs)

        # --- injected pods → status.injectedPods ---
        # Every pod event in a served namespace re-counts from the index (in memory; writes only on
        # change). No annotation filter here: a pod losing its annotation must lower the count too.
        @kopf.on.event("", "v1", "pods", id="tungo_pod_event", registry=registry)
        async def tungo_pod_event(namespace: str | None, **kwargs: Any) -> None:
            for gw_ns, gw_name in [key for key, served in ctl._served.items() if namespace in served]:
                await ctl.sync_pod_count(gw_ns, gw_name, kwargs.get("tungo_injected_pods"))

    def _register_discovery(self, registry: kopf.OperatorRegistry) -> None:
        """Indices and events for cluster exclusions (see the module docstring)."""
        ctl = self

        # Nodes and ServiceCIDRs are cluster-scoped: kopf watches them cluster-wide even with -n. An
        # API without ServiceCIDRs (before Kubernetes 1.33) is not watched at all: the index stays
        # empty and model.exclusions falls back to the configured --service-cidr.
        @kopf.index(*NODES, id="tungo_pod_cidrs", registry=registry)
        def tungo_pod_cidrs(name: str, spec: Mapping[str, Any], **_: Any) -> dict[str, tuple[str, ...]]:
            return {name: excl.node_pod_cidrs(spec)}

        @kopf.index(*SERVICE_CIDRS, id="tungo_service_cidrs", registry=registry)
        def tungo_service_cidrs(name: str, spec: Mapping[str, Any], **_: Any) -> dict[str, tuple[str, ...]]:
            return {name: excl.service_cidrs(spec)}

        @kopf.on.event(*NODES, id="tungo_node_event", registry=registry)
        async def tungo_node_event(
            type: str | None, name: str, spec: Mapping[str, Any], **kwargs: Any
        ) -> None:
            await ctl.cluster_changed(("Node", name), excl.node_pod_cidrs(spec), type, kwargs)

        @kopf.on.event(*SERVICE_CIDRS, id="tungo_servicecidr_event", registry=registry)
        async def tungo_servicecidr_event(
            type: str | None, name: str, spec: Mapping[str, Any], **kwargs: Any
        ) -> None:
            await ctl.cluster_changed(("ServiceCIDR", name), excl.service_cidrs(spec), type, kwargs)

        if not self.clusterwide:
            return  # Services outside the watched namespaces are read with a GET (discover)
        wanted = {self.discovery.dns_service, excl.KUBERNETES_SERVICE}

        def cluster_service(namespace: str | None, name: str, **_: Any) -> bool:
            return (namespace, name) in wanted

        @kopf.index(*SERVICES, id="tungo_cluster_services", when=cluster_service, registry=registry)
        def tungo_cluster_services(
            namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
        ) -> dict[Any, tuple[str, ...]]:
            return {(namespace, name): excl.service_cluster_ips(spec)}

        @kopf.on.event(*SERVICES, id="tungo_service_event", when=cluster_service, registry=registry)
        async def tungo_service_event(
            type: str | None, namespace: str | None, name: str, spec: Mapping[str, Any], **kwargs: Any
        ) -> None:
            ips = excl.service_cluster_ips(spec)
            await ctl.cluster_changed(("Service", f"{namespace}/{name}"), ips, type, kwargs)
