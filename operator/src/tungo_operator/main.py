"""Entry point of ``tungo-operator``: runs the kopf controller for TunGateways and Chains.

``main`` parses the command line and calls ``kopf.run`` through ``operate``, which the kmock tests also
use, so what runs in a cluster is what the tests run. The controller runs as one replica (kopf
``standalone``: no peering objects needed); the injection webhook is a separate program
(``tungo-webhook``). Never holds reconcile logic itself: that lives in ``handlers``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
from collections.abc import Sequence

import kopf

from tungo_operator import __version__
from tungo_operator.handlers.controller import Controller, LoginFn, default_login, make_settings

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tungo-operator",
        description=(
            "Render TunGateway + Chain (+ Secrets) into the tungo sidecar's GOST config Secrets "
            "(tungo-<gateway>, key config.yaml) and keep their status up to date."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable; globs allowed). spec.namespaceSelector needs -A.",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch the whole cluster (the default without -n)"
    )
    parser.add_argument(
        "--liveness",
        default=DEFAULT_LIVENESS,
        metavar="URL",
        help=f"serve kopf's liveness probe here (default {DEFAULT_LIVENESS}; 'off' to disable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log handler activity")
    parser.add_argument("--debug", action="store_true", help="log everything, including API calls")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


async def operate(
    *,
    namespaces: Sequence[str] = (),
    liveness: str | None = None,
    login: LoginFn = default_login,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    settings: kopf.OperatorSettings | None = None,
) -> None:
    """Run the controller until ``stop_flag`` is set (or forever): the whole operator in this loop."""
    clusterwide = not namespaces
    registry = kopf.OperatorRegistry()
    Controller(login=login, clusterwide=clusterwide).register(registry)
    await kopf.operator(
        registry=registry,
        settings=settings or make_settings(),
        clusterwide=clusterwide,
        namespaces=list(namespaces),
        standalone=True,
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    kopf.configure(verbose=args.verbose, debug=args.debug)
    liveness = None if args.liveness == "off" else args.liveness
    try:
        asyncio.run(operate(namespaces=args.namespace, liveness=liveness))
    except KeyboardInterrupt:
        return 130
    logging.getLogger(__name__).info("tungo-operator stopped")
    return 0
