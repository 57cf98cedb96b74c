"""Raw Kubernetes bodies of ``Chain``, ``TunGateway`` and ``Secret`` as TypedDicts (crds/ is the truth).

These types describe what the API server stores, field for field with the CRDs in ``crds/``; they are
read only by the parsers in ``model.chain`` / ``model.gateway``, which check every value (an API server
without our CRD schema, or a test server, may hand anything over) and return frozen dataclasses.
Nothing else should walk raw dicts. The Node, Service and ServiceCIDR specs at the end are the fields
``model.exclusions`` reads from built-in kinds (its ``node_pod_cidrs`` and friends).
"""

from __future__ import annotations

from typing import TypedDict


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    generation: int
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]
    deletionTimestamp: str


class OwnerReference(TypedDict):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool
    blockOwnerDeletion: bool


class NameRef(TypedDict):
    name: str


class SecretKeyRefRaw(TypedDict, total=False):
    name: str
    key: str


class AuthRaw(TypedDict, total=False):
    secretRef: NameRef
    usernameKey: str
    passwordKey: str


class ConnectorRaw(TypedDict, total=False):
    type: str
    auth: AuthRaw
    metadata: dict[str, str]


class TLSRaw(TypedDict, total=False):
    secure: bool
    serverName: str
    caSecretRef: SecretKeyRefRaw


class WebsocketRaw(TypedDict, total=False):
    path: str
    host: str


class DialerRaw(TypedDict, total=False):
    type: str
    tls: TLSRaw
    ws: WebsocketRaw
    metadata: dict[str, str]


class NodeRaw(TypedDict, total=False):
    name: str
    addr: str
    connector: ConnectorRaw
    dialer: DialerRaw


class SelectorRaw(TypedDict, total=False):
    strategy: str
    maxFails: int
    failTimeout: str


class BypassRaw(TypedDict, total=False):
    matchers: list[str]
    reverse: bool


class HopRaw(TypedDict, total=False):
    name: str
    selector: SelectorRaw
    bypass: BypassRaw
    nodes: list[NodeRaw]


class ChainSpecRaw(TypedDict, total=False):
    hops: list[HopRaw]


class ChainRaw(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: ChainSpecRaw


class TunRaw(TypedDict, total=False):
    name: str
    net: str
    mtu: int
    dns: list[str]
    routes: list[str]
    gw: str
    postUp: list[str]
    postDown: list[str]


class SniffingRaw(TypedDict, total=False):
    enabled: bool
    udp: bool
    timeout: str
    fallback: bool


class HandlerRaw(TypedDict, total=False):
    udpTimeout: str
    sniffing: SniffingRaw


class LabelSelectorRequirementRaw(TypedDict, total=False):
    key: str
    operator: str
    values: list[str]


class LabelSelectorRaw(TypedDict, total=False):
    matchLabels: dict[str, str]
    matchExpressions: list[LabelSelectorRequirementRaw]


class TunGatewaySpecRaw(TypedDict, total=False):
    chainRef: NameRef
    tun: TunRaw
    handler: HandlerRaw
    interface: str
    bypass: BypassRaw
    excludedCIDRs: list[str]
    clusterExclusions: bool
    podSelector: LabelSelectorRaw
    namespaceSelector: LabelSelectorRaw


class TunGatewayRaw(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: TunGatewaySpecRaw
    status: TunGatewayStatusRaw


class ExclusionRaw(TypedDict):
    cidr: str
    source: str


class TunGatewayStatusRaw(TypedDict, total=False):
    observedGeneration: int
    injectedPods: int
    namespaces: list[str]
    configHash: str
    exclusions: list[ExclusionRaw]
    conditions: list[dict[str, object]]


class SecretRaw(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    type: str
    data: dict[str, str]  # base64
    stringData: dict[str, str]


# The few fields of built-in kinds the controller reads for cluster exclusions (model.exclusions).


class NodeSpecRaw(TypedDict, total=False):
    podCIDR: str
    podCIDRs: list[str]


class ServiceSpecRaw(TypedDict, total=False):
    clusterIP: str  # "None" for a headless Service
    clusterIPs: list[str]


class ServiceCIDRSpecRaw(TypedDict, total=False):  # networking.k8s.io/v1, Kubernetes 1.33+
    cidrs: list[str]
