"""A TunGateway ``status`` as the controller writes it (``handlers.reconcile.ready_condition``), for tests
of the injector, which reads it: kmock runs no controller, and the pure core takes bodies as they are."""

from __future__ import annotations

from typing import Any


def ready_status(
    status: str = "True",
    reason: str = "ConfigRendered",
    message: str = "config rendered",
    generation: int = 1,
) -> dict[str, Any]:
    """``status`` with one Ready condition (``status`` may be any string: the injector must cope)."""
    condition = {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2025-01-01T00:00:00Z",
        "observedGeneration": generation,
    }
    return {"observedGeneration": generation, "conditions": [condition]}
