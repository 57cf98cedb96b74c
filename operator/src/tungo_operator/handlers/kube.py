"""A minimal asyncio Kubernetes API client for the few calls the controller makes itself.

kopf watches and patches the resources it handles, but has no client for other objects; the controller
also reads Chains and Secrets (and, when it runs namespaced, the DNS and ``kubernetes`` Services),
writes the config Secrets and patches TunGateway/Chain status from handlers of other resources. That
is five verbs on JSON paths, so a small aiohttp client (aiohttp is a kopf dependency already) is used
instead of a second full Kubernetes library. It is configured from the same credentials kopf logs in
with (``Connection``), so both talk to one API server as one identity.

Called by ``handlers.reconcile`` and ``handlers.controller``; never imports kopf. Every failure is an
``ApiError`` carrying the HTTP status and the server's message; a 404 on get/delete is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tungo_operator.model import conventions
from tungo_operator.model.errors import OperatorError

MERGE_PATCH = "application/merge-patch+json"
# Bounds every call: a hung API server must surface as an error, not a stuck handler.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


class ApiError(OperatorError):
    """The API server refused a request (or could not be reached)."""

    reason = "ApiError"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API error {status}: {message}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the API server is and how to authenticate (a subset of kopf's ConnectionInfo)."""

    server: str
    token: str | None = None
    scheme: str | None = None  # e.g. Bearer
    username: str | None = None
    password: str | None = None
    ca_path: str | None = None
    ca_data: str | bytes | None = None
    insecure: bool = False
    certificate_path: str | None = None
    certificate_data: str | bytes | None = None
    private_key_path: str | None = None
    private_key_data: str | bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ca_data = self.ca_data.decode() if isinstance(self.ca_data, bytes) else self.ca_data
            ctx = ssl.create_default_context(cafile=self.ca_path, cadata=ca_data)
        if self.certificate_path or self.certificate_data:
            with contextlib.ExitStack() as stack:
                cert = self.certificate_path or _temp_file(stack, self.certificate_data)
                key = self.private_key_path or (
                    _temp_file(stack, self.private_key_data) if self.private_key_data else None
                )
                ctx.load_cert_chain(cert, key)
        return ctx

    def auth_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"{self.scheme or 'Bearer'} {self.token}"
        return headers


def _temp_file(stack: contextlib.ExitStack, data: str | bytes | None) -> str:
    # ssl can only load client certificates from files: write them 0600 and remove them right after.
    fd, path = tempfile.mkstemp(prefix="tungo-operator-")
    stack.callback(os.unlink, path)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else (data or b""))
    return path


def secret_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/secrets"
    return base if name is None else f"{base}/{name}"


def service_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/services/{name}"


def custom_path(plural: str, namespace: str, name: str, *, status: bool = False) -> str:
    path = f"/apis/{conventions.GROUP}/{conventions.VERSION}/namespaces/{namespace}/{plural}/{name}"
    return f"{path}/status" if status else path


class KubeApi:
    """JSON over HTTP to the API server; one aiohttp session, opened lazily inside the running loop."""

    def __init__(self, connection: Connection | None = None) -> None:
        self._connection = connection
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return self._connection is not None

    async def configure(self, connection: Connection) -> None:
        """Use new credentials (a fresh login): the old session is closed."""
        async with self._lock:
            self._connection = connection
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def close(self) -> None:
        async with self._lock:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def _get_session(self) -> tuple[aiohttp.ClientSession, Connection]:
        async with self._lock:
            if self._connection is None:
                raise ApiError(0, "not logged in to the API server yet")
            if self._session is None:
                conn = self._connection
                auth = aiohttp.BasicAuth(conn.username, conn.password or "") if conn.username else None
                self._session = aiohttp.ClientSession(
                    base_url=conn.server.rstrip("/") + "/",
                    headers=conn.auth_headers(),
                    auth=auth,
                    timeout=REQUEST_TIMEOUT,
                    connector=aiohttp.TCPConnector(ssl=conn.ssl_context()),
                )
            return self._session, self._connection

    async def request(
        self, method: str, path: str, *, body: object = None, params: Mapping[str, str] | None = None
    ) -> dict[str, Any] | None:
        session, _ = await self._get_session()
        headers = {"Content-Type": MERGE_PATCH if method == "PATCH" else "application/json"}
        data = None if body is None else json.dumps(body)
        url = path.lstrip("/")
        if params:
            url = f"{url}?{urllib.parse.urlencode(params)}"
        try:
            async with session.request(method, url, data=data, headers=headers) as response:
                text = await response.text()
                if response.status == 404 and method in ("GET", "DELETE"):
                    return None
                if response.status >= 400:
                    raise ApiError(response.status, _message(text))
                return json.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(0, f"{method} {path}: {exc or type(exc).__name__}") from exc

    async def get(self, path: str) -> dict[str, Any] | None:
        return await self.request("GET", path)

    async def create(self, path: str, body: object) -> dict[str, Any]:
        return await self.request("POST", path, body=body) or {}

    async def patch(self, path: str, body: object) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body) or {}

    async def delete(self, path: str) -> None:
        await self.request("DELETE", path)

    async def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", path, params=params) or {}
        items = result.get("items") or []
        return [item for item in items if isinstance(item, dict)]


def _message(text: str) -> str:
    try:
        status = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(status, dict) and status.get("message"):
        return str(status["message"])[:500]
    return text[:500]
