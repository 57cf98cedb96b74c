"""Several bypasses on one service, hop or node: GOST's ``BypassGroup`` (go-gost/x ``bypass/bypass.go``).

A group bypasses a flow when *every* whitelist in it does (AND: each whitelist lists what must keep
the chain, so a flow leaves only when no whitelist keeps it) or, failing that, when *any* blacklist
does (OR). One bypass alone behaves exactly as it would outside a group. Pure, like the rest of
``rules``: ``chain.route`` calls it for each scope of each new flow.
"""

from __future__ import annotations

from collections.abc import Sequence

from tungo_sidecar.rules.bypass import Bypass, Verdict
from tungo_sidecar.rules.matchers import Target


def check_group(group: Sequence[Bypass], target: Target) -> Verdict | None:
    """The verdict that makes ``group`` bypass ``target`` (for the log line), or None when it does not
    (an empty group never does)."""
    whitelists = [bypass for bypass in group if bypass.reverse]
    if whitelists:
        verdicts = []
        for bypass in whitelists:
            verdict = bypass.check(target)
            if not verdict.bypass:
                break
            verdicts.append(verdict)
        else:
            return verdicts[0]
    for bypass in group:
        if not bypass.reverse:
            verdict = bypass.check(target)
            if verdict.bypass:
                return verdict
    return None
