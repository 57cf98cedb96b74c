"""The real kopf loop of tungo-operator (``main.operate``) against kmock's in-memory Kubernetes API.

Objects are created, patched and deleted over HTTP, exactly as kubectl would; the operator watches them,
writes config Secrets and patches status through the same API. Each test runs its own operator (fresh
registry, own thread and loop) and stops it in the fixture's finalizer. Waits are bounded polls.

What kmock 0.8 does not do, and how these tests live with it:

* ``/api/v1/namespaces[/NAME]`` (a cluster-scoped resource) makes its path parser fail with HTTP 500:
  the fixture wraps that parser for exactly those paths (``_parse_path_with_namespaces``).
* No ``resourceVersion``/``generation``/``uid``: kopf's finalizer JSON patches ``test`` the
  resourceVersion, so objects are created with a fixed one (and a unique uid, which kopf's indices key
  on); kopf cannot wait for its own patches to come back, so a handler may run twice for one change
  (ours are idempotent: the second run writes nothing).
* No CRD schema validation or defaulting, no status-subresource isolation, no owner-reference garbage
  collection, ``stringData`` stored as is, label selectors ignored on list/watch.
* Events are stored by name, and kopf's have only ``generateName``: after the first one, posting gets
  409 (kopf logs it and goes on), so tests read the POSTed events from kmock's request log instead.
* Its API discovery lists exactly the resources a test declares: leaving ``servicecidrs`` out plays an
  API server older than Kubernetes 1.33 (a GET of the list answers 404, kopf does not watch it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import pytest
import yaml
from kmock._internal import parsing as kmock_parsing

from tungo_operator.handlers.controller import make_settings
from tungo_operator.main import operate
from tungo_operator.model.chain import parse_chain
from tungo_operator.model.exclusions import (
    ClusterFacts,
    DiscoveryConfig,
    ServiceLookup,
    cluster_exclusions,
)
from tungo_operator.model.gateway import parse_gateway
from tungo_operator.render.config import decode_secret, render_config

ROOT = Path(__file__).resolve().parents[2]
GW = "tungo.dev/v1alpha1/tungateways"
CHAIN = "tungo.dev/v1alpha1/chains"
GW_PATH = "/apis/tungo.dev/v1alpha1/namespaces/{ns}/tungateways"
CHAIN_PATH = "/apis/tungo.dev/v1alpha1/namespaces/{ns}/chains"
SECRET_PATH = "/api/v1/namespaces/{ns}/secrets"
POD_PATH = "/api/v1/namespaces/{ns}/pods"
SERVICE_PATH = "/api/v1/namespaces/{ns}/services"
NODE_PATH = "/api/v1/nodes"
SERVICE_CIDR_PATH = "/apis/networking.k8s.io/v1/servicecidrs"
# What the operator finds in a cluster where nothing can be discovered (no Node, ServiceCIDR or Service).
EMPTY_CLUSTER = ClusterFacts(
    dns=ServiceLookup("kube-system", "kube-dns", found=False),
    kubernetes=ServiceLookup("default", "kubernetes", found=False),
)
WAIT = 10.0  # seconds: generous for a loaded 2-core box; every wait is a bounded poll


def examples() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"], doc["metadata"]["name"]] = doc
    return docs


def with_meta(doc: dict[str, Any], ns: str, **meta: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    # kmock keeps no resourceVersion; kopf's finalizer patches test for one, so objects carry a fixed one.
    uid = f"uid-{doc['kind'].lower()}-{ns}-{doc['metadata']['name']}"  # unique, as kopf's indices need
    doc["metadata"] = {**doc["metadata"], "namespace": ns, "uid": uid, "resourceVersion": "1", **meta}
    return doc


async def wait_for(what: str, check: Callable[[], Any], within: float = WAIT) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with contextlib.suppress(KeyError, IndexError, TypeError, AssertionError):
            result = check()
            if result:
                return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for: {what}")
        await asyncio.sleep(0.05)


class Cluster:
    """kmock plus the calls a user makes with kubectl."""

    def __init__(self, server: kmock.KubernetesEmulator) -> None:
        self.k = server

    async def call(self, method: str, path: str, body: object = None) -> Any:
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        if method == "patch":
            kwargs["headers"] = {"Content-Type": "application/merge-patch+json"}
        async with self.k.request(method, path, **kwargs) as resp:
            assert resp.status < 300, f"{method} {path}: {resp.status} {await resp.text()}"
            return await resp.json()

    async def apply(self, path: str, doc: dict[str, Any]) -> Any:
        return await self.call("post", path.format(ns=doc["metadata"]["namespace"]), doc)

    def obj(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        try:  # NB: kmock's `key in objects` is False for string resource keys; indexing parses them
            obj = self.k.objects[resource, ns, name]
        except KeyError:
            return None
        return None if obj.deleted else dict(obj.raw)

    def config(self, ns: str, gateway: str) -> str | None:
        secret = self.obj("v1/secrets", ns, f"tungo-{gateway}")
        return None if secret is None else decode_secret(secret)["config.yaml"].decode()

    def ready(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        body = self.obj(resource, ns, name) or {}
        for cond in body.get("status", {}).get("conditions", []):
            if cond["type"] == "Ready":
                return dict(cond)
        return None

    def events(self, ns: str) -> list[dict[str, Any]]:
        return [req.data for req in self.k[f"post /api/v1/namespaces/{ns}/events"]]


def _parse_path_with_namespaces(original: Callable[[str], Any]) -> Callable[[str], Any]:
    """kmock 0.8 cannot parse the cluster-scoped ``/api/v1/namespaces[/NAME]`` paths (it reads the
    plural as the ``namespaces/NAME/`` prefix and fails with a ValueError → HTTP 500). This wraps its
    parser for exactly those paths; everything else goes to kmock unchanged."""

    def parse(path: str) -> Any:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
            return kmock_parsing.ParsedPath(
                "", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None
            )
        return original(path)

    return parse


@pytest.fixture
async def cluster(
    kmock: kmock.KubernetesEmulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Cluster]:
    caplog.set_level(logging.INFO)
    declare_resources(kmock, monkeypatch)
    async with running_operator(str(kmock.url)):
        yield Cluster(kmock)


def declare_resources(
    kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch, *, service_cidrs: bool = True
) -> None:
    """The kinds this API server serves; ``service_cidrs=False``: one older than Kubernetes 1.33."""
    monkeypatch.setattr(kmock_parsing, "parse_path", _parse_path_with_namespaces(kmock_parsing.parse_path))
    info = {"verbs": {"list", "watch", "get", "create", "patch", "delete"}}
    kmock.resources[GW] = kmock.ResourceInfo(
        kind="TunGateway", namespaced=True, subresources={"status"}, **info
    )
    kmock.resources[CHAIN] = kmock.ResourceInfo(
        kind="Chain", namespaced=True, subresources={"status"}, **info
    )
    kmock.resources["v1/secrets"] = kmock.ResourceInfo(kind="Secret", namespaced=True, **info)
    kmock.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True, **info)
    kmock.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, **info)
    kmock.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True, **info)
    kmock.resources["v1/nodes"] = kmock.ResourceInfo(kind="Node", namespaced=False, **info)
    kmock.resources["v1/services"] = kmock.ResourceInfo(kind="Service", namespaced=True, **info)
    if service_cidrs:
        kmock.resources["networking.k8s.io/v1/servicecidrs"] = kmock.ResourceInfo(
            kind="ServiceCIDR", namespaced=False, **info
        )


@contextlib.asynccontextmanager
async def running_operator(
    server: str,
    *,
    namespaces: Sequence[str] = (),
    liveness: str | None = None,
    discovery: DiscoveryConfig | None = None,
) -> AsyncIterator[None]:
    """``main.operate`` in its own thread and event loop, like a separate process talking HTTP to the
    API server: kopf cancels every task it did not see at start-up when it stops, which would include
    the test's own tasks if it shared their loop."""
    settings = make_settings()
    settings.scanning.disabled = True  # kmock serves no CRD list to scan
    settings.watching.reconnect_backoff = 0.1
    stop, ready = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            login = lambda **_: kopf.ConnectionInfo(server=server)  # noqa: E731
            asyncio.run(
                operate(
                    namespaces=namespaces,
                    liveness=liveness,
                    login=login,
                    stop_flag=stop,
                    ready_flag=ready,
                    settings=settings,
                    discovery=discovery,
                )
            )
        except BaseException as exc:  # reported below
            failures.append(exc)

    thread = threading.Thread(target=run, name="tungo-operator", daemon=True)
    thread.start()
    loop = asyncio.get_running_loop()
    try:
        assert await loop.run_in_executor(None, ready.wait, WAIT), "operator not ready"
        yield
    finally:
        stop.set()
        await loop.run_in_executor(None, thread.join, WAIT)
    assert not thread.is_alive(), "operator did not stop"
    assert not failures, f"operator crashed: {failures!r}"


async def apply_examples(c: Cluster, ns: str = "demo") -> dict[tuple[str, str], dict[str, Any]]:
    docs = {key: with_meta(doc, ns) for key, doc in examples().items()}
    for (kind, _), doc in docs.items():
        if kind == "Secret":
            await c.apply(SECRET_PATH, doc)
    await c.apply(CHAIN_PATH, docs["Chain", "egress"])
    gateway = docs["TunGateway", "egress"]
    gateway["metadata"]["generation"] = 1
    await c.apply(GW_PATH, gateway)
    return docs


def expected_config(docs: dict[tuple[str, str], dict[str, Any]], facts: ClusterFacts = EMPTY_CLUSTER) -> str:
    secrets = {name: decode_secret(doc) for (kind, name), doc in docs.items() if kind == "Secret"}
    gateway, chain = parse_gateway(docs["TunGateway", "egress"]), parse_chain(docs["Chain", "egress"])
    excluded = cluster_exclusions(gateway, facts).cidrs
    return render_config(gateway, chain, secrets, excluded=excluded).config_yaml


async def test_create_renders_secret_and_patches_status(cluster: Cluster) -> None:
    c = cluster
    docs = await apply_examples(c)
    text = await wait_for("config Secret", lambda: c.config("demo", "egress"))
    assert text == expected_config(docs)  # byte for byte what the pure renderer produces

    secret = c.obj("v1/secrets", "demo", "tungo-egress")
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-tungateway-demo-egress"
    assert secret["metadata"]["labels"]["tungo.dev/gateway"] == "egress"
    assert decode_secret(secret)["ca-relay-primary.pem"].startswith(b"-----BEGIN CERTIFICATE-----")

    cond = await wait_for(
        "Ready=True", lambda: (r := c.ready(GW, "demo", "egress")) and r["status"] == "True" and r
    )
    assert cond["reason"] == "ConfigRendered" and "demo" in cond["message"]
    status = c.obj(GW, "demo", "egress")["status"]
    assert status["observedGeneration"] == 1
    assert status["namespaces"] == ["demo"] and status["injectedPods"] == 0
    assert status["configHash"] == secret["metadata"]["annotations"]["tungo.dev/config-hash"]

    chain_cond = await wait_for("Chain Ready", lambda: c.ready(CHAIN, "demo", "egress"))
    assert chain_cond["status"] == "True" and c.obj(CHAIN, "demo", "egress")["status"]["hops"] == 1
    await wait_for(
        "a ConfigRendered event", lambda: any(e["reason"] == "ConfigRendered" for e in c.events("demo"))
    )


async def test_updates_of_gateway_chain_and_secret_rerender(cluster: Cluster) -> None:
    c = cluster
    await apply_examples(c)
    await wait_for("config Secret", lambda: c.config("demo", "egress"))

    await c.call(
        "patch",
        f"{GW_PATH.format(ns='demo')}/egress",
        {"metadata": {"generation": 2}, "spec": {"tun": {"mtu": 9000}}},
    )
    await wait_for("mtu 9000", lambda: "mtu: 9000" in c.config("demo", "egress"))
    await wait_for(
        "observedGeneration 2", lambda: c.obj(GW, "demo", "egress")["status"]["observedGeneration"] == 2
    )

    await c.call(
        "patch",
        f"{SECRET_PATH.format(ns='demo')}/relay-auth",
        {"stringData": {"password": "rotated-password"}},
    )
    await wait_for("rotated password", lambda: "password: rotated-password" in c.config("demo", "egress"))

    chain = examples()["Chain", "egress"]
    nodes = copy.deepcopy(chain["spec"]["hops"][0]["nodes"])
    nodes[1]["addr"] = "relay-2.example.com:8443"
    hops = [{**chain["spec"]["hops"][0], "nodes": nodes}]
    await c.call("patch", f"{CHAIN_PATH.format(ns='demo')}/egress", {"spec": {"hops": hops}})
    await wait_for("new node address", lambda: "addr: relay-2.example.com:8443" in c.config("demo", "egress"))


async def test_delete_removes_the_config_secret(cluster: Cluster) -> None:
    c = cluster
    await apply_examples(c)
    await wait_for("config Secret", lambda: c.config("demo", "egress"))
    await wait_for(
        "finalizer", lambda: "tungo.dev/finalizer" in c.obj(GW, "demo", "egress")["metadata"]["finalizers"]
    )
    await c.call("delete", f"{GW_PATH.format(ns='demo')}/egress")
    await wait_for("Secret deleted", lambda: c.obj("v1/secrets", "demo", "tungo-egress") is None)
    await wait_for("gateway gone", lambda: c.obj(GW, "demo", "egress") is None)


async def test_invalid_spec_is_reported_and_the_operator_keeps_running(cluster: Cluster) -> None:
    c = cluster
    docs = {key: with_meta(doc, "demo") for key, doc in examples().items()}
    bad = docs["TunGateway", "egress"]
    bad["metadata"]["name"] = "broken"
    bad["spec"]["excludedCIDRs"] = ["10.96.0.1/12"]
    await c.apply(GW_PATH, bad)
    cond = await wait_for("Ready=False", lambda: c.ready(GW, "demo", "broken"))
    assert cond["status"] == "False" and cond["reason"] == "InvalidSpec"
    assert (
        "spec.excludedCIDRs[0]: '10.96.0.1/12' has host bits set (did you mean 10.96.0.0/12?)"
        in cond["message"]
    )
    await wait_for(
        "a Warning event with the message",
        lambda: any(e["type"] == "Warning" and "10.96.0.1/12" in e["message"] for e in c.events("demo")),
    )
    assert c.obj("v1/secrets", "demo", "tungo-broken") is None  # nothing half-applied

    # The operator still serves other gateways, and the fixed gateway recovers.
    await apply_examples(c)
    await wait_for("other gateway rendered", lambda: c.config("demo", "egress"))
    await c.call(
        "patch", f"{GW_PATH.format(ns='demo')}/broken", {"spec": {"excludedCIDRs": ["10.96.0.0/12"]}}
    )
    await wait_for("fixed gateway rendered", lambda: c.config("demo", "broken"))
    await wait_for("fixed gateway Ready", lambda: c.ready(GW, "demo", "broken")["status"] == "True")


@pytest.mark.parametrize(
    ("mutate", "reason", "message"),
    [
        (lambda d: d["spec"].update(chainRef={"name": "nope"}), "ChainNotFound", "Chain demo/nope not found"),
        (
            lambda d: d["spec"]["tun"].update(mtu="big"),
            "InvalidSpec",
            "spec.tun.mtu: expected an integer, got string 'big'",
        ),
        (lambda d: d["spec"].update(tun=[1]), "InvalidSpec", "spec.tun: expected an object, got list"),
    ],
)
async def test_bad_gateways_each_get_a_clear_status(
    cluster: Cluster, mutate: Any, reason: str, message: str
) -> None:
    c = cluster
    doc = with_meta(examples()["TunGateway", "egress"], "demo")
    mutate(doc)
    await c.apply(GW_PATH, doc)
    cond = await wait_for("Ready=False", lambda: c.ready(GW, "demo", "egress"))
    assert (cond["status"], cond["reason"]) == ("False", reason)
    assert message in cond["message"]


async def test_bad_chain_and_missing_secret_then_fixed(cluster: Cluster) -> None:
    c = cluster
    docs = {key: with_meta(doc, "demo") for key, doc in examples().items()}
    chain = docs["Chain", "egress"]
    chain["spec"]["hops"][0]["nodes"][0]["connector"]["type"] = "vmess"
    await c.apply(CHAIN_PATH, chain)
    await c.apply(GW_PATH, docs["TunGateway", "egress"])
    cond = await wait_for("gateway sees the bad chain", lambda: c.ready(GW, "demo", "egress"))
    assert cond["reason"] == "InvalidSpec" and "Chain demo/egress is invalid" in cond["message"]
    assert "unknown value 'vmess'" in cond["message"]
    chain_cond = await wait_for("chain Ready=False", lambda: c.ready(CHAIN, "demo", "egress"))
    assert chain_cond["status"] == "False"

    # Fix the chain: now the Secrets are missing, and the gateway says which one.
    await c.call(
        "patch", f"{CHAIN_PATH.format(ns='demo')}/egress", {"spec": examples()["Chain", "egress"]["spec"]}
    )
    cond = await wait_for(
        "SecretNotFound",
        lambda: (r := c.ready(GW, "demo", "egress")) and r["reason"] == "SecretNotFound" and r,
    )
    assert (
        "Secret demo/relay-auth not found" in cond["message"]
        or "Secret demo/relay-ca not found" in cond["message"]
    )

    # Creating the Secrets re-renders without touching the gateway.
    for (kind, _), doc in docs.items():
        if kind == "Secret":
            await c.apply(SECRET_PATH, doc)
    await wait_for("rendered after the Secrets appeared", lambda: c.config("demo", "egress"))
    await wait_for("Ready=True", lambda: c.ready(GW, "demo", "egress")["status"] == "True")


async def test_foreign_secret_is_a_conflict_and_left_alone(cluster: Cluster) -> None:
    c = cluster
    foreign = {"metadata": {"name": "tungo-egress", "namespace": "demo"}, "data": {"config.yaml": "bWluZQ=="}}
    await c.apply(SECRET_PATH, foreign)
    await apply_examples(c)
    cond = await wait_for("conflict", lambda: c.ready(GW, "demo", "egress"))
    assert cond["reason"] == "SecretConflict" and "not managed" not in cond["message"]
    assert (
        "Secret demo/tungo-egress already exists and belongs to something other than tungo-operator"
        in cond["message"]
    )
    assert c.config("demo", "egress") == "mine"


async def test_injected_pods_are_counted(cluster: Cluster) -> None:
    c = cluster
    await apply_examples(c)
    await wait_for("Ready", lambda: c.ready(GW, "demo", "egress")["status"] == "True")
    annotations = {"tungo.dev/status": "injected", "tungo.dev/gateway": "egress"}
    for name in ("app-1", "app-2"):
        await c.apply(
            POD_PATH,
            {
                "metadata": {
                    "name": name,
                    "namespace": "demo",
                    "uid": name,
                    "resourceVersion": "1",
                    "annotations": annotations,
                }
            },
        )
    await c.apply(POD_PATH, {"metadata": {"name": "plain", "namespace": "demo", "uid": "plain"}})
    await wait_for("2 pods", lambda: c.obj(GW, "demo", "egress")["status"]["injectedPods"] == 2)
    await c.call("delete", f"{POD_PATH.format(ns='demo')}/app-1")
    await wait_for("1 pod", lambda: c.obj(GW, "demo", "egress")["status"]["injectedPods"] == 1)
    # A pod that loses its mark stops counting too.
    unmark = {"metadata": {"annotations": {"tungo.dev/status": None}}}
    await c.call("patch", f"{POD_PATH.format(ns='demo')}/app-2", unmark)
    await wait_for("0 pods", lambda: c.obj(GW, "demo", "egress")["status"]["injectedPods"] == 0)


async def test_namespace_selector_writes_and_removes_secrets(cluster: Cluster) -> None:
    c = cluster
    for name, labels in (("demo", {}), ("team-a", {"egress": "yes"}), ("team-b", {})):
        await c.call(
            "post", "/api/v1/namespaces", {"metadata": {"name": name, "uid": name, "labels": labels}}
        )
    docs = {key: with_meta(doc, "demo") for key, doc in examples().items()}
    docs["TunGateway", "egress"]["spec"]["namespaceSelector"] = {"matchLabels": {"egress": "yes"}}
    for (kind, _), doc in docs.items():
        if kind == "Secret":
            await c.apply(SECRET_PATH, doc)
    await c.apply(CHAIN_PATH, docs["Chain", "egress"])
    await c.apply(GW_PATH, docs["TunGateway", "egress"])
    await wait_for("Secret in team-a", lambda: c.config("team-a", "egress"))
    assert c.config("team-a", "egress") == c.config("demo", "egress")
    secret = c.obj("v1/secrets", "team-a", "tungo-egress")
    assert secret is not None and "ownerReferences" not in secret["metadata"]  # no cross-namespace owners
    assert c.config("team-b", "egress") is None

    await c.call("patch", "/api/v1/namespaces/team-a", {"metadata": {"labels": {"egress": None}}})
    await c.call("patch", "/api/v1/namespaces/team-b", {"metadata": {"labels": {"egress": "yes"}}})
    await wait_for(
        "moved to team-b", lambda: c.config("team-b", "egress") and c.config("team-a", "egress") is None
    )
    await c.call("delete", f"{GW_PATH.format(ns='demo')}/egress")
    await wait_for(
        "all removed", lambda: all(c.config(ns, "egress") is None for ns in ("demo", "team-a", "team-b"))
    )


async def test_lost_references_keep_the_last_good_config(cluster: Cluster) -> None:
    c = cluster
    await apply_examples(c)
    good = await wait_for("config Secret", lambda: c.config("demo", "egress"))
    await wait_for(
        "Chain counts its gateway", lambda: c.obj(CHAIN, "demo", "egress")["status"]["gateways"] == 1
    )

    await c.call("delete", f"{SECRET_PATH.format(ns='demo')}/relay-auth")
    cond = await wait_for(
        "SecretNotFound",
        lambda: (r := c.ready(GW, "demo", "egress")) and r["reason"] == "SecretNotFound" and r,
    )
    assert cond["status"] == "False" and "Secret demo/relay-auth not found" in cond["message"]
    assert c.config("demo", "egress") == good  # the sidecars keep running on the last good config

    await c.call("delete", f"{CHAIN_PATH.format(ns='demo')}/egress")
    cond = await wait_for(
        "ChainNotFound", lambda: (r := c.ready(GW, "demo", "egress")) and r["reason"] == "ChainNotFound" and r
    )
    assert "Chain demo/egress not found: create it or fix spec.chainRef.name" in cond["message"]
    assert c.config("demo", "egress") == good


async def test_chain_status_counts_gateways(cluster: Cluster) -> None:
    c = cluster
    docs = await apply_examples(c)
    second = copy.deepcopy(docs["TunGateway", "egress"])
    second["metadata"].update(name="egress-2", uid="uid-tungateway-demo-egress-2")
    await c.apply(GW_PATH, second)
    await wait_for("2 gateways", lambda: c.obj(CHAIN, "demo", "egress")["status"]["gateways"] == 2)
    await c.call("delete", f"{GW_PATH.format(ns='demo')}/egress-2")
    await wait_for("1 gateway", lambda: c.obj(CHAIN, "demo", "egress")["status"]["gateways"] == 1)


async def test_restarted_operator_resumes_without_rewriting(
    kmock: kmock.KubernetesEmulator, cluster: Cluster
) -> None:
    c = cluster
    await apply_examples(c)
    secret = await wait_for("config Secret", lambda: c.obj("v1/secrets", "demo", "tungo-egress"))
    await wait_for("Ready", lambda: c.ready(GW, "demo", "egress")["status"] == "True")

    # A second operator process (the first one's replacement after a restart) resumes every object.
    start = len(list(kmock))

    def since_restart() -> list[Any]:
        return list(kmock)[start:]

    async with running_operator(str(kmock.url)):
        await wait_for(
            "resume re-checks the config Secret",
            lambda: any(
                r.method == "GET" and r.url.path.endswith("/secrets/tungo-egress") for r in since_restart()
            ),
        )
    writes = [r for r in since_restart() if r.method in ("POST", "PATCH") and "/secrets" in r.url.path]
    assert writes == []
    assert c.obj("v1/secrets", "demo", "tungo-egress") == secret  # same config: nothing rewritten
    assert c.ready(GW, "demo", "egress")["status"] == "True"


async def test_namespaced_operator_stays_in_its_namespace_and_serves_liveness(
    kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare_resources(kmock, monkeypatch)
    with socket.socket() as sock:  # a free port for the liveness endpoint
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    c = Cluster(kmock)
    async with running_operator(
        str(kmock.url), namespaces=["demo"], liveness=f"http://127.0.0.1:{port}/healthz"
    ):
        docs = {key: with_meta(doc, "demo") for key, doc in examples().items()}
        docs["TunGateway", "egress"]["spec"]["namespaceSelector"] = {"matchLabels": {"egress": "yes"}}
        for (kind, _), doc in docs.items():
            if kind == "Secret":
                await c.apply(SECRET_PATH, doc)
        await c.apply(CHAIN_PATH, docs["Chain", "egress"])
        await c.apply(GW_PATH, docs["TunGateway", "egress"])
        elsewhere = with_meta(examples()["TunGateway", "egress"], "other")
        await c.apply(GW_PATH, elsewhere)

        cond = await wait_for(
            "Ready", lambda: (r := c.ready(GW, "demo", "egress")) and r["status"] == "True" and r
        )
        assert "spec.namespaceSelector is ignored: the operator does not run cluster-wide" in cond["message"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            assert resp.status == 200
        # The gateway in the unwatched namespace was never touched.
        assert c.obj(GW, "other", "egress") == elsewhere and c.config("other", "egress") is None
        assert not [r for r in list(kmock) if "/namespaces/other/" in r.url.path and r.method != "POST"]


async def test_secrets_labelled_by_other_tools_are_followed(cluster: Cluster) -> None:
    c = cluster
    docs = {key: with_meta(doc, "demo") for key, doc in examples().items()}
    docs["Secret", "relay-auth"]["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "Helm"}
    for (kind, _), doc in docs.items():
        if kind == "Secret":
            await c.apply(SECRET_PATH, doc)
    await c.apply(CHAIN_PATH, docs["Chain", "egress"])
    await c.apply(GW_PATH, docs["TunGateway", "egress"])
    await wait_for("Ready", lambda: c.ready(GW, "demo", "egress")["status"] == "True")
    await asyncio.sleep(1.0)  # let kmock's duplicate events settle: only the Secret change may re-render now
    rotate = {"stringData": {"password": "helm-rotated"}}
    await c.call("patch", f"{SECRET_PATH.format(ns='demo')}/relay-auth", rotate)
    await wait_for("re-rendered", lambda: "password: helm-rotated" in c.config("demo", "egress"))


# --- cluster exclusions (issue 8) ----------------------------------------------------------------------


def node(name: str, *pod_cidrs: str) -> dict[str, Any]:
    spec = {"podCIDRs": list(pod_cidrs)} if pod_cidrs else {}
    return {"metadata": {"name": name, "uid": f"uid-node-{name}", "resourceVersion": "1"}, "spec": spec}


def service(ns: str, name: str, *ips: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": ns, "uid": f"uid-service-{ns}-{name}", "resourceVersion": "1"}
    return {"metadata": meta, "spec": {"clusterIP": ips[0], "clusterIPs": list(ips)}}


def service_cidr(name: str, *cidrs: str) -> dict[str, Any]:
    meta = {"name": name, "uid": f"uid-servicecidr-{name}", "resourceVersion": "1"}
    return {"metadata": meta, "spec": {"cidrs": list(cidrs)}}


def excluded(config: str | None) -> list[str]:
    """The rendered listener's ``exclude`` (what the sidecar keeps off the TUN)."""
    assert config is not None
    metadata = yaml.safe_load(config)["services"][0]["listener"]["metadata"]
    return str(metadata.get("exclude", "")).split(",")


def condition(c: Cluster, kind: str, ns: str = "demo", name: str = "egress") -> dict[str, Any] | None:
    body = c.obj(GW, ns, name) or {}
    found = [cond for cond in body.get("status", {}).get("conditions", []) if cond["type"] == kind]
    return dict(found[0]) if found else None


def exclusions(c: Cluster, ns: str = "demo", name: str = "egress") -> list[dict[str, str]]:
    return list((c.obj(GW, ns, name) or {}).get("status", {}).get("exclusions", []))


async def add_cluster(c: Cluster, *, service_cidrs: bool = True, dual_stack: bool = True) -> None:
    """A cluster (dual-stack or IPv4): its ServiceCIDR (when served), a Node, the DNS and kubernetes
    Services."""

    def v6(text: str) -> tuple[str, ...]:
        return (text,) if dual_stack else ()

    if service_cidrs:
        cidrs = ("10.96.0.0/12", *v6("fd00:10:96::/112"))
        await c.call("post", SERVICE_CIDR_PATH, service_cidr("kubernetes", *cidrs))
    await c.call("post", NODE_PATH, node("worker-1", "10.244.1.0/24", *v6("fd00:10:244:1::/64")))
    await c.apply(SERVICE_PATH, service("kube-system", "kube-dns", "10.96.0.10", *v6("fd00:10:96::a")))
    await c.apply(SERVICE_PATH, service("default", "kubernetes", "10.96.0.1", *v6("fd00:10:96::1")))


async def test_discovered_ranges_are_excluded_and_listed_with_their_sources(
    kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare_resources(kmock, monkeypatch)
    c = Cluster(kmock)
    await add_cluster(c)
    async with running_operator(str(kmock.url)):
        docs = await apply_examples(c)
        await wait_for("status.exclusions", lambda: exclusions(c))
        assert exclusions(c) == [
            {"cidr": "10.96.0.0/12", "source": "ServiceCIDR/kubernetes"},
            {"cidr": "10.96.0.10/32", "source": "Service kube-system/kube-dns"},
            {"cidr": "10.244.1.0/24", "source": "Node/worker-1 podCIDRs"},
            {"cidr": "169.254.0.0/16", "source": "link-local"},
            {"cidr": "172.31.0.0/16", "source": "spec.excludedCIDRs"},
            {"cidr": "fd00:10:96::/112", "source": "ServiceCIDR/kubernetes"},
            {"cidr": "fd00:10:96::a/128", "source": "Service kube-system/kube-dns"},
            {"cidr": "fd00:10:244:1::/64", "source": "Node/worker-1 podCIDRs"},
            {"cidr": "fe80::/10", "source": "link-local"},
        ]
        # The kubernetes Service's ClusterIP lies in the ServiceCIDR: no entry of its own.
        config = c.config("demo", "egress")
        assert excluded(config) == [e["cidr"] for e in exclusions(c)]
        facts = ClusterFacts(
            service_cidrs=(("kubernetes", ("10.96.0.0/12", "fd00:10:96::/112")),),
            nodes=(("worker-1", ("10.244.1.0/24", "fd00:10:244:1::/64")),),
            dns=ServiceLookup("kube-system", "kube-dns", ("10.96.0.10", "fd00:10:96::a")),
            kubernetes=ServiceLookup("default", "kubernetes", ("10.96.0.1", "fd00:10:96::1")),
        )
        assert config == expected_config(docs, facts)  # the facts the controller fed the pure function
        cond = await wait_for("ClusterExclusions", lambda: condition(c, "ClusterExclusions"))
        assert (cond["status"], cond["reason"]) == ("True", "Discovered")
        assert cond["observedGeneration"] == 1 and "9 CIDR(s)" in cond["message"]
        assert c.ready(GW, "demo", "egress")["status"] == "True"

    # A restarted operator has every index filled before the gateway resumes: the same config, no
    # rewrite (a rewrite would make every sidecar reload).
    secret = c.obj("v1/secrets", "demo", "tungo-egress")
    start = len(list(kmock))
    async with running_operator(str(kmock.url)):
        await wait_for(
            "the resumed gateway's status (written after its config Secret was checked)",
            lambda: any(
                r.method == "PATCH" and r.url.path.endswith("/tungateways/egress/status")
                for r in list(kmock)[start:]
            ),
        )
    assert not [r for r in list(kmock)[start:] if r.method in ("POST", "PATCH") and "/secrets" in r.url.path]
    assert c.obj("v1/secrets", "demo", "tungo-egress") == secret


async def test_new_nodes_and_changed_services_rerender_the_config(
    kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare_resources(kmock, monkeypatch)
    c = Cluster(kmock)
    await c.call("post", SERVICE_CIDR_PATH, service_cidr("kubernetes", "10.96.0.0/12"))
    await c.apply(SERVICE_PATH, service("kube-system", "kube-dns", "10.96.0.10"))
    async with running_operator(str(kmock.url)):
        await apply_examples(c)
        cond = await wait_for("no pod CIDRs yet", lambda: condition(c, "ClusterExclusions"))
        assert (cond["status"], cond["reason"]) == ("False", "Incomplete")
        assert "pod CIDRs unknown: no Node has spec.podCIDRs" in cond["message"]
        await wait_for(
            "a Warning event for the missing pod CIDRs",
            lambda: any(e["reason"] == "ClusterExclusionsIncomplete" for e in c.events("demo")),
        )
        first = c.obj(GW, "demo", "egress")["status"]["configHash"]
        assert "10.244.2.0/24" not in excluded(c.config("demo", "egress"))

        # A node joins: its pod CIDR reaches the config Secret, a new hash, the condition turns True.
        await c.call("post", NODE_PATH, node("worker-2", "10.244.2.0/24"))
        await wait_for(
            "the new node's pod CIDR", lambda: "10.244.2.0/24" in excluded(c.config("demo", "egress"))
        )
        assert {"cidr": "10.244.2.0/24", "source": "Node/worker-2 podCIDRs"} in await wait_for(
            "status lists the node", lambda: [e for e in exclusions(c) if e["cidr"] == "10.244.2.0/24"]
        )
        second = await wait_for(
            "configHash moved",
            lambda: (h := c.obj(GW, "demo", "egress")["status"]["configHash"]) != first and h,
        )
        secret = c.obj("v1/secrets", "demo", "tungo-egress")
        assert secret is not None and secret["metadata"]["annotations"]["tungo.dev/config-hash"] == second
        await wait_for("complete", lambda: condition(c, "ClusterExclusions")["status"] == "True")

        # The DNS Service is re-created with another ClusterIP.
        await c.call("delete", f"{SERVICE_PATH.format(ns='kube-system')}/kube-dns")
        await c.apply(SERVICE_PATH, service("kube-system", "kube-dns", "10.96.0.53"))
        await wait_for(
            "the new DNS address only",
            lambda: (
                "10.96.0.53/32" in (e := excluded(c.config("demo", "egress"))) and "10.96.0.10/32" not in e
            ),
        )

        # A second ServiceCIDR (the service range extended), then the node leaves.
        await c.call("post", SERVICE_CIDR_PATH, service_cidr("extra", "10.100.0.0/16"))
        await wait_for(
            "the new service range",
            lambda: {"cidr": "10.100.0.0/16", "source": "ServiceCIDR/extra"} in exclusions(c),
        )
        await c.call("delete", f"{NODE_PATH}/worker-2")
        await wait_for(
            "the node's range gone", lambda: "10.244.2.0/24" not in excluded(c.config("demo", "egress"))
        )
        await wait_for(
            "status and Secret agree",
            lambda: excluded(c.config("demo", "egress")) == [e["cidr"] for e in exclusions(c)],
        )


@pytest.mark.parametrize(
    ("configured", "complete"),
    [("10.96.0.0/12", True), ("10.0.0.0/16", False)],
    ids=["range-holds-the-kubernetes-ip", "range-misses-the-kubernetes-ip"],
)
async def test_without_servicecidr_objects_the_configured_range_is_used(
    kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch, configured: str, complete: bool
) -> None:
    declare_resources(kmock, monkeypatch, service_cidrs=False)  # an API server before Kubernetes 1.33
    c = Cluster(kmock)
    async with kmock.request("get", SERVICE_CIDR_PATH) as resp:
        assert resp.status == 404
    await add_cluster(c, service_cidrs=False, dual_stack=False)
    async with running_operator(str(kmock.url), discovery=DiscoveryConfig(service_cidrs=(configured,))):
        await apply_examples(c)
        cond = await wait_for("ClusterExclusions", lambda: condition(c, "ClusterExclusions"))
        found = exclusions(c)
        assert {"cidr": configured, "source": "operator --service-cidr"} in found
        assert not [e for e in found if e["source"].startswith("ServiceCIDR/")]
        kubernetes_ip = {"cidr": "10.96.0.1/32", "source": "Service default/kubernetes"}
        if complete:
            assert (cond["status"], cond["reason"]) == ("True", "Discovered")
            assert kubernetes_ip not in found
        else:
            # One ClusterIP does not give the range: it is only checked, excluded alone, and reported.
            assert (cond["status"], cond["reason"]) == ("False", "Incomplete")
            assert (
                "the kubernetes Service's ClusterIP 10.96.0.1 is outside the service CIDRs (10.0.0.0/16)"
                in cond["message"]
            )
            assert kubernetes_ip in found
            await wait_for(
                "a Warning event",
                lambda: any(
                    e["type"] == "Warning" and "10.96.0.1 is outside" in e["message"]
                    for e in c.events("demo")
                ),
            )
        assert excluded(c.config("demo", "egress")) == [e["cidr"] for e in found]


async def test_cluster_exclusions_false_renders_only_the_users_list(cluster: Cluster) -> None:
    c = cluster
    docs = await apply_examples(c)  # "egress": cluster exclusions on (the default)
    opted_out = copy.deepcopy(docs["TunGateway", "egress"])
    opted_out["metadata"].update(name="own-only", uid="uid-tungateway-demo-own-only")
    opted_out["spec"]["clusterExclusions"] = False
    await c.apply(GW_PATH, opted_out)
    cond = await wait_for("Disabled", lambda: condition(c, "ClusterExclusions", name="own-only"))
    assert (cond["status"], cond["reason"]) == ("False", "Disabled")
    assert excluded(c.config("demo", "own-only")) == ["172.31.0.0/16"]
    assert exclusions(c, name="own-only") == [{"cidr": "172.31.0.0/16", "source": "spec.excludedCIDRs"}]
    own_only = c.obj("v1/secrets", "demo", "tungo-own-only")

    # A node joins: the other gateway takes its pod CIDR, this one is left alone.
    await c.call("post", NODE_PATH, node("worker-1", "10.244.1.0/24"))
    await wait_for("egress re-rendered", lambda: "10.244.1.0/24" in excluded(c.config("demo", "egress")))
    await asyncio.sleep(0.5)
    assert c.obj("v1/secrets", "demo", "tungo-own-only") == own_only

    # Turned on: the discovered ranges join the user's.
    await c.call("patch", f"{GW_PATH.format(ns='demo')}/own-only", {"spec": {"clusterExclusions": True}})
    await wait_for("discovered", lambda: "10.244.1.0/24" in excluded(c.config("demo", "own-only")))
    assert {"169.254.0.0/16", "fe80::/10", "172.31.0.0/16"} <= set(excluded(c.config("demo", "own-only")))


async def test_namespaced_operator_reads_the_dns_service_by_name(
    kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare_resources(kmock, monkeypatch)
    c = Cluster(kmock)
    await add_cluster(c)
    async with running_operator(str(kmock.url), namespaces=["demo"]):
        await apply_examples(c)
        await wait_for("status.exclusions", lambda: exclusions(c))
        found = exclusions(c)
        # Nodes and ServiceCIDRs are cluster-scoped (watched with -n too); the DNS Service is read by name.
        assert {"cidr": "10.96.0.10/32", "source": "Service kube-system/kube-dns"} in found
        assert {"cidr": "10.244.1.0/24", "source": "Node/worker-1 podCIDRs"} in found
        assert {"cidr": "10.96.0.0/12", "source": "ServiceCIDR/kubernetes"} in found
        assert condition(c, "ClusterExclusions")["status"] == "True"
    paths = [(r.method, r.url.path) for r in list(kmock)]
    assert ("GET", "/api/v1/namespaces/kube-system/services/kube-dns") in paths
    assert ("GET", "/api/v1/namespaces/default/services/kubernetes") in paths
    # No Service list or watch anywhere (RBAC grants get on those two names only).
    assert not [p for m, p in paths if m == "GET" and p.endswith("/services")]


async def test_discovery_off_excludes_only_configured_ranges_and_link_local(
    kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare_resources(kmock, monkeypatch)
    c = Cluster(kmock)
    await add_cluster(c)
    discovery = DiscoveryConfig(enabled=False, pod_cidrs=("10.244.0.0/16",))
    async with running_operator(str(kmock.url), discovery=discovery):
        await apply_examples(c)
        cond = await wait_for("ClusterExclusions", lambda: condition(c, "ClusterExclusions"))
        assert (cond["status"], cond["reason"]) == ("False", "Incomplete")
        assert "cluster discovery is off (tungo-operator --no-cluster-discovery)" in cond["message"]
        assert exclusions(c) == [
            {"cidr": "10.244.0.0/16", "source": "operator --pod-cidr"},
            {"cidr": "169.254.0.0/16", "source": "link-local"},
            {"cidr": "172.31.0.0/16", "source": "spec.excludedCIDRs"},
            {"cidr": "fe80::/10", "source": "link-local"},
        ]
    touched = {r.url.path for r in list(kmock) if r.method == "GET"}
    assert not touched & {"/api/v1/nodes", "/api/v1/services", SERVICE_CIDR_PATH}
