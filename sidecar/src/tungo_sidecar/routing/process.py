"""Running one external command for the routing layer: bounded in time, never left behind.

Owns the asyncio subprocess handling that ``routing.hooks`` (``postUp``/``postDown`` lines,
``resolvectl``) and ``routing.netfilter`` (``nft -f -``) share: the argv is executed directly (never
through a shell), stdout and stderr are collected, and a process that outlives its timeout, or whose
caller is cancelled, is killed and reaped before the exception leaves. What a failure means, and the
message that says so, stays with the callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finished:
    """A command that ran to its end: exit status and what it wrote."""

    returncode: int
    stdout: bytes
    stderr: bytes


async def run_process(argv: Sequence[str], *, stdin: bytes | None, time_limit: float) -> Finished:
    """Run ``argv`` with ``stdin`` (None: /dev/null) and wait at most ``time_limit`` seconds.

    Raises OSError when it cannot start, TimeoutError (an OSError too: catch it first) when it ran too
    long (it is killed and reaped first).
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), time_limit)
    except BaseException:
        # Timed out or cancelled: never leave the process behind.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    # communicate() returns once the process has exited: this wait only reads its status.
    return Finished(await proc.wait(), out, err)
