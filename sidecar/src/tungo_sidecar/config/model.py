"""The typed, frozen configuration model: GOST v3's schema (services, chains → hops → nodes, bypasses).

Both the ``-L/-F`` command line (``config.url``) and a ``-C`` YAML file (``config.yaml_io``) parse into
these objects once, at the edge; everything below reads them and never raw dicts. A reload swaps the
whole ``Config``. Field names follow GOST's YAML keys in snake_case; ``metadata`` keeps GOST's free-form
key/value options (looked up case-insensitively, as GOST does) through ``Metadata``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tungo_sidecar.errors import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Metadata(Mapping[str, Any]):
    """GOST metadata: free-form options, keys matched case-insensitively, typed getters.

    Getters raise ``ConfigError`` naming the key when a value has the wrong type, so a typo in a
    command line fails at start-up instead of deep inside a flow.
    """

    __slots__ = ("_items", "_keys")

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items: dict[str, Any] = {k.lower(): v for k, v in (items or {}).items()}
        # The keys as written (``postUp``, ``udpTimeout``), so a config printed back reads like GOST's.
        self._keys: dict[str, str] = {k.lower(): k for k in (items or {})}

    def __getitem__(self, key: str) -> Any:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Metadata({self._items!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._items == {str(k).lower(): v for k, v in other.items()}
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._items.items())))

    def original_items(self) -> list[tuple[str, Any]]:
        """The items with their keys spelled as written (lookups stay case-insensitive)."""
        return [(self._keys[k], v) for k, v in self._items.items()]

    def get_str(self, key: str, default: str | None = None) -> str | None:
        value = self._items.get(key.lower())
        if value is None:
            return default
        if isinstance(value, bool | int | float | str):
            return str(value).lower() if isinstance(value, bool) else str(value)
        raise ConfigError(f"metadata {key!r}: expected a string, got {value!r}")

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self._items.get(key.lower())
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", ""):
            return False
        raise ConfigError(f"metadata {key!r}: expected true/false, got {value!r}")

    def get_int(self, key: str, default: int | None = None) -> int | None:
        value = self._items.get(key.lower())
        if value is None:
            return default
        if isinstance(value, bool):
            raise ConfigError(f"metadata {key!r}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"metadata {key!r}: expected an integer, got {value!r}") from None

    def get_duration(self, key: str, default: float | None = None) -> float | None:
        """A Go-style duration (``30s``, ``1m30s``, ``500ms``) or a number of seconds, in seconds."""
        value = self._items.get(key.lower())
        if value is None:
            return default
        return parse_duration(value, key)

    def get_list(self, key: str) -> tuple[str, ...]:
        """A list given as a YAML sequence or as a comma-separated string (GOST accepts both)."""
        value = self._items.get(key.lower())
        if value is None:
            return ()
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple):
            return tuple(str(item) for item in value)
        raise ConfigError(f"metadata {key!r}: expected a list, got {value!r}")


def parse_duration(value: object, what: str = "duration") -> float:
    """Seconds from a Go duration string (``1m30s``) or a plain number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if text.isdigit():
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ConfigError(f"{what}: bad duration {value!r} (use e.g. 30s, 1m30s, 500ms)")
    return total


@dataclass(frozen=True, slots=True)
class Auth:
    username: str
    password: str = ""


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """GOST's ``tls`` block. Clients verify the server only when ``secure`` (GOST's default: off)."""

    secure: bool = False
    server_name: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Plugin:
    """A handler, listener, connector or dialer: its registry ``type`` plus its options."""

    type: str
    auth: Auth | None = None
    tls: TLSOptions | None = None
    metadata: Metadata = field(default_factory=Metadata)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addr: str
    connector: Plugin
    dialer: Plugin
    bypasses: tuple[str, ...] = ()  # GOST's ``bypass`` + ``bypasses``, combined as a group
    interface: str | None = None
    metadata: Metadata = field(default_factory=Metadata)


@dataclass(frozen=True, slots=True)
class Selector:
    strategy: str = "round"
    max_fails: int = 1
    fail_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Hop:
    name: str
    nodes: tuple[Node, ...]
    bypasses: tuple[str, ...] = ()
    selector: Selector | None = None
    # GOST's hop metadata (``interface``, ``so_mark``... inherited by its nodes) and deprecated field.
    metadata: Metadata = field(default_factory=Metadata)
    interface: str | None = None


@dataclass(frozen=True, slots=True)
class ChainConfig:
    name: str
    hops: tuple[Hop, ...]
    metadata: Metadata = field(default_factory=Metadata)


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    addr: str
    handler: Plugin
    listener: Plugin
    chain: str | None = None
    bypasses: tuple[str, ...] = ()
    interface: str | None = None
    metadata: Metadata = field(default_factory=Metadata)


@dataclass(frozen=True, slots=True)
class BypassConfig:
    """GOST bypass: ``matchers`` (and the lines of ``file``, GOST's ``file: {path}`` loader) name what
    leaves the chain; ``reverse`` (GOST's ``whitelist``) inverts it. What a match does depends on where
    the bypass is used (``chain.route``); the patterns are compiled by ``rules``."""

    name: str
    matchers: tuple[str, ...] = ()
    reverse: bool = False
    file: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    services: tuple[Service, ...] = ()
    chains: tuple[ChainConfig, ...] = ()
    bypasses: tuple[BypassConfig, ...] = ()

    def chain(self, name: str | None) -> ChainConfig | None:
        """The chain called ``name`` (None when ``name`` is None); ConfigError when it is unknown."""
        if name is None:
            return None
        for chain in self.chains:
            if chain.name == name:
                return chain
        raise ConfigError(f"unknown chain {name!r}")
