"""The injector's HTTPS server on its own, over real TLS: only its webhook path answers reviews (404
elsewhere), ``/readyz`` follows the readiness it is given, the TLS files are re-read on rotation; and
the handlers' start-up gate and the filter that keeps routine denials out of kopf's ERROR lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest

from tungo_operator.injection import sidecar
from tungo_operator.webhook import certs, handlers
from tungo_operator.webhook.server import TungoWebhookServer

REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}},
    },
}


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, server: TungoWebhookServer, ca: Path, calls: list[str]) -> None:
        self.server, self.ca, self.calls = server, ca, calls
        self.base = f"https://127.0.0.1:{server.port}"

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(self.ca))
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.base + path, data=body, ssl=context) as response,
        ):
            return response.status, await response.text()


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, ready: list[str | None]) -> AsyncIterator[Served]:
    ca, crt, key = certs.write(certs.generate(["127.0.0.1"]), tmp_path / "tls")
    calls: list[str] = []

    async def fn(body: Any, *, webhook: str | None = None, **_: Any) -> dict[str, Any]:
        calls.append(str(webhook))
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"allowed": True}}

    server = TungoWebhookServer(
        addr="127.0.0.1",
        port=free_port(),
        certfile=crt,
        pkeyfile=key,
        webhooks=(handlers.HANDLER_ID,),
        ready=lambda: ready[0],
        file_check_interval=0.05,
    )
    # Driven as kopf drives it: a task that keeps asking for the next client config, which is what
    # lets the server notice rotated files and restart its listener.
    first = asyncio.Event()

    async def drive() -> None:
        async for _ in server(fn):  # type: ignore[arg-type]
            first.set()

    async with asyncio.timeout(20), asyncio.TaskGroup() as group:
        task = group.create_task(drive())
        await first.wait()
        try:
            yield Served(server, ca, calls)
        finally:
            task.cancel()


async def test_reviews_only_on_the_webhook_path_and_readyz_tells_the_truth(tmp_path: Path) -> None:
    ready: list[str | None] = ["indexes not filled yet"]
    async with serving(tmp_path, ready) as served:
        status, text = await served.request("GET", "/readyz")
        assert (status, text) == (503, "not ready: indexes not filled yet\n")
        ready[0] = None
        assert await served.request("GET", "/readyz") == (200, "ready\n")

        status, text = await served.request("POST", f"/{handlers.HANDLER_ID}", json.dumps(REVIEW).encode())
        assert status == 200 and json.loads(text)["response"]["allowed"] is True
        # A misconfigured path fails loudly instead of letting the pod through unpatched.
        status, text = await served.request("POST", "/mutate-pods", json.dumps(REVIEW).encode())
        assert status == 404 and "no webhook at /mutate-pods (served: /tungo-inject)" in text
        assert (await served.request("GET", "/anything"))[0] in (404, 405)
        assert served.calls == [handlers.HANDLER_ID]


async def test_rotated_certificates_are_served_without_a_restart(tmp_path: Path) -> None:
    async with serving(tmp_path, [None]) as served:
        assert (await served.request("GET", "/readyz"))[0] == 200
        # The kubelet swaps the Secret's files; here: a new CA and leaf written over the old files.
        new_ca, new_crt, new_key = certs.write(certs.generate(["127.0.0.1"]), tmp_path / "new")
        assert served.server.certfile is not None and served.server.pkeyfile is not None
        shutil.copy(new_crt, served.server.certfile)
        shutil.copy(new_key, served.server.pkeyfile)
        served.ca = new_ca
        for _ in range(100):  # checked every 0.05 s here; bounded at 5 s
            with contextlib.suppress(aiohttp.ClientError):
                if (await served.request("GET", "/readyz"))[0] == 200:
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the new certificate was never served")


def test_pods_are_turned_away_with_retry_until_the_indexes_are_filled() -> None:
    memo = handlers.sidecar_memo(sidecar.SidecarSettings(image="tungo:test"))
    kwargs: dict[str, Any] = {"tungo_gateways": {}, "tungo_namespaces": {}, "operation": "CREATE"}
    body = kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"}})
    with pytest.raises(kopf.AdmissionError) as denied:
        handlers.inject(body=body, patch=kopf.Patch(), warnings=[], memo=memo, **kwargs)
    assert denied.value.code == 503 and "retry in a few seconds" in str(denied.value)
    assert memo.indexes.problem() == "TunGateway and Namespace indexes not filled yet"
    handlers.indexes_filled(memo=memo)  # kopf's first non-index handler call
    assert memo.indexes.problem() is None


def test_routine_denials_leave_kopfs_error_lines_real_errors_stay() -> None:
    quiet = handlers.QuietDenials(remembered=2)

    def record(text: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", level, __file__, 1, text, None, None)

    quiet.denied("no TunGateway selects pod shop/p")
    routine = "Webhook 'tungo-inject' failed permanently: no TunGateway selects pod shop/p"
    assert not quiet.filter(record(routine))
    assert quiet.filter(record("Webhook 'tungo-inject' failed permanently: malformed pod object: KeyError()"))
    assert quiet.filter(record("Webhook 'tungo-inject' succeeded.", logging.INFO))
    assert not quiet.filter(record("Handler 'tungo_indexes_filled' succeeded.", logging.INFO))
    quiet.denied("a")
    quiet.denied("b")  # only the most recent messages are remembered: bounded memory
    assert quiet.filter(record(routine))
