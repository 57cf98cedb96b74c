"""The reconcile steps of one TunGateway: read its Chain and Secrets, render, write the config Secrets.

``apply_gateway`` resolves everything first and writes only when every namespace can be written
(a conflict anywhere writes nothing: no half-applied gateway), then removes the Secrets of namespaces
the gateway no longer serves. ``remove_gateway`` deletes them all. ``ready_condition`` builds the
``Ready`` condition, ``exclusions_condition`` the ``ClusterExclusions`` one (what could not be
discovered). The cluster facts come from the caller: which CIDRs to exclude is ``model.exclusions``'s
decision. Called by ``handlers.controller``; does its I/O through ``kube.KubeApi`` only and
never imports kopf, so the kopf layer stays a thin adapter.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tungo_operator.handlers.kube import KubeApi, custom_path, secret_path
from tungo_operator.model import conventions
from tungo_operator.model.chain import Chain, parse_chain
from tungo_operator.model.errors import MissingReferenceError, SecretConflictError, SpecError
from tungo_operator.model.exclusions import ClusterFacts, Exclusions, cluster_exclusions
from tungo_operator.model.gateway import Gateway, parse_gateway
from tungo_operator.render.config import RenderedConfig, config_secret, decode_secret, render_config


@dataclass(frozen=True, slots=True)
class Applied:
    gateway: Gateway
    chain: Chain
    config_hash: str
    namespaces: tuple[str, ...]  # every namespace holding the config Secret now
    written: tuple[str, ...]  # namespaces where it was created or changed (the sidecars there reload)
    removed: tuple[str, ...]  # namespaces it was deleted from
    exclusions: Exclusions  # what the rendered config keeps off the tunnel, and what is unknown


async def load_chain(api: KubeApi, namespace: str, name: str) -> Chain:
    body = await api.get(custom_path(conventions.PLURAL_CHAIN, namespace, name))
    if body is None:
        raise MissingReferenceError(
            f"Chain {namespace}/{name} not found: create it or fix spec.chainRef.name",
            kind="Chain",
            namespace=namespace,
            name=name,
        )
    try:
        return parse_chain(body)
    except SpecError as exc:
        raise SpecError(f"Chain {namespace}/{name} is invalid: {exc}") from exc


async def load_secrets(api: KubeApi, chain: Chain) -> dict[str, dict[str, bytes]]:
    """The decoded Secrets the chain names; missing ones are left out (the renderer says who needs them)."""
    secrets: dict[str, dict[str, bytes]] = {}
    for name in sorted(chain.secret_names()):
        body = await api.get(secret_path(chain.namespace, name))
        if body is not None:
            secrets[name] = decode_secret(body)
    return secrets


def _owned_by(secret: Mapping[str, Any], gateway: Gateway) -> bool:
    meta = secret.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return (
        labels.get(conventions.MANAGED_BY_LABEL) == conventions.MANAGED_BY
        and labels.get(conventions.GATEWAY_LABEL) == gateway.name
        and annotations.get(conventions.GATEWAY_NAMESPACE_ANNOTATION) == gateway.namespace
    )


def _check_owner(existing: Mapping[str, Any] | None, gateway: Gateway, namespace: str) -> None:
    if existing is None or _owned_by(existing, gateway):
        return
    name = conventions.config_secret_name(gateway.name)
    annotations = (existing.get("metadata") or {}).get("annotations") or {}
    other = annotations.get(conventions.GATEWAY_NAMESPACE_ANNOTATION)
    who = f"TunGateway {other}/{gateway.name}" if other else "something other than tungo-operator"
    raise SecretConflictError(
        f"Secret {namespace}/{name} already exists and belongs to {who}; "
        f"rename this gateway or remove the other one from namespace {namespace!r}"
    )


def _patch_for(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``existing`` into ``desired`` (keys no longer rendered are removed)."""
    data: dict[str, Any] = {key: None for key in existing.get("data") or {} if key not in desired["data"]}
    data.update(desired["data"])
    return {"metadata": desired["metadata"], "data": data}


async def apply_gateway(
    api: KubeApi,
    body: Mapping[str, Any],
    *,
    serve: Callable[[Gateway], Iterable[str]],
    facts: ClusterFacts,
    previous: Sequence[str] = (),
) -> Applied:
    """Validate, resolve, render and write one gateway's config Secrets; see the module docstring."""
    gateway = parse_gateway(body)
    uid = (body.get("metadata") or {}).get("uid")
    chain = await load_chain(api, gateway.namespace, gateway.chain)
    exclusions = cluster_exclusions(gateway, facts)
    cluster_dns = facts.dns.cluster_ips if facts.dns is not None and facts.dns.found else ()
    rendered: RenderedConfig = render_config(
        gateway,
        chain,
        await load_secrets(api, chain),
        excluded=exclusions.cidrs,
        cluster_dns=cluster_dns,
        cluster_domain=facts.config.cluster_domain,
    )
    namespaces = sorted({gateway.namespace, *serve(gateway)})
    name = conventions.config_secret_name(gateway.name)

    existing = {ns: await api.get(secret_path(ns, name)) for ns in namespaces}
    for ns in namespaces:  # every check before any write
        _check_owner(existing[ns], gateway, ns)

    written: list[str] = []
    for ns in namespaces:
        desired = config_secret(gateway, rendered, ns, owner_uid=uid)
        current = existing[ns]
        if current is None:
            await api.create(secret_path(ns), desired)
            written.append(ns)
            continue
        annotations = (current.get("metadata") or {}).get("annotations") or {}
        if annotations.get(conventions.CONFIG_HASH_ANNOTATION) != rendered.config_hash:
            await api.patch(secret_path(ns, name), _patch_for(current, dict(desired)))
            written.append(ns)

    removed = await remove_gateway(api, gateway, [ns for ns in previous if ns not in namespaces])
    return Applied(
        gateway, chain, rendered.config_hash, tuple(namespaces), tuple(written), tuple(removed), exclusions
    )


async def remove_gateway(api: KubeApi, gateway: Gateway, namespaces: Iterable[str]) -> list[str]:
    """Delete the gateway's config Secret from ``namespaces`` (only Secrets it owns); the ones deleted."""
    removed: list[str] = []
    name = conventions.config_secret_name(gateway.name)
    for ns in namespaces:
        current = await api.get(secret_path(ns, name))
        if current is not None and _owned_by(current, gateway):
            await api.delete(secret_path(ns, name))
            removed.append(ns)
    return removed


def ready_condition(
    previous: object, *, ready: bool, reason: str, message: str, generation: int | None
) -> list[dict[str, Any]]:
    """``status.conditions`` with ``Ready`` set; its transition time moves only when its status flips."""
    return set_condition(previous, "Ready", ok=ready, reason=reason, message=message, generation=generation)


EXCLUSIONS_CONDITION = "ClusterExclusions"


def exclusions_condition(
    previous: object, exclusions: Exclusions, *, generation: int | None
) -> list[dict[str, Any]]:
    """``status.conditions`` with ``ClusterExclusions`` set: True when every cluster range was found;
    False with reason ``Incomplete`` (what is missing, and how to fix it) or ``Disabled``."""
    if not exclusions.cluster:
        ok, reason = False, "Disabled"
        message = "spec.clusterExclusions is false: only spec.excludedCIDRs are kept off the tunnel"
    elif exclusions.problems:
        ok, reason, message = False, "Incomplete", "; ".join(exclusions.problems)
    else:
        ok, reason = True, "Discovered"
        message = f"{len(exclusions.entries)} CIDR(s) kept off the tunnel (status.exclusions)"
    return set_condition(
        previous, EXCLUSIONS_CONDITION, ok=ok, reason=reason, message=message, generation=generation
    )


def set_condition(
    previous: object, kind: str, *, ok: bool, reason: str, message: str, generation: int | None
) -> list[dict[str, Any]]:
    """``status.conditions`` with ``kind`` set; its transition time moves only when its status flips."""
    conditions = [dict(c) for c in previous if isinstance(c, Mapping)] if isinstance(previous, list) else []
    status = "True" if ok else "False"
    old = next((c for c in conditions if c.get("type") == kind), None)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    since = old.get("lastTransitionTime", now) if old is not None and old.get("status") == status else now
    cond: dict[str, Any] = {"type": kind, "status": status, "reason": reason, "message": message[:1024]}
    cond["lastTransitionTime"] = since
    if generation is not None:
        cond["observedGeneration"] = generation
    return [c for c in conditions if c.get("type") != kind] + [cond]
