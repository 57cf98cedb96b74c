"""GOST's command-line grammar: ``-L`` service URLs and ``-F`` node URLs into one ``Config``.

``scheme://[user:pass@][host]:port[/path]?key=value&...`` where the scheme is ``handler+listener`` for
``-L`` and ``connector+dialer`` for ``-F``; each ``-F`` is one hop of the single chain ``chain-0``, in
order. The result is what GOST v3 builds for the same command line (``gost -O yaml``): the same names
(``service-N``, ``chain-0``, ``hop-N``, ``node-N``, ``bypass-N``), the same scheme defaults, the same
routing of query keys (``auth``, TLS files, ``bypass``, ``interface``, ``so_mark``, ``dns``, selector
keys, ``service.``/``handler.``/``listener.`` and ``hop.``/``node.``/``connector.``/``dialer.``
prefixes), and plain keys copied into every metadata block, as GOST does.

Where tungo is stricter than GOST, on purpose, so a typo fails at start-up with one clear line:
an unknown scheme part is an error (GOST silently falls back to http/tcp), GOST's ``auto`` handler is
not supported, options for features tungo lacks (resolver, hosts, admission, limiters) are refused,
and a URL path is accepted only for ws/wss (it becomes the websocket ``path``; GOST reads ``?path=``
and treats a ``-L`` path as port-forward targets, which tungo does not do).

Called by ``app.cli``; pure (no I/O). Errors are ``ConfigError`` naming the flag and the URL (with any
password hidden) and the offending part.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, unquote

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
from tungo_sidecar.config.validate import (
    CONNECTORS,
    DIALERS,
    GOST_DEFAULT_CONNECTOR,
    GOST_DEFAULT_DIALER,
    GOST_DEFAULT_HANDLER,
    GOST_DEFAULT_LISTENER,
    HANDLERS,
    LISTENERS,
    check_host,
    check_node_addr,
    check_selector,
    check_service_plugins,
    join_host_port,
    known_names,
    parse_port,
    quote,
    split_host_port,
    validate,
)
from tungo_sidecar.errors import ConfigError

CHAIN_NAME = "chain-0"
# A port range ("-L tcp://:8000-8009") makes one service per port; bound it so a typo cannot ask for
# tens of thousands of listeners.
MAX_PORT_RANGE = 1024
# GOST's selector defaults when a -F URL names any selector key (cmd.go parseSelector).
SELECTOR_DEFAULT_MAX_FAILS = 1
SELECTOR_DEFAULT_FAIL_TIMEOUT = 30.0

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
# Query keys for features tungo does not have. GOST turns them into resolver/hosts/admission/limiter
# objects; dropping them silently would change behaviour, so they are refused.
_UNSUPPORTED_NODE_KEYS = ("resolver", "hosts")
_UNSUPPORTED_SERVICE_KEYS = (
    "retries",
    "resolver",
    "hosts",
    "admission",
    "limiter.in",
    "limiter.out",
    "limiter.conn.in",
    "limiter.conn.out",
    "climiter",
    "rlimiter",
)
_TLS_CERT_KEYS = ("tls.certFile", "certFile", "cert")
_TLS_KEY_KEYS = ("tls.keyFile", "keyFile", "key")
_TLS_CA_KEYS = ("tls.caFile", "caFile", "ca")
_TLS_SECURE_KEYS = ("tls.secure", "secure")
_TLS_SERVER_NAME_KEYS = ("tls.serverName", "serverName")


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """One -L/-F argument split into its parts, before any GOST rule applies."""

    scheme: str  # lower case, "https" already rewritten to "http+tls"
    userinfo: tuple[str, str | None] | None  # (user, password) percent-decoded; None without "@"
    host: str  # the authority without user info, as written ("h:443", ":8080", "[::1]:1", "a:1,b:2")
    path: str  # percent-decoded; "" when absent
    query: tuple[tuple[str, str], ...]  # in order, decoded, duplicates kept


def redact(text: str) -> str:
    """The URL as messages show it: a password in the user info replaced by ``***``."""
    head, sep, rest = text.partition("://")
    if not sep:
        return text
    end = len(rest)
    for stop in "/?#":
        pos = rest.find(stop)
        if pos >= 0:
            end = min(end, pos)
    authority = rest[:end]
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.split(":", 1)[0]
    return f"{head}://{user}:***@{host}{rest[end:]}"


def parse_url(text: str) -> ParsedURL:
    """Split one command-line URL; ConfigError (without the flag prefix) when it is malformed."""
    text = text.strip()
    if not text:
        raise ConfigError("empty URL")
    if text.startswith(":") or "://" not in text:
        # GOST: a bare "host:port" or ":port" means scheme "auto".
        text = GOST_DEFAULT_HANDLER + "://" + text
    scheme, _, rest = text.partition("://")
    if not _SCHEME.match(scheme):
        raise ConfigError(f"bad scheme {quote(scheme)}")
    scheme = scheme.lower()
    if scheme == "https":
        scheme = "http+tls"
    rest = rest.partition("#")[0]
    rest, qmark, query_text = rest.partition("?")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    userinfo: tuple[str, str | None] | None = None
    raw_user, at, host = authority.rpartition("@")
    if at:
        user, colon, password = raw_user.partition(":")
        userinfo = (unquote(user), unquote(password) if colon else None)
    if any(ch.isspace() for ch in host):
        raise ConfigError(f"bad host {quote(host)}")
    query = tuple(parse_qsl(query_text, keep_blank_values=True)) if qmark else ()
    return ParsedURL(scheme=scheme, userinfo=userinfo, host=host, path=unquote(path), query=query)


# -- small helpers over GOST's mutable option map ------------------------------------------------------
# GOST reads options case-insensitively (its metadata lower-cases keys) but keeps them as written; the
# map below keeps insertion order and spelling, and lookups ignore case.

Options = dict[str, Any]


def _first_values(query: Sequence[tuple[str, str]]) -> Options:
    """GOST keeps the first value of a repeated query key."""
    options: Options = {}
    lowered: set[str] = set()
    for key, value in query:
        if key.lower() not in lowered:
            lowered.add(key.lower())
            options[key] = value
    return options


def _find(options: Options, *keys: str) -> tuple[str, Any] | None:
    """The first of ``keys`` present (any case), as (key as written, value)."""
    for want in keys:
        for key, value in options.items():
            if key.lower() == want.lower():
                return key, value
    return None


def _get_str(options: Options, *keys: str) -> str:
    found = _find(options, *keys)
    return "" if found is None else str(found[1])


def _get_int(options: Options, key: str) -> int:
    found = _find(options, key)
    if found is None or found[1] == "":
        return 0
    try:
        return int(found[1])
    except (TypeError, ValueError):
        raise ConfigError(
            f"option {quote(found[0])}: expected an integer, got {quote(str(found[1]))}"
        ) from None


_TRUE = frozenset({"1", "t", "true", "yes", "on"})  # Go's strconv.ParseBool, plus yes/on
_FALSE = frozenset({"", "0", "f", "false", "no", "off"})


def _get_bool(options: Options, *keys: str) -> bool:
    found = _find(options, *keys)
    if found is None:
        return False
    text = str(found[1]).strip().lower()
    if text not in _TRUE | _FALSE:
        raise ConfigError(f"option {quote(found[0])}: expected true or false, got {quote(str(found[1]))}")
    return text in _TRUE


def _delete(options: Options, *keys: str) -> None:
    wanted = {k.lower() for k in keys}
    for key in [k for k in options if k.lower() in wanted]:
        del options[key]


def _move_under(options: Options, prefix: str, *, strings: Sequence[str], numbers: Sequence[str]) -> None:
    """GOST's moves of plain keys under ``prefix.``: a non-empty string, a positive number (else dropped)."""
    for key in strings:
        if value := _get_str(options, key):
            options[f"{prefix}.{key}"] = value
            _delete(options, key)
    for key in numbers:
        if (number := _get_int(options, key)) > 0:
            options[f"{prefix}.{key}"] = number
            _delete(options, key)


def _take_tls_files(options: Options) -> tuple[str, str, str]:
    """certFile, keyFile, caFile (any of their spellings; "" when absent), taken out of ``options``."""
    files = (
        _get_str(options, *_TLS_CERT_KEYS),
        _get_str(options, *_TLS_KEY_KEYS),
        _get_str(options, *_TLS_CA_KEYS),
    )
    _delete(options, *_TLS_CERT_KEYS, *_TLS_KEY_KEYS, *_TLS_CA_KEYS)
    return files


def _decode_auth(text: str) -> Auth:
    """GOST's ``auth=`` option: base64 (URL-safe unpadded, or standard) of ``user[:pass]``."""
    raw: bytes | None = None
    if "=" not in text:
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f'option "auth": {quote(text)} is not base64 of user:pass') from None
    try:
        decoded = raw.decode()
    except UnicodeDecodeError:
        raise ConfigError('option "auth": the decoded value is not UTF-8') from None
    user, _, password = decoded.partition(":")
    return Auth(username=user, password=password)


def _auth(url: ParsedURL, options: Options) -> Auth | None:
    auth = None
    if url.userinfo is not None:
        auth = Auth(username=url.userinfo[0], password=url.userinfo[1] or "")
    found = _find(options, "auth")
    if found is not None and found[1] and auth is None:
        auth = _decode_auth(str(found[1]))
    _delete(options, "auth")
    return auth


def _bypass(value: str, name: str) -> BypassConfig:
    """``bypass=~a,b``: matchers ``a``, ``b``; the leading ``~`` makes it a whitelist (GOST)."""
    reverse = value.startswith("~")
    if reverse:
        value = value[1:]
    return BypassConfig(name=name, matchers=tuple(s for s in value.split(",") if s), reverse=reverse)


def _refuse(options: Options, keys: Sequence[str]) -> None:
    for key in keys:
        found = _find(options, key)
        if found is not None and found[1] != "":
            raise ConfigError(f"option {quote(found[0])} is not supported by tungo")


def _selector(options: Options) -> Selector | None:
    """GOST's selector keys; when any is set the keys leave the option map."""
    strategy = _get_str(options, "strategy")
    max_fails = _get_int(options, "maxFails") or _get_int(options, "max_fails")
    timeout_text = _get_str(options, "failTimeout", "fail_timeout")
    fail_timeout = parse_duration(timeout_text, 'option "failTimeout"') if timeout_text else 0.0
    if not strategy and max_fails <= 0 and fail_timeout <= 0:
        return None
    _delete(options, "strategy", "maxFails", "max_fails", "failTimeout", "fail_timeout")
    return Selector(
        strategy=strategy or "round",
        max_fails=max_fails if max_fails > 0 else SELECTOR_DEFAULT_MAX_FAILS,
        fail_timeout=fail_timeout if fail_timeout > 0 else SELECTOR_DEFAULT_FAIL_TIMEOUT,
    )


def _split_prefixed(options: Options, prefixes: Sequence[str]) -> list[Options]:
    """One option map per prefix: ``prefix.key`` goes to that map only, plain keys go to all of them."""
    maps: list[Options] = [{} for _ in prefixes]
    for key, value in options.items():
        for i, prefix in enumerate(prefixes):
            if key.startswith(prefix + "."):
                maps[i][key[len(prefix) + 1 :]] = value
                break
        else:
            for m in maps:
                m[key] = value
    return maps


def _scheme_parts(scheme: str, first_kind: str, second_kind: str) -> tuple[str, ...]:
    parts = tuple(scheme.split("+"))
    if len(parts) > 2 or any(not p for p in parts):
        raise ConfigError(f"bad scheme {quote(scheme)} (use {first_kind}+{second_kind})")
    return parts


# -- -F: one hop per URL -------------------------------------------------------------------------------


def _node_types(scheme: str) -> tuple[str, str]:
    parts = _scheme_parts(scheme, "connector", "dialer")
    if len(parts) == 2:
        connector, dialer = parts
        if connector not in CONNECTORS:
            raise ConfigError(f"unknown connector {quote(connector)} (known: {known_names('connector')})")
        if dialer not in DIALERS:
            raise ConfigError(f"unknown dialer {quote(dialer)} (known: {known_names('dialer')})")
        return connector, dialer
    (only,) = parts
    if only not in CONNECTORS and only not in DIALERS and only != GOST_DEFAULT_HANDLER:
        raise ConfigError(
            f"unknown scheme {quote(only)} (connectors: {known_names('connector')}; "
            f"dialers: {known_names('dialer')})"
        )
    # GOST: a part that is not a registered connector/dialer becomes http / tcp.
    connector = only if only in CONNECTORS else GOST_DEFAULT_CONNECTOR
    dialer = only if only in DIALERS else GOST_DEFAULT_DIALER
    return connector, dialer


def _hop(text: str, index: int, bypasses: list[BypassConfig]) -> Hop:
    url = parse_url(text)
    connector_type, dialer_type = _node_types(url.scheme)
    hosts = [h for h in url.host.split(",") if h]
    if not hosts:
        raise ConfigError("no node address (use host:port)")
    for host in hosts:
        check_node_addr(host)

    options = _first_values(url.query)
    selector = _selector(options)
    hop_bypass = None
    if value := _get_str(options, "bypass"):
        bypass = _bypass(value, f"bypass-{len(bypasses)}")
        bypasses.append(bypass)
        hop_bypass = bypass.name
        _delete(options, "bypass")
    _refuse(options, _UNSUPPORTED_NODE_KEYS)
    # GOST moves these to the hop (its nodes inherit them), under the "hop." prefix.
    _move_under(options, "hop", strings=("interface",), numbers=("so_mark", "proxyProtocol"))

    # GOST builds the hop's metadata before the node takes its auth and TLS keys out, so the hop keeps
    # a copy of those too; matched here so -O prints what gost -O prints.
    hop_options: Options = {}
    for key in list(options):
        if key.startswith(("node.", "connector.", "dialer.")):
            continue
        if key.startswith("hop."):
            hop_options[key[4:]] = options.pop(key)
            continue
        hop_options[key] = options[key]

    auth = _auth(url, options)
    cert_file, key_file, ca_file = _take_tls_files(options)
    secure = _get_bool(options, *_TLS_SECURE_KEYS)
    server_name = _get_str(options, *_TLS_SERVER_NAME_KEYS)
    _delete(options, *_TLS_SECURE_KEYS, *_TLS_SERVER_NAME_KEYS)

    node_options, connector_options, dialer_options = _split_prefixed(
        options, ("node", "connector", "dialer")
    )
    _apply_path(url, DIALERS[dialer_type].websocket, dialer_options, "dialer")

    nodes = []
    for i, addr in enumerate(hosts):
        # GOST names the server after the URL's host; with several hosts each node uses its own.
        tls = TLSOptions(
            secure=secure,
            server_name=server_name or split_host_port(addr)[0],
            ca_file=ca_file or None,
            cert_file=cert_file or None,
            key_file=key_file or None,
        )
        nodes.append(
            Node(
                name=f"node-{i}",
                addr=addr,
                connector=Plugin(type=connector_type, auth=auth, metadata=Metadata(connector_options)),
                dialer=Plugin(type=dialer_type, tls=tls, metadata=Metadata(dialer_options)),
                metadata=Metadata(node_options),
            )
        )
    hop = Hop(
        name=f"hop-{index}",
        nodes=tuple(nodes),
        bypasses=(hop_bypass,) if hop_bypass else (),
        selector=selector,
        metadata=Metadata(hop_options),
    )
    check_selector(hop)
    return hop


def _apply_path(url: ParsedURL, websocket: bool, options: Options, kind: str) -> None:
    if not url.path.strip("/"):
        return
    if not websocket:
        what = "port-forward targets are not supported" if kind == "listener" else "it means nothing"
        raise ConfigError(f"a URL path ({quote(url.path)}) is only for ws/wss ({kind}: {what})")
    if _find(options, "path") is None:
        options["path"] = url.path


# -- -L: one service per URL (per port of a port range) ------------------------------------------------


def _service_types(scheme: str) -> tuple[str, str]:
    parts = _scheme_parts(scheme, "handler", "listener")
    if len(parts) == 2:
        handler, listener = parts
        if handler not in HANDLERS:
            raise ConfigError(f"unknown handler {quote(handler)} (known: {known_names('handler')})")
        if listener not in LISTENERS:
            raise ConfigError(f"unknown listener {quote(listener)} (known: {known_names('listener')})")
        return handler, listener
    (only,) = parts
    if only not in HANDLERS and only not in LISTENERS and only != GOST_DEFAULT_HANDLER:
        raise ConfigError(
            f"unknown scheme {quote(only)} (handlers: {known_names('handler')}; "
            f"listeners: {known_names('listener')})"
        )
    if only not in HANDLERS:
        # GOST would run its "auto" (socks5 + http sniffing) handler here.
        example = f"relay+{only}" if only in LISTENERS and only != GOST_DEFAULT_LISTENER else "socks5"
        raise ConfigError(
            f"no handler named, and GOST's default handler {quote(GOST_DEFAULT_HANDLER)} is not supported; "
            f"name one, e.g. {example}://... (handlers: {known_names('handler')})"
        )
    return only, only if only in LISTENERS else GOST_DEFAULT_LISTENER


def _listen_addrs(host: str, tun: bool) -> list[str]:
    if not host:
        if tun:
            return [""]
        raise ConfigError("no listen address (use [host]:port, e.g. :8080)")
    if tun and ":" not in host:
        raise ConfigError(f"bad address {quote(host)} (use :0 or leave it empty for tungo)")
    name, port_text = split_host_port(host)
    if name:
        check_host(name)
    low_text, dash, high_text = port_text.partition("-")
    low = parse_port(low_text, host)
    if not dash:
        return [join_host_port(name, low)]
    high = parse_port(high_text, host)
    if high < low or high - low >= MAX_PORT_RANGE:
        raise ConfigError(f"bad port range {quote(port_text)} (low-high, at most {MAX_PORT_RANGE} ports)")
    return [join_host_port(name, port) for port in range(low, high + 1)]


def _services(text: str, chain: str | None, bypasses: list[BypassConfig]) -> list[Service]:
    url = parse_url(text)
    handler_type, listener_type = _service_types(url.scheme)
    addrs = _listen_addrs(url.host, LISTENERS[listener_type].tun)

    options = _first_values(url.query)
    auth = _auth(url, options)
    cert_file, key_file, ca_file = _take_tls_files(options)
    # GOST keeps a listener TLS block only when it names a certificate (else its default cert).
    tls = (
        TLSOptions(cert_file=cert_file, key_file=key_file or None, ca_file=ca_file or None)
        if cert_file
        else None
    )

    if found := _find(options, "dns"):
        options[found[0]] = str(found[1]).split(",")
    _move_under(
        options, "service", strings=("interface", "netns", "netns.out"), numbers=("so_mark", "proxyProtocol")
    )
    _selector(options)  # GOST's forwarder selector; tungo has no forwarder, the keys just leave the map

    service_options, handler_options, listener_options = _split_prefixed(
        options, ("service", "handler", "listener")
    )
    _apply_path(url, LISTENERS[listener_type].websocket, listener_options, "listener")
    # GOST reads these from the handler's options only (and leaves them in the others).
    _refuse(handler_options, _UNSUPPORTED_SERVICE_KEYS)

    services: list[Service] = []
    for addr in addrs:
        service_bypass = None
        if value := _get_str(handler_options, "bypass"):
            bypass = _bypass(value, f"bypass-{len(bypasses)}")
            bypasses.append(bypass)
            service_bypass = bypass.name
        services.append(
            Service(
                name="",
                addr=addr,
                handler=Plugin(
                    type=handler_type,
                    auth=auth,
                    metadata=Metadata(
                        {
                            k: v
                            for k, v in handler_options.items()
                            if not (service_bypass and k.lower() == "bypass")
                        }
                    ),
                ),
                listener=Plugin(type=listener_type, tls=tls, metadata=Metadata(listener_options)),
                chain=chain,
                bypasses=(service_bypass,) if service_bypass else (),
                metadata=Metadata(service_options),
            )
        )
        check_service_plugins(services[-1])
    return services


def _flag_error(flag: str, text: str, exc: ConfigError) -> ConfigError:
    return ConfigError(f"{flag} {quote(redact(text.strip()))}: {exc}")


def build_config(services: Sequence[str] = (), nodes: Sequence[str] = (), *, check: bool = True) -> Config:
    """The ``Config`` GOST builds for ``-L services... -F nodes...``; ConfigError on the first bad part.

    ``check=False`` skips the whole-config validation (for callers that merge with ``-C`` files first).
    """
    bypasses: list[BypassConfig] = []
    hops = []
    for i, text in enumerate(nodes):
        try:
            hops.append(_hop(text, i, bypasses))
        except ConfigError as exc:
            raise _flag_error("-F", text, exc) from None
    chain = ChainConfig(name=CHAIN_NAME, hops=tuple(hops)) if hops else None

    built: list[Service] = []
    for text in services:
        if not text.strip():
            continue  # GOST skips empty -L values
        try:
            built.extend(_services(text, chain.name if chain else None, bypasses))
        except ConfigError as exc:
            raise _flag_error("-L", text, exc) from None
    named = tuple(_renamed(s, f"service-{i}") for i, s in enumerate(built))
    config = Config(services=named, chains=(chain,) if chain else (), bypasses=tuple(bypasses))
    return validate(config) if check else config


def _renamed(service: Service, name: str) -> Service:
    return replace(service, name=name)
