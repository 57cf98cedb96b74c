"""The ``tungo`` command: GOST's command line (``-L -F -C -D -O -V``) plus ``--health``.

Owns argument parsing, logging set-up, and turning arguments into one validated ``Config`` (``-C``
files first, then the ``-L``/``-F`` URLs, appended as GOST merges them). ``-O`` prints that config the
way ``gost -O`` does and exits; otherwise the config goes to ``tungo_sidecar.app.runner.run``, imported
only then, so printing and checking a command line never needs the data plane.

Exit codes: 0 done, 2 bad command line or config (one ``tungo: error: ...`` line on stderr, nothing
started), 1 the runner failed, 130 interrupted. Never starts anything before the config is valid.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import platform
import resource
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

from tungo_sidecar import __version__
from tungo_sidecar.config import bounded, tun, url, yaml_io
from tungo_sidecar.config.model import Config
from tungo_sidecar.config.validate import check_host, parse_port, quote, split_host_port, validate
from tungo_sidecar.errors import ConfigError, TungoError
from tungo_sidecar.net import alloc
from tungo_sidecar.proto.address import Address

log = logging.getLogger("tungo")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # argparse's code for a bad command line; GOST-style config errors use it too
EXIT_INTERRUPTED = 130
RUNNER_MODULE = "tungo_sidecar.app.runner"

_EXAMPLES = """\
URLs: scheme://[user:pass@][host]:port[/path]?key=value&...
  -L scheme: handler+listener   handlers: relay, socks5 (socks), http, tungo
                                listeners: tcp, tls, ws, wss, tungo
  -F scheme: connector+dialer   connectors: relay, socks5 (socks), http
                                dialers: tcp, tls, ws, wss
  A single name is GOST's shorthand: socks5:// = socks5+tcp, https:// = http+tls,
  wss://host:443 as -F = http+wss. Query keys become metadata (as in GOST), except
  auth (base64 user:pass), certFile/keyFile/caFile, secure, serverName, bypass (~ = whitelist),
  interface, so_mark, strategy/maxFails/failTimeout.

examples:
  # tun2socks: capture traffic with a TUN device, send it through a relay over wss
  tungo -L "tungo://:0?name=tungo&net=192.168.123.1/24&mtu=1420&dns=1.1.1.1" \\
        -F "relay+wss://user:pass@relay.example.com:443?interface=eth0"
  # split tunnel: sniff HTTP Host / TLS SNI; example.com leaves directly, the rest via the relay
  tungo -L "tungo://:0?name=tungo&net=192.168.123.1/24&mtu=1420&interface=eth0&sniffing=true" \\
        -F "relay+wss://relay.example.com:443?interface=eth0&bypass=example.com"
  #   bypass on -F (a hop): a match goes around the chain (first hop: direct); on -L: a match is refused.
  #   matchers: example.com, .example.com (+ subdomains), *.example.com, host:443, host:8000-9000,
  #   10.0.0.0/8, 10.0.0.1-10.0.0.9, 2001:db8::1; "~" first = whitelist (only those keep the chain).
  #   sniffing.udp=true learns names from DNS answers; sniffing.timeout=300ms; sniffing.fallback=true
  # the server end of that tunnel
  tungo -L "relay+wss://user:pass@:443?certFile=cert.pem&keyFile=key.pem"
  # a local SOCKS5 proxy through two hops
  tungo -L socks5://:1080 -F relay+tls://hop1.example:443 -F socks5://hop2.example:1080
  # print the GOST YAML equivalent of a command line, then run from it
  tungo -L socks5://:1080 -F relay+wss://relay.example:443 -O yaml > tungo.yaml
  tungo -C tungo.yaml --health :9190
"""


@dataclass(frozen=True, slots=True)
class Invocation:
    """A parsed command line: what to run (or print) and how."""

    config: Config
    debug: bool = False
    output: str | None = None  # "yaml" / "json": print the config and exit
    health: Address | None = None  # serve /healthz and /readyz here (host "" = all addresses)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tungo",
        description="tun2socks and proxy services speaking GOST v3's protocols, with GOST's command line.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-L", dest="services", action="append", default=[], metavar="URL", help="a service (repeatable)"
    )
    parser.add_argument(
        "-F",
        dest="nodes",
        action="append",
        default=[],
        metavar="URL",
        help="a chain hop, in order (repeatable); all -L services use the chain",
    )
    parser.add_argument(
        "-C",
        dest="configs",
        action="append",
        default=[],
        metavar="FILE",
        help="a GOST YAML/JSON config file, '-' for stdin, or inline JSON '{...}' (repeatable)",
    )
    parser.add_argument("-D", dest="debug", action="count", default=0, help="debug logging")
    parser.add_argument(
        "-O", dest="output", choices=("yaml", "json"), help="print the config as GOST would and exit"
    )
    parser.add_argument("-V", dest="version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--health",
        metavar="ADDR",
        help="serve /healthz and /readyz on ADDR ([host]:port, e.g. :9190)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="CIDRS",
        help="tungo's own: CIDRs added to every TUN service's exclude (comma list, repeatable; the "
        "injected sidecar gets a pod's tungo.dev/excludeOutboundIPRanges here)",
    )
    parser.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="CIDRS",
        help="tungo's own: CIDRs that replace every TUN service's routes (comma list, repeatable; "
        "from a pod's tungo.dev/includeOutboundIPRanges)",
    )
    parser.add_argument(
        "--exclude-ports",
        action="append",
        default=[],
        metavar="PORTS",
        help="tungo's own: destination ports or ranges (5432,8000-8100) whose TCP and UDP traffic stays "
        "off every TUN service (repeatable; from a pod's tungo.dev/excludeOutboundPorts)",
    )
    return parser


def _gost_style(argv: Sequence[str]) -> list[str]:
    """GOST's Go ``flag`` package also takes ``-L=url``; argparse would keep the ``=``."""
    out: list[str] = []
    for arg in argv:
        if len(arg) > 3 and arg[0] == "-" and arg[1] in "LFCO" and arg[2] == "=":
            out += [arg[:2], arg[3:]]
        else:
            out.append(arg)
    return out


def parse_health(text: str) -> Address:
    """``--health`` value: ``:9190``, ``127.0.0.1:9190`` or ``[::1]:9190``."""
    try:
        host, port_text = split_host_port(text)
        if host:
            check_host(host)
        return Address(host, parse_port(port_text, text))
    except ConfigError as exc:
        raise ConfigError(f"--health {quote(text)}: {exc}") from None


def _read_config(source: str, stdin: TextIO) -> Config:
    if source == "-":
        # Bounded like a file: one character past the limit is enough to refuse it.
        return yaml_io.load(stdin.read(bounded.MAX_BYTES + 1), check=False)
    stripped = source.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        return yaml_io.load(stripped, check=False)
    if source.startswith(("http://", "https://")):
        raise ConfigError(f"-C {quote(source)}: config URLs are not supported; give a file")
    return yaml_io.load(Path(source), check=False)


def _split(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def build(args: argparse.Namespace, stdin: TextIO | None = None) -> Invocation:
    """The validated ``Invocation`` for parsed arguments; ConfigError on the first problem."""
    parts = [_read_config(source, stdin or sys.stdin) for source in args.configs]
    parts.append(url.build_config(args.services, args.nodes, check=False))
    config = tun.with_pod_overrides(
        validate(yaml_io.merge(*parts)),
        exclude=_split(args.exclude),
        routes=_split(args.route),
        exclude_ports=_split(args.exclude_ports),
    )
    health = parse_health(args.health) if args.health is not None else None
    if args.output is None and not config.services:
        raise ConfigError("nothing to run: give a service with -L, or a config with -C (see --help)")
    return Invocation(config=config, debug=args.debug > 0, output=args.output, health=health)


def parse(argv: Sequence[str], stdin: TextIO | None = None) -> Invocation | None:
    """The ``Invocation`` of a command line, None for ``-V``. ConfigError / SystemExit(2) on errors."""
    args = _parser().parse_args(_gost_style(argv))
    return None if args.version else build(args, stdin)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _error(message: str) -> None:
    # One line, always: a multi-line message would be cut by log collectors and hard to grep.
    print(f"tungo: error: {' '.join(message.split())}", file=sys.stderr)


def version_line() -> str:
    return f"tungo {__version__} (Python {platform.python_version()} {sys.platform}/{platform.machine()})"


def main(argv: Sequence[str] | None = None) -> int:
    """The ``tungo`` console script. Returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    _setup_logging("-D" in argv or "-DD" in argv)  # before parsing: -C loading may warn
    try:
        invocation = parse(argv)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    if invocation is None:
        print(version_line())
        return EXIT_OK
    if invocation.output is not None:
        sys.stdout.write(yaml_io.dump(invocation.config, invocation.output))
        return EXIT_OK
    return _run(invocation)


def _load_runner() -> Callable[..., Awaitable[object]]:
    """``tungo_sidecar.app.runner.run``, imported only to run (printing a config must not need it)."""
    module = importlib.import_module(RUNNER_MODULE)
    run = getattr(module, "run", None)
    if not callable(run):
        raise ImportError(f"{RUNNER_MODULE} has no run()")
    return cast("Callable[..., Awaitable[object]]", run)


def raise_nofile_limit() -> int:
    """Raise the soft open-file limit to the hard one, as Go does at start for GOST; the new soft limit.

    Container runtimes commonly give 1024 soft / 1048576 hard: a proxy at 1024 descriptors serves
    ~500 sessions. Listeners derive their default ``maxConns`` from the result.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.debug("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return soft
        log.debug("open-file limit raised from %d to %d", soft, hard)
        return hard
    return soft


def _run(invocation: Invocation) -> int:
    try:
        run = _load_runner()
    except ImportError as exc:
        _error(f"the service runner ({RUNNER_MODULE}) is not available: {exc}")
        return EXIT_FAILED
    config = invocation.config
    log.debug("config: %d service(s), %d chain(s)", len(config.services), len(config.chains))
    # Before the first big buffer: glibc's dynamic mmap threshold otherwise maps and unmaps every
    # 256 KiB read buffer (asyncio's TLS buffer per connection, splice chunks), page-faulting each.
    alloc.tune_malloc()
    # Everything is imported now: keep the start-up heap out of the collections that listeners run
    # to give memory back after a burst (see ``alloc.release``).
    alloc.freeze_startup()
    raise_nofile_limit()
    try:
        result = asyncio.run(_await(run(config, health=invocation.health)))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except TungoError as exc:
        _error(str(exc))
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK


async def _await(awaitable: Awaitable[object]) -> object:
    return await awaitable


if __name__ == "__main__":
    sys.exit(main())
