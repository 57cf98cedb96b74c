"""GOST's bypass patterns, compiled once into an index that answers "which pattern matches this flow?".

Owns the pattern syntax of go-gost/x (``bypass.classifyPatterns``, ``internal/matcher``): a CIDR; an IP
range ``a.b.c.d-e.f.g.h`` (a single IP is a range of one); a gobwas glob (any pattern with ``*`` or
``?``: ``*`` is any run of characters *including dots*, ``?`` one character, ``[abc]`` ``[!abc]``
``[a-z]`` ``{a,b}`` and ``\\`` escapes), with an optional ``:port`` or ``:min-max``; else an address:
``host`` or ``host:port``/``host:min-max``, where ``example.com`` matches that name only and
``.example.com`` matches it and every subdomain. Hosts compare lower-case; a pattern without a port
matches every port. ``parse_lines`` reads GOST's file format. ``rules.bypass`` builds on this module;
the config layer reads files and hands their text to ``parse_lines``.

What tungo adds, on purpose:

* **A richer target.** GOST matches one ``host:port`` string; a tungo flow may know both a name
  (sniffed TLS SNI / HTTP Host, or learnt from DNS) and its destination IP (``Target``). Name patterns
  (exact, ``.suffix``, wildcard) see the name; IP, CIDR and range patterns see the IP; either side may
  match. A wildcard sees the IP's text when there is no name (``192.168.*`` matches an IP flow, as in
  GOST). A name that is an IP literal counts as an IP.
* **IPs by value.** GOST compares an IP in an address pattern (``[::1]:80``) as text and orders IP
  ranges by bit length first; here every IP is a number, IPv4-mapped IPv6 is IPv4 (a mapped CIDR of
  prefix 96 or more becomes the IPv4 CIDR), and a range may not mix the families.
* **Problems, not silent fallbacks.** GOST turns anything it cannot parse into an "address" that never
  matches (``example.com:http``, ``10.0.0.0/8:80``, a glob with an unclosed ``[``) or ignores a bad port
  (``*.a.com:8*`` matches every port). Here such a pattern is a ``Problem`` (its text, its origin and
  why) and the rest still compile: a host that is neither an IP nor a plausible DNS name (ASCII letters,
  digits, ``-``, ``_``, dots; labels of 1-63, at most 253 characters, a numeric last label is no name),
  a port outside 0-65535 or ``min > max``, an IP range ending before it starts, a glob with an
  unbalanced ``[`` or ``{`` (gobwas accepts an unclosed ``{``), an empty pattern, a pattern longer than
  ``MAX_PATTERN_LENGTH``, an IPv6 zone. ``[`` and ``{`` make a glob only with a ``*`` or ``?`` (as in
  GOST: otherwise the text is an address, which these characters make invalid).
* **Ports of globs** split at the one colon outside ``[...]``/``{...}`` (GOST's ``net.SplitHostPort``
  refuses ``[a-c]*.com:80`` and then matches the whole text, port included, against hosts); several
  colons make an IPv6 glob without a port (as in GOST), and ``[2001:db8::*]:443`` brackets one. A
  trailing dot of a name pattern is dropped, as it is from the target's name, and ``[::1]`` is ``::1``.
* **Which pattern**: ``match`` returns the matching ``Pattern`` (for a debug line), the most specific
  one when several do: the IP's patterns first (an exact IP, then the narrowest CIDR or range), then
  the name's (the exact name, then ``.suffix`` names from the longest), then wildcards (by their
  literal suffix from the longest, then by literal head, then the rest); within one key, the first in
  input order. Whether anything matches never depends on this order.

Compiled once, never scanned per flow: names and ``.suffix`` names are dict keys (a flow walks its
name's suffixes, as GOST's ``addrMatcher`` does), exact IPs are dict keys, CIDRs and ranges are
disjoint sorted intervals per family searched with ``bisect``. A wildcard is filed under the dotted
literal suffix every match ends with (``*.example.com``, ``img-??.cdn.example.com``), found by the same
walk, else under its literal head up to the first ``.`` or ``:`` (``10.1.*``, ``www.*``); only those
with neither (``*cdn*``) are tried on every flow, each behind a substring pre-check. An IP's text is
built only when some wildcard could match an IP's text at all. A glob's regex has no exponential
backtracking (see ``_GlobParser``): flow names are chosen by the apps, not by us.

Pure: no I/O, no logging, no clocks; ``compile`` returns problems as data and never raises for them.
"""

from __future__ import annotations

import heapq
import ipaddress
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv6Address

#: Longer patterns are refused: a block-list line that long is a mistake, and it bounds regex size.
MAX_PATTERN_LENGTH = 1024
#: RFC 1035: a name is at most 253 characters in text form, a label 1 to 63.
MAX_NAME_LENGTH = 253

_MAX_PORT = 0xFFFF
_IPV4_BITS = 32
_IPV6_BITS = 128
#: ``::ffff:0:0/96``: the IPv4-mapped IPv6 addresses, whose low 32 bits are the IPv4 address.
_MAPPED_PREFIX = 96
_MAPPED_HIGH = 0xFFFF
_LOW32 = 0xFFFFFFFF

_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
_PLAIN_NAME = re.compile(r"\.?(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
#: Literal characters a host glob may hold (names, and IPv4/IPv6 text: hex digits, dots, colons).
_GLOB_TEXT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_:")
_IPV4_TEXT = frozenset("0123456789.")
_IPV6_TEXT = frozenset("0123456789abcdef:")

# One compiled entry: the port range it allows and the pattern to report.
_Entry = tuple[int, int, "Pattern"]
_IpKey = tuple[int, int]  # (4 or 6, the address as an int; IPv4-mapped IPv6 is IPv4)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One pattern as written, and where (``"bypass-0 matchers[3]"``, ``"/etc/tungo/bypass.txt:12"``)."""

    text: str
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Problem:
    """A pattern that was not compiled, and why; ``str()`` is the line a log or an error shows."""

    pattern: Pattern
    reason: str

    def __str__(self) -> str:
        text = self.pattern.text
        shown = text if len(text) <= 80 else f"{text[:77]}..."
        where = f"{self.pattern.origin}: " if self.pattern.origin else ""
        return f'{where}bad pattern "{shown}": {self.reason}'


@dataclass(frozen=True, slots=True)
class Target:
    """A flow as the rules see it. ``host``: a DNS name (sniffed HTTP Host / TLS SNI, or DNS-mapped),
    any case, trailing dot allowed, None when unknown; ``ip``: the destination, None when only a name is
    known (a proxy handler given a domain); ``port``: 0-65535."""

    host: str | None
    ip: IPv4Address | IPv6Address | None
    port: int


def parse_lines(text: str, origin: str) -> list[Pattern]:
    """GOST's pattern file: one pattern a line, ``#`` starts a comment anywhere on it, whitespace
    trimmed, blank lines skipped. Each pattern's origin is ``origin:line`` (1-based)."""
    patterns: list[Pattern] = []
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.partition("#")[0].strip()
        if stripped:
            patterns.append(Pattern(stripped, f"{origin}:{number}"))
    return patterns


# --- classification -----------------------------------------------------------------------------------


class _Bad(Exception):
    """A pattern is invalid; the message is the reason (internal: ``compile`` turns it into data)."""


@dataclass(frozen=True, slots=True)
class _Name:
    key: str  # "example.com" (that name) or ".example.com" (it and its subdomains)
    ports: tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Ip:
    key: _IpKey
    ports: tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Span:
    family: int
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class _Glob:
    regex: str
    parts: tuple[str, ...] | None  # plain text between stars: matched without a regex (``_star_match``)
    literal: str  # the longest literal run every match contains ("" if none): a cheap pre-check
    suffix: str | None  # the dotted literal suffix every match ends with: its index key
    prefix: str | None  # the literal head up to its first "." or ":" every match starts with
    ip4: bool  # could match an IPv4 address's text (every literal it needs is digits and dots)
    ip6: bool  # could match an IPv6 address's text (hex digits and colons)
    ports: tuple[int, int]


_Rule = _Name | _Ip | _Span | _Glob
_NOT_A_GLOB = "[...] and {...} make a wildcard only with a * or ? (GOST reads this as a plain name)"
_ANY_PORT = (0, _MAX_PORT)


def _key_of(ip: IPv4Address | IPv6Address) -> _IpKey:
    value = int(ip)
    if isinstance(ip, IPv4Address):
        return 4, value
    return (4, value & _LOW32) if value >> 32 == _MAPPED_HIGH else (6, value)


def _ip_key(text: str) -> _IpKey | None:
    """``text`` as an IP (None when it is none); a zone (``%eth0``) is none: no flow carries one."""
    if not text or "%" in text or not (text[-1].isdigit() or ":" in text):
        return None  # cheap refusals first: parsing a name costs an exception
    try:
        return _key_of(ipaddress.ip_address(text))
    except ValueError:
        return None


def _ports(text: str) -> tuple[int, int]:
    """``80`` or ``8000-9000`` (GOST's ``PortRange``, with the bounds it does not check)."""
    low, sep, high = text.partition("-")
    if not (low.isascii() and low.isdigit()) or (sep and not (high.isascii() and high.isdigit())):
        raise _Bad(f"bad port {text!r}: a port is a number, a range is min-max")
    first, last = int(low), int(high) if sep else int(low)
    if first > _MAX_PORT or last > _MAX_PORT:
        raise _Bad(f"port {text!r} is out of range 0-65535")
    if first > last:
        raise _Bad(f"port range {text!r} ends before it starts")
    return first, last


def _name_key(host: str) -> str:
    """The index key of a name pattern: lower-case, no trailing dot, the leading dot kept."""
    lowered = host.lower()
    lead = "." if lowered.startswith(".") else ""
    body = lowered[len(lead) :]
    if body.endswith("."):
        body = body[:-1]
    if "%" in body:
        raise _Bad("an IPv6 zone (%...) never matches a flow")
    if not body:
        raise _Bad("no host name")
    if len(body) > MAX_NAME_LENGTH:
        raise _Bad(f"a host name is at most {MAX_NAME_LENGTH} characters")
    if "/" in body:
        raise _Bad("not a CIDR (a CIDR takes no port)" if body[0].isdigit() else "'/' in a host name")
    if not _NAME.fullmatch(body):
        raise _Bad("neither an IP address nor a host name (letters, digits, '-', '_', labels of 1-63)")
    if body.rpartition(".")[2].isdigit():
        raise _Bad("neither an IP address nor a host name (its last label is a number)")
    return lead + body


def _cidr(text: str) -> _Span | _Ip:
    address, _, bits_text = text.partition("/")
    key = _ip_key(address)
    if key is None:
        raise _Bad(f"bad CIDR: {address!r} is no IP address")
    family, value = key
    width = _IPV4_BITS if family == 4 else _IPV6_BITS
    if not (bits_text.isascii() and bits_text.isdigit()):
        raise _Bad(f"bad CIDR: prefix length {bits_text!r} is no number")
    bits = int(bits_text)
    if family == 4 and ":" in address:  # an IPv4-mapped network: its bits count from the IPv6 width
        bits -= _MAPPED_PREFIX
        if bits < 0:
            # Wider than the mapped block: an IPv6 network (IPv4 flows never match it, as in GOST).
            family, value, width, bits = 6, (_MAPPED_HIGH << 32) | value, _IPV6_BITS, bits + _MAPPED_PREFIX
    if bits > width:
        raise _Bad(f"bad CIDR: prefix length {bits_text} is longer than the address")
    host_bits = width - bits
    first = value >> host_bits << host_bits
    return _Span(family, first, first | ((1 << host_bits) - 1))


def _ip_range(text: str) -> _Span | _Ip | None:
    """An IP or an IP range, or None when ``text`` is no IP at all (a host name with a ``-``, say)."""
    parts = text.split("-")
    if len(parts) == 1:
        key = _ip_key(text)
        return None if key is None else _Ip(key, _ANY_PORT)
    first = _ip_key(parts[0].strip())
    if first is None:
        return None
    if len(parts) != 2:
        raise _Bad("an IP range is FIRST-LAST")
    last = _ip_key(parts[1].strip())
    if last is None:
        raise _Bad(f"bad IP range: {parts[1].strip()!r} is no IP address")
    if first[0] != last[0]:
        raise _Bad("an IP range may not mix IPv4 and IPv6")
    if last[1] < first[1]:
        raise _Bad("the IP range ends before it starts")
    return _Span(first[0], first[1], last[1])


def _address(text: str) -> _Name | _Ip:
    if "%" in text:
        raise _Bad("an IPv6 zone (%...) never matches a flow")
    host, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1 :]
        key = _ip_key(host) if end > 0 else None
        if key is None:
            raise _Bad(_NOT_A_GLOB if ":" not in host else "[...] holds an IPv6 address")
        if rest and not rest.startswith(":"):
            raise _Bad("only :port may follow [address]")
        return _Ip(key, _ports(rest[1:]) if rest else _ANY_PORT)
    if "[" in text or "{" in text:
        raise _Bad(_NOT_A_GLOB)
    if ":" in text:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise _Bad("too many colons: an IPv6 address with a port is written [address]:port")
        if not port:
            raise _Bad("empty port")
    ports = _ports(port) if port else _ANY_PORT
    key = _ip_key(host)
    if key is not None:
        return _Ip(key, ports)
    return _Name(_name_key(host), ports)


class _GlobParser:
    """gobwas/glob's syntax (lexer and parser of v0.2.3) without separators, translated to a regex.

    Stricter than gobwas: an unclosed ``{`` and characters no host has are errors. The regex matches
    what gobwas matches, without a backtracking regex's worst case: a fixed-length run between two
    stars is an atomic lazy group, ``(?>.*?run)``, so ``*a*a*a*b`` costs O(len(glob) x len(text)),
    not an explosion (the earliest place for such a run is always as good as a later one). Runs
    holding a ``{...}`` keep plain backtracking. Also collects what the index needs: the literal head
    and tail, the literal runs every match contains, where the top-level colons are (the port split),
    and, for a glob of plain text and stars, its parts (matched without a regex).
    """

    def __init__(self, source: str) -> None:
        self._source = source
        self._pos = 0
        self.colons: list[int] = []  # offsets of the top-level, unescaped ':'
        self.head = ""  # the literal text the glob starts with ("" when it starts with a wildcard)
        self.tail = ""  # the literal text the glob ends with
        self.literals: list[str] = []  # every top-level literal run (each match contains them all)
        self.parts: tuple[str, ...] | None = None  # "a*b*c" as ("a", "b", "c"): plain text and stars

    def parse(self) -> str:
        """The regex to ``fullmatch`` (with ``re.DOTALL``)."""
        return self._sequence(0)

    def _sequence(self, depth: int) -> str:
        source = self._source
        runs = [_Run()]
        while self._pos < len(source):
            char = source[self._pos]
            if depth and char in ",}":
                break
            top = not depth
            if char == "*":
                self._pos += 1
                runs.append(_Run())
                if top:
                    self.tail = ""
                continue
            run = runs[-1]
            if char == "?":
                self._pos += 1
                run.pieces.append(".")
                run.text = None
            elif char == "[":
                run.pieces.append(self._class())
                run.text = None
            elif char == "{":
                run.pieces.append(self._alternatives(depth + 1))
                run.text, run.fixed = None, False
            else:
                start = self._pos
                text = self._text(depth)
                if text:
                    run.pieces.append(re.escape(text))
                    run.text = None if run.text is None else run.text + text
                    if top:
                        self.head = text if start == 0 else self.head
                        self.literals.append(text)
                        self.tail = text
                    continue
            if top:
                self.tail = ""
        else:
            if depth:
                raise _Bad("unbalanced {")
        parts = [run.text for run in runs if run.text is not None]
        if not depth and len(runs) > 1 and len(parts) == len(runs):
            self.parts = tuple(parts)
        return _assemble(runs)

    def _text(self, depth: int) -> str:
        source, out = self._source, []
        breakers = "*?[{,}" if depth else "*?[{"
        while self._pos < len(source):
            char = source[self._pos]
            if char == "\\":
                self._pos += 1
                if self._pos == len(source):
                    break  # gobwas drops a trailing backslash
                char = source[self._pos]
            elif char in breakers:
                break
            elif char == ":" and not depth:
                self.colons.append(self._pos)
            if char not in _GLOB_TEXT:
                raise _Bad(_unexpected(char, depth))
            out.append(char)
            self._pos += 1
        return "".join(out)

    def _class(self) -> str:
        source = self._source
        self._pos += 1
        negate = self._pos < len(source) and source[self._pos] == "!"
        self._pos += negate
        if self._pos + 1 < len(source) and source[self._pos + 1] == "-":
            # gobwas: a range is exactly one "lo-hi" then "]".
            if self._pos + 3 >= len(source) or source[self._pos + 3] != "]":
                raise _Bad("unbalanced [ (a class range is [a-z]: one range, then ])")
            low, high = source[self._pos], source[self._pos + 2]
            if high < low:
                raise _Bad(f"class range [{low}-{high}] ends before it starts")
            self._pos += 4
            body = f"{re.escape(low)}-{re.escape(high)}"
        else:
            members = []
            while self._pos < len(source) and source[self._pos] != "]":
                if source[self._pos] == "\\":
                    self._pos += 1
                    if self._pos == len(source):
                        break
                members.append(source[self._pos])
                self._pos += 1
            if self._pos == len(source):
                raise _Bad("unbalanced [")
            self._pos += 1
            if not members:
                raise _Bad("empty class []")
            body = "".join(re.escape(member) for member in members)
        return f"[{'^' if negate else ''}{body}]"

    def _alternatives(self, depth: int) -> str:
        self._pos += 1
        choices = []
        while True:
            choices.append(self._sequence(depth))  # raises at the end of the text: "unbalanced {"
            closing = self._source[self._pos]
            self._pos += 1
            if closing == "}":
                return f"(?:{'|'.join(choices)})"


class _Run:
    """The part of a glob between two stars (or an end): its regex pieces, its text while it is plain
    text (None once it holds a ``?``, a class or alternatives), whether it has a fixed length."""

    __slots__ = ("fixed", "pieces", "text")

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.text: str | None = ""
        self.fixed = True


def _assemble(runs: list[_Run]) -> str:
    """``run0 * run1 * ... * runN`` as a regex; see ``_GlobParser`` for the atomic groups."""
    head, *rest = runs
    out = ["".join(head.pieces)]
    for index, run in enumerate(rest):
        body = "".join(run.pieces)
        if index == len(rest) - 1:
            out.append(f".*{body}")
        elif not body:
            continue  # "**" is "*"
        elif run.fixed:
            out.append(f"(?>.*?{body})")
        else:
            out.append(f".*{body}")
    return "".join(out)


def _unexpected(char: str, depth: int) -> str:
    if char == "]":
        return "unbalanced ]"
    if char == "}" or (char == "," and not depth):
        return f"{char!r} outside {{...}}"
    return f"{char!r} cannot appear in a host name"


def _first_separator(text: str) -> int:
    """Where the first ``.`` or ``:`` of ``text`` is (-1: neither): the end of a prefix index key."""
    dot, colon = text.find("."), text.find(":")
    return dot if colon < 0 or 0 <= dot < colon else colon


def _glob(text: str) -> _Glob:
    lowered = text.lower()  # as GOST: the whole glob, classes included
    end = lowered.find("]")
    if lowered.startswith("[") and end > 0 and ":" in lowered[1:end]:  # "[2001:db8::*]:443": IPv6
        host, rest = lowered[1:end], lowered[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _Bad("only :port may follow [address]")
        ports = _ports(rest[1:]) if rest else _ANY_PORT
    else:
        whole = _GlobParser(lowered)
        whole.parse()
        host, ports = lowered, _ANY_PORT
        if len(whole.colons) == 1:  # several: an IPv6 glob, no port (GOST's SplitHostPort fails too)
            colon = whole.colons[0]
            host, ports = lowered[:colon], _ports(lowered[colon + 1 :])
    if not host:
        raise _Bad("no host")
    parser = _GlobParser(host)
    regex = parser.parse()
    dot, cut = parser.tail.find("."), _first_separator(parser.head)
    needed = set("".join(parser.literals))
    return _Glob(
        regex=regex,
        parts=parser.parts,
        literal=max(parser.literals, key=len, default=""),
        suffix=parser.tail[dot:] if dot >= 0 else None,
        prefix=parser.head[: cut + 1] if cut >= 0 else None,
        ip4=needed <= _IPV4_TEXT,
        ip6=needed <= _IPV6_TEXT,
        ports=ports,
    )


def _classify(raw: str) -> _Rule:
    text = raw.strip()
    if not text:
        raise _Bad("empty pattern")
    if len(text) > MAX_PATTERN_LENGTH:
        raise _Bad(f"longer than {MAX_PATTERN_LENGTH} characters")
    lowered = text.lower()  # the bulk of a block list is plain names and .suffix names: one regex
    if (
        _PLAIN_NAME.fullmatch(lowered)
        and not lowered.rpartition(".")[2].isdigit()  # an IP, or a name that is none
        and len(lowered) - lowered.startswith(".") <= MAX_NAME_LENGTH
        and ("-" not in lowered or _ip_key(lowered.partition("-")[0]) is None)  # an IP range
    ):
        return _Name(lowered, _ANY_PORT)
    if "*" in text or "?" in text:
        return _glob(text)
    if "/" in text and ":" not in text.partition("/")[2]:
        return _cidr(text)
    found = _ip_range(text)
    if found is not None:
        return found
    return _address(text)


# --- the index ----------------------------------------------------------------------------------------


class _Spans:
    """Disjoint sorted intervals of one family, each with the narrowest pattern covering it."""

    __slots__ = ("_ends", "_patterns", "_starts")

    def __init__(self, intervals: list[tuple[int, int, int, Pattern]]) -> None:
        """``intervals``: ``(first, last, order, pattern)``, overlapping as they please."""
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._patterns: list[Pattern] = []
        intervals.sort(key=lambda interval: interval[0])
        points = sorted({first for first, _, _, _ in intervals} | {last + 1 for _, last, _, _ in intervals})
        active: list[tuple[int, int, int, Pattern]] = []  # heap of (size, order, last, pattern)
        taken = 0
        for index, point in enumerate(points):
            while taken < len(intervals) and intervals[taken][0] == point:
                first, last, order, pattern = intervals[taken]
                heapq.heappush(active, (last - first, order, last, pattern))
                taken += 1
            while active and active[0][2] < point:
                heapq.heappop(active)
            if not active:
                continue
            end, pattern = points[index + 1] - 1, active[0][3]
            if self._patterns and self._patterns[-1] is pattern and self._ends[-1] == point - 1:
                self._ends[-1] = end
            else:
                self._starts.append(point)
                self._ends.append(end)
                self._patterns.append(pattern)

    def find(self, value: int) -> Pattern | None:
        index = bisect_right(self._starts, value) - 1
        if index >= 0 and value <= self._ends[index]:
            return self._patterns[index]
        return None


def _star_match(parts: tuple[str, ...], text: str) -> bool:
    """``text`` matches ``parts[0]*parts[1]*...*parts[-1]``: each middle part at its earliest place."""
    head, *middle, tail = parts
    end = len(text) - len(tail)
    if end < len(head) or not text.startswith(head) or not text.endswith(tail):
        return False
    position = len(head)
    for part in middle:
        position = text.find(part, position, end)
        if position < 0:
            return False
        position += len(part)
    return True


# One compiled wildcard: its pre-check literal, its test, its port range, the pattern to report.
_GlobEntry = tuple[str, Callable[[str], object], int, int, Pattern]


def _glob_entry(glob: _Glob, pattern: Pattern) -> _GlobEntry:
    # Most list wildcards are "*.example.com": an endswith(), no regex to compile (costly by the 100,000).
    test = (
        partial(_star_match, glob.parts)
        if glob.parts is not None
        else re.compile(glob.regex, re.DOTALL).fullmatch
    )
    return glob.literal, test, *glob.ports, pattern


class _Globs:
    """Wildcards sharing one index key, tried in input order, each behind a substring pre-check; when
    every one of several has a literal, one regex search for any of them screens the text first."""

    __slots__ = ("_entries", "_screen")

    def __init__(self, entries: list[_GlobEntry]) -> None:
        self._entries = tuple(entries)
        literals = sorted({entry[0] for entry in entries}, key=len, reverse=True)
        screened = len(entries) > 1 and all(literals)
        self._screen = re.compile("|".join(map(re.escape, literals))).search if screened else None

    def find(self, text: str, port: int) -> Pattern | None:
        if self._screen is not None and self._screen(text) is None:
            return None
        for literal, test, low, high, pattern in self._entries:
            if literal in text and low <= port <= high and test(text):
                return pattern
        return None


class _GlobIndex:
    """Wildcards filed by the dotted literal suffix every match ends with (found by walking the text's
    suffixes), else by the literal head up to its first ``.``/``:`` (one lookup), else tried always."""

    __slots__ = ("_prefixes", "_residual", "suffixes")

    def __init__(self, globs: list[tuple[_Glob, _GlobEntry]]) -> None:
        suffixes: dict[str, list[_GlobEntry]] = {}
        prefixes: dict[str, list[_GlobEntry]] = {}
        residual: list[_GlobEntry] = []
        for glob, entry in globs:
            if glob.suffix is not None:
                suffixes.setdefault(glob.suffix, []).append(entry)
            elif glob.prefix is not None:
                prefixes.setdefault(glob.prefix, []).append(entry)
            else:
                residual.append(entry)
        self.suffixes = {key: _Globs(members) for key, members in suffixes.items()}
        self._prefixes = {key: _Globs(members) for key, members in prefixes.items()}
        self._residual = _Globs(residual) if residual else None

    def find(self, text: str, port: int) -> Pattern | None:
        suffixes = self.suffixes
        hits: list[_Globs] = []
        dot = text.find(".") if suffixes else -1
        while dot >= 0:
            group = suffixes.get(text[dot:])
            if group is not None:
                hits.append(group)
            dot = text.find(".", dot + 1)
        return self.find_walked(text, port, hits, _first_separator(text))

    def find_walked(self, text: str, port: int, hits: list[_Globs], cut: int) -> Pattern | None:
        """``find`` once the caller has walked ``text``'s suffixes through ``suffixes`` (``hits``) and
        found its first separator (``cut``, see ``_first_separator``)."""
        for group in hits:
            found = group.find(text, port)
            if found is not None:
                return found
        if self._prefixes:
            prefixed = self._prefixes.get(text[: cut + 1]) if cut >= 0 else None
            if prefixed is not None:
                found = prefixed.find(text, port)
                if found is not None:
                    return found
        return None if self._residual is None else self._residual.find(text, port)


_NO_GLOBS: dict[str, _Globs] = {}


def _pick(entries: tuple[_Entry, ...], port: int) -> Pattern | None:
    for low, high, pattern in entries:
        if low <= port <= high:
            return pattern
    return None


def _ip_text(key: _IpKey) -> str:
    """The address as GOST's flows spell it: ``str()`` of it (RFC 5952, as Go), without the objects."""
    family, value = key
    if family == 4:
        return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"
    words = [value >> shift & 0xFFFF for shift in range(112, -16, -16)]
    best, best_length, start = -1, 1, -1  # the longest run of zero words (2+), the leftmost on a tie
    for index, word in enumerate(words):
        if word:
            start = -1
            continue
        start = index if start < 0 else start
        if index - start + 1 > best_length:
            best, best_length = start, index - start + 1
    if best < 0:
        return ":".join(f"{word:x}" for word in words)
    left = ":".join(f"{word:x}" for word in words[:best])
    right = ":".join(f"{word:x}" for word in words[best + best_length :])
    return f"{left}::{right}"


class MatcherSet:
    """Compiled patterns (``compile``); ``match`` is the per-flow lookup. Immutable once built."""

    __slots__ = ("_count", "_globs", "_globs4", "_globs6", "_ips4", "_ips6", "_names", "_spans4", "_spans6")

    def __init__(
        self,
        *,
        count: int,
        names: dict[str, tuple[_Entry, ...]],
        ips: tuple[dict[int, tuple[_Entry, ...]], dict[int, tuple[_Entry, ...]]],
        spans: tuple[_Spans, _Spans],
        globs: list[tuple[_Glob, Pattern]],
    ) -> None:
        """Internal: use ``compile``."""
        self._count = count
        self._names = names
        self._ips4, self._ips6 = ips
        self._spans4, self._spans6 = spans
        # Names see every wildcard; an IP's text only those it could match (no text built otherwise).
        entries = [(glob, _glob_entry(glob, pattern)) for glob, pattern in globs]
        self._globs = _GlobIndex(entries) if entries else None
        ip4 = [(glob, entry) for glob, entry in entries if glob.ip4]
        ip6 = [(glob, entry) for glob, entry in entries if glob.ip6]
        self._globs4 = _GlobIndex(ip4) if ip4 else None
        self._globs6 = _GlobIndex(ip6) if ip6 else None

    @classmethod
    def compile(cls, patterns: Iterable[Pattern]) -> tuple[MatcherSet, list[Problem]]:
        """Index every valid pattern; the invalid ones come back as problems (never raised)."""
        problems: list[Problem] = []
        names: dict[str, tuple[_Entry, ...]] = {}
        ips: tuple[dict[int, tuple[_Entry, ...]], dict[int, tuple[_Entry, ...]]] = ({}, {})
        intervals: tuple[list[tuple[int, int, int, Pattern]], ...] = ([], [])
        globs: list[tuple[_Glob, Pattern]] = []
        count = 0
        for pattern in patterns:
            try:
                rule = _classify(pattern.text)
            except _Bad as exc:
                problems.append(Problem(pattern, str(exc)))
                continue
            count += 1
            if isinstance(rule, _Name):
                names[rule.key] = (*names.get(rule.key, ()), (*rule.ports, pattern))
            elif isinstance(rule, _Ip):
                family, value = rule.key
                found = ips[family == 6]
                found[value] = (*found.get(value, ()), (*rule.ports, pattern))
            elif isinstance(rule, _Span):
                intervals[rule.family == 6].append((rule.first, rule.last, count, pattern))
            else:
                globs.append((rule, pattern))
        matchers = cls(
            count=count,
            names=names,
            ips=ips,
            spans=(_Spans(intervals[0]), _Spans(intervals[1])),
            globs=globs,
        )
        return matchers, problems

    def __len__(self) -> int:
        return self._count

    def match(self, target: Target) -> Pattern | None:
        """The pattern ``target`` matches (the most specific; see the module docstring), or None."""
        port = target.port
        first = None if target.ip is None else _key_of(target.ip)
        second: _IpKey | None = None
        name = target.host
        if name:
            name = name.lower()
            if name[-1] == ".":
                name = name[:-1]
            if name and (name[-1].isdigit() or ":" in name):
                key = _ip_key(name[1:-1] if name[0] == "[" and name[-1] == "]" else name)
                if key is not None:
                    name = None
                    second = None if key == first else key
        for key in (first, second):
            if key is not None:
                found = self._match_ip(key, port)
                if found is not None:
                    return found
        if name:
            return self._match_name(name, port)
        for key in (first, second):
            if key is not None:
                globs = self._globs4 if key[0] == 4 else self._globs6
                found = None if globs is None else globs.find(_ip_text(key), port)
                if found is not None:
                    return found
        return None

    def _match_ip(self, key: _IpKey, port: int) -> Pattern | None:
        family, value = key
        entries = (self._ips4 if family == 4 else self._ips6).get(value)
        if entries is not None:
            found = _pick(entries, port)
            if found is not None:
                return found
        return (self._spans4 if family == 4 else self._spans6).find(value)

    def _match_name(self, name: str, port: int) -> Pattern | None:
        # GOST's addrMatcher walk: the name, ".name", then each ".suffix" from the longest; the same
        # walk collects the wildcard groups filed under those suffixes, tried once no name matched.
        names, globs = self._names, self._globs
        for key in (name, "." + name):
            entries = names.get(key)
            if entries is not None:
                found = _pick(entries, port)
                if found is not None:
                    return found
        suffixes = _NO_GLOBS if globs is None else globs.suffixes
        hits: list[_Globs] = []
        dot = name.find(".")
        cut = dot if ":" not in name else _first_separator(name)
        while dot >= 0:
            suffix = name[dot:]
            entries = names.get(suffix)
            if entries is not None:
                found = _pick(entries, port)
                if found is not None:
                    return found
            if suffixes:
                group = suffixes.get(suffix)
                if group is not None:
                    hits.append(group)
            dot = name.find(".", dot + 1)
        return None if globs is None else globs.find_walked(name, port, hits, cut)
