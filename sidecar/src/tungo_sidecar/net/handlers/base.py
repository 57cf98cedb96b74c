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
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from tungo_sidecar.config.model import Service
from tungo_sidecar.net.dialer import FlowDialer
from tungo_sidecar.net.stream import Stream, half_closes, pipe


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


async def proxy_streams(
    client: Stream, upstream: Stream, down: Callable[[], Coroutine[Any, Any, None]] | None = None
) -> None:
    """Copy bytes both ways between a client and its target, then close both.

    The client may half-close where the upstream can carry it (its EOF is passed on with
    ``write_eof`` and the answer still flows back), but the session ends as soon as the target side
    is done: TLS and websocket transports cannot carry a half-close, so an EOF from upstream must
    become a full close or a chain of hops would wait forever. For the same reason the client's EOF
    ends the session when the upstream cannot pass it on (``half_closes``): the target would never
    hear of it, and a target waiting for more (a keep-alive server, an echo) would pin the session,
    its sockets and buffers until it timed out. GOST ends a session at the first EOF either way.
    ``down`` replaces the plain upstream → client copy (the relay handler maps an upstream refusal
    there).
    """

    async def copy_down() -> None:
        await pipe(upstream, client)

    try:
        async with asyncio.TaskGroup() as group:
            up_task = group.create_task(pipe(client, upstream))
            down_task: asyncio.Task[None] = group.create_task(down() if down is not None else copy_down())
            ends = [down_task] if half_closes(upstream) else [down_task, up_task]
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            up_task.cancel()
            down_task.cancel()
    finally:
        await asyncio.gather(client.close(), upstream.close(), return_exceptions=True)
