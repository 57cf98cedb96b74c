"""Renders a gateway, its chain and the referenced Secrets into the GOST v3 YAML the sidecar reads.

``render_config`` is pure: it takes parsed model objects plus the decoded contents of the Secrets the
chain names, and returns the files of the config Secret (``config.yaml`` and one ``ca-<hop>-<node>.pem``
per node with a CA) together with their hash. ``config_secret`` wraps them into the Secret body the
handlers write. Credentials are copied from the referenced Secrets into this rendered Secret only,
never into a custom resource. Called by ``tungo_operator.handlers``; must never do I/O or import kopf.

The YAML follows GOST v3's schema (services, chains → hops → nodes, bypasses) with GOST's metadata
keys: the tungo listener (name, net, mtu, dns, route, gw) and handler (udpTimeout, sniffing*). One key
is tungo's own: listener ``exclude``, the comma-separated CIDRs the sidecar keeps out of the TUN routes
(``spec.excludedCIDRs`` and the cluster's own ranges, decided by ``model.exclusions``).

Bypass scopes follow GOST (``tungo_sidecar.chain.route``): a hop's bypass ends the route before that
hop. The TunGateway's ``bypass`` ("dialed directly instead of through the chain") is therefore the
*first hop's* bypass, listed before the Chain's own first-hop bypass when it has one (GOST applies a
hop's bypasses as a group). Rendering it as the service's bypass would make the sidecar *refuse* those
destinations: in GOST a service-level bypass closes the connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from cryptography import x509

from tungo_operator.model import conventions
from tungo_operator.model.chain import Bypass, Chain, Node
from tungo_operator.model.errors import InvalidSecretError, MissingReferenceError, SpecError
from tungo_operator.model.gateway import Gateway
from tungo_operator.model.resources import ObjectMeta, SecretRaw

# Listener metadata key (tungo extension) for the CIDRs routed around the TUN.
EXCLUDE_KEY = "exclude"
# GOST services need an address; a TUN listener does not listen on one, ":0" says so.
TUN_SERVICE_ADDR = ":0"
# Where the split-DNS resolver listens in the pod: the nameserver the webhook writes (injection.sidecar).
DNS_LISTEN = "127.0.0.1"

SecretContents = Mapping[str, Mapping[str, bytes]]  # Secret name → key → decoded bytes


@dataclass(frozen=True, slots=True)
class RenderedConfig:
    files: Mapping[str, str]  # config Secret key → text (config.yaml, ca-*.pem)
    config_hash: str  # sha256 over every file: changes exactly when the sidecar must reload

    @property
    def config_yaml(self) -> str:
        return self.files[conventions.CONFIG_SECRET_KEY]


def decode_secret(body: SecretRaw | Mapping[str, Any]) -> dict[str, bytes]:
    """The key → bytes contents of a raw Secret (``data`` is base64; ``stringData`` wins, as in the API)."""
    name = body.get("metadata", {}).get("name", "?")
    out: dict[str, bytes] = {}
    for key, value in (body.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSecretError(f"Secret {name!r}: key {key!r} is not valid base64") from None
    for key, value in (body.get("stringData") or {}).items():
        out[key] = str(value).encode()
    return out


def _secret_text(secrets: SecretContents, namespace: str, name: str, key: str, used_by: str) -> bytes:
    if name not in secrets:
        raise MissingReferenceError(
            f"Secret {namespace}/{name} not found (needed by {used_by}); create it in {namespace!r}",
            kind="Secret",
            namespace=namespace,
            name=name,
        )
    if key not in secrets[name]:
        raise MissingReferenceError(
            f"Secret {namespace}/{name} has no key {key!r} (needed by {used_by}); "
            f"it has: {', '.join(sorted(secrets[name])) or 'no keys'}",
            kind="Secret",
            namespace=namespace,
            name=name,
        )
    return secrets[name][key]


def _utf8(value: bytes, what: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidSecretError(f"{what} is not UTF-8 text") from None


def _bypass(name: str, bypass: Bypass) -> dict[str, Any]:
    return {"name": name, "reverse": bypass.reverse, "matchers": list(bypass.matchers)}


def _render_node(
    chain: Chain, hop: str, path: str, node: Node, *, secrets: SecretContents, files: dict[str, str]
) -> dict[str, Any]:
    connector: dict[str, Any] = {"type": node.connector}
    if node.auth is not None:
        apath = f"Chain {chain.name} {path}.connector.auth"
        user, pw = node.auth.username, node.auth.password
        connector["auth"] = {
            "username": _utf8(
                _secret_text(secrets, chain.namespace, user.name, user.key, apath),
                f"Secret {user.name} key {user.key}",
            ),
            "password": _utf8(
                _secret_text(secrets, chain.namespace, pw.name, pw.key, apath),
                f"Secret {pw.name} key {pw.key}",
            ),
        }
    if node.connector_metadata:
        connector["metadata"] = dict(node.connector_metadata)

    dialer: dict[str, Any] = {"type": node.dialer}
    if node.tls is not None:
        tls: dict[str, Any] = {"secure": node.tls.secure, "serverName": node.tls.server_name or node.host}
        if node.tls.ca is not None:
            ca = node.tls.ca
            pem = _secret_text(
                secrets, chain.namespace, ca.name, ca.key, f"Chain {chain.name} {path}.dialer.tls.caSecretRef"
            )
            try:
                x509.load_pem_x509_certificates(pem)
            except ValueError:
                raise InvalidSecretError(
                    f"Secret {chain.namespace}/{ca.name} key {ca.key!r} is not a PEM certificate bundle "
                    f"(needed by Chain {chain.name} {path}.dialer.tls.caSecretRef)"
                ) from None
            files[conventions.ca_key(hop, node.name)] = pem.decode("ascii")
            tls["caFile"] = conventions.ca_path(hop, node.name)
        dialer["tls"] = tls
    dmeta: dict[str, str] = dict(node.dialer_metadata)
    if node.ws_path is not None:
        dmeta["path"] = node.ws_path
        dmeta["host"] = node.ws_host or node.host
    if dmeta:
        dialer["metadata"] = dmeta
    return {"name": node.name, "addr": node.addr, "connector": connector, "dialer": dialer}


def render_config(
    gateway: Gateway,
    chain: Chain,
    secrets: SecretContents,
    *,
    excluded: Sequence[str] | None = None,
    cluster_dns: Sequence[str] = (),
    cluster_domain: str = "cluster.local",
) -> RenderedConfig:
    """The config Secret's files for ``gateway`` over ``chain`` (model errors when a reference fails).

    ``excluded``: the listener's ``exclude`` CIDRs; the controller passes ``model.exclusions``'s
    decision (``spec.excludedCIDRs`` plus the discovered cluster ranges). None: the gateway's own
    ``excludedCIDRs`` alone, as given (a render without any knowledge of the cluster).
    ``cluster_dns`` (the discovered DNS Service's IPs) and ``cluster_domain`` matter with
    ``spec.dns.mode: tunnel`` only (``_dns_service``).
    """
    files: dict[str, str] = {}
    bypasses: list[dict[str, Any]] = []
    gateway_bypass: str | None = None
    if gateway.bypass is not None:
        gateway_bypass = f"bypass-{gateway.name}"
        bypasses.append(_bypass(gateway_bypass, gateway.bypass))

    hops: list[dict[str, Any]] = []
    for h, hop in enumerate(chain.hops):
        rendered_hop: dict[str, Any] = {
            "name": hop.name,
            "selector": {
                "strategy": hop.selector.strategy,
                "maxFails": hop.selector.max_fails,
                "failTimeout": hop.selector.fail_timeout,
            },
        }
        names = [gateway_bypass] if h == 0 and gateway_bypass is not None else []
        if hop.bypass is not None:
            names.append(f"bypass-{chain.name}-{hop.name}")
            bypasses.append(_bypass(names[-1], hop.bypass))
        if len(names) == 1:
            rendered_hop["bypass"] = names[0]
        elif names:
            rendered_hop["bypasses"] = names
        rendered_hop["nodes"] = [
            _render_node(chain, hop.name, f"spec.hops[{h}].nodes[{n}]", node, secrets=secrets, files=files)
            for n, node in enumerate(hop.nodes)
        ]
        hops.append(rendered_hop)

    tun = gateway.tun
    listener_md: dict[str, Any] = {"name": tun.name, "net": tun.net, "mtu": tun.mtu}
    if tun.dns:
        listener_md["dns"] = ",".join(tun.dns)
    if tun.routes:
        listener_md["route"] = ",".join(tun.routes)
    if tun.gw is not None:
        listener_md["gw"] = tun.gw
    exclude = gateway.excluded_cidrs if excluded is None else tuple(excluded)
    if exclude:
        listener_md[EXCLUDE_KEY] = ",".join(exclude)

    sniff = gateway.handler.sniffing
    handler_md: dict[str, Any] = {"udpTimeout": gateway.handler.udp_timeout, "sniffing": sniff.enabled}
    if sniff.enabled:
        handler_md["sniffing.udp"] = sniff.udp
        handler_md["sniffing.fallback"] = sniff.fallback
        if sniff.timeout is not None:
            handler_md["sniffing.timeout"] = sniff.timeout

    service: dict[str, Any] = {
        "name": gateway.name,
        "addr": TUN_SERVICE_ADDR,
        "handler": {"type": "tungo", "chain": chain.name, "metadata": handler_md},
        "listener": {"type": "tungo", "metadata": listener_md},
    }
    service_md: dict[str, Any] = {}
    if tun.post_up:
        service_md["postUp"] = list(tun.post_up)
    if tun.post_down:
        service_md["postDown"] = list(tun.post_down)
    if gateway.interface is not None:
        service_md["interface"] = gateway.interface
    if service_md:
        service["metadata"] = service_md

    services = [service]
    if gateway.dns.tunnel:
        # First: services start in order, and the TUN resolves its relay's name through the pod's
        # resolver, which is this service once the webhook pointed the pod at it.
        services.insert(0, _dns_service(gateway, chain, exclude, cluster_dns, cluster_domain))
    document: dict[str, Any] = {"services": services, "chains": [{"name": chain.name, "hops": hops}]}
    if bypasses:
        document["bypasses"] = bypasses
    header = (
        f"# Rendered by tungo-operator from TunGateway {gateway.namespace}/{gateway.name} and "
        f"Chain {chain.namespace}/{chain.name}. Do not edit: it is overwritten.\n"
    )
    files[conventions.CONFIG_SECRET_KEY] = header + yaml.safe_dump(
        document, sort_keys=False, allow_unicode=True
    )

    size = sum(len(text.encode()) for text in files.values())
    if size > conventions.MAX_SECRET_BYTES:  # the API server's limit on a Secret's decoded data
        raise SpecError(
            f"the rendered config is {size} bytes; a Secret holds at most 1 MiB: "
            "use fewer or smaller CA bundles, bypass matchers or nodes"
        )
    digest = hashlib.sha256()
    for key in sorted(files):
        digest.update(key.encode() + b"\0" + files[key].encode() + b"\0")
    return RenderedConfig(files=files, config_hash=digest.hexdigest())


def config_secret(
    gateway: Gateway, rendered: RenderedConfig, namespace: str, *, owner_uid: str | None
) -> SecretRaw:
    """The config Secret body for ``namespace``; owned by the gateway (garbage-collected) when local."""
    metadata: ObjectMeta = {
        "name": conventions.config_secret_name(gateway.name),
        "namespace": namespace,
        "labels": {
            conventions.GATEWAY_LABEL: gateway.name,
            conventions.MANAGED_BY_LABEL: conventions.MANAGED_BY,
        },
        "annotations": {
            conventions.GATEWAY_NAMESPACE_ANNOTATION: gateway.namespace,
            conventions.CONFIG_HASH_ANNOTATION: rendered.config_hash,
        },
    }
    # Owner references cannot cross namespaces: Secrets elsewhere are deleted by the controller instead.
    if owner_uid is not None and namespace == gateway.namespace:
        metadata["ownerReferences"] = [
            {
                "apiVersion": conventions.API_VERSION,
                "kind": conventions.KIND_GATEWAY,
                "name": gateway.name,
                "uid": owner_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    data = {
        key: base64.b64encode(text.encode()).decode("ascii") for key, text in sorted(rendered.files.items())
    }
    secret: SecretRaw = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "data": data,
    }
    return secret


def _dns_service(
    gateway: Gateway, chain: Chain, local_nets: Sequence[str], cluster_dns: Sequence[str], domain: str
) -> dict[str, Any]:
    """The sidecar's DNS service for ``spec.dns.mode: tunnel`` (GOST's ``dns`` handler with tungo's split
    keys): names under the cluster domain, and the first hop's relay hosts (the sidecar must reach its
    relay before any tunnel exists), go straight to the cluster DNS; reverse lookups of the cluster's
    ranges too; every other name through the chain to ``spec.tun.dns``."""
    servers = gateway.dns.cluster_servers or tuple(cluster_dns)
    if not servers:
        raise SpecError(
            "spec.dns.mode: tunnel needs the cluster DNS for cluster names, and the operator found none "
            "(cluster discovery off, or its DNS Service has no ClusterIP): set spec.dns.clusterServers"
        )
    relays = [node.host for node in chain.hops[0].nodes] if chain.hops else []
    relay_names = [host for host in relays if not _is_ip(host)]
    metadata: dict[str, Any] = {
        "dns": [f"udp://{_host_port(ip)}" for ip in gateway.tun.dns],
        "dns.local": [f"udp://{_host_port(ip)}" for ip in servers],
        "dns.localDomains": list(dict.fromkeys([domain, *relay_names])),
    }
    if local_nets:
        metadata["dns.localNets"] = list(local_nets)
    return {
        "name": f"{gateway.name}-dns",
        "addr": f"{DNS_LISTEN}:53",
        "handler": {"type": "dns", "chain": chain.name, "metadata": metadata},
        "listener": {"type": "dns"},
    }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_port(ip: str) -> str:
    return f"[{ip}]:53" if ":" in ip else f"{ip}:53"
