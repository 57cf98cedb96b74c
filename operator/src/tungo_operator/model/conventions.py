"""The names the operator, the injector, the chart and the sidecar agree on (DESIGN.md §2, §4).

Owned jointly by the controller (part A) and the injector (part B): change a value here and every
rendered Secret, injected pod and chart template must follow, so change it only with both. Pure
constants; must never import anything that does I/O.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "tungo.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND_GATEWAY: Final = "TunGateway"
KIND_CHAIN: Final = "Chain"
PLURAL_GATEWAY: Final = "tungateways"
PLURAL_CHAIN: Final = "chains"

# The rendered GOST-format config: one Secret per gateway in each namespace that uses it.
CONFIG_SECRET_PREFIX: Final = "tungo-"
CONFIG_SECRET_KEY: Final = "config.yaml"
CONFIG_MOUNT_DIR: Final = "/etc/tungo"
CONFIG_PATH: Final = f"{CONFIG_MOUNT_DIR}/{CONFIG_SECRET_KEY}"

# The injected sidecar.
SIDECAR_CONTAINER_NAME: Final = "tungo"
HEALTH_PORT: Final = 9190
HEALTH_PATH_LIVE: Final = "/healthz"
HEALTH_PATH_READY: Final = "/readyz"
SIDECAR_COMMAND: Final = ("tungo", "-C", CONFIG_PATH, "--health", f":{HEALTH_PORT}")

# Pod and namespace opt-in, gateway choice, injection status.
INJECT_LABEL: Final = "tungo.dev/inject"
INJECT_ENABLED: Final = "enabled"
GATEWAY_ANNOTATION: Final = "tungo.dev/gateway"
STATUS_ANNOTATION: Final = "tungo.dev/status"


def config_secret_name(gateway: str) -> str:
    """Name of the Secret holding ``gateway``'s rendered config in a pod's namespace."""
    return f"{CONFIG_SECRET_PREFIX}{gateway}"
