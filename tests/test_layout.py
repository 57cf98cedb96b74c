"""Guards on the repository layout that, when broken, break Python itself or the packaging."""

from __future__ import annotations

import operator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_operator_folder_is_not_a_package() -> None:
    # An operator/__init__.py at the root would shadow the standard library's `operator` module.
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert not (ROOT / "sidecar" / "__init__.py").exists()
    assert operator.__file__ is not None and "site-packages" not in operator.__file__
    assert Path(operator.__file__).parent != ROOT / "operator"


def test_both_packages_import_from_their_src_folders() -> None:
    import tungo_operator
    import tungo_sidecar

    assert Path(tungo_sidecar.__file__).is_relative_to(ROOT / "sidecar" / "src")
    assert Path(tungo_operator.__file__).is_relative_to(ROOT / "operator" / "src")
