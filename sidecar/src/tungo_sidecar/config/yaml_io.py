"""GOST v3 configuration files (YAML or JSON) to and from the frozen ``Config``.

``load`` reads what ``gost -C`` reads — ``services`` (handler/listener), ``chains`` → ``hops`` →
``nodes`` (connector/dialer), ``bypasses`` — with GOST's rules: keys match case-insensitively, a
missing connector is ``http``, a missing dialer or listener ``tcp``, ``reverse`` and ``whitelist`` mean
the same, ``sockopts.mark`` is ``so_mark``. Sections and fields for GOST features tungo lacks are refused
with an error naming them (a silently dropped ``resolver`` or ``limiter`` would change behaviour);
``log``, ``api``, ``metrics`` and ``profiling`` are ignored with a warning.

``dump`` writes what ``gost -O yaml|json`` prints: the same keys in the same order (GOST's struct
order, metadata keys sorted), empty fields left out, durations as Go durations (``30s``) in YAML and
nanoseconds in JSON. ``load(dump(c)) == c`` for every valid ``c``.

Called by ``app.cli`` (``-C``, ``-O``) and by the operator's tests of the Secret it renders. Does file
and stdin-free text I/O only; never validates network reachability. Errors are ``ConfigError`` naming
the source and the path to the offending value (``cfg.yaml: services[0].handler.type: ...``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from tungo_sidecar.config import bounded
from tungo_sidecar.config.model import (
    Auth,
    BypassConfig,
    ChainConfig,
    Config,
    Hop,
    Metadata,
    Node,
    Plugin,
    Selector,
    Service,
    TLSOptions,
    parse_duration,
)
from tungo_sidecar.config.validate import quote, validate
from tungo_sidecar.errors import ConfigError

log = logging.getLogger(__name__)

Format = Literal["yaml", "json"]

_IGNORED_TOP = ("log", "api", "metrics", "profiling")
_NS_PER_S = 1_000_000_000

# -- loading -------------------------------------------------------------------------------------------


class _Obj:
    """One YAML mapping being read: case-insensitive keys, a path for messages, a check for leftovers."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {_show(value)}")
        self.path = path
        self.items: dict[str, tuple[str, Any]] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{path}: key {_show(key)} is not a string")
            if key.lower() in self.items:  # keys match case-insensitively: "Name" and "name" clash
                raise ConfigError(f"{self.at(key)}: given twice (as {self.items[key.lower()][0]!r} too)")
            self.items[key.lower()] = (key, item)
        self.used: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> Any:
        self.used.add(key.lower())
        entry = self.items.get(key.lower())
        return None if entry is None else entry[1]

    def get_str(self, key: str, default: str | None = None) -> str | None:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.at(key)}: expected a string, got {_show(value)}")
        return value

    def get_bool(self, key: str) -> bool:
        value = self.raw(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ConfigError(f"{self.at(key)}: expected true or false, got {_show(value)}")
        return value

    def get_int(self, key: str) -> int | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.at(key)}: expected an integer, got {_show(value)}")
        return value

    def get_list(self, key: str) -> list[Any]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{self.at(key)}: expected a list, got {_show(value)}")
        return value

    def get_obj(self, key: str) -> _Obj | None:
        value = self.raw(key)
        return None if value is None else _Obj(value, self.at(key))

    def metadata(self, key: str = "metadata") -> dict[str, Any]:
        value = self.raw(key)
        if value is None:
            return {}
        sub = _Obj(value, self.at(key))
        return {written: _metadata_value(item) for written, item in sub.items.values()}

    def finish(self, unsupported: tuple[str, ...] = ()) -> None:
        """Refuse keys this object does not read: GOST features tungo lacks, then plain typos."""
        for lower, (written, _) in self.items.items():
            if lower in self.used:
                continue
            if lower in {u.lower() for u in unsupported}:
                raise ConfigError(f"{self.at(written)}: not supported by tungo")
            raise ConfigError(f"{self.at(written)}: unknown key")


def _metadata_value(value: Any) -> Any:
    """Metadata values as JSON can carry them: nested keys as strings, dates and bytes as text.

    (GOST reads metadata as free-form strings and numbers; this keeps ``load(dump(c)) == c``.)
    """
    if isinstance(value, Mapping):
        return {str(k): _metadata_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_metadata_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _show(value: object) -> str:
    if isinstance(value, str):
        return quote(value)
    text = json.dumps(value, default=str) if not isinstance(value, Mapping) else "a mapping"
    return text if len(text) <= 40 else text[:37] + "..."


def _auth(parent: _Obj) -> Auth | None:
    obj = parent.get_obj("auth")
    if obj is None:
        return None
    auth = Auth(username=obj.get_str("username", "") or "", password=obj.get_str("password", "") or "")
    obj.finish(unsupported=("file",))
    return auth


def _tls(parent: _Obj) -> TLSOptions | None:
    obj = parent.get_obj("tls")
    if obj is None:
        return None
    tls = TLSOptions(
        secure=obj.get_bool("secure"),
        server_name=obj.get_str("serverName") or None,
        ca_file=obj.get_str("caFile") or None,
        cert_file=obj.get_str("certFile") or None,
        key_file=obj.get_str("keyFile") or None,
    )
    obj.finish(
        unsupported=("options", "validity", "commonName", "organization", "rejectUnknownSNI", "serverNames")
    )
    return tls


def _plugin(
    parent: _Obj,
    key: str,
    default_type: str,
    unsupported: tuple[str, ...] = (),
    *,
    chain: list[str] | None = None,
) -> Plugin:
    """A handler/listener/connector/dialer block; a handler's ``chain`` is appended to ``chain``."""
    obj = parent.get_obj(key)
    if obj is None:
        return Plugin(type=default_type)
    plugin = Plugin(
        type=(obj.get_str("type") or "").strip() or default_type,
        auth=_auth(obj),
        tls=_tls(obj),
        metadata=Metadata(obj.metadata()),
    )
    if chain is not None and (name := obj.get_str("chain")):
        chain.append(name)
    obj.finish(unsupported=unsupported)
    return plugin


def _bypass_names(obj: _Obj) -> tuple[str, ...]:
    """GOST's ``bypass`` (one name) and ``bypasses`` (names), in that order, each once: GOST applies
    them together as a group (``rules.bypass.BypassGroup``)."""
    single = obj.get_str("bypass") or None
    many = obj.get_list("bypasses")
    for i, name in enumerate(many):
        if not isinstance(name, str):
            raise ConfigError(f"{obj.at('bypasses')}[{i}]: expected a string, got {_show(name)}")
    return tuple(dict.fromkeys(([single] if single else []) + many))


def _with_sockopts(obj: _Obj, metadata: dict[str, Any]) -> dict[str, Any]:
    """GOST's deprecated ``sockopts: {mark: N}`` is ``metadata.so_mark`` unless that is set."""
    sockopts = obj.get_obj("sockopts")
    if sockopts is None:
        return metadata
    mark = sockopts.get_int("mark")
    sockopts.finish()
    if mark and not any(k.lower() == "so_mark" for k in metadata):
        return {**metadata, "so_mark": mark}
    return metadata


def _service(value: object, path: str) -> Service:
    obj = _Obj(value, path)
    name = obj.get_str("name")
    if not name:
        raise ConfigError(f"{obj.at('name')}: missing")
    chain: list[str] = []
    handler = _plugin(
        obj,
        "handler",
        "auto",
        unsupported=("retries", "chainGroup", "auther", "authers", "limiter", "observer"),
        chain=chain,
    )
    service = Service(
        name=name,
        addr=obj.get_str("addr", "") or "",
        handler=handler,
        listener=_plugin(obj, "listener", "tcp", unsupported=("chain", "chainGroup", "auther", "authers")),
        chain=chain[0] if chain else None,
        bypasses=_bypass_names(obj),
        interface=obj.get_str("interface") or None,
        metadata=Metadata(_with_sockopts(obj, obj.metadata())),
    )
    obj.raw("status")  # read-only state GOST's API adds; meaningless in a file
    obj.finish(
        unsupported=(
            "admission",
            "admissions",
            "resolver",
            "hosts",
            "limiter",
            "quotas",
            "climiter",
            "rlimiter",
            "logger",
            "loggers",
            "observer",
            "rewriter",
            "recorders",
            "cache",
            "forwarder",
        )
    )
    return service


def _node(value: object, path: str, index: int) -> Node:
    obj = _Obj(value, path)
    addr = obj.get_str("addr")
    if not addr:
        raise ConfigError(f"{obj.at('addr')}: missing")
    node = Node(
        name=obj.get_str("name") or f"node-{index}",
        addr=addr,
        connector=_plugin(obj, "connector", "http"),
        dialer=_plugin(obj, "dialer", "tcp"),
        bypasses=_bypass_names(obj),
        interface=obj.get_str("interface") or None,
        metadata=Metadata(_with_sockopts(obj, obj.metadata())),
    )
    obj.finish(
        unsupported=("network", "resolver", "hosts", "netns", "filter", "matcher", "http", "tls", "probe")
    )
    return node


def _selector(parent: _Obj) -> Selector | None:
    obj = parent.get_obj("selector")
    if obj is None:
        return None
    default = Selector()
    max_fails = obj.get_int("maxFails")
    timeout = obj.raw("failTimeout")
    if isinstance(timeout, bool):
        raise ConfigError(f"{obj.at('failTimeout')}: expected a duration, got {_show(timeout)}")
    if isinstance(timeout, int):
        seconds = timeout / _NS_PER_S  # a bare number is a Go time.Duration: nanoseconds
    elif timeout is None:
        seconds = default.fail_timeout
    else:
        seconds = parse_duration(timeout, obj.at("failTimeout"))
    selector = Selector(
        strategy=obj.get_str("strategy") or default.strategy,
        max_fails=default.max_fails if max_fails is None else max_fails,
        fail_timeout=seconds,
    )
    obj.finish(unsupported=("maxLatency",))
    return selector


def _hop(value: object, path: str, index: int) -> Hop:
    obj = _Obj(value, path)
    nodes = tuple(_node(v, f"{obj.at('nodes')}[{i}]", i) for i, v in enumerate(obj.get_list("nodes")))
    hop = Hop(
        name=obj.get_str("name") or f"hop-{index}",
        nodes=nodes,
        bypasses=_bypass_names(obj),
        selector=_selector(obj),
        metadata=Metadata(_with_sockopts(obj, obj.metadata())),
        interface=obj.get_str("interface") or None,
    )
    obj.finish(unsupported=("resolver", "hosts", "reload", "file", "redis", "http", "plugin"))
    return hop


def _chain(value: object, path: str) -> ChainConfig:
    obj = _Obj(value, path)
    name = obj.get_str("name")
    if not name:
        raise ConfigError(f"{obj.at('name')}: missing")
    chain = ChainConfig(
        name=name,
        hops=tuple(_hop(v, f"{obj.at('hops')}[{i}]", i) for i, v in enumerate(obj.get_list("hops"))),
        metadata=Metadata(obj.metadata()),
    )
    obj.finish()
    return chain


def _bypass(value: object, path: str) -> BypassConfig:
    obj = _Obj(value, path)
    name = obj.get_str("name")
    if not name:
        raise ConfigError(f"{obj.at('name')}: missing")
    matchers = obj.get_list("matchers")
    for i, matcher in enumerate(matchers):
        if not isinstance(matcher, str):
            raise ConfigError(f"{obj.at('matchers')}[{i}]: expected a string, got {_show(matcher)}")
    file = None
    if (loader := obj.get_obj("file")) is not None:
        file = loader.get_str("path")
        if not file:
            raise ConfigError(f"{loader.at('path')}: missing (the file of matchers, one a line)")
        loader.finish()
    bypass = BypassConfig(
        name=name,
        matchers=tuple(matchers),
        # GOST: "reverse" is the deprecated spelling of "whitelist"; either inverts the bypass.
        reverse=obj.get_bool("reverse") or obj.get_bool("whitelist"),
        file=file,
    )
    obj.finish(unsupported=("network", "reload", "redis", "http", "plugin"))
    return bypass


def from_data(data: object, *, check: bool = True) -> Config:
    """A ``Config`` from already-parsed YAML/JSON data (a mapping, or None for an empty file)."""
    if data is None:
        data = {}
    top = _Obj(data, "")
    config = Config(
        services=tuple(_service(v, f"services[{i}]") for i, v in enumerate(top.get_list("services"))),
        chains=tuple(_chain(v, f"chains[{i}]") for i, v in enumerate(top.get_list("chains"))),
        bypasses=tuple(_bypass(v, f"bypasses[{i}]") for i, v in enumerate(top.get_list("bypasses"))),
    )
    for key in _IGNORED_TOP:
        if top.raw(key) is not None:
            log.warning("config: %r is a GOST section tungo ignores", key)
    top.finish(
        unsupported=(
            "hops",
            "authers",
            "admissions",
            "resolvers",
            "hosts",
            "ingresses",
            "routers",
            "sds",
            "recorders",
            "rewriters",
            "caches",
            "limiters",
            "quotas",
            "climiters",
            "rlimiters",
            "observers",
            "loggers",
            "tls",
        )
    )
    return validate(config) if check else config


def parse_text(text: str) -> object:
    """YAML or JSON text (JSON when it starts with ``{``, as GOST decides) to plain data, with bounded
    work (``config.bounded``: size, depth, aliases, numbers, duplicate keys)."""
    if len(text) > bounded.MAX_BYTES:
        raise ConfigError(f"larger than {bounded.MAX_BYTES // (1024 * 1024)} MiB: not a config file")
    if text.lstrip().startswith("{"):
        return bounded.parse_json(text)
    return bounded.parse_yaml(text)


def load(source: str | Path, *, check: bool = True) -> Config:
    """A ``Config`` from a file (``Path``) or from YAML/JSON text (``str``); ConfigError names the source.

    ``check=False`` skips the whole-config validation (for callers that merge several sources first).
    """
    if isinstance(source, Path):
        origin = str(source)
        try:
            with source.open("rb") as handle:
                text = bounded.read_limited(handle, origin)
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read: {exc.strerror or exc}") from None
    else:
        origin, text = "config", source
    try:
        return from_data(parse_text(text), check=check)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def merge(*configs: Config) -> Config:
    """GOST's merge of several ``-C`` files and the command line: lists appended in order."""
    return Config(
        services=tuple(s for c in configs for s in c.services),
        chains=tuple(ch for c in configs for ch in c.chains),
        bypasses=tuple(b for c in configs for b in c.bypasses),
    )


# -- dumping -------------------------------------------------------------------------------------------


def go_duration(seconds: float) -> str:
    """Seconds as Go's ``time.Duration.String()`` prints them: ``30s``, ``1m30s``, ``1h0m0s``, ``500ms``."""
    ns = round(seconds * _NS_PER_S)
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < _NS_PER_S:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _decimal(ns, size) + unit
    hours, rest = divmod(ns, 3600 * _NS_PER_S)
    minutes, rest = divmod(rest, 60 * _NS_PER_S)
    text = _decimal(rest, _NS_PER_S) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _decimal(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def _yaml_key_order(a: str, b: str) -> int:
    """yaml.v3's map key order (GOST prints with it): at the first difference, two letters compare by
    code point, a non-letter sorts before a letter (a letter first right after a run of digits), and
    runs of digits compare as numbers."""
    digits = False
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x == y:
            digits = x.isdigit()
            continue
        if x.isalpha() and y.isalpha():
            return -1 if x < y else 1
        if x.isalpha() or y.isalpha():
            a_first = x.isalpha() if digits else y.isalpha()
            return -1 if a_first else 1
        run_a, run_b = _digit_run(a, i), _digit_run(b, i)
        if run_a and run_b and int(run_a) != int(run_b):
            return -1 if int(run_a) < int(run_b) else 1
        if len(run_a) != len(run_b):
            return -1 if len(run_a) < len(run_b) else 1
        return -1 if x < y else 1
    return (len(a) > len(b)) - (len(a) < len(b))


def _digit_run(text: str, start: int) -> str:
    end = start
    while end < len(text) and text[end].isdigit():
        end += 1
    return text[start:end]


def _sorted_metadata(metadata: Metadata, fmt: Format) -> dict[str, Any]:
    items = metadata.original_items()
    if fmt == "json":
        items.sort(key=lambda kv: kv[0])  # encoding/json: byte order
    else:
        by_key = functools.cmp_to_key(_yaml_key_order)
        items.sort(key=lambda kv: by_key(kv[0]))
    return {k: _plain(v, fmt) for k, v in items}


def _plain(value: Any, fmt: Format) -> Any:
    if isinstance(value, Mapping):
        return _sorted_metadata(Metadata({str(k): v for k, v in value.items()}), fmt)
    if isinstance(value, list | tuple):
        return [_plain(v, fmt) for v in value]
    return value


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """GOST's ``omitempty``: leave out empty strings, False, None and empty collections."""
    if value is None or value is False or value == "" or (isinstance(value, dict | list) and not value):
        return
    out[key] = value


def _put_bypasses(out: dict[str, Any], names: tuple[str, ...]) -> None:
    """One name as GOST's ``bypass``, several as its ``bypasses``."""
    if len(names) == 1:
        out["bypass"] = names[0]
    elif names:
        out["bypasses"] = list(names)


def _auth_data(auth: Auth | None) -> dict[str, Any] | None:
    if auth is None:
        return None
    out: dict[str, Any] = {}
    _put(out, "username", auth.username)
    _put(out, "password", auth.password)
    return out


def _tls_data(tls: TLSOptions | None) -> dict[str, Any] | None:
    if tls is None:
        return None
    out: dict[str, Any] = {}
    _put(out, "certFile", tls.cert_file)
    _put(out, "keyFile", tls.key_file)
    _put(out, "caFile", tls.ca_file)
    _put(out, "secure", tls.secure)
    _put(out, "serverName", tls.server_name)
    return out


def _plugin_data(plugin: Plugin, fmt: Format, chain: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": plugin.type}
    _put(out, "chain", chain)
    if plugin.auth is not None:
        out["auth"] = _auth_data(plugin.auth)  # an empty auth block still means "auth given"
    if plugin.tls is not None:
        out["tls"] = _tls_data(plugin.tls)
    _put(out, "metadata", _sorted_metadata(plugin.metadata, fmt))
    return out


def _duration_data(seconds: float, fmt: Format) -> Any:
    return round(seconds * _NS_PER_S) if fmt == "json" else go_duration(seconds)


def to_data(config: Config, fmt: Format = "yaml") -> dict[str, Any]:
    """Plain data in GOST's shape and key order, ready for a YAML or JSON encoder."""
    services = []
    for s in config.services:
        out: dict[str, Any] = {"name": s.name}
        _put(out, "addr", s.addr)
        _put(out, "interface", s.interface)
        _put_bypasses(out, s.bypasses)
        out["handler"] = _plugin_data(s.handler, fmt, chain=s.chain)
        out["listener"] = _plugin_data(s.listener, fmt)
        _put(out, "metadata", _sorted_metadata(s.metadata, fmt))
        services.append(out)
    chains = []
    for c in config.chains:
        hops = []
        for h in c.hops:
            hop: dict[str, Any] = {"name": h.name}
            _put(hop, "interface", h.interface)
            if h.selector is not None:
                hop["selector"] = {
                    "strategy": h.selector.strategy,
                    "maxFails": h.selector.max_fails,
                    "failTimeout": _duration_data(h.selector.fail_timeout, fmt),
                }
            _put_bypasses(hop, h.bypasses)
            nodes = []
            for n in h.nodes:
                node: dict[str, Any] = {"name": n.name}
                _put(node, "addr", n.addr)
                _put_bypasses(node, n.bypasses)
                node["connector"] = _plugin_data(n.connector, fmt)
                node["dialer"] = _plugin_data(n.dialer, fmt)
                _put(node, "interface", n.interface)
                _put(node, "metadata", _sorted_metadata(n.metadata, fmt))
                nodes.append(node)
            _put(hop, "nodes", nodes)
            _put(hop, "metadata", _sorted_metadata(h.metadata, fmt))
            hops.append(hop)
        chain: dict[str, Any] = {"name": c.name, "hops": hops}
        _put(chain, "metadata", _sorted_metadata(c.metadata, fmt))
        chains.append(chain)
    bypasses = []
    for b in config.bypasses:
        bypass: dict[str, Any] = {"name": b.name}
        _put(bypass, "whitelist", b.reverse)
        _put(bypass, "matchers", list(b.matchers))
        if b.file is not None:
            bypass["file"] = {"path": b.file}
        bypasses.append(bypass)
    data: dict[str, Any] = {"services": services}
    _put(data, "chains", chains)
    _put(data, "bypasses", bypasses)
    return data


class _GoStyleDumper(yaml.SafeDumper):
    """Emits like Go's yaml.v3 (GOST's ``-O yaml``): sequences indented under their key, double quotes."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def choose_scalar_style(self) -> str:
        style: str = super().choose_scalar_style()
        return '"' if style == "'" else style


def dump(config: Config, fmt: str = "yaml") -> str:
    """The config as ``gost -O yaml`` / ``-O json`` prints it (ends with a newline)."""
    if fmt == "json":
        text = json.dumps(to_data(config, "json"), indent=2, ensure_ascii=False)
        # encoding/json escapes these for HTML safety; they only occur inside strings.
        for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
            text = text.replace(char, escaped)
        return text + "\n"
    if fmt == "yaml":
        text = yaml.dump(
            to_data(config, "yaml"),
            Dumper=_GoStyleDumper,
            sort_keys=False,
            indent=2,
            default_flow_style=False,
            allow_unicode=True,
            width=math.inf,
        )
        return text
    raise ConfigError(f"unknown output format {quote(fmt)} (yaml or json)")
