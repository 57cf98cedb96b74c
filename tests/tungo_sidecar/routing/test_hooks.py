"""Hook lines run like GOST runs them: shlex-split, no shell, in order; failures name the line."""

from __future__ import annotations

import logging
import stat
import sys
import time
from pathlib import Path

import pytest

from tungo_sidecar.config.model import Metadata
from tungo_sidecar.config.tun import parse_tun_settings, split_command
from tungo_sidecar.errors import ConfigError, TunError
from tungo_sidecar.routing.hooks import apply_dns, run_command, run_commands


def test_split_like_a_posix_shell_with_comments() -> None:
    assert split_command("ip route add 10.0.0.0/8 dev tungo") == [
        "ip",
        "route",
        "add",
        "10.0.0.0/8",
        "dev",
        "tungo",
    ]
    assert split_command("""sh -c 'echo "a b"; exit 0'""") == ["sh", "-c", 'echo "a b"; exit 0']
    assert split_command(r"echo a\ b 'c d' # trailing comment") == ["echo", "a b", "c d"]
    with pytest.raises(ConfigError, match="No closing quotation"):
        split_command("echo 'unbalanced")
    with pytest.raises(ConfigError, match="no command"):
        split_command("# just a comment")


def test_bad_hook_lines_are_refused_at_config_time() -> None:
    with pytest.raises(ConfigError, match='tungo: postUp line "echo \'x"'):
        parse_tun_settings(Metadata(), service=Metadata({"postUp": ["true", "echo 'x"]}))


async def test_no_shell_expansion() -> None:
    out = await run_command("postUp", "echo $HOME * `id` ; true")
    assert out == "$HOME * `id` ; true\n"
    assert await run_command("postUp", """printf '%s|' "a b" c""") == "a b|c|"


async def test_failure_names_the_line_status_and_stderr() -> None:
    line = "sh -c 'echo first >&2; echo the reason >&2; exit 3'"
    with pytest.raises(TunError) as info:
        await run_command("postUp", line)
    assert str(info.value) == f"postUp {line!r}: exit status 3: the reason"


async def test_missing_program() -> None:
    with pytest.raises(TunError, match=r"postDown 'no-such-program-tg --x': cannot run 'no-such-program-tg'"):
        await run_command("postDown", "no-such-program-tg --x")


async def test_unparsable_line_at_run_time() -> None:
    with pytest.raises(TunError, match="No closing quotation"):
        await run_command("postUp", "echo 'x")


async def test_timeout_kills_the_hook() -> None:
    started = time.monotonic()
    with pytest.raises(TunError, match=r"still running after 0\.3s, killed"):
        await run_command("postUp", f"{sys.executable} -c 'import time; time.sleep(30)'", hook_timeout=0.3)
    assert time.monotonic() - started < 5


async def test_lines_run_in_order_and_stop_at_the_first_failure(tmp_path: Path) -> None:
    log = tmp_path / "order"
    lines = [f"sh -c 'echo {i} >> {log}'" for i in (1, 2)] + ["false", f"sh -c 'echo 3 >> {log}'"]
    with pytest.raises(TunError, match="'false': exit status 1"):
        await run_commands("postUp", lines)
    assert log.read_text() == "1\n2\n"


def make_resolvectl(tmp_path: Path, exit_status: int = 0) -> Path:
    # A stand-in resolvectl: a real executable that records its argv, as the real one would receive it.
    tool = tmp_path / "resolvectl"
    tool.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(tmp_path / 'argv')!r}, 'w').write(repr(sys.argv[1:]))\n"
        f"sys.stderr.write('resolvectl: boom\\n')\nsys.exit({exit_status})\n"
    )
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return tool


async def test_dns_with_resolvectl_and_resolved(tmp_path: Path) -> None:
    settings = parse_tun_settings(Metadata({"name": "tg1", "dns": "1.1.1.1,fd00::53"}))
    tool = make_resolvectl(tmp_path)
    assert await apply_dns(settings, resolvectl=str(tool), resolved_dir=tmp_path) is True
    assert (tmp_path / "argv").read_text() == repr(["dns", "tg1", "1.1.1.1", "fd00::53"])


async def test_dns_failure_is_an_error(tmp_path: Path) -> None:
    settings = parse_tun_settings(Metadata({"dns": "1.1.1.1"}))
    with pytest.raises(TunError, match="exit status 1: resolvectl: boom"):
        await apply_dns(settings, resolvectl=str(make_resolvectl(tmp_path, 1)), resolved_dir=tmp_path)


async def test_dns_without_resolved_logs_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = parse_tun_settings(Metadata({"dns": "1.1.1.1"}))
    tool = make_resolvectl(tmp_path)
    with caplog.at_level(logging.WARNING):
        applied = await apply_dns(settings, resolvectl=str(tool), resolved_dir=tmp_path / "absent")
    assert applied is False
    assert not (tmp_path / "argv").exists()
    [record] = caplog.records
    assert "dns: not applied" in record.getMessage() and "1.1.1.1" in record.getMessage()


async def test_dns_without_resolvectl(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    settings = parse_tun_settings(Metadata({"dns": "1.1.1.1"}))
    with caplog.at_level(logging.WARNING):
        assert await apply_dns(settings) is False
    assert "resolvectl not found" in caplog.text


async def test_no_dns_configured_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        assert await apply_dns(parse_tun_settings(Metadata())) is False
    assert caplog.text == ""
