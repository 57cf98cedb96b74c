"""The ``http`` server handler: HTTP/1.1 CONNECT tunnels with optional Basic proxy authentication.

Called by ``net.service`` for ``-L http://...`` services. Reads the request head
(``proto.http_connect``), checks ``Proxy-Authorization``, dials the target through the service's
``FlowDialer`` and splices. Answers: missing or wrong credentials → 407 with a Basic challenge; a
method other than CONNECT → 405; a malformed or oversized head → 400 / 431; a target the dialer cannot
reach → 502. Plain (non-CONNECT) proxying of ``GET http://...`` is not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac

from tungo_sidecar import errors
from tungo_sidecar.config.model import Service
from tungo_sidecar.net.connectors.base import prefixed, read_message
from tungo_sidecar.net.dialer import FlowDialer
from tungo_sidecar.net.handlers.base import proxy_streams
from tungo_sidecar.net.stream import Stream
from tungo_sidecar.proto import http_connect

#: Bound on reading the request head from a client that connects and stalls.
DEFAULT_READ_TIMEOUT = 15.0


class HttpHandler:
    """``handler: http``. Options: ``auth`` (one user), metadata ``readTimeout``."""

    def __init__(self, service: Service, dialer: FlowDialer) -> None:
        self._auth = service.handler.auth
        self._dialer = dialer
        timeout = service.handler.metadata.get_duration("readTimeout", DEFAULT_READ_TIMEOUT)
        self._read_timeout = timeout if timeout and timeout > 0 else DEFAULT_READ_TIMEOUT

    async def handle(self, stream: Stream, client: str) -> None:
        try:
            async with asyncio.timeout(self._read_timeout):
                head, leftover = await read_message(stream, http_connect.RequestHeadReader(), "http request")
            target = head.connect_address()
            credentials = head.credentials()
        except TimeoutError:
            limit = self._read_timeout
            raise errors.HttpProtocolError(f"http: no complete request head within {limit:g}s") from None
        except errors.HttpProtocolError as exc:
            if exc.status is not None:
                await _answer(stream, http_connect.ResponseHead.error(exc.status))
            raise
        if self._auth is not None and not self._authorized(credentials):
            await _answer(stream, http_connect.ResponseHead.proxy_auth_required())
            user = credentials.username if credentials else ""
            raise errors.ProxyRefusedError(
                f"http: {client}: wrong or missing credentials (user {user!r})", 407
            )
        try:
            upstream = await self._dialer.dial_tcp(target)
        except (errors.TungoError, OSError) as exc:
            # A bypass refusal is 403, as GOST's http handler answers it; anything else 502.
            refused = isinstance(exc, errors.RouteRefusedError)
            answer = http_connect.ResponseHead.forbidden if refused else http_connect.ResponseHead.bad_gateway
            await _answer(stream, answer())
            raise errors.DialError(f"http: cannot reach {target}: {exc}") from exc
        await stream.write(http_connect.ResponseHead.connection_established().encode())
        await proxy_streams(prefixed(stream, leftover), upstream)

    def _authorized(self, credentials: http_connect.BasicCredentials | None) -> bool:
        assert self._auth is not None
        if credentials is None:
            return False
        user_ok = hmac.compare_digest(credentials.username.encode(), self._auth.username.encode())
        pass_ok = hmac.compare_digest(credentials.password.encode(), self._auth.password.encode())
        return user_ok and pass_ok


async def _answer(stream: Stream, head: http_connect.ResponseHead) -> None:
    with contextlib.suppress(OSError, errors.TungoError):
        await stream.write(head.encode())
