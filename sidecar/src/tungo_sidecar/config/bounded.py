"""Config text to plain data with bounded work: YAML and JSON as an untrusted file deserves.

A config file may come from anywhere (a mounted Secret, a pipe, a typo'd path such as ``/dev/zero``),
and a parser left to itself can be made to spend gigabytes or minutes: YAML aliases multiply
("billion laughs": 454 bytes that expand to 10^9 nodes), nesting recurses (100,000 levels end in a
``RecursionError`` traceback), a 5,000-digit integer trips CPython's int/str conversion limit, and a
duplicate key silently wins (Go's yaml.v3, which GOST uses, refuses it). Each of those is one
``ConfigError`` here, decided before the expensive step:

* ``read_limited``: at most ``MAX_BYTES`` of a file or stream are read (``-C /dev/zero`` stops there);
* YAML is first checked as an event stream (PyYAML's parser is iterative, so depth costs nothing):
  nesting depth, scalar length, integer digits, alias count; then composed, its expanded size
  computed with aliases counted at their full size (memoised, cycles refused) before anything is
  constructed; then constructed with duplicate keys refused;
* JSON is checked for depth and number length on the raw text before ``json.loads``, which then
  refuses duplicate keys.

Called by ``config.yaml_io``. Pure apart from ``read_limited``'s read; never logs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable
from typing import IO, Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from tungo_sidecar.errors import ConfigError

#: The largest config accepted: a rendered pod config with CA bundles is a few KiB; GOST configs with
#: hundreds of services stay well under 1 MiB. Matcher lists belong in ``bypasses[].file``.
MAX_BYTES = 4 * 1024 * 1024
#: Nesting deeper than this is no config (GOST's schema is at most ~8 levels deep).
MAX_DEPTH = 64
#: One scalar (a CA bundle inline, a long matcher list as one string) may be large, not unbounded.
MAX_SCALAR = 1024 * 1024
#: An integer with more digits is no port, mark or timeout (and CPython refuses > 4,300 anyway).
MAX_INT_DIGITS = 64
#: Aliases are legal YAML and GOST accepts them; a config needs few.
MAX_ALIASES = 256
#: Nodes after alias expansion: far above any real config, far below what exhausts memory.
MAX_NODES = 200_000

_MERGE = "tag:yaml.org,2002:merge"
_INT = re.compile(r"[-+]?(?:0[xob])?[0-9_]+")


def read_limited(stream: IO[bytes], origin: str) -> str:
    """At most ``MAX_BYTES`` of ``stream`` as UTF-8 text; ConfigError beyond it or for other bytes."""
    data = stream.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{origin}: larger than {MAX_BYTES // (1024 * 1024)} MiB: not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{origin}: not UTF-8 text") from None


def parse_json(text: str) -> object:
    _scan_json(text)
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"bad JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _scan_json(text: str) -> None:
    """One pass over the raw text: nesting depth and digit runs outside strings."""
    depth = digits = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char.isdigit():
            digits += 1
            if digits > MAX_INT_DIGITS:
                raise ConfigError(f"bad JSON: a number with more than {MAX_INT_DIGITS} digits")
            continue
        digits = 0
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"bad JSON: nested deeper than {MAX_DEPTH} levels")
        elif char in "]}":
            depth -= 1


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ConfigError(f"bad JSON: key {key!r} given twice in one object")
        found[key] = value
    return found


def parse_yaml(text: str) -> object:
    try:
        _check_events(text)
        node = yaml.compose(text, Loader=_Loader)
        if node is None:
            return None
        _check_size(node)
        return _Loader.construct(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"bad YAML{where}: {problem}") from None


def _check_events(text: str) -> None:
    depth = aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _refused(event, f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise _refused(event, f"more than {MAX_ALIASES} aliases")
        elif isinstance(event, yaml.ScalarEvent):
            if len(event.value) > MAX_SCALAR:
                raise _refused(event, f"a value longer than {MAX_SCALAR // 1024} KiB")
            plain = event.implicit[0]
            if plain and len(event.value) > MAX_INT_DIGITS and _INT.fullmatch(event.value):
                raise _refused(event, f"a number with more than {MAX_INT_DIGITS} digits")


def _refused(event: yaml.Event, why: str) -> ConfigError:
    mark = event.start_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return ConfigError(f"bad YAML{where}: {why}")


def _check_size(root: Node) -> None:
    """Count the nodes the document expands to (an alias counts its whole target), refusing cycles."""
    sizes: dict[int, int] = {}
    path: set[int] = set()
    # Iterative post-order walk: (node, children visited?) pairs.
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if expanded:
            path.discard(key)
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            if total > MAX_NODES:
                raise ConfigError(f"bad YAML: expands to more than {MAX_NODES:,} values (aliases?)")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in path:
            mark = node.start_mark
            raise ConfigError(f"bad YAML at line {mark.line + 1}, column {mark.column + 1}: recursive alias")
        path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (as Go's yaml.v3 does)."""

    @classmethod
    def construct(cls, node: Node) -> object:
        loader = cls("")
        try:
            return loader.construct_document(node)
        finally:
            loader.dispose()

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:  # ``<<: *base``: its keys may be overridden, that is its point
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                mark = key_node.start_mark
                raise ConfigError(
                    f"bad YAML at line {mark.line + 1}, column {mark.column + 1}: key {key!r} given twice"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)
