"""The tungo-operator command line (the operator loop itself is exercised in tests/k8s)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tungo_operator import __version__
from tungo_operator.main import build_parser, main


def test_help_names_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--namespace", "--all-namespaces", "--liveness", "--verbose", "tungo-<gateway>"):
        assert option in out


def test_options() -> None:
    args = build_parser().parse_args(["-n", "a", "--namespace", "b-*", "--liveness", "off"])
    assert args.namespace == ["a", "b-*"] and args.liveness == "off" and not args.all_namespaces
    assert build_parser().parse_args([]).liveness == "http://0.0.0.0:8080/healthz"


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["-n", "a", "-A"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from tungo_operator.main import main; main(['--version'])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and __version__ in result.stdout
