"""tungo-operator: renders TunGateway/Chain resources into sidecar config and injects the sidecar."""

__version__ = "0.1.0"
