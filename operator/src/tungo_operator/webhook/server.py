"""The injector's HTTPS server: the one webhook path, a truthful ``/readyz``, 404 for everything else.

Owns the HTTP edge of the injector. kopf runs it as ``settings.admission.server`` (set by
``webhook.app``): kopf calls it with the function that answers an AdmissionReview and it yields the
client config kopf would report. Its own aiohttp application, rather than kopf's ``WebhookServer``,
because that one cannot do three things the cluster needs:

* ``POST /tungo-inject`` is the only webhook; a review posted anywhere else is a misconfigured
  MutatingWebhookConfiguration and gets 404 (kopf's server answers any path, and its handler then
  allows the pod unpatched: a silent failure);
* ``GET /readyz`` is 200 only once ``ready()`` says so (the handlers' indexes are filled), 503 with the
  reason before: the chart's readinessProbe, so a new replica gets no traffic while it would deny pods
  it does not know yet;
* bodies up to ``MAX_BODY`` (what the API server may send), not aiohttp's 1 MiB.

A body that is not a usable AdmissionReview v1 gets a 400 naming the problem (``review.problem()``)
before kopf sees it. The TLS certificate and key are re-read when their content changes (the kubelet
swaps a Secret volume's ``..data`` link on rotation): the listener is rebuilt, connections in flight
finish on the old one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf
from kopf._core.engines.admission import WebhookError  # kopf exports no name for it

from tungo_operator.webhook import review

logger = logging.getLogger(__name__)

#: The API server sends AdmissionReviews of up to 3 MiB (its request limit); a pod near etcd's 1.5 MiB
#: object limit arrives wrapped in a review with ``object`` and ``oldObject``. Past this: 413.
MAX_BODY = 3 * 1024 * 1024 + 64 * 1024
#: How often the certificate files are checked for a rotation (a Secret update lands within ~1 min).
FILE_CHECK_INTERVAL = 30.0
READYZ = "/readyz"

#: ``None`` when ready, else why not (for the 503 body and the log).
Readiness = Callable[[], str | None]


def _always_ready() -> str | None:
    return None


class TungoWebhookServer:
    """Serves ``fn`` at ``/<webhook id>`` over HTTPS (``certfile``/``pkeyfile``), ``/readyz`` beside it."""

    def __init__(
        self,
        *,
        addr: str | None = None,
        port: int,
        certfile: str | Path | None = None,
        pkeyfile: str | Path | None = None,
        webhooks: tuple[str, ...] = (),
        ready: Readiness = _always_ready,
        file_check_interval: float = FILE_CHECK_INTERVAL,
    ) -> None:
        self.addr = addr
        self.port = port
        self.certfile = Path(certfile) if certfile is not None else None
        self.pkeyfile = Path(pkeyfile) if pkeyfile is not None else None
        #: The webhook ids served; empty serves any id kopf registered (tests that build their own).
        self.webhooks = webhooks
        self.ready = ready
        self.file_check_interval = file_check_interval

    def _context(self) -> ssl.SSLContext | None:
        if self.certfile is None or self.pkeyfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certfile, self.pkeyfile)
        return context

    def _digest(self) -> str:
        digest = hashlib.sha256()
        for path in (self.certfile, self.pkeyfile):
            if path is not None:
                try:
                    digest.update(path.read_bytes())
                except OSError as exc:  # mid-rotation: keep serving with what is loaded
                    digest.update(repr(exc).encode())
        return digest.hexdigest()

    async def _rotated(self, digest: str) -> None:
        """Return once the TLS files' content differs from ``digest`` (polled: a Secret volume sends no
        file events, and its files are replaced through a symlink swap)."""
        while True:
            await asyncio.sleep(self.file_check_interval)
            if self._digest() != digest:
                return

    def _app(self, fn: kopf.WebhookFn) -> aiohttp.web.Application:
        async def webhook(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
            webhook_id = request.match_info["id"]
            if self.webhooks and webhook_id not in self.webhooks:
                raise aiohttp.web.HTTPNotFound(
                    text=f"tungo webhook: no webhook at /{webhook_id} (served: "
                    f"{', '.join('/' + w for w in self.webhooks)}); check the MutatingWebhookConfiguration\n"
                )
            return await _answer(fn, request, webhook_id)

        async def readyz(_: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
            reason = self.ready()
            if reason is None:
                return aiohttp.web.Response(text="ready\n")
            return aiohttp.web.Response(status=503, text=f"not ready: {reason}\n")

        app = aiohttp.web.Application(client_max_size=MAX_BODY)
        app.add_routes([aiohttp.web.get(READYZ, readyz), aiohttp.web.post("/{id}", webhook)])
        return app

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        while True:
            context = self._context()
            digest = self._digest()
            runner = aiohttp.web.AppRunner(self._app(fn), handle_signals=False, access_log=None)
            await runner.setup()
            try:
                site = aiohttp.web.TCPSite(runner, self.addr or None, self.port, ssl_context=context)
                await site.start()
                scheme = "https" if context is not None else "http"
                logger.info("serving webhooks at %s://%s:%d/", scheme, self.addr or "*", self.port)
                yield kopf.WebhookClientConfig(url=f"{scheme}://{self.addr or 'localhost'}:{self.port}/")
                await self._rotated(digest)
                logger.info("the TLS certificate files changed: serving with the new ones")
            finally:
                await runner.cleanup()


async def _answer(fn: kopf.WebhookFn, request: aiohttp.web.Request, webhook_id: str) -> aiohttp.web.Response:
    """One AdmissionReview: 400 for a body that is not one, else what ``fn`` (kopf) answers."""
    try:
        body: Any = json.loads(await request.text())
    except json.JSONDecodeError as exc:
        raise aiohttp.web.HTTPBadRequest(text=f"tungo webhook: not JSON: {exc}\n") from exc
    trouble = review.problem(body)
    if trouble is not None:
        logger.warning("rejected a malformed AdmissionReview: %s", trouble)
        raise aiohttp.web.HTTPBadRequest(text=f"tungo webhook: {trouble}\n")
    review.normalise(body)
    sslpeer = request.transport.get_extra_info("peercert") if request.transport else None
    try:
        answer = await fn(body, webhook=webhook_id, sslpeer=sslpeer, headers=dict(request.headers))
    except WebhookError as exc:  # kopf's own checks: no handler for this resource, missing fields
        raise aiohttp.web.HTTPBadRequest(text=f"tungo webhook: {exc}\n") from exc
    return aiohttp.web.json_response(answer)
