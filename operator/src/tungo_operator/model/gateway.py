"""``TunGateway`` resources parsed into frozen dataclasses (``parse_gateway``), with the CRD's defaults.

Called by the handlers on every raw TunGateway body and by the injector to learn a gateway's settings.
Defaults here must equal the ``default:`` values in ``crds/tungo.dev_tungateways.yaml`` (a test checks).
Also holds the tiny label-selector matcher both sides need. Must never import kopf or do I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tungo_operator.model import conventions, fields
from tungo_operator.model.chain import Bypass, parse_bypass
from tungo_operator.model.errors import SpecError

# GOST's tungo defaults (DESIGN.md §2).
DEFAULT_TUN_NAME = "tungo"
DEFAULT_TUN_NET = "192.168.123.1/24"
DEFAULT_MTU = 1420  # room for ws/TLS framing inside a 1500-byte path
DEFAULT_UDP_TIMEOUT = "30s"
DEFAULT_ROUTES = ("0.0.0.0/0",)
# The user's own exclusions: none by default, the cluster's ranges are discovered (model.exclusions).
DEFAULT_EXCLUDED_CIDRS: tuple[str, ...] = ()
DEFAULT_CLUSTER_EXCLUSIONS = True
MIN_MTU, MAX_MTU = 576, 65535  # 576: the IPv4 minimum datagram every host must accept
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True)
class Tun:
    name: str = DEFAULT_TUN_NAME
    net: str = DEFAULT_TUN_NET
    mtu: int = DEFAULT_MTU
    dns: tuple[str, ...] = ()
    routes: tuple[str, ...] = DEFAULT_ROUTES
    gw: str | None = None
    post_up: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Sniffing:
    enabled: bool = False
    udp: bool = False
    timeout: str | None = None
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    udp_timeout: str = DEFAULT_UDP_TIMEOUT
    sniffing: Sniffing = Sniffing()


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(key) != value for key, value in self.match_labels):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and not (present and labels[req.key] in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


DNS_MODES = ("cluster", "tunnel")


@dataclass(frozen=True, slots=True)
class Dns:
    """``spec.dns``: ``tunnel`` makes the sidecar the pod's resolver (cluster names to the cluster DNS,
    the rest through the chain to ``spec.tun.dns``); ``cluster_servers`` override the discovered DNS."""

    mode: str = "cluster"
    cluster_servers: tuple[str, ...] = ()

    @property
    def tunnel(self) -> bool:
        return self.mode == "tunnel"


@dataclass(frozen=True, slots=True)
class Gateway:
    namespace: str
    name: str
    chain: str  # a Chain in ``namespace``
    tun: Tun = Tun()
    handler: HandlerOptions = HandlerOptions()
    interface: str | None = None
    bypass: Bypass | None = None
    excluded_cidrs: tuple[str, ...] = DEFAULT_EXCLUDED_CIDRS
    cluster_exclusions: bool = DEFAULT_CLUSTER_EXCLUSIONS  # also exclude the discovered cluster ranges
    pod_selector: LabelSelector = LabelSelector()
    namespace_selector: LabelSelector | None = None  # None: only its own namespace
    dns: Dns = Dns()


def parse_label_selector(value: object, path: str) -> LabelSelector:
    raw = fields.obj(value, path, allowed=("matchLabels", "matchExpressions"))
    # Label values may be empty in Kubernetes (at most 63 characters): `app: ""` is a valid selector.
    labels = fields.string_map(
        raw.get("matchLabels", {}), f"{path}.matchLabels", max_items=64, max_len=63, allow_empty=True
    )
    exprs_raw = raw.get("matchExpressions", [])
    if not isinstance(exprs_raw, list):
        raise SpecError(f"{path}.matchExpressions: expected a list")
    exprs: list[Requirement] = []
    for i, item in enumerate(exprs_raw):
        epath = f"{path}.matchExpressions[{i}]"
        eraw = fields.obj(item, epath, allowed=("key", "operator", "values"), required=("key", "operator"))
        key = fields.string(eraw["key"], f"{epath}.key", max_len=317)
        op = fields.string(eraw["operator"], f"{epath}.operator", choices=SELECTOR_OPERATORS)
        values = fields.strings(
            eraw.get("values", []), f"{epath}.values", max_items=256, max_len=63, allow_empty=True
        )
        if op in ("In", "NotIn") and not values:
            raise SpecError(f"{epath}.values: operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise SpecError(f"{epath}.values: operator {op} takes no values")
        exprs.append(Requirement(key, op, values))
    return LabelSelector(labels, tuple(exprs))


def _parse_tun(value: object, path: str) -> Tun:
    raw = fields.obj(value, path, allowed=("name", "net", "mtu", "dns", "routes", "gw", "postUp", "postDown"))
    name = fields.string(
        raw.get("name", DEFAULT_TUN_NAME),
        f"{path}.name",
        pattern=fields.IFNAME,
        hint="an interface name (1-15 of a-z A-Z 0-9 _ . -)",
    )
    dns = fields.strings(raw.get("dns", []), f"{path}.dns", max_items=8)
    routes = fields.strings(raw.get("routes", list(DEFAULT_ROUTES)), f"{path}.routes", max_items=256)
    return Tun(
        name=name,
        net=fields.interface_cidr(raw.get("net", DEFAULT_TUN_NET), f"{path}.net"),
        mtu=fields.integer(raw.get("mtu", DEFAULT_MTU), f"{path}.mtu", low=MIN_MTU, high=MAX_MTU),
        dns=tuple(fields.ip(item, f"{path}.dns[{i}]") for i, item in enumerate(dns)),
        routes=tuple(fields.cidr(item, f"{path}.routes[{i}]") for i, item in enumerate(routes)),
        gw=None if raw.get("gw") is None else fields.ip(raw["gw"], f"{path}.gw"),
        post_up=fields.strings(raw.get("postUp", []), f"{path}.postUp", max_items=16, max_len=1024),
        post_down=fields.strings(raw.get("postDown", []), f"{path}.postDown", max_items=16, max_len=1024),
    )


def _parse_handler(value: object, path: str) -> HandlerOptions:
    raw = fields.obj(value, path, allowed=("udpTimeout", "sniffing"))
    sniffing = Sniffing()
    if raw.get("sniffing") is not None:
        spath = f"{path}.sniffing"
        sraw = fields.obj(raw["sniffing"], spath, allowed=("enabled", "udp", "timeout", "fallback"))
        sniffing = Sniffing(
            enabled=fields.boolean(sraw.get("enabled", False), f"{spath}.enabled"),
            udp=fields.boolean(sraw.get("udp", False), f"{spath}.udp"),
            timeout=None
            if sraw.get("timeout") is None
            else fields.duration(sraw["timeout"], f"{spath}.timeout"),
            fallback=fields.boolean(sraw.get("fallback", False), f"{spath}.fallback"),
        )
        if sniffing.udp and not sniffing.enabled:
            raise SpecError(f"{spath}.udp: sniffing.udp needs sniffing.enabled")
    return HandlerOptions(
        udp_timeout=fields.duration(raw.get("udpTimeout", DEFAULT_UDP_TIMEOUT), f"{path}.udpTimeout"),
        sniffing=sniffing,
    )


_SPEC_FIELDS = (
    "chainRef",
    "tun",
    "handler",
    "interface",
    "bypass",
    "excludedCIDRs",
    "clusterExclusions",
    "dns",
    "podSelector",
    "namespaceSelector",
)


def parse_gateway(body: Mapping[str, object]) -> Gateway:
    """A checked ``Gateway`` from a raw TunGateway body (``SpecError`` naming the field when invalid)."""
    meta = fields.obj(body.get("metadata"), "metadata", allowed=None, required=("name",))
    name = fields.string(meta["name"], "metadata.name")
    if len(name) > conventions.MAX_GATEWAY_NAME:
        raise SpecError(
            f"metadata.name: {name!r} is longer than {conventions.MAX_GATEWAY_NAME} characters "
            "(it becomes the Secret name tungo-<name> and a label value)"
        )
    namespace = fields.string(meta.get("namespace", "default"), "metadata.namespace")
    spec = fields.obj(body.get("spec"), "spec", allowed=_SPEC_FIELDS, required=("chainRef",))
    ref = fields.obj(spec["chainRef"], "spec.chainRef", allowed=("name",), required=("name",))
    excluded = fields.strings(
        spec.get("excludedCIDRs", list(DEFAULT_EXCLUDED_CIDRS)), "spec.excludedCIDRs", max_items=256
    )
    interface = spec.get("interface")
    ns_selector = spec.get("namespaceSelector")
    gateway = Gateway(
        namespace=namespace,
        name=name,
        chain=fields.string(ref["name"], "spec.chainRef.name"),
        tun=_parse_tun(spec.get("tun", {}), "spec.tun"),
        handler=_parse_handler(spec.get("handler", {}), "spec.handler"),
        interface=None
        if interface is None
        else fields.string(interface, "spec.interface", pattern=fields.IFNAME, hint="an interface name"),
        bypass=None if spec.get("bypass") is None else parse_bypass(spec["bypass"], "spec.bypass"),
        excluded_cidrs=tuple(
            fields.cidr(item, f"spec.excludedCIDRs[{i}]") for i, item in enumerate(excluded)
        ),
        cluster_exclusions=fields.boolean(
            spec.get("clusterExclusions", DEFAULT_CLUSTER_EXCLUSIONS), "spec.clusterExclusions"
        ),
        pod_selector=parse_label_selector(spec.get("podSelector", {}), "spec.podSelector"),
        namespace_selector=None
        if ns_selector is None
        else parse_label_selector(ns_selector, "spec.namespaceSelector"),
        dns=_parse_dns(spec.get("dns", {}), "spec.dns"),
    )
    if gateway.dns.tunnel and not gateway.tun.dns:
        raise SpecError(
            "spec.dns.mode: tunnel needs spec.tun.dns, the servers that answer names outside the "
            "cluster through the chain (e.g. tun: {dns: [1.1.1.1]})"
        )
    return gateway


def _parse_dns(value: object, path: str) -> Dns:
    raw = fields.obj(value, path, allowed=("mode", "clusterServers"))
    mode = fields.string(raw.get("mode", "cluster"), f"{path}.mode")
    if mode not in DNS_MODES:
        raise SpecError(f"{path}.mode: {mode!r} is not one of {', '.join(DNS_MODES)}")
    servers = fields.strings(raw.get("clusterServers", []), f"{path}.clusterServers", max_items=4)
    return Dns(
        mode=mode,
        cluster_servers=tuple(
            fields.ip(item, f"{path}.clusterServers[{i}]") for i, item in enumerate(servers)
        ),
    )
