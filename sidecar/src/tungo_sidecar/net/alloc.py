"""glibc allocator settings for a process that moves 64-512 KiB buffers all day.

Every splice chunk, TLS record batch and websocket frame is a fresh 64-512 KiB ``bytes`` object.
glibc serves those from mmap or from the heap top and, with its *dynamic* thresholds, keeps giving the
pages back (munmap / heap trim) and faulting them in again: on this project's 2-core machines that
page-fault churn, not the copying, dominated a loopback transfer (tcp 0.99 -> ~2.0 GB/s, ws 0.42 ->
~1.4 GB/s in one process, both ends). Fixed thresholds keep the freed memory in the heap for reuse.
The cost is memory the process keeps after a burst (bounded by the top pad / trim threshold below).

Callers: the ``tungo`` entry point, once at start-up. Never called on import. No-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


def tune_malloc() -> bool:
    """Set fixed glibc malloc thresholds for big-buffer traffic; False when not on glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
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
