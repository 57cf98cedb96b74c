"""Allocator tuning: the fixed glibc thresholds stop page-fault churn on big short-lived buffers."""

from __future__ import annotations

import subprocess
import sys

# tune_malloc() is only ever called in a child interpreter: it changes process-wide allocator state,
# and a fresh heap keeps the measurement honest. The buffers are shaped like a splice: mixed
# 200-900 KiB objects made and dropped in a loop.
_CHURN = """
import resource, sys
if sys.argv[1] == "tuned":
    from tungo_sidecar.net.alloc import tune_malloc
    assert tune_malloc() and tune_malloc()  # applies on glibc, and twice is harmless
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
keep = []
for i in range(300):
    a = b"x" * (200_000 + (i % 7) * 50_000)
    b = b"y" * 600_000
    keep.append(a + b)
    del a, b
    if len(keep) > 2:
        keep.pop(0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], check=True, capture_output=True, text=True, timeout=60
    )
    return int(out.stdout.strip())


def test_tuning_cuts_page_faults() -> None:
    default, tuned = _faults("default"), _faults("tuned")
    # Measured here: ~13,000 minor faults by default against ~1,200 tuned.
    assert tuned * 3 < default, (default, tuned)
