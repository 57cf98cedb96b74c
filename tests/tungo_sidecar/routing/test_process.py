"""One external command for the routing layer: output, stdin, and never a process left behind."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tungo_sidecar.routing.process import Finished, run_process


async def test_stdin_is_given_and_output_and_status_come_back() -> None:
    script = "import sys; data = sys.stdin.read(); print(data.upper()); sys.stderr.write('e'); sys.exit(3)"
    done = await run_process([sys.executable, "-c", script], stdin=b"abc", time_limit=10)
    assert done == Finished(3, b"ABC\n", b"e")


async def test_no_stdin_means_dev_null() -> None:
    done = await run_process(
        [sys.executable, "-c", "import sys; print(len(sys.stdin.read()))"], stdin=None, time_limit=10
    )
    assert done == Finished(0, b"0\n", b"")


async def test_a_missing_program_is_an_oserror() -> None:
    with pytest.raises(FileNotFoundError):
        await run_process(["/nonexistent/tungo-no-such-program"], stdin=None, time_limit=10)


def _alive(pid: int) -> bool:
    # A reaped child is gone from /proc; a killed but unreaped one would linger as a zombie.
    return Path(f"/proc/{pid}").exists()


async def _sleeper_pid(pidfile: Path, time_limit: float) -> None:
    script = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    await run_process([sys.executable, "-c", script], stdin=None, time_limit=time_limit)


async def test_too_slow_is_killed_and_reaped(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(TimeoutError):
        await _sleeper_pid(pidfile, time_limit=1.0)
    assert not _alive(int(pidfile.read_text()))


async def test_cancelled_caller_kills_and_reaps(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(_sleeper_pid(pidfile, time_limit=30))
    for _ in range(200):  # bounded: at most ~10 s for the interpreter to start
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    assert _alive(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(pid)
