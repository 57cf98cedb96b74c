"""glibc allocator settings for a process that moves 64-512 KiB buffers all day.

Every splice chunk, TLS record batch and websocket frame is a fresh 64-512 KiB ``bytes`` object.
glibc serves those from mmap or from the heap top and, with its *dynamic* thresholds, keeps giving the
pages back (munmap / heap trim) and faulting them in again: on this project's 2-core machines that
page-fault churn, not the copying, dominated a loopback transfer (tcp 0.99 -> ~2.0 GB/s, ws 0.42 ->
~1.4 GB/s in one process, both ends). Fixed thresholds keep the freed memory in the heap for reuse.
The cost is memory the process keeps after a burst (bounded by the top pad / trim threshold below).

``release`` is the other half, for after a burst of connections (a flood of unauthenticated clients,
say): much of what a session held is only freed by Python's cyclic collector (asyncio tasks and
exceptions make reference cycles), and what is freed sits in the heap between live blocks where the
thresholds cannot return it. ``release`` collects, then ``malloc_trim(0)`` gives the free pages back.
Measured with 4 rounds of 300 TLS clients connecting, idling, leaving: RSS kept +7 MB per round
without; with it, back to start-up +2.5 MB after every round. A full collection walks every object,
~100 ms for the start-up heap alone: ``freeze_startup`` moves that heap out of the collector's sight
first (``gc.freeze``), after which the collection costs ~10 ms; without a freeze ``release`` only trims.

Callers: the ``tungo`` entry point, once at start-up (``tune_malloc``, ``freeze_startup``); listeners
after a burst (``release``). Never called on import. No-op off glibc (``trim``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging

log = logging.getLogger(__name__)

# mallopt() parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: Blocks below this come from the heap, never from a fresh mmap (glibc's dynamic maximum is 32 MiB).
MMAP_THRESHOLD = 16 * 1024 * 1024
#: Free heap top kept before giving memory back to the kernel.
TRIM_THRESHOLD = 64 * 1024 * 1024
#: Extra heap obtained per growth, so a burst does not sbrk in small steps.
TOP_PAD = 16 * 1024 * 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def trim() -> bool:
    """Return free heap memory to the kernel (glibc ``malloc_trim(0)``); False when not on glibc."""
    libc = _libc()
    malloc_trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True


def freeze_startup() -> None:
    """Collect once, then exempt every object alive now (modules, config) from later collections."""
    gc.collect()
    gc.freeze()


def release() -> None:
    """Give memory back after a burst: collect reference cycles when that is cheap (start-up heap
    frozen), then ``trim``."""
    if gc.get_freeze_count():
        gc.collect()
    trim()


def tune_malloc() -> bool:
    """Set fixed glibc malloc thresholds for big-buffer traffic; False when not on glibc."""
    libc = _libc()
    if libc is None:
        return False
    try:
        mallopt = libc.mallopt
    except AttributeError:
        return False  # musl and others: no mallopt, nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    if not ok:
        log.warning("mallopt refused the allocator thresholds; big transfers may run slower")
    return ok
