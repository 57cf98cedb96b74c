"""One GOST bypass (go-gost/x ``bypass.localBypass``): compiled patterns and the black/whitelist verdict.

``compile_bypass`` builds a ``Bypass`` from patterns (inline matchers and file lines, with their
origins) and returns the invalid ones as problems; ``Bypass.check`` is GOST's ``Contains``/``decide``
for one flow. What a "bypass" verdict does depends on where the bypass is used (a service refuses the
flow, a hop ends the route, a node leaves its hop): that is ``chain.route``'s business, not this one's.

GOST's decision, kept as is:

* no patterns at all: **proxy**, never bypass, even in whitelist mode (GOST keeps no pattern set and
  ``decide`` answers "proxy");
* blacklist (the default): a match bypasses;
* whitelist (``reverse``, GOST's ``whitelist``): a match goes through the proxy, the rest bypasses.

One difference: GOST counts the patterns it *loaded*, tungo the patterns that *compiled*. A whitelist
whose every line is invalid is empty here (the problems were reported) and sends nothing direct, where
GOST would compile the lines into addresses that never match and bypass every flow.

Immutable: a reload compiles a new ``Bypass`` and swaps it whole. Pure: no I/O, no logging.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tungo_sidecar.rules.matchers import MatcherSet, Pattern, Problem, Target


@dataclass(frozen=True, slots=True)
class Verdict:
    """One bypass's answer for one flow. ``bypass`` is GOST's "bypass" decision; ``pattern`` is what
    matched (None when nothing did: then a whitelist bypasses); ``rule`` names the bypass, for logs."""

    bypass: bool
    pattern: Pattern | None
    rule: str


@dataclass(frozen=True, slots=True)
class Bypass:
    """A compiled bypass (``compile_bypass``); ``check`` decides one flow."""

    name: str
    reverse: bool
    matchers: MatcherSet

    def check(self, target: Target) -> Verdict:
        """GOST's ``decide``: the empty-set rule, then a match bypasses, or (``reverse``) proxies."""
        if not len(self.matchers):
            return Verdict(bypass=False, pattern=None, rule=self.name)
        pattern = self.matchers.match(target)
        return Verdict(bypass=(pattern is not None) != self.reverse, pattern=pattern, rule=self.name)


def compile_bypass(name: str, patterns: Iterable[Pattern], *, reverse: bool) -> tuple[Bypass, list[Problem]]:
    """Compile ``patterns`` into the bypass ``name``; the invalid ones are returned, the rest compiled."""
    matchers, problems = MatcherSet.compile(patterns)
    return Bypass(name, reverse, matchers), problems
