"""``Chain`` resources parsed into frozen dataclasses (``parse_chain``), with the CRD's defaults.

Called by the handlers (and tests) on every raw Chain body; the renderer reads only these objects.
Defaults here must equal the ``default:`` values in ``crds/tungo.dev_chains.yaml`` (a test checks), so
an object that skipped API-server defaulting renders the same. Must never import kopf or do I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tungo_operator.model import fields
from tungo_operator.model.errors import SpecError

CONNECTOR_TYPES = ("relay", "socks5", "http")
DIALER_TYPES = ("tcp", "tls", "ws", "wss")
TLS_DIALERS = ("tls", "wss")
WS_DIALERS = ("ws", "wss")
STRATEGIES = ("round", "rand", "fifo", "hash")

DEFAULT_STRATEGY = "round"
DEFAULT_MAX_FAILS = 1
DEFAULT_FAIL_TIMEOUT = "10s"
DEFAULT_USERNAME_KEY = "username"
DEFAULT_PASSWORD_KEY = "password"
DEFAULT_CA_KEY = "ca.crt"
DEFAULT_WS_PATH = "/ws"  # GOST's ws dialer default path

_HOSTPORT = re.compile(
    r"^(\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?)):(?P<port>[0-9]{1,5})$"
)


@dataclass(frozen=True, slots=True)
class SecretKeyRef:
    """One key of a Secret in the Chain's namespace."""

    name: str
    key: str


@dataclass(frozen=True, slots=True)
class Auth:
    username: SecretKeyRef
    password: SecretKeyRef


@dataclass(frozen=True, slots=True)
class TLS:
    secure: bool = True  # unlike GOST's command line: verify unless told not to
    server_name: str | None = None
    ca: SecretKeyRef | None = None


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addr: str
    host: str  # addr without the port (and without IPv6 brackets): default SNI / ws Host
    connector: str
    dialer: str
    auth: Auth | None = None
    tls: TLS | None = None  # set exactly when the dialer is tls or wss
    ws_path: str | None = None  # set exactly when the dialer is ws or wss
    ws_host: str | None = None
    connector_metadata: tuple[tuple[str, str], ...] = ()
    dialer_metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Selector:
    strategy: str = DEFAULT_STRATEGY
    max_fails: int = DEFAULT_MAX_FAILS
    fail_timeout: str = DEFAULT_FAIL_TIMEOUT


@dataclass(frozen=True, slots=True)
class Bypass:
    matchers: tuple[str, ...] = ()
    reverse: bool = False


@dataclass(frozen=True, slots=True)
class Hop:
    name: str
    nodes: tuple[Node, ...]
    selector: Selector = Selector()
    bypass: Bypass | None = None


@dataclass(frozen=True, slots=True)
class Chain:
    namespace: str
    name: str
    hops: tuple[Hop, ...]

    def secret_names(self) -> frozenset[str]:
        """Every Secret this chain reads (auth and CA), all in ``namespace``."""
        names: set[str] = set()
        for hop in self.hops:
            for node in hop.nodes:
                if node.auth is not None:
                    names.add(node.auth.username.name)
                if node.tls is not None and node.tls.ca is not None:
                    names.add(node.tls.ca.name)
        return frozenset(names)


def parse_bypass(value: object, path: str) -> Bypass:
    raw = fields.obj(value, path, allowed=("matchers", "reverse"))
    matchers = fields.strings(raw.get("matchers", []), f"{path}.matchers", max_items=1024)
    return Bypass(matchers=matchers, reverse=fields.boolean(raw.get("reverse", False), f"{path}.reverse"))


def _secret_name(value: object, path: str) -> str:
    raw = fields.obj(value, path, allowed=("name",), required=("name",))
    return fields.string(raw["name"], f"{path}.name")


def _secret_key(value: object, path: str) -> str:
    return fields.string(value, path, pattern=fields.SECRET_KEY, hint="a valid Secret key", max_len=253)


def _parse_auth(value: object, path: str) -> Auth:
    raw = fields.obj(
        value, path, allowed=("secretRef", "usernameKey", "passwordKey"), required=("secretRef",)
    )
    name = _secret_name(raw["secretRef"], f"{path}.secretRef")
    user_key = _secret_key(raw.get("usernameKey", DEFAULT_USERNAME_KEY), f"{path}.usernameKey")
    pass_key = _secret_key(raw.get("passwordKey", DEFAULT_PASSWORD_KEY), f"{path}.passwordKey")
    return Auth(SecretKeyRef(name, user_key), SecretKeyRef(name, pass_key))


def _parse_tls(value: object, path: str) -> TLS:
    raw = fields.obj(value, path, allowed=("secure", "serverName", "caSecretRef"))
    ca: SecretKeyRef | None = None
    if raw.get("caSecretRef") is not None:
        ca_path = f"{path}.caSecretRef"
        ca_raw = fields.obj(raw["caSecretRef"], ca_path, allowed=("name", "key"), required=("name",))
        ca = SecretKeyRef(
            fields.string(ca_raw["name"], f"{ca_path}.name"),
            _secret_key(ca_raw.get("key", DEFAULT_CA_KEY), f"{ca_path}.key"),
        )
    server_name = raw.get("serverName")
    return TLS(
        secure=fields.boolean(raw.get("secure", True), f"{path}.secure"),
        server_name=None if server_name is None else fields.string(server_name, f"{path}.serverName"),
        ca=ca,
    )


def _parse_node(value: object, path: str) -> Node:
    raw = fields.obj(
        value,
        path,
        allowed=("name", "addr", "connector", "dialer"),
        required=("name", "addr", "connector", "dialer"),
    )
    name = fields.string(
        raw["name"],
        f"{path}.name",
        pattern=fields.DNS_LABEL,
        hint="a DNS label of at most 32 characters",
        max_len=32,
    )
    addr = fields.string(raw["addr"], f"{path}.addr", max_len=261)
    match = _HOSTPORT.match(addr)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise SpecError(f"{path}.addr: {addr!r} is not host:port (use [v6]:port for IPv6, port 1-65535)")
    host = match["v6"] or match["host"]

    cpath = f"{path}.connector"
    craw = fields.obj(raw["connector"], cpath, allowed=("type", "auth", "metadata"), required=("type",))
    connector = fields.string(craw["type"], f"{cpath}.type", choices=CONNECTOR_TYPES)
    auth = None if craw.get("auth") is None else _parse_auth(craw["auth"], f"{cpath}.auth")
    cmeta = fields.string_map(craw.get("metadata", {}), f"{cpath}.metadata")

    dpath = f"{path}.dialer"
    draw = fields.obj(raw["dialer"], dpath, allowed=("type", "tls", "ws", "metadata"), required=("type",))
    dialer = fields.string(draw["type"], f"{dpath}.type", choices=DIALER_TYPES)
    tls: TLS | None = None
    if draw.get("tls") is not None:
        if dialer not in TLS_DIALERS:
            raise SpecError(f"{dpath}.tls: tls options need dialer type tls or wss, not {dialer!r}")
        tls = _parse_tls(draw["tls"], f"{dpath}.tls")
    elif dialer in TLS_DIALERS:
        tls = TLS()
    ws_path = ws_host = None
    if draw.get("ws") is not None:
        if dialer not in WS_DIALERS:
            raise SpecError(f"{dpath}.ws: ws options need dialer type ws or wss, not {dialer!r}")
        wraw = fields.obj(draw["ws"], f"{dpath}.ws", allowed=("path", "host"))
        ws_path = fields.string(wraw.get("path", DEFAULT_WS_PATH), f"{dpath}.ws.path", max_len=1024)
        if not ws_path.startswith("/"):
            raise SpecError(f"{dpath}.ws.path: {ws_path!r} must start with '/'")
        if wraw.get("host") is not None:
            ws_host = fields.string(wraw["host"], f"{dpath}.ws.host")
    elif dialer in WS_DIALERS:
        ws_path = DEFAULT_WS_PATH
    dmeta = fields.string_map(draw.get("metadata", {}), f"{dpath}.metadata")
    return Node(
        name=name,
        addr=addr,
        host=host,
        connector=connector,
        dialer=dialer,
        auth=auth,
        tls=tls,
        ws_path=ws_path,
        ws_host=ws_host,
        connector_metadata=cmeta,
        dialer_metadata=dmeta,
    )


def _parse_selector(value: object, path: str) -> Selector:
    raw = fields.obj(value, path, allowed=("strategy", "maxFails", "failTimeout"))
    return Selector(
        strategy=fields.string(raw.get("strategy", DEFAULT_STRATEGY), f"{path}.strategy", choices=STRATEGIES),
        max_fails=fields.integer(
            raw.get("maxFails", DEFAULT_MAX_FAILS), f"{path}.maxFails", low=1, high=1000
        ),
        fail_timeout=fields.duration(raw.get("failTimeout", DEFAULT_FAIL_TIMEOUT), f"{path}.failTimeout"),
    )


def _unique(names: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SpecError(f"{path}: duplicate {what} name {name!r}")
        seen.add(name)


def _parse_hop(value: object, path: str) -> Hop:
    raw = fields.obj(value, path, allowed=("name", "selector", "bypass", "nodes"), required=("name", "nodes"))
    name = fields.string(
        raw["name"],
        f"{path}.name",
        pattern=fields.DNS_LABEL,
        hint="a DNS label of at most 32 characters",
        max_len=32,
    )
    nodes_raw = raw["nodes"]
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise SpecError(f"{path}.nodes: expected a non-empty list of nodes")
    if len(nodes_raw) > 32:
        raise SpecError(f"{path}.nodes: more than 32 nodes")
    nodes = tuple(_parse_node(node, f"{path}.nodes[{i}]") for i, node in enumerate(nodes_raw))
    _unique([node.name for node in nodes], f"{path}.nodes", "node")
    selector = (
        Selector() if raw.get("selector") is None else _parse_selector(raw["selector"], f"{path}.selector")
    )
    bypass = None if raw.get("bypass") is None else parse_bypass(raw["bypass"], f"{path}.bypass")
    return Hop(name=name, nodes=nodes, selector=selector, bypass=bypass)


def parse_chain(body: Mapping[str, object]) -> Chain:
    """A checked ``Chain`` from a raw body (``SpecError`` naming the field on any invalid value)."""
    meta = fields.obj(body.get("metadata"), "metadata", allowed=None, required=("name",))
    name = fields.string(meta["name"], "metadata.name")
    namespace = fields.string(meta.get("namespace", "default"), "metadata.namespace")
    spec = fields.obj(body.get("spec"), "spec", allowed=("hops",), required=("hops",))
    hops_raw = spec["hops"]
    if not isinstance(hops_raw, list) or not hops_raw:
        raise SpecError("spec.hops: expected a non-empty list of hops")
    if len(hops_raw) > 8:
        raise SpecError("spec.hops: more than 8 hops")
    hops = tuple(_parse_hop(hop, f"spec.hops[{i}]") for i, hop in enumerate(hops_raw))
    _unique([hop.name for hop in hops], "spec.hops", "hop")
    return Chain(namespace=namespace, name=name, hops=hops)
