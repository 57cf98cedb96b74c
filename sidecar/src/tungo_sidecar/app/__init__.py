"""Process entry points: the `tungo` CLI, service runner, health endpoints, the demo."""
