"""KubeApi against a real local aiohttp server (plain HTTP and real TLS with client certificates):
verbs, merge-patch, auth headers, 404 handling, and every failure as an ApiError with the server's text."""

from __future__ import annotations

import json
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest
from pki import make_ca

from tungo_operator.handlers.kube import ApiError, Connection, KubeApi, custom_path, secret_path

Seen = list[dict[str, Any]]
SEEN = aiohttp.web.AppKey("seen", list)


def leftover_key_files() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("tungo-operator-*")}


async def handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
    seen: Seen = request.app[SEEN]
    body = await request.text()
    seen.append(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": dict(request.headers),
            "body": json.loads(body) if body else None,
        }
    )
    if request.path.endswith("/missing"):
        status = {"kind": "Status", "code": 404, "message": 'secrets "missing" not found'}
        return aiohttp.web.json_response(status, status=404)
    if request.path.endswith("/forbidden"):
        msg = 'secrets "forbidden" is forbidden: User "system:serviceaccount:x:y" cannot get resource'
        return aiohttp.web.json_response({"kind": "Status", "code": 403, "message": msg}, status=403)
    if request.path.endswith("/broken"):
        return aiohttp.web.Response(status=500, text="upstream exploded")
    if request.method == "GET" and request.path.endswith("/secrets"):
        return aiohttp.web.json_response({"items": [{"metadata": {"name": "a"}}, "junk"]})
    return aiohttp.web.json_response({"ok": True, "echo": json.loads(body) if body else None})


async def serve(ssl_context: ssl.SSLContext | None = None) -> tuple[aiohttp.web.AppRunner, str, Seen]:
    app = aiohttp.web.Application()
    app[SEEN] = seen = []
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://127.0.0.1:{port}", seen


@pytest.fixture
async def plain() -> AsyncIterator[tuple[KubeApi, Seen]]:
    runner, url, seen = await serve()
    api = KubeApi(Connection(server=url, token="t0ken"))
    try:
        yield api, seen
    finally:
        await api.close()
        await runner.cleanup()


async def test_verbs_paths_and_headers(plain: tuple[KubeApi, Seen]) -> None:
    api, seen = plain
    assert await api.get(secret_path("ns", "a")) == {"ok": True, "echo": None}
    assert (await api.create(secret_path("ns"), {"metadata": {"name": "a"}}))["echo"] == {
        "metadata": {"name": "a"}
    }
    await api.patch(custom_path("tungateways", "ns", "gw", status=True), {"status": {"x": 1}})
    await api.delete(secret_path("ns", "a"))
    assert await api.list(secret_path("ns"), label_selector="tungo.dev/gateway=gw") == [
        {"metadata": {"name": "a"}}
    ]
    methods = [(s["method"], s["path"]) for s in seen]
    assert methods == [
        ("GET", "/api/v1/namespaces/ns/secrets/a"),
        ("POST", "/api/v1/namespaces/ns/secrets"),
        ("PATCH", "/apis/tungo.dev/v1alpha1/namespaces/ns/tungateways/gw/status"),
        ("DELETE", "/api/v1/namespaces/ns/secrets/a"),
        ("GET", "/api/v1/namespaces/ns/secrets"),
    ]
    assert seen[2]["headers"]["Content-Type"] == "application/merge-patch+json"
    assert seen[1]["headers"]["Content-Type"] == "application/json"
    assert all(s["headers"]["Authorization"] == "Bearer t0ken" for s in seen)
    assert seen[4]["query"] == {"labelSelector": "tungo.dev/gateway=gw"}


async def test_not_found_and_errors(plain: tuple[KubeApi, Seen]) -> None:
    api, _ = plain
    assert await api.get(secret_path("ns", "missing")) is None
    await api.delete(secret_path("ns", "missing"))  # already gone: fine
    with pytest.raises(ApiError) as info:
        await api.patch(secret_path("ns", "missing"), {})
    assert info.value.status == 404 and 'secrets "missing" not found' in str(info.value)
    with pytest.raises(ApiError, match=r"Kubernetes API error 403: .* cannot get resource") as info:
        await api.get(secret_path("ns", "forbidden"))
    with pytest.raises(ApiError, match="Kubernetes API error 500: upstream exploded"):
        await api.get(secret_path("ns", "broken"))


async def test_unconfigured_and_unreachable() -> None:
    with pytest.raises(ApiError, match="not logged in"):
        await KubeApi().get("/api")
    api = KubeApi(Connection(server="http://127.0.0.1:9"))  # discard port: nothing listens
    try:
        with pytest.raises(ApiError, match=r"GET /api: ") as info:
            await api.get("/api")
        assert info.value.status == 0
    finally:
        await api.close()


async def test_real_tls_with_ca_and_client_certificate(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    server_cert = ca.issue(tmp_path, "server", ["127.0.0.1"])
    client_cert = ca.issue(tmp_path, "client", ["tungo-operator"], client=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_file))
    server_ctx.load_cert_chain(server_cert.cert, server_cert.key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # the API server insists on a client certificate
    runner, url, seen = await serve(server_ctx)
    before = leftover_key_files()
    try:
        verified = KubeApi(
            Connection(
                server=url,
                ca_data=ca.cert_file.read_text(),
                certificate_data=client_cert.cert.read_bytes(),  # from memory, as kubeconfigs carry them
                private_key_data=client_cert.key.read_bytes(),
            )
        )
        assert await verified.get("/api") == {"ok": True, "echo": None}
        await verified.close()
        assert leftover_key_files() == before  # the client key's temp file is gone again

        stranger = KubeApi(Connection(server=url))  # system roots do not know the test CA
        with pytest.raises(ApiError, match="certificate verify failed"):
            await stranger.get("/api")
        await stranger.close()
    finally:
        await runner.cleanup()
    assert len(seen) == 1
