"""The inbound ruleset: golden files of whole nft scripts, bad input, and nft's own syntax check."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tungo_sidecar.errors import ConfigError
from tungo_sidecar.routing.inbound import NFT_TABLE, InboundRuleset, make_inbound
from tungo_sidecar.routing.plan import FWMARK

GOLDEN = Path(__file__).parent / "golden"
# Regenerate with UPDATE_GOLDEN=1 after a deliberate change, then review the diff like code.
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

CASES: dict[str, Callable[[], InboundRuleset]] = {
    "inbound_default": lambda: make_inbound("tungo"),
    "inbound_custom_mark": lambda: make_inbound("tun9", mark=0x99),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    ruleset = CASES[name]()
    text = f"# apply\n{ruleset.render()}# teardown\n{ruleset.render_teardown()}"
    path = GOLDEN / f"{name}.nft"
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text()


def test_structure() -> None:
    ruleset = make_inbound("tungo")
    assert ruleset.mark == FWMARK
    assert [(t.family, t.name) for t in ruleset.tables] == [("inet", NFT_TABLE), ("arp", NFT_TABLE)]
    inet = ruleset.tables[0]
    chains = {chain.name: chain for chain in inet.chains}
    # Output must be a "route" chain: only those make the kernel route again after the mark changed.
    assert chains["output"].type == "route" and chains["output"].hook == "output"
    assert chains["prerouting"].type == "filter" and chains["prerouting"].hook == "prerouting"
    # The TUN and lo are skipped before anything is marked.
    first = chains["prerouting"].rules[0].statement
    assert first == 'iifname { "lo", "tungo" } return'
    # Every table is first deleted, in the same script, so applying twice replaces.
    script = ruleset.render()
    for table in ruleset.tables:
        add, delete = f"add table {table.family} tungo", f"delete table {table.family} tungo"
        assert script.index(add) < script.index(delete) < script.index(f"table {table.family} tungo {{")
    assert ruleset.render_teardown() == (
        "add table inet tungo\ndelete table inet tungo\nadd table arp tungo\ndelete table arp tungo\n"
    )


@pytest.mark.parametrize(
    ("tun", "mark", "message"),
    [
        ('tu"n', FWMARK, "cannot be matched by nftables"),
        ("tun*", FWMARK, "cannot be matched by nftables"),
        ("tu\\n", FWMARK, "cannot be matched by nftables"),
        ("", FWMARK, "cannot be matched by nftables"),
        ("tungo", 0, "fwmark 0x0: must be a non-zero 32-bit value"),
        ("tungo", 1 << 32, "must be a non-zero 32-bit value"),
    ],
)
def test_bad_input(tun: str, mark: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_inbound(tun, mark=mark)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft")
@pytest.mark.parametrize("name", sorted(CASES))
def test_nft_accepts_the_script(name: str) -> None:
    # --check: parsed and validated by the kernel in a transaction that is never committed.
    ruleset = CASES[name]()
    for script in (ruleset.render(), ruleset.render_teardown()):
        proc = subprocess.run(
            ["nft", "--check", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
