"""Cluster exclusions: what a TunGateway keeps off the tunnel, each destination with where it came from.

In-cluster traffic must never enter the TUN: Service ClusterIPs, other pods, the cluster DNS and the
link-local range (node-local DNS, cloud metadata) go straight out of the pod, or DNS and every call to
a Service breaks. ``cluster_exclusions(gateway, facts)`` decides that list: ``spec.excludedCIDRs``
(the user's own), plus, unless ``spec.clusterExclusions`` is false, what the controller discovered
(``ClusterFacts``) with the operator's configured fallbacks (``DiscoveryConfig``):

* service ranges: the ``networking.k8s.io/v1`` ServiceCIDR objects (Kubernetes 1.33+; the API server
  keeps one named ``kubernetes`` for its ``--service-cluster-ip-range``); without any, the operator's
  ``--service-cidr``. The ``kubernetes`` Service's ClusterIP is only a hint (one address does not give
  the range): it is checked against those ranges and excluded on its own when outside them all.
* pod ranges: every Node's ``spec.podCIDRs``; when no Node has any (CNIs with their own IPAM, such as
  Calico or Cilium's cluster pool), the operator's ``--pod-cidr``.
* the cluster DNS Service's ClusterIP(s) (``kube-system/kube-dns`` unless configured otherwise).
* link-local, IPv4 and IPv6: never routable beyond the node anyway.

Each CIDR appears once (sources merged), sorted by family, address and prefix so the same cluster
always renders the same config (its hash only moves when the set does). What could not be discovered
is returned as ``problems``, sentences for the gateway's status. Called by ``handlers.controller``
(facts) and ``handlers.reconcile`` (the decision); pure data, must never do I/O or import kopf.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tungo_operator.model.gateway import Gateway
from tungo_operator.model.resources import NodeSpecRaw, ServiceCIDRSpecRaw, ServiceSpecRaw

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 3927 / RFC 4291 link-local: node-local DNS (169.254.20.10), cloud metadata endpoints, IPv6
# neighbours. Nothing there is reachable through a relay, so it is always kept off the tunnel.
LINK_LOCAL = ("169.254.0.0/16", "fe80::/10")
DEFAULT_DNS_SERVICE = ("kube-system", "kube-dns")
KUBERNETES_SERVICE = ("default", "kubernetes")  # the API server's own Service, in every cluster

DEFAULT_CLUSTER_DOMAIN = "cluster.local"
SOURCE_SPEC = "spec.excludedCIDRs"
SOURCE_LINK_LOCAL = "link-local"
SOURCE_SERVICE_CIDR_FLAG = "operator --service-cidr"
SOURCE_POD_CIDR_FLAG = "operator --pod-cidr"


@dataclass(frozen=True, slots=True)
class Exclusion:
    """One destination kept off the tunnel; ``source`` says why (``ServiceCIDR/kubernetes``...)."""

    cidr: str
    source: str


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """How the operator finds the cluster's ranges (its command line, the chart's ``clusterExclusions``)."""

    enabled: bool = True  # watch Nodes, ServiceCIDRs and the two Services; False: configured ranges only
    service_cidrs: tuple[str, ...] = ()  # used when the API has no ServiceCIDR objects
    pod_cidrs: tuple[str, ...] = ()  # used when no Node has spec.podCIDRs
    dns_service: tuple[str, str] = DEFAULT_DNS_SERVICE  # namespace, name
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN  # names split-DNS pods ask the cluster DNS about


@dataclass(frozen=True, slots=True)
class ServiceLookup:
    """What the controller learnt about one Service: its ClusterIPs, or why it has none."""

    namespace: str
    name: str
    cluster_ips: tuple[str, ...] = ()
    found: bool = True
    error: str | None = None  # it could not be read (e.g. forbidden): neither found nor absent

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """Everything the controller observed, sorted: equal clusters give equal facts (and equal configs)."""

    config: DiscoveryConfig = DiscoveryConfig()
    service_cidrs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # ServiceCIDR name → spec.cidrs
    nodes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # Node name → spec.podCIDRs
    dns: ServiceLookup | None = None  # None: not looked up (discovery off)
    kubernetes: ServiceLookup | None = None


@dataclass(frozen=True, slots=True)
class Exclusions:
    """The decision: the CIDRs kept off the tunnel (one entry each) and what could not be discovered."""

    entries: tuple[Exclusion, ...] = ()
    problems: tuple[str, ...] = ()
    cluster: bool = True  # spec.clusterExclusions

    @property
    def cidrs(self) -> tuple[str, ...]:
        """What the rendered listener ``exclude`` carries."""
        return tuple(entry.cidr for entry in self.entries)

    def as_status(self) -> list[dict[str, str]]:
        """``status.exclusions`` of the TunGateway."""
        return [{"cidr": entry.cidr, "source": entry.source} for entry in self.entries]


@dataclass(slots=True)
class _Collector:
    found: list[Exclusion] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, text: str, source: str, *, host: bool = False) -> IPNetwork | None:
        """Record ``text`` (a CIDR, or an address when ``host``); a malformed value is a problem."""
        try:
            net = ipaddress.ip_network(text, strict=False)
            if host and net.prefixlen != net.max_prefixlen:
                raise ValueError("not a single address")
        except ValueError:
            what = "an IP address" if host else "a CIDR"
            self.problems.append(f"{source}: {text!r} is not {what}; ignored")
            return None
        self.found.append(Exclusion(str(net), source))
        return net


def cluster_exclusions(gateway: Gateway, facts: ClusterFacts) -> Exclusions:
    """The destinations ``gateway`` keeps off its tunnel, and what could not be discovered."""
    out = _Collector()
    for cidr in gateway.excluded_cidrs:
        out.add(cidr, SOURCE_SPEC)
    if gateway.cluster_exclusions:
        _discovered(facts, out)
    return Exclusions(_merge(out.found), tuple(out.problems), gateway.cluster_exclusions)


def _discovered(facts: ClusterFacts, out: _Collector) -> None:
    if not facts.config.enabled:
        out.problems.append(
            "cluster discovery is off (tungo-operator --no-cluster-discovery): Nodes, ServiceCIDRs and "
            "the DNS Service are not read; only link-local and the operator's --service-cidr/--pod-cidr "
            "are excluded"
        )
    _service_ranges(facts, out)
    _pod_ranges(facts, out)
    _dns(facts, out)
    for cidr in LINK_LOCAL:
        out.add(cidr, SOURCE_LINK_LOCAL)


def _service_ranges(facts: ClusterFacts, out: _Collector) -> None:
    """The API's own ServiceCIDR objects, else the configured ones; the kubernetes ClusterIP checked."""
    cfg = facts.config
    service_nets: list[IPNetwork] = []
    for name, cidrs in facts.service_cidrs:
        service_nets += [n for c in cidrs if (n := out.add(c, f"ServiceCIDR/{name}")) is not None]
    if not facts.service_cidrs:
        service_nets += [
            n for c in cfg.service_cidrs if (n := out.add(c, SOURCE_SERVICE_CIDR_FLAG)) is not None
        ]
    kubernetes = facts.kubernetes
    if kubernetes is not None and kubernetes.found and kubernetes.error is None:
        for ip in kubernetes.cluster_ips:
            if any(_contains(net, ip) for net in service_nets):
                continue
            net = out.add(ip, f"Service {kubernetes.ref}", host=True)
            family = [n for n in service_nets if net is not None and n.version == net.version]
            if family:
                ranges = ", ".join(str(n) for n in family)
                out.problems.append(
                    f"the kubernetes Service's ClusterIP {ip} is outside the service CIDRs ({ranges}): "
                    "check tungo-operator --service-cidr (chart clusterExclusions.serviceCIDRs)"
                )
            elif service_nets and net is not None:
                out.problems.append(
                    f"the kubernetes Service's ClusterIP {ip} is IPv{net.version} but no IPv{net.version} "
                    "service CIDR is known: add it to tungo-operator --service-cidr "
                    "(chart clusterExclusions.serviceCIDRs)"
                )
    if cfg.enabled and not service_nets:
        hint = ""
        if kubernetes is not None and kubernetes.cluster_ips:
            hint = f" (the kubernetes Service's ClusterIP {kubernetes.cluster_ips[0]} lies in it)"
        out.problems.append(
            "service CIDR unknown: the API has no networking.k8s.io/v1 ServiceCIDR objects (Kubernetes "
            "1.33+) and tungo-operator has no --service-cidr (chart clusterExclusions.serviceCIDRs); "
            f"set it to the cluster's service range{hint}. Until then only the kubernetes and DNS "
            "Service addresses are excluded"
        )


def _pod_ranges(facts: ClusterFacts, out: _Collector) -> None:
    """Each Node's own pod CIDRs, else the configured ones."""
    cfg = facts.config
    pod_nets = [
        net
        for name, cidrs in facts.nodes
        for c in cidrs
        if (net := out.add(c, f"Node/{name} podCIDRs")) is not None
    ]
    if not pod_nets:
        pod_nets = [n for c in cfg.pod_cidrs if (n := out.add(c, SOURCE_POD_CIDR_FLAG)) is not None]
    if cfg.enabled and not pod_nets:
        out.problems.append(
            "pod CIDRs unknown: no Node has spec.podCIDRs (the CNI assigns pod addresses itself) and "
            "tungo-operator has no --pod-cidr (chart clusterExclusions.podCIDRs): traffic to other pods "
            "enters the tunnel"
        )


def _dns(facts: ClusterFacts, out: _Collector) -> None:
    """The cluster DNS Service's ClusterIPs (None: not looked up, discovery is off)."""
    dns = facts.dns
    if dns is None:
        return
    if dns.error is not None:
        out.problems.append(f"DNS Service {dns.ref} could not be read: {dns.error}")
    elif not dns.found:
        out.problems.append(
            f"DNS Service {dns.ref} not found: set tungo-operator --dns-service "
            "(chart clusterExclusions.dnsService) to the cluster DNS Service"
        )
    elif not dns.cluster_ips:
        out.problems.append(f"DNS Service {dns.ref} has no ClusterIP (headless?): nothing to exclude")
    for ip in dns.cluster_ips:
        out.add(ip, f"Service {dns.ref}", host=True)


def _contains(net: IPNetwork, address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in net
    except ValueError:
        return False


def _merge(found: Iterable[Exclusion]) -> tuple[Exclusion, ...]:
    """One entry per CIDR (its sources joined in the order found), sorted by family/address/prefix."""
    sources: dict[str, list[str]] = {}
    for entry in found:
        known = sources.setdefault(entry.cidr, [])
        if entry.source not in known:
            known.append(entry.source)

    def key(cidr: str) -> tuple[int, int, int]:
        net = ipaddress.ip_network(cidr)
        return net.version, int(net.network_address), net.prefixlen

    return tuple(Exclusion(cidr, ", ".join(sources[cidr])) for cidr in sorted(sources, key=key))


# --- raw API values (the controller's kopf indices call these on Node/Service/ServiceCIDR specs) ---


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str) and item)


def node_pod_cidrs(spec: NodeSpecRaw | Mapping[str, object]) -> tuple[str, ...]:
    """A Node's ``spec.podCIDRs`` (or the older single ``spec.podCIDR``)."""
    return _strings(spec.get("podCIDRs")) or _strings(spec.get("podCIDR"))


def service_cidrs(spec: ServiceCIDRSpecRaw | Mapping[str, object]) -> tuple[str, ...]:
    """A ServiceCIDR's ``spec.cidrs`` (one per family)."""
    return _strings(spec.get("cidrs"))


def service_cluster_ips(spec: ServiceSpecRaw | Mapping[str, object]) -> tuple[str, ...]:
    """A Service's ClusterIPs (``spec.clusterIPs``, else ``spec.clusterIP``); headless ("None") has none."""
    ips = _strings(spec.get("clusterIPs")) or _strings(spec.get("clusterIP"))
    return tuple(ip for ip in ips if ip != "None")
