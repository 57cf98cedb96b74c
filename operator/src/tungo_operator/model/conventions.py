"""The names the operator, the injector, the chart and the sidecar agree on (DESIGN.md §2, §4).

Owned jointly by the controller (part A) and the injector (part B): change a value here and every
rendered Secret, injected pod and chart template must follow, so change it only with both. Pure
constants; must never import anything that does I/O.

Which namespaces a gateway serves
---------------------------------
A ``TunGateway`` serves pods in its own namespace, plus pods in every namespace whose labels match its
``spec.namespaceSelector`` (only when the operator watches namespaces cluster-wide; otherwise the
selector is ignored and the status says so). For every namespace it serves, the controller writes the
Secret ``config_secret_name(gateway)`` there, labelled ``GATEWAY_LABEL: <gateway>``. A pod can use
gateway ``G`` exactly when ``tungo-G`` exists in the pod's own namespace. Two gateways with the same
name serving one namespace conflict: the first writer keeps the Secret, the other reports
``Ready=False`` with reason ``SecretConflict``.

Injected pods
-------------
The injector marks a pod it changed with ``STATUS_ANNOTATION: STATUS_INJECTED`` and sets
``GATEWAY_ANNOTATION`` to the gateway it chose (also when the pod did not name one), so the controller
counts injected pods per gateway (``status.injectedPods``) from those two annotations.
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
# Per-pod routing, as istio's traffic.sidecar.istio.io/* annotations: CIDRs kept off this pod's tunnel
# (added to the gateway's), and the CIDRs captured instead of the gateway's routes ("*": everything).
EXCLUDE_ANNOTATION: Final = "tungo.dev/excludeOutboundIPRanges"
INCLUDE_ANNOTATION: Final = "tungo.dev/includeOutboundIPRanges"
# Destination ports (``5432``, ``8000-8100``) this pod reaches outside its tunnel, TCP and UDP.
EXCLUDE_PORTS_ANNOTATION: Final = "tungo.dev/excludeOutboundPorts"
STATUS_INJECTED: Final = "injected"  # the value of STATUS_ANNOTATION on an injected pod

# On the config Secrets the controller writes: who owns them (a label, so it can be selected on).
GATEWAY_LABEL: Final = "tungo.dev/gateway"
GATEWAY_NAMESPACE_ANNOTATION: Final = "tungo.dev/gateway-namespace"
CONFIG_HASH_ANNOTATION: Final = "tungo.dev/config-hash"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "tungo-operator"


# A gateway's name is a label value (GATEWAY_LABEL, at most 63 characters) and ``tungo-<name>`` must
# stay a DNS label (at most 63) so it can name volumes too: 63 - len("tungo-") = 57.
MAX_GATEWAY_NAME: Final = 63 - len(CONFIG_SECRET_PREFIX)
# The API server refuses Secrets over 1 MiB (data, all keys together).
MAX_SECRET_BYTES: Final = 1024 * 1024


def config_secret_name(gateway: str) -> str:
    """Name of the Secret holding ``gateway``'s rendered config in a pod's namespace."""
    return f"{CONFIG_SECRET_PREFIX}{gateway}"


def ca_key(hop: str, node: str) -> str:
    """The config Secret key holding one chain node's CA bundle (hop and node names are unique)."""
    return f"ca-{hop}-{node}.pem"


def ca_path(hop: str, node: str) -> str:
    """Where the sidecar reads that CA bundle once the Secret is mounted (a GOST ``caFile``)."""
    return f"{CONFIG_MOUNT_DIR}/{ca_key(hop, node)}"
