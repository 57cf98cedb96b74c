"""Checked reads of raw JSON values, each failure a ``SpecError`` naming the field path.

Used by the ``chain`` and ``gateway`` parsers. The API server normally enforces the CRD schema, but the
operator must not trust that (old CRD installed, a test server, a hand-edited object), so every value
is checked again here with the same rules and a message a user can act on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping, Sequence
from typing import cast

from tungo_operator.model.errors import SpecError

# The same pattern as the CRDs (Go durations: 30s, 1m30s, 500ms).
DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
IFNAME = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def obj(
    value: object, path: str, *, allowed: Collection[str] | None, required: Collection[str] = ()
) -> Mapping[str, object]:
    """An object with only ``allowed`` keys (None: any), all ``required`` ones; typos are errors."""
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: expected an object, got {_type_name(value)}")
    for key in value:
        if allowed is not None and key not in allowed:
            known = ", ".join(sorted(allowed))
            raise SpecError(f"{path}.{key}: unknown field (known fields: {known})")
    for key in required:
        if value.get(key) is None:
            raise SpecError(f"{path}.{key}: required")
    return cast(Mapping[str, object], value)


def string(
    value: object,
    path: str,
    *,
    pattern: re.Pattern[str] | None = None,
    hint: str = "",
    choices: Sequence[str] = (),
    max_len: int = 253,
    allow_empty: bool = False,
) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{path}: expected a string, got {_type_name(value)} {value!r}")
    if choices and value not in choices:
        raise SpecError(f"{path}: unknown value {value!r} (expected one of: {', '.join(choices)})")
    if not value:
        if allow_empty:
            return value
        raise SpecError(f"{path}: must not be empty")
    if len(value) > max_len:
        raise SpecError(f"{path}: longer than {max_len} characters")
    if pattern is not None and not pattern.match(value):
        raise SpecError(f"{path}: {value!r} is not {hint or 'valid'}")
    return value


def boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{path}: expected true or false, got {_type_name(value)} {value!r}")
    return value


def integer(value: object, path: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}: expected an integer, got {_type_name(value)} {value!r}")
    if not low <= value <= high:
        raise SpecError(f"{path}: {value} is out of range [{low}, {high}]")
    return value


def strings(
    value: object, path: str, *, max_items: int, max_len: int = 253, allow_empty: bool = False
) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise SpecError(f"{path}: expected a list of strings, got {_type_name(value)}")
    if len(value) > max_items:
        raise SpecError(f"{path}: more than {max_items} items")
    return tuple(
        string(item, f"{path}[{i}]", max_len=max_len, allow_empty=allow_empty) for i, item in enumerate(value)
    )


def string_map(
    value: object, path: str, *, max_items: int = 32, max_len: int = 4096, allow_empty: bool = False
) -> tuple[tuple[str, str], ...]:
    """A ``{string: string}`` object, as sorted pairs (hashable, deterministic output order)."""
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: expected an object of strings, got {_type_name(value)}")
    if len(value) > max_items:
        raise SpecError(f"{path}: more than {max_items} entries")
    return tuple(
        sorted(
            (str(k), string(v, f"{path}.{k}", max_len=max_len, allow_empty=allow_empty))
            for k, v in value.items()
        )
    )


def duration(value: object, path: str) -> str:
    """A Go duration, kept as the text GOST reads (``30s``)."""
    return string(value, path, pattern=DURATION, hint="a duration like 30s, 1m30s or 500ms", max_len=32)


def ip(value: object, path: str) -> str:
    text = string(value, path, max_len=45)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SpecError(f"{path}: {text!r} is not an IP address") from None


def cidr(value: object, path: str) -> str:
    """A network (``10.96.0.0/12``): host bits must be zero, so a typo is not silently widened."""
    text = string(value, path, max_len=64)
    if "/" not in text:
        raise SpecError(f"{path}: {text!r} is not a CIDR (expected address/prefix, e.g. 10.96.0.0/12)")
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise SpecError(f"{path}: {text!r} is not a CIDR ({exc})") from None
        raise SpecError(f"{path}: {text!r} has host bits set (did you mean {loose}?)") from None


def interface_cidr(value: object, path: str) -> str:
    """An interface address with its prefix (``192.168.123.1/24``): host bits are the point here."""
    text = string(value, path, max_len=64)
    if "/" not in text:
        raise SpecError(f"{path}: {text!r} is not an address/prefix (e.g. 192.168.123.1/24)")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise SpecError(f"{path}: {text!r} is not an address/prefix ({exc})") from None
    if iface.ip == iface.network.network_address and iface.network.prefixlen < iface.max_prefixlen - 1:
        raise SpecError(f"{path}: {text!r} is the network address, not a usable TUN address")
    return str(iface)
