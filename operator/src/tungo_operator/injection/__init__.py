"""Sidecar injection, pure: pod manifest + gateways + namespace -> allow/deny and a JSON Patch.

Public API (import the modules, not names): ``core.decide``, ``core.GatewayInfo`` (with its
``core.ReadyCondition``), ``core.NamespaceInfo``, ``core.Decision``, ``sidecar.SidecarSettings``.
Called by tungo_operator.webhook; depends only on tungo_operator.model (conventions, model.gateway's
LabelSelector, model.errors). Must never import kopf, aiohttp or asyncio, nor do I/O.
"""
