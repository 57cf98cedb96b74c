"""routing.netns on a real namespace: fn runs inside it, the caller never moves, failures come back."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tungo_sidecar.routing.netns import NETNS_RUN_DIR, run_in_netns


def _own_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"tgns{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def test_fn_runs_inside_and_the_caller_stays_where_it_was(netns: str) -> None:
    before = _own_netns()
    inside = run_in_netns(netns, _own_netns)
    assert inside == os.stat(NETNS_RUN_DIR / netns).st_ino
    assert inside != before
    assert _own_netns() == before


def test_what_fn_raises_comes_back(netns: str) -> None:
    def fails() -> None:
        raise ValueError("from inside")

    with pytest.raises(ValueError, match="from inside"):
        run_in_netns(netns, fails)


def test_a_missing_namespace_is_an_oserror() -> None:
    with pytest.raises(FileNotFoundError):
        run_in_netns("tungo-no-such-netns", _own_netns)


def test_wait_bounds_a_slow_fn(netns: str) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"still running after 0\.2s"):
        run_in_netns(netns, lambda: time.sleep(1), wait=0.2)
    assert time.monotonic() - started < 1
