"""RFC 6902 JSON Patch operations as frozen values, and RFC 6901 pointers.

Owns the representation of the patch the injector returns: a tuple of ``PatchOp`` that the webhook
serialises with ``to_json()``. Called by the injection core. Only ``add`` is emitted: the injector never
removes or rewrites what the user wrote. Must never do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


def pointer(*tokens: str | int) -> str:
    """Build a JSON pointer; ``~`` and ``/`` inside a token are escaped (``tungo.dev/status`` -> ``~1``)."""
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


@dataclass(frozen=True, slots=True)
class PatchOp:
    """One JSON Patch operation."""

    op: Literal["add"]
    path: str
    value: Any

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "path": self.path, "value": self.value}


def apply(document: dict[str, Any], ops: tuple[PatchOp, ...]) -> None:
    """Apply ``add`` operations to ``document`` in place (what the apiserver will do with them).

    The webhook hands this to kopf as a body transformation; kopf then diffs the before and after
    bodies into the JSON Patch it returns. Raises ValueError when a path does not fit the document,
    which would mean the core built a patch for a different pod.
    """
    for op in ops:
        *parents, last = [_unescape(t) for t in op.path.split("/")[1:]]
        target: Any = document
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if isinstance(target, dict):
            target[last] = op.value
        elif isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if not 0 <= index <= len(target):
                raise ValueError(f"{op.path}: index out of range")
            target.insert(index, op.value)
        else:
            raise ValueError(f"{op.path}: parent is neither an object nor an array")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")
