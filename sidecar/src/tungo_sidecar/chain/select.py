"""Node selection: which node of a hop carries the next flow.

A pure function of the hop's eligible nodes (``chain.route.HopStep``: node bypasses already applied;
once round-robin and fail-over land, also of a selection state passed in explicitly): no I/O, no
clocks, no globals. ``net.router.ChainDialer`` calls it for every hop of every dial; the health probe
asks for the first hop's node.
"""

from __future__ import annotations

from tungo_sidecar.chain.route import HopStep
from tungo_sidecar.config.model import Hop, Node
from tungo_sidecar.errors import ConfigError


def first_eligible(step: HopStep) -> Node:
    """The first node the route left eligible (GOST's order; ``selector`` strategies come later)."""
    if not step.nodes:
        raise ConfigError(f"hop {step.hop.name!r}: no eligible node")
    return step.nodes[0]


def first_node(hop: Hop) -> Node:
    """The hop's first node (GOST with a single node per hop; ``selector`` strategies come later)."""
    if not hop.nodes:
        raise ConfigError(f"hop {hop.name!r} has no nodes")
    return hop.nodes[0]
