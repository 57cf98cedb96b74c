"""kopf's own HTTPS webhook server with AdmissionReview shape checks in front of kopf.

Owns the HTTP edge of the injector: ``TungoWebhookServer`` is ``kopf.WebhookServer`` (aiohttp, TLS from
the certificate files the chart mounts, reloaded when they change) whose webhook function first runs
``review.problem()``: a body that is not a usable AdmissionReview v1 gets a 400 naming the problem,
instead of reaching kopf. Oversized bodies are refused by aiohttp before that with 413 (its default
limit, 1 MiB, is far above a real pod). Set as ``settings.admission.server`` by ``webhook.app``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp.web
import kopf

from tungo_operator.webhook import review

logger = logging.getLogger(__name__)


class TungoWebhookServer(kopf.WebhookServer):
    """A kopf.WebhookServer that turns malformed AdmissionReviews into clear 400 responses."""

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def guarded(request: Any, **kwargs: Any) -> Any:
            trouble = review.problem(request)
            if trouble is not None:
                logger.warning("rejected a malformed AdmissionReview: %s", trouble)
                raise aiohttp.web.HTTPBadRequest(text=f"tungo webhook: {trouble}\n")
            review.normalise(request)
            return await fn(request, **kwargs)

        # kopf calls the function with the parsed JSON and keyword extras, as WebhookFn declares.
        async for client_config in super().__call__(cast(kopf.WebhookFn, guarded)):
            yield client_config
