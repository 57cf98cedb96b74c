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
