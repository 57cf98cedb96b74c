"""config.bounded through the real CLI: hostile config files end in one ``tungo: error:`` line and exit
2 within a second, with bounded memory — never a traceback, never gigabytes (issue 12, item 3)."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tungo_sidecar.config import bounded, yaml_io
from tungo_sidecar.errors import ConfigError

TUNGO = Path(sys.executable).with_name("tungo")
#: The heap a tungo process that parsed nothing big may have (the interpreter and imports need ~60 MB).
DATA_CAP = 256 * 1024 * 1024

LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)),
        "services: [{name: s, addr: ':1', handler: {type: socks5}, metadata: {x: *i}}]",
    ]
)
HOSTILE = {
    "billion laughs": (LAUGHS, "expands to more than 200,000 values"),
    "recursive alias": ("services: &s [*s]\n", "recursive alias"),
    "deep YAML": ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested deeper than 64 levels"),
    "deep JSON": ("{" + '"a":[' * 100_000 + "]" * 100_000 + "}", "nested deeper than 64 levels"),
    "huge int YAML": (
        "services: [{name: s, addr: ':" + "9" * 5000 + "'}]\nx: " + "7" * 5000,
        "more than 64 digits",
    ),
    "huge int JSON": ('{"x": ' + "7" * 5000 + "}", "more than 64 digits"),
    "duplicate key": ("services: []\nservices: []\n", "key 'services' given twice"),
    "duplicate key JSON": ('{"services": [], "services": []}', "key 'services' given twice"),
    "keys differing in case": (
        "services: [{name: s, Name: t, addr: ':1', handler: {type: socks5}}]",
        "services[0].Name: given twice (as 'name' too)",
    ),
}


def _memory_cap() -> None:
    # The child may not grow its heap past the cap: a parser that expands or buffers without bound
    # dies with MemoryError (a traceback, exit 1) instead of passing. Measured: ~35 MB peak RSS here.
    # (ru_maxrss cannot tell: Linux carries the forking test process's high-water mark across exec.)
    resource.setrlimit(resource.RLIMIT_DATA, (DATA_CAP, DATA_CAP))


def run_tungo(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """The CLI as a subprocess under a heap cap: its result and wall time."""
    started = time.monotonic()
    result = subprocess.run(
        [str(TUNGO), *args], capture_output=True, text=True, timeout=30, check=False, preexec_fn=_memory_cap
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_config_is_one_line_exit_2_fast_and_small(tmp_path: Path, name: str) -> None:
    text, expected = HOSTILE[name]
    path = tmp_path / ("config.json" if text.startswith("{") else "config.yaml")
    path.write_text(text)
    result, seconds = run_tungo("-C", str(path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("tungo: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert seconds < 5.0  # bounded: the checks run before the expensive step (typically ~0.3 s here)


@pytest.mark.parametrize("source", ["/dev/zero", "big"])
def test_endless_or_huge_input_stops_at_the_size_limit(tmp_path: Path, source: str) -> None:
    if source == "big":
        path = tmp_path / "big.yaml"
        path.write_text("# padding\n" * (bounded.MAX_BYTES // 10 + 1))
        source = str(path)
    result, seconds = run_tungo("-C", source)
    assert result.returncode == 2 and "larger than 4 MiB: not a config file" in result.stderr, result.stderr
    assert seconds < 5.0


def test_aliases_and_merge_keys_a_real_config_uses_still_work() -> None:
    config = yaml_io.load(
        """
        chains:
        - name: c
          hops:
          - {name: h, nodes: [&relay {name: n, addr: "h:1", connector: {type: relay}}]}
          - {name: g, nodes: [{<<: *relay, name: m}]}
        services: [{name: s, addr: ":1", handler: {type: socks5, chain: c}}]
        """,
        check=False,
    )
    assert [n.name for hop in config.chains[0].hops for n in hop.nodes] == ["n", "m"]


def test_limits_are_reported_with_where_they_were_hit() -> None:
    with pytest.raises(ConfigError, match=r"bad YAML at line 2, column \d+: more than 256 aliases"):
        bounded.parse_yaml("a: &a 1\nb: [" + ", ".join(["*a"] * 300) + "]\n")


def test_long_digit_strings_are_text_not_numbers() -> None:
    digest = "7" * 100  # a hash or a token in a string value is no number
    assert bounded.parse_json('{"x": "' + digest + '", "y": [1, 2]}') == {"x": digest, "y": [1, 2]}
    assert bounded.parse_yaml(f"x: '{digest}'\n") == {"x": digest}
