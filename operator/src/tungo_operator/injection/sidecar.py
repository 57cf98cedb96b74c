"""The tungo sidecar as Kubernetes data: its container spec and the two volumes it needs.

Owns every field of the injected container (command, probes, security context, mounts) and the reasons
for them. Called by the injection core; the bridge test starts the sidecar from exactly this spec. Must
never do I/O and never read the pod: pod-dependent choices belong to the core.

Why these choices:
- **Native sidecar** (an init container with ``restartPolicy: Always``, first in ``initContainers``): it
  starts before every other init and app container and, with the startupProbe on ``/readyz``, the
  kubelet starts the next container only once the tunnel is up; it is stopped after the apps.
- **Root inside, one capability.** Kubernetes grants added capabilities only to uid 0 (it sets no
  ambient capabilities, so a non-root user loses NET_ADMIN at exec). The sidecar needs NET_ADMIN to
  configure the TUN device, addresses, routes and ``ip rule``s and to set ``SO_MARK`` on its own
  sockets. So: uid 0, every capability dropped but NET_ADMIN, no privilege escalation, read-only root
  filesystem, RuntimeDefault seccomp. Pod-level ``runAsNonRoot`` is overridden for this container only.
- **/dev/net/tun from the node** (hostPath, ``type: CharDevice``) rather than ``mknod`` inside: no
  MKNOD capability and no device-creation code in the sidecar, and if the node lacks the tun module the
  kubelet reports it clearly before the container starts. Both ways need the container runtime's
  default device rules (runc and crun allow ``c 10:200``), and both need the PodSecurity "privileged"
  level, which NET_ADMIN already requires.
- **NET_BIND_SERVICE only for split DNS** (the gateway's ``spec.dns.mode: tunnel``): the sidecar's DNS
  service listens on 127.0.0.1:53, the port resolv.conf cannot change, and root without the capability
  cannot bind below 1024 once every capability is dropped.
- **No readinessProbe**: a relay outage would otherwise take the pod out of its Services, turning an
  egress problem into an ingress outage; liveness restarts a wedged sidecar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from tungo_operator.model import conventions as c

CONFIG_VOLUME: Final = "tungo-config"
TUN_VOLUME: Final = "tungo-tun"
TUN_DEVICE: Final = "/dev/net/tun"
HEALTH_PORT_NAME: Final = "tungo-health"  # port names are at most 15 characters
# The secret holds credentials: readable by the sidecar's user (root) only.
CONFIG_FILE_MODE: Final = 0o400
#: Where the sidecar's DNS service listens with ``spec.dns.mode: tunnel`` (the pod's nameserver).
DNS_ADDRESS: Final = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """Cluster-wide knobs of the injected container, set by the chart on the webhook Deployment."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"
    # Seconds the tunnel may take to come up before the kubelet restarts the sidecar: the chain dial
    # includes DNS, TCP, TLS and the websocket upgrade to a server that may be far away.
    startup_timeout_s: int = 120
    # The cluster's DNS domain (kubelet --cluster-domain), for the search list of split-DNS pods.
    cluster_domain: str = "cluster.local"


def container(settings: SidecarSettings, *, dns: bool = False) -> dict[str, Any]:
    """The sidecar container, ready to insert at ``initContainers[0]``; ``dns``: it serves the pod's
    DNS on port 53 (split DNS), which needs NET_BIND_SERVICE."""

    def probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": c.HEALTH_PORT, "scheme": "HTTP"},
            "periodSeconds": period_s,
            "timeoutSeconds": 1,
            "failureThreshold": failures,
        }

    return {
        "name": c.SIDECAR_CONTAINER_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(c.SIDECAR_COMMAND),
        "restartPolicy": "Always",
        "ports": [{"name": HEALTH_PORT_NAME, "containerPort": c.HEALTH_PORT, "protocol": "TCP"}],
        # Probed every second so the apps start about a second after the tunnel is ready.
        "startupProbe": probe(c.HEALTH_PATH_READY, 1, settings.startup_timeout_s),
        "livenessProbe": probe(c.HEALTH_PATH_LIVE, 10, 3),
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"memory": settings.memory_limit},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {
                "drop": ["ALL"],
                "add": ["NET_ADMIN", "NET_BIND_SERVICE"] if dns else ["NET_ADMIN"],
            },
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": c.CONFIG_MOUNT_DIR, "readOnly": True},
            {"name": TUN_VOLUME, "mountPath": TUN_DEVICE},
        ],
    }


def volumes(gateway: str) -> list[dict[str, Any]]:
    """The config Secret of ``gateway`` and the node's TUN device."""
    return [
        {
            "name": CONFIG_VOLUME,
            "secret": {
                "secretName": c.config_secret_name(gateway),
                # Every key: config.yaml and the CA bundles it names (conventions.ca_path).
                "defaultMode": CONFIG_FILE_MODE,
            },
        },
        {"name": TUN_VOLUME, "hostPath": {"path": TUN_DEVICE, "type": "CharDevice"}},
    ]
