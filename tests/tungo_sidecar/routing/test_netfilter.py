"""The inbound executor without a namespace: finding nft, its errors, the reverse-path decision
(on a fake /proc/sys/net/ipv4/conf tree), and the missing-nft path of routing.hooks."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tungo_sidecar.errors import TunError
from tungo_sidecar.routing import hooks, netfilter
from tungo_sidecar.routing.inbound import make_inbound
from tungo_sidecar.routing.netfilter import NftMissing, ReversePath, fix_reverse_path


def test_missing_nft(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(NftMissing, match="'nft' not found"):
        netfilter.find_nft()
    assert netfilter.find_nft("/opt/nft") == "/opt/nft"


async def test_missing_nft_is_a_warning_not_a_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    caplog.set_level(logging.WARNING)
    assert await hooks.apply_inbound(make_inbound("tgunit0")) is False
    [record] = caplog.records
    assert "'nft' not found" in record.getMessage() and "will go into tgunit0" in record.getMessage()
    await hooks.remove_inbound(make_inbound("tgunit0"))  # nothing to remove, no error


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
async def test_nft_error_is_one_line() -> None:
    # A syntax error: nft stops while parsing, before it talks to the kernel.
    with pytest.raises(TunError, match=r"^routing: nft exit status 1: .*Error: syntax error"):
        await netfilter.run_nft("table inet tungo { chain c { nonsense } }\n")


async def test_unrunnable_nft() -> None:
    with pytest.raises(TunError, match="cannot run '/nonexistent/nft'"):
        await netfilter.run_nft("", nft="/nonexistent/nft")


def conf(tmp_path: Path, values: dict[str, tuple[int, int]]) -> Path:
    """A fake net/ipv4/conf: interface -> (rp_filter, src_valid_mark)."""
    for dev, (rp, svm) in values.items():
        (tmp_path / dev).mkdir()
        (tmp_path / dev / "rp_filter").write_text(f"{rp}\n")
        (tmp_path / dev / "src_valid_mark").write_text(f"{svm}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("values", "expected", "svm_after"),
    [
        # Off and loose need nothing; the TUN and lo do not count.
        (
            {"all": (0, 0), "default": (0, 0), "eth0": (0, 0), "tungo": (1, 0), "lo": (1, 0)},
            ((), "not needed"),
            0,
        ),
        ({"all": (2, 0), "default": (1, 0), "eth0": (1, 0)}, ((), "not needed"), 0),  # max(all, dev) = 2
        ({"all": (1, 0), "default": (0, 0), "eth0": (0, 0)}, (("default", "eth0"), "set"), 1),
        ({"all": (0, 0), "default": (0, 0), "eth0": (1, 0)}, (("eth0",), "set"), 1),
        ({"all": (0, 1), "default": (0, 0), "eth0": (1, 0)}, (("eth0",), "already set"), 1),
    ],
)
async def test_reverse_path_decision(
    tmp_path: Path, values: dict[str, tuple[int, int]], expected: tuple[tuple[str, ...], str], svm_after: int
) -> None:
    root = conf(tmp_path, values)
    assert await fix_reverse_path("tungo", conf=root) == ReversePath(*expected)
    assert (root / "all" / "src_valid_mark").read_text().strip() == str(svm_after)


async def test_reverse_path_unreadable(tmp_path: Path) -> None:
    result = await fix_reverse_path("tungo", conf=tmp_path / "missing")
    assert result.strict == () and result.action.startswith("failed: cannot read")
