"""What a handler is: the server half of a proxy protocol, run on one accepted client stream.

A listening service (``net.service``) accepts a connection, lets its transport finish the handshake
(TLS, websocket) and hands the resulting stream to its handler, which reads the client's request,
dials the target through the service's ``FlowDialer`` (direct, or the ``-F`` chain) and moves the
bytes. The registry lives in ``net.handlers``.

Contract: ``handle`` returns when the client's session is over and raises on failure with a message
good for one log line (the service logs it and keeps serving); it answers the client in its own
protocol before raising (a relay status, a socks5 REP, an HTTP status). It closes nothing it did not
open except the client stream, which the service closes anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from tungo_sidecar.config.model import Service
from tungo_sidecar.net.dialer import FlowDialer
from tungo_sidecar.net.stream import Stream


class Handler(Protocol):
    async def handle(self, stream: Stream, client: str) -> None:
        """Serve one client (``client`` is its address, for log lines)."""
        ...


#: Builds a handler for a service; raises ``ConfigError`` on bad options.
HandlerFactory = Callable[[Service, FlowDialer], Handler]


async def first_completed(*jobs: Callable[[], Awaitable[object]]) -> None:
    """Run ``jobs`` together until the first one returns, then cancel the others (owned tasks).

    For sessions without a natural end in both directions (UDP): whichever side ends, ends all. An
    error in any job propagates (as an ExceptionGroup from the TaskGroup).
    """
    done = asyncio.Event()

    async def run(job: Callable[[], Awaitable[object]]) -> None:
        try:
            await job()
        finally:
            done.set()

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(run(job)) for job in jobs]
        await done.wait()
        for task in tasks:
            task.cancel()
