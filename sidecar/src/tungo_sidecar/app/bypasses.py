"""The bypasses of a config, compiled once at start-up, and the route policy of each service.

Owns the only I/O the split-tunnel rules need: reading GOST's matcher files (``bypasses[].file.path``,
one pattern a line, ``#`` comments; a relative path is relative to the working directory, as in GOST).
Everything else is ``rules`` (compile) and ``chain.route`` (decide), both pure.

Strictness, so a config never routes less than it says: a bad inline matcher is a ``ConfigError`` (exit
2, nothing starts); a bad line in a file is one warning naming the file and line, and the file's other
lines still load (a list fetched from elsewhere may carry a stray line); a missing or oversized file
is a ``ConfigError`` (GOST only warns, and then a whitelist would send everything direct).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from tungo_sidecar.chain.route import Policy
from tungo_sidecar.config.model import BypassConfig, Config, Service
from tungo_sidecar.config.validate import HANDLERS, quote
from tungo_sidecar.errors import ConfigError
from tungo_sidecar.rules.bypass import Bypass, compile_bypass
from tungo_sidecar.rules.matchers import Pattern, parse_lines

log = logging.getLogger(__name__)

#: The largest matcher file read (a 1M-line block list is ~30 MB); beyond it the start fails.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Bad file lines reported one by one; the rest are counted in one summary line.
MAX_REPORTED = 20


def _read_file(bypass: BypassConfig) -> list[Pattern]:
    assert bypass.file is not None
    where = f"bypass {quote(bypass.name)}: file {quote(bypass.file)}"
    try:
        with open(bypass.file, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    return parse_lines(data.decode("utf-8", errors="replace"), bypass.file)


def compile_one(bypass: BypassConfig) -> Bypass:
    """One bypass, its inline matchers and its file; see the module docstring for what fails how."""
    inline = [Pattern(text, f"matchers[{i}]") for i, text in enumerate(bypass.matchers)]
    from_file = _read_file(bypass) if bypass.file is not None else []
    compiled, problems = compile_bypass(bypass.name, [*inline, *from_file], reverse=bypass.reverse)
    in_file = [p for p in problems if p.pattern not in inline]
    if len(in_file) != len(problems):
        first = next(p for p in problems if p.pattern in inline)
        raise ConfigError(f"bypass {quote(bypass.name)}: {first}")
    for problem in in_file[:MAX_REPORTED]:
        log.warning("bypass %s: %s (line skipped)", bypass.name, problem)
    if len(in_file) > MAX_REPORTED:
        log.warning("bypass %s: %d more bad lines skipped", bypass.name, len(in_file) - MAX_REPORTED)
    log.info(
        "bypass %s: %d pattern(s)%s%s",
        bypass.name,
        len(compiled.matchers),
        f" ({len(from_file) - len(in_file)} from {bypass.file})" if bypass.file else "",
        ", whitelist" if bypass.reverse else "",
    )
    return compiled


def compile_all(config: Config) -> dict[str, Bypass]:
    """Every bypass a service, hop or node uses, by name (unused ones are not compiled or read)."""
    used = {name for service in config.services for name in service.bypasses}
    for chain in config.chains:
        for hop in chain.hops:
            used.update(hop.bypasses)
            used.update(name for node in hop.nodes for name in node.bypasses)
    return {b.name: compile_one(b) for b in config.bypasses if b.name in used}


def policy_for(service: Service, config: Config, compiled: Mapping[str, Bypass]) -> Policy:
    """The route policy of one service: its own bypass (refuses), its chain's hop and node bypasses;
    a TUN service also sends this link's own addresses direct."""
    return Policy(
        config.chain(service.chain),
        service_bypasses=service.bypasses,
        bypasses=compiled,
        this_link_direct=HANDLERS[service.handler.type].tun,
    )
