"""Running a function inside a named network namespace, on a fresh thread switched into it.

Owns the one way tungo code enters a namespace made by ``ip netns add`` (``/run/netns/NAME``):
``setns(2)`` on a new thread, never on the caller's and never on a pooled one, because a thread that
entered a namespace stays there. What ``fn`` creates on that thread (sockets, reads of
``/proc/sys/net``) belongs to that namespace and keeps working from any thread. Used by
``routing.netfilter`` (sysctls of a test namespace) and ``app.demo`` / benchmarks / tests (sockets
inside lab namespaces). Never changes the namespace of the calling thread.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Where ``ip netns add`` pins its namespaces.
NETNS_RUN_DIR = Path("/run/netns")
#: ``CLONE_NEWNET`` from <sched.h>: tells ``setns`` the descriptor is a network namespace.
_CLONE_NEWNET = 0x40000000


def _enter(ns: str) -> None:
    fd = os.open(NETNS_RUN_DIR / ns, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(ns: str, fn: Callable[[], T], *, wait: float | None = None) -> T:
    """``fn()`` on a fresh thread inside namespace ``ns``: its result, or what it raised.

    OSError when the namespace cannot be entered. With ``wait``, TimeoutError once that many seconds
    pass first; the thread is a daemon then left to finish on its own.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            _enter(ns)
            result.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"netns {ns}", daemon=True)
    thread.start()
    thread.join(wait)
    if thread.is_alive():
        raise TimeoutError(f"netns {ns}: still running after {wait:g}s")
    if failure:
        raise failure[0]
    return result[0]
