"""Node selection: which node of a hop carries the next flow.

A pure function of the hop (and, once round-robin and fail-over land, of a selection state passed in
explicitly): no I/O, no clocks, no globals. Called by whoever builds a ``net.router.ChainDialer``
(``app.runner``, the TUN engine) and handed to it as its ``select`` argument; ``net`` sits below
``chain`` in the layers and so cannot import this module itself.
"""

from __future__ import annotations

from tungo_sidecar.config.model import Hop, Node
from tungo_sidecar.errors import ConfigError


def first_node(hop: Hop) -> Node:
    """The hop's first node (GOST with a single node per hop; ``selector`` strategies come later)."""
    if not hop.nodes:
        raise ConfigError(f"hop {hop.name!r} has no nodes")
    return hop.nodes[0]
