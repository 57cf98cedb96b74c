"""The injection webhook end to end: kopf's real WebhookServer over real HTTPS, real AdmissionReview v1.

The webhook process runs as in the cluster: ``kopf.operator`` with the webhook registry, its indexes fed
by list+watch from a kmock Kubernetes emulator (namespaces, TunGateways), serving ``on.mutate`` with a
certificate the test makes. Responses' JSON Patches are applied with the ``jsonpatch`` library to the
pod that was sent, as the apiserver would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kmock
import kopf
import pytest
import yaml
from gateway_status import ready_status
from kmock._internal import parsing

from tungo_operator.injection import sidecar
from tungo_operator.model import conventions as c
from tungo_operator.webhook import app, certs, handlers
from tungo_operator.webhook.server import TungoWebhookServer

PODS = Path(__file__).resolve().parents[1] / "tungo_operator" / "injection" / "pods"
GATEWAYS = f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{{ns}}/{c.PLURAL_GATEWAY}"
IMAGE = "ghcr.io/kube-tungo/kube-tungo:0.1.0"


def _parse_path_with_namespaces(path: str) -> Any:
    # kmock 0.8 reads /api/v1/namespaces[/<name>] as a namespaced path with no resource, so the
    # Namespace kind itself cannot be listed or watched. Route exactly those two paths right.
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _original_parse_path(path)


_original_parse_path = parsing.parse_path


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Webhook:
    url: str
    ssl: ssl.SSLContext
    session: aiohttp.ClientSession
    api: Any  # the kmock emulator

    async def post(self, data: bytes, content_type: str = "application/json") -> tuple[int, str]:
        headers = {"Content-Type": content_type}
        async with self.session.post(self.url, data=data, ssl=self.ssl, headers=headers) as resp:
            return resp.status, await resp.text()

    async def review(
        self,
        pod: dict[str, Any],
        *,
        namespace: str = "shop",
        operation: str = "CREATE",
        uid: str = "u-1",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": pod["metadata"].get("name", ""),
                "namespace": namespace,
                "operation": operation,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "oldObject": None,
                "dryRun": dry_run,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        }
        status, text = await self.post(json.dumps(body).encode())
        assert status == 200, text
        review = json.loads(text)
        assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
        assert review["response"]["uid"] == uid
        response: dict[str, Any] = review["response"]
        return response

    async def create(self, path: str, obj: dict[str, Any]) -> None:
        async with self.api.post(path, json=obj) as resp:
            assert resp.status == 200, await resp.text()


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def gateway(
    name: str, ns: str, *, status: dict[str, Any] | None = None, generation: int = 1, **spec: Any
) -> dict[str, Any]:
    """A TunGateway the controller has reconciled (Ready) unless ``status`` says otherwise ({}: none)."""
    body: dict[str, Any] = {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND_GATEWAY,
        # kmock keeps no generation: set it as the apiserver would.
        "metadata": {"name": name, "namespace": ns, "generation": generation},
        "spec": {"chainRef": {"name": "corp"}, **spec},
    }
    status = ready_status() if status is None else status
    if status:
        body["status"] = status
    return body


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((PODS / name).read_text()))


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["allowed"] is True, response
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    return result


@pytest.fixture
async def webhook(kmock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Webhook]:
    monkeypatch.setattr(parsing, "parse_path", _parse_path_with_namespaces)
    kmock.resources["v1/namespaces"] = kmock_info(False, "Namespace")
    kmock.resources["v1/pods"] = kmock_info(True, "Pod")
    kmock.resources[f"{c.GROUP}/{c.VERSION}/{c.PLURAL_GATEWAY}"] = kmock_info(True, c.KIND_GATEWAY)
    hook = Webhook(url="", ssl=ssl.create_default_context(), session=aiohttp.ClientSession(), api=kmock)
    await hook.create("/api/v1/namespaces", namespace("shop"))
    await hook.create("/api/v1/namespaces", namespace("team", **{c.INJECT_LABEL: "enabled"}))
    locked = namespace("locked", **{"pod-security.kubernetes.io/enforce": "baseline"})
    await hook.create("/api/v1/namespaces", locked)
    await hook.create("/api/v1/namespaces", namespace("late"))
    await hook.create(GATEWAYS.format(ns="shop"), gateway("edge", "shop"))
    await hook.create(GATEWAYS.format(ns="team"), gateway("team-gw", "team"))
    await hook.create(GATEWAYS.format(ns="locked"), gateway("edge", "locked"))

    ca, crt, key = certs.write(certs.generate(["127.0.0.1"]), tmp_path / "tls")
    port = free_port()
    server = TungoWebhookServer(addr="127.0.0.1", port=port, certfile=crt, pkeyfile=key)
    api_url = str(kmock.url).rstrip("/")

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=api_url)

    # kopf cancels every task created after it started when it stops, so it gets its own loop in a
    # thread (as kopf.testing.KopfRunner does); kmock and the HTTPS client stay in the test's loop.
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=handlers.make_registry(login=login),
                    settings=app.operator_settings(server),
                    memo=handlers.sidecar_memo(sidecar.SidecarSettings(image=IMAGE)),
                    standalone=True,
                    clusterwide=True,
                    stop_flag=stop,
                )
            )
        except BaseException as exc:  # reported by the fixture's teardown
            errors.append(exc)

    thread = threading.Thread(target=run, name="kopf-webhook", daemon=True)
    thread.start()
    hook.url = f"https://127.0.0.1:{port}/{handlers.HANDLER_ID}"
    hook.ssl = ssl.create_default_context(cafile=str(ca))  # verifies the chain and the IP SAN
    try:
        await _wait_ready(hook)
        yield hook
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 15)
        await hook.session.close()
    assert not thread.is_alive(), "the kopf webhook did not stop within 15 s"
    assert not errors, errors


def kmock_info(namespaced: bool, kind: str) -> Any:
    return kmock.ResourceInfo(namespaced=namespaced, kind=kind, verbs={"get", "list", "watch"})


async def _wait_ready(hook: Webhook) -> None:
    """Until the server listens and both indexes have been listed (bounded: 10 s)."""
    probe = load("plain.yaml")
    for _ in range(100):
        try:
            response = await hook.review(probe, uid="probe")
        except aiohttp.ClientConnectorError:
            response = {}
        if response.get("allowed"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"webhook never became ready; last response: {response}")


async def test_plain_pod_is_patched_with_the_sidecar_over_https(webhook: Webhook) -> None:
    pod = load("plain.yaml")
    out = patched(pod, await webhook.review(pod))
    (tungo,) = out["spec"]["initContainers"]
    assert tungo["name"] == "tungo" and tungo["image"] == IMAGE and tungo["restartPolicy"] == "Always"
    assert tungo["command"] == list(c.SIDECAR_COMMAND)
    assert tungo["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert {v["name"] for v in out["spec"]["volumes"]} == {
        "kube-api-access-7x2kq",
        "tungo-config",
        "tungo-tun",
    }
    assert out["metadata"]["annotations"] == {c.STATUS_ANNOTATION: "injected", c.GATEWAY_ANNOTATION: "edge"}
    assert out["spec"]["containers"] == pod["spec"]["containers"]


async def test_deployment_pod_with_generate_name_in_an_opted_in_namespace(webhook: Webhook) -> None:
    pod = load("from-deployment.yaml")
    del pod["metadata"]["namespace"]  # the namespace comes from request.namespace only
    response = await webhook.review(pod, namespace="team")
    out = patched(pod, response)
    assert [i["name"] for i in out["spec"]["initContainers"]] == ["tungo", "migrate"]
    assert out["metadata"]["annotations"][c.GATEWAY_ANNOTATION] == "team-gw"
    assert "namespace" not in out["metadata"], "the webhook must not add fields it was not asked to"
    # Sent again, as the second webhook entry (namespace + pod selectors) would: nothing more to add.
    again = await webhook.review(out, namespace="team", uid="u-2")
    assert again["allowed"] is True and "patch" not in again


async def test_host_network_pod_is_allowed_unchanged_with_a_warning(webhook: Webhook) -> None:
    response = await webhook.review(load("host-network.yaml"))
    assert response["allowed"] is True and "patch" not in response
    assert any("hostNetwork" in w for w in response["warnings"])


async def test_missing_gateway_is_denied_with_what_to_do(webhook: Webhook) -> None:
    pod = load("plain.yaml")
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "nope"}
    response = await webhook.review(pod)
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 403
    assert "'nope'" in response["status"]["message"] and "visible: shop/edge" in response["status"]["message"]


async def test_baseline_namespace_is_denied_with_the_label_to_set(webhook: Webhook) -> None:
    response = await webhook.review(load("plain.yaml"), namespace="locked")
    assert response["allowed"] is False and response["status"]["code"] == 403
    message = response["status"]["message"]
    assert "Pod Security level 'baseline'" in message
    assert "kubectl label namespace locked pod-security.kubernetes.io/enforce=privileged" in message


async def test_a_gateway_created_later_is_seen_through_the_watch(webhook: Webhook) -> None:
    pod = load("plain.yaml")
    first = await webhook.review(pod, namespace="late")
    assert first["allowed"] is False and "no TunGateway selects" in first["status"]["message"]
    await webhook.create(GATEWAYS.format(ns="late"), gateway("fresh", "late"))
    for _ in range(50):  # the ADDED event reaches the index within milliseconds; bounded at 5 s
        response = await webhook.review(pod, namespace="late")
        if response["allowed"]:
            break
        await asyncio.sleep(0.1)
    assert patched(pod, response)["metadata"]["annotations"][c.GATEWAY_ANNOTATION] == "fresh"


async def _review_until(
    webhook: Webhook, pod: dict[str, Any], done: Any, *, namespace: str = "shop"
) -> dict[str, Any]:
    """Review ``pod`` until ``done(response)``: a watch event reaches the index within milliseconds."""
    for _ in range(50):  # bounded at 5 s
        response = await webhook.review(pod, namespace=namespace)
        if done(response):
            return response
        await asyncio.sleep(0.1)
    shown = {k: response.get(k) for k in ("allowed", "status")} | {"patched": "patch" in response}
    raise AssertionError(f"the webhook never answered as expected; last response: {shown}")


def _denial(response: dict[str, Any]) -> str:
    assert response["allowed"] is False and "patch" not in response, response
    assert response["status"]["code"] == 403
    message: str = response["status"]["message"]
    return message


async def test_the_annotation_chooses_only_among_gateways_that_select_the_pod(webhook: Webhook) -> None:
    db_only = gateway("db-gw", "shop", podSelector={"matchLabels": {"tier": "db"}})
    await webhook.create(GATEWAYS.format(ns="shop"), db_only)
    pod = load("plain.yaml")  # run=web: selected by shop/edge (empty podSelector), not by shop/db-gw
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "db-gw"}
    response = await _review_until(webhook, pod, lambda r: "podSelector" in str(r.get("status")))
    message = _denial(response)
    assert "asks for TunGateway 'shop/db-gw'" in message
    assert "spec.podSelector (tier=db) does not select it" in message
    assert "gateways that select it: shop/edge" in message
    # Naming a gateway that does select it still picks it among several.
    pod["metadata"]["annotations"] = {c.GATEWAY_ANNOTATION: "edge"}
    out = patched(pod, await webhook.review(pod))
    assert out["metadata"]["annotations"][c.GATEWAY_ANNOTATION] == "edge"
    # Without the annotation, the one gateway whose podSelector matches is chosen, as before.
    del pod["metadata"]["annotations"]
    assert patched(pod, await webhook.review(pod))["metadata"]["annotations"][c.GATEWAY_ANNOTATION] == "edge"


async def test_pods_are_admitted_only_once_their_gateway_is_ready(webhook: Webhook) -> None:
    """A gateway's life as the controller reports it: created, failing, fixed, changed, reconciled."""
    pod = load("plain.yaml")
    path = GATEWAYS.format(ns="late") + "/fresh"
    await webhook.create(GATEWAYS.format(ns="late"), gateway("fresh", "late", status={}))

    def denied_for(text: str) -> Any:
        return lambda r: text in str(r.get("status"))

    # 1. Just created: no status until the controller's first reconcile.
    response = await _review_until(webhook, pod, denied_for("no Ready condition yet"), namespace="late")
    message = _denial(response)
    assert "TunGateway late/fresh has no Ready condition yet" in message and "retry" in message
    assert "kubectl get pods -A -l app.kubernetes.io/component=operator" in message

    # 2. Reconciled, but failing: the condition's reason and message are quoted.
    failing = ready_status(
        "False",
        "SecretNotFound",
        "Secret late/relay-auth not found; the last good config (if any) stays in place",
    )
    async with webhook.api.patch(path, json={"status": failing}) as resp:
        assert resp.status == 200, await resp.text()
    response = await _review_until(webhook, pod, denied_for("is not Ready"), namespace="late")
    message = _denial(response)
    assert "TunGateway late/fresh is not Ready (SecretNotFound: Secret late/relay-auth not found" in message
    assert "ContainerCreating" in message

    # 3. Fixed: Ready=True for its generation, and the pod is injected.
    async with webhook.api.patch(path, json={"status": ready_status()}) as resp:
        assert resp.status == 200, await resp.text()
    response = await _review_until(webhook, pod, lambda r: r["allowed"], namespace="late")
    assert patched(pod, response)["metadata"]["annotations"][c.GATEWAY_ANNOTATION] == "fresh"

    # 4. Its spec changed (generation 2) and the controller has not caught up: the status is stale.
    async with webhook.api.patch(path, json={"metadata": {"generation": 2}}) as resp:
        assert resp.status == 200, await resp.text()
    response = await _review_until(webhook, pod, denied_for("generation 2"), namespace="late")
    message = _denial(response)
    assert "TunGateway late/fresh was changed (generation 2)" in message
    assert "last reported on generation 1 (Ready=True: ConfigRendered)" in message

    # 5. Reconciled again.
    async with webhook.api.patch(path, json={"status": ready_status(generation=2)}) as resp:
        assert resp.status == 200, await resp.text()
    response = await _review_until(webhook, pod, lambda r: r["allowed"], namespace="late")
    assert patched(pod, response)["spec"]["initContainers"][0]["name"] == "tungo"


async def test_update_and_dry_run_reviews(webhook: Webhook) -> None:
    pod = load("plain.yaml")
    update = await webhook.review(pod, operation="UPDATE")
    assert update["allowed"] is True and "patch" not in update
    # A dry run gets exactly the patch a real creation would (the webhook has no side effects).
    dry, real = await webhook.review(pod, dry_run=True), await webhook.review(pod)
    assert dry["patch"] == real["patch"] and patched(pod, dry)["spec"]["initContainers"][0]["name"] == "tungo"


async def test_malformed_pod_object_is_denied_with_a_clear_message(webhook: Webhook) -> None:
    pod = load("plain.yaml")
    pod["spec"]["initContainers"] = "not-a-list"
    response = await webhook.review(pod)
    assert response["allowed"] is False and response["status"]["code"] == 400
    assert "malformed pod object" in response["status"]["message"]


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (b"{not json", "Expecting property name"),
        (b"[]", "must be a JSON object, got list"),
        (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}', "admissionReviewVersions"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "request is missing"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x"}}',
            "resource must have",
        ),
    ],
)
async def test_malformed_bodies_get_400_and_the_server_keeps_serving(
    webhook: Webhook, body: bytes, expect: str
) -> None:
    status, text = await webhook.post(body)
    assert status == 400 and expect in text, text
    assert (await webhook.review(load("plain.yaml")))["allowed"] is True


async def test_oversized_body_gets_413_and_the_server_keeps_serving(webhook: Webhook) -> None:
    # Up to 3 MiB is what the API server may send: read (here it is no review: 400), beyond it 413.
    status, text = await webhook.post(b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    assert status == 400 and "AdmissionReview" in text, text
    status, _ = await webhook.post(b'{"pad": "' + b"x" * (4 * 1024 * 1024) + b'"}')
    assert status == 413
    assert (await webhook.review(load("plain.yaml")))["allowed"] is True


async def test_the_tungo_webhook_command_serves_as_in_the_chart(
    kmock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tungo-webhook serve` as a process: kubeconfig login, TUNGO_SIDECAR_* env, liveness, SIGTERM."""
    monkeypatch.setattr(parsing, "parse_path", _parse_path_with_namespaces)
    kmock.resources["v1/namespaces"] = kmock_info(False, "Namespace")
    kmock.resources["v1/pods"] = kmock_info(True, "Pod")  # kopf's webhook needs pods discoverable
    kmock.resources[f"{c.GROUP}/{c.VERSION}/{c.PLURAL_GATEWAY}"] = kmock_info(True, c.KIND_GATEWAY)
    ca, crt, key = certs.write(certs.generate(["127.0.0.1"]), tmp_path / "tls")
    port, live = free_port(), free_port()
    async with aiohttp.ClientSession() as session:
        hook = Webhook(
            f"https://127.0.0.1:{port}/{handlers.HANDLER_ID}",
            ssl.create_default_context(cafile=str(ca)),
            session,
            kmock,
        )
        await hook.create("/api/v1/namespaces", namespace("shop"))
        await hook.create(GATEWAYS.format(ns="shop"), gateway("edge", "shop"))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
                    "users": [{"name": "test", "user": {"token": "t"}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
                    "current-context": "kmock",
                }
            )
        )
        exe = Path(sys.executable).with_name("tungo-webhook")
        proc = await asyncio.create_subprocess_exec(
            str(exe),
            "serve",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--cert-file={crt}",
            f"--key-file={key}",
            f"--liveness=http://127.0.0.1:{live}/healthz",
            env={
                "PATH": os.environ["PATH"],
                "KUBECONFIG": str(kubeconfig),
                "TUNGO_SIDECAR_IMAGE": "reg.example/t:7",
            },
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await _wait_ready(hook)
            pod = load("plain.yaml")
            out = patched(pod, await hook.review(pod))
            assert out["spec"]["initContainers"][0]["image"] == "reg.example/t:7"
            async with session.get(f"http://127.0.0.1:{live}/healthz") as resp:
                assert resp.status == 200
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), timeout=15)
        assert proc.returncode == 0, stderr.decode()[-2000:]
