"""The `tungo` command line: GOST's flags, -O printing, one-line errors with exit code 2, the runner."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from tungo_sidecar import __version__
from tungo_sidecar.app import cli
from tungo_sidecar.config.model import Config
from tungo_sidecar.config.tun import TunSettings
from tungo_sidecar.config.url import build_config
from tungo_sidecar.config.yaml_io import dump, load
from tungo_sidecar.errors import ConfigError, DialError
from tungo_sidecar.proto.address import Address

TUNGO = Path(sys.executable).with_name("tungo")
TUN_URL = "tungo://:0?name=tungo&net=192.168.123.1/24&mtu=1420&dns=1.1.1.1"


def run_tungo(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TUNGO), *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )


# -- in-process ---------------------------------------------------------------------------------------


def test_print_yaml_is_the_config_of_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-L", TUN_URL, "-F", "relay+wss://relay.example:443", "-O", "yaml"]) == 0
    out = capsys.readouterr().out
    expected = build_config([TUN_URL], ["relay+wss://relay.example:443"])
    assert out == dump(expected)
    assert load(out) == expected


def test_print_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-L=socks5://:1080", "-F=relay+tls://h:443", "-O=json"]) == 0  # Go flag's -X=value
    out = capsys.readouterr().out
    assert out == dump(build_config(["socks5://:1080"], ["relay+tls://h:443"]), "json")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-V"]) == 0
    assert capsys.readouterr().out.startswith(f"tungo {__version__} (Python ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["-F", "relay+wsx://h:1", "-L", "socks5://:1"],
            'tungo: error: -F "relay+wsx://h:1": unknown dialer "wsx"',
        ),
        (["-L", "socks5://:70000"], 'tungo: error: -L "socks5://:70000": bad port "70000"'),
        (
            ["-F", "relay+wss://h:443"],
            "tungo: error: nothing to run: give a service with -L, or a config with -C",
        ),
        ([], "tungo: error: nothing to run"),
        (["-L", "socks5://:1", "--health", "localhost"], 'tungo: error: --health "localhost": address'),
        (["-L", "socks5://:1", "--health", ":99999"], 'tungo: error: --health ":99999": bad port "99999"'),
        (["-C", "/nonexistent/gost.yaml"], "tungo: error: /nonexistent/gost.yaml: cannot read"),
        (
            ["-C", "https://example.com/gost.yaml"],
            'tungo: error: -C "https://example.com/gost.yaml": config URLs',
        ),
        (["-C", "{bad json}"], "tungo: error: config: bad JSON at line 1, column 2"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.startswith("tungo: error:")]
    assert len(lines) == 1
    assert lines[0].startswith(message)


def test_unknown_flag_is_an_argparse_error_with_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["-api", ":18080"])
    assert info.value.code == 2
    assert "tungo: error:" in capsys.readouterr().err


def test_config_files_and_command_line_merge_in_gost_order(tmp_path: Path) -> None:
    path = tmp_path / "gost.yaml"
    path.write_text(
        "services: [{name: file-svc, addr: ':1081', handler: {type: http, chain: file-chain}}]\n"
        "chains: [{name: file-chain, hops: [{name: h, nodes: [{name: n, addr: 'p:1'}]}]}]\n"
    )
    invocation = cli.parse(["-C", str(path), "-L", "socks5://:1080", "-F", "relay+wss://h:443"])
    assert invocation is not None
    config = invocation.config
    assert [s.name for s in config.services] == ["file-svc", "service-0"]
    assert [c.name for c in config.chains] == ["file-chain", "chain-0"]
    assert config.services[1].chain == "chain-0"


def test_config_from_stdin_and_inline_json() -> None:
    invocation = cli.parse(["-C", "-"], stdin=io.StringIO(dump(build_config(["http://:8080"]))))
    assert invocation is not None and invocation.config == build_config(["http://:8080"])
    inline = '{"services": [{"name": "j", "addr": ":1", "handler": {"type": "socks5"}}]}'
    invocation = cli.parse(["-C", inline])
    assert invocation is not None and invocation.config.services[0].name == "j"


def test_a_name_clash_between_file_and_command_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "gost.yaml"
    path.write_text(dump(build_config(["socks5://:1"])))
    with pytest.raises(ConfigError, match='service "service-0": name used twice'):
        cli.parse(["-C", str(path), "-L", "http://:2"])


def test_health_debug_and_output_land_in_the_invocation() -> None:
    invocation = cli.parse(["-L", TUN_URL, "--health", ":9190", "-D"])
    assert invocation is not None
    assert invocation.health == Address("", 9190)
    assert invocation.debug is True and invocation.output is None
    invocation = cli.parse(["-L", TUN_URL, "--health", "[::1]:9190", "-O", "json"])
    assert (
        invocation is not None and invocation.health == Address("::1", 9190) and invocation.output == "json"
    )
    invocation = cli.parse(["-L", TUN_URL])
    assert invocation is not None and invocation.health is None and invocation.debug is False


class FakeRunner:
    """Stands in for app/runner.py (another engineer's module): records the call, returns a result."""

    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.calls: list[tuple[Config, Address | None]] = []
        self.result = result
        self.error = error

    def module(self) -> types.ModuleType:
        module = types.ModuleType(cli.RUNNER_MODULE)

        async def run(config: Config, *, health: Address | None = None) -> Any:
            self.calls.append((config, health))
            if self.error is not None:
                raise self.error
            return self.result

        module.run = run  # type: ignore[attr-defined]
        return module


def test_main_hands_the_config_and_health_to_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRunner()
    monkeypatch.setitem(sys.modules, cli.RUNNER_MODULE, fake.module())
    assert cli.main(["-L", TUN_URL, "-F", "relay+wss://h:443", "--health", "127.0.0.1:9190"]) == 0
    assert fake.calls == [(build_config([TUN_URL], ["relay+wss://h:443"]), Address("127.0.0.1", 9190))]


@pytest.mark.parametrize(
    ("fake", "code", "message"),
    [
        (FakeRunner(result=3), 3, None),
        (FakeRunner(error=DialError("relay unreachable")), 1, "tungo: error: relay unreachable"),
        (FakeRunner(error=ConfigError("bad\nmetadata")), 2, "tungo: error: bad metadata"),
        (FakeRunner(error=KeyboardInterrupt()), 130, None),
    ],
)
def test_runner_outcomes_become_exit_codes(
    fake: FakeRunner,
    code: int,
    message: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, cli.RUNNER_MODULE, fake.module())
    assert cli.main(["-L", "socks5://:1080"]) == code
    if message is not None:
        assert message in capsys.readouterr().err.splitlines()


def test_missing_runner_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, cli.RUNNER_MODULE, None)  # makes the import fail
    assert cli.main(["-L", "socks5://:1080"]) == 1
    assert (
        "tungo: error: the service runner (tungo_sidecar.app.runner) is not available"
        in capsys.readouterr().err
    )


def test_the_runner_is_not_imported_to_print_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRunner()
    monkeypatch.setitem(sys.modules, cli.RUNNER_MODULE, fake.module())
    assert cli.main(["-L", "socks5://:1080", "-O", "yaml"]) == 0
    assert fake.calls == []


# -- the installed console script ----------------------------------------------------------------------


def test_script_prints_yaml_of_the_gost_tutorial_command() -> None:
    result = run_tungo("-L", TUN_URL, "-F", "relay+wss://SERVER_IP:443?interface=eth0", "-O", "yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "services:\n  - name: service-0\n    addr: :0\n    handler:\n      type: tungo\n"
    )
    assert "    hops:\n      - name: hop-0\n        nodes:\n          - name: node-0\n" in result.stdout
    assert load(result.stdout) == build_config([TUN_URL], ["relay+wss://SERVER_IP:443?interface=eth0"])


def test_script_reads_its_own_output_back(tmp_path: Path) -> None:
    printed = run_tungo("-L", "socks5://:1080?bypass=10.0.0.0/8", "-F", "relay+wss://h:443", "-O", "yaml")
    path = tmp_path / "tungo.yaml"
    path.write_text(printed.stdout)
    again = run_tungo("-C", str(path), "-O", "yaml")
    assert again.returncode == 0, again.stderr
    assert again.stdout == printed.stdout
    from_stdin = run_tungo("-C", "-", "-O", "json", stdin=printed.stdout)
    assert from_stdin.returncode == 0 and from_stdin.stdout.startswith('{\n  "services": [')


def test_script_version_and_help() -> None:
    version = run_tungo("-V")
    assert version.returncode == 0 and version.stdout.startswith(f"tungo {__version__} ")
    help_text = run_tungo("--help")
    assert help_text.returncode == 0
    assert "-F URL" in help_text.stdout and "--health ADDR" in help_text.stdout
    assert 'tungo -L "tungo://:0?name=tungo&net=192.168.123.1/24' in help_text.stdout


def test_script_bad_input_exits_2_with_one_line() -> None:
    result = run_tungo("-L", "socks5://:1080", "-F", "relay+wsx://user:secret@h:1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        'tungo: error: -F "relay+wsx://user:***@h:1": unknown dialer "wsx" (known: tcp, tls, ws, wss)\n'
    )


def test_sighup_is_a_logged_no_op_and_sigterm_still_stops(tmp_path: Path) -> None:
    # SIGHUP's default action would kill tungo and leave a TUN service's routes behind (issue 12).
    proc = subprocess.Popen(
        [str(TUNGO), "-L", "socks5://127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 15
        while "service(s) running" not in (line := proc.stdout.readline()):
            assert line and time.monotonic() < deadline, "tungo did not start"
        proc.send_signal(signal.SIGHUP)
        assert "SIGHUP received: reloading the config is not supported yet" in proc.stdout.readline()
        assert proc.poll() is None  # still serving
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_per_pod_exclude_and_route_flags_change_every_tun_service_only() -> None:
    invocation = cli.parse(
        [
            "-L", "tungo://:0?name=tungo&net=192.168.123.1/24&route=10.0.0.0/8&exclude=10.1.0.0/16",
            "-L", "socks5://:1080",
            "--exclude", "10.2.0.0/16,fd00:2::/64", "--exclude", "192.0.2.0/24",
            "--route", "0.0.0.0/0,::/0",
            "--exclude-ports", "5432", "--exclude-ports", "8000-8100",
        ]
    )  # fmt: skip
    assert invocation is not None
    tun_service, socks = invocation.config.services
    settings = TunSettings.from_service(tun_service)
    assert [str(n) for n in settings.excluded] == [
        "10.1.0.0/16",
        "10.2.0.0/16",
        "fd00:2::/64",
        "192.0.2.0/24",
    ]
    assert [str(r) for r in settings.routes] == ["0.0.0.0/0", "::/0"]  # replaced, not added
    assert [(p.first, p.last) for p in settings.excluded_ports] == [(5432, 5432), (8000, 8100)]
    assert "exclude" not in socks.listener.metadata
    # A bad value is the usual one-line config error, naming the key it became.
    bad = cli.parse(["-L", "tungo://:0?net=192.168.123.1/24", "--exclude", "10.0.0.1/8x"])
    assert bad is not None
    with pytest.raises(ConfigError, match="exclude"):
        TunSettings.from_service(bad.config.services[0])


# -- process limits (issue 12, item 2) ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_process_wide_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs of ``main`` must not freeze the test process's heap or raise its limits."""
    monkeypatch.setattr(cli.alloc, "freeze_startup", lambda: None)
    monkeypatch.setattr(cli, "raise_nofile_limit", lambda: 0)


@pytest.mark.parametrize(("limit", "raised"), [((64, 4096), 4096), ((64, 64), 64)])
def test_the_soft_open_file_limit_is_raised_to_the_hard_one(limit: tuple[int, int], raised: int) -> None:
    # Go raises it at start for GOST; a container's 1024 soft limit would cap a proxy at ~500 sessions.
    # (The child sets its starting limit itself: a preexec_fn would fork this whole test process.)
    code = (
        f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, {limit!r}); "
        "from tungo_sidecar.app.cli import raise_nofile_limit; "
        "print(raise_nofile_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == [str(raised), str(raised), str(limit[1])]
