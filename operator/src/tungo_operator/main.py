"""Entry point of ``tungo-operator``: runs the kopf controller and the injection webhook."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in ([], ["--help"], ["-h"]):
        print("usage: tungo-operator [--help]\n\nThe controller is being built (issue: control plane).")
        return 0
    print(f"tungo-operator: unknown arguments {args}", file=sys.stderr)
    return 2
