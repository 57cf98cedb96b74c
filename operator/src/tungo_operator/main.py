"""Entry point of ``tungo-operator``: runs the kopf controller for TunGateways and Chains.

``main`` parses the command line and calls ``kopf.run`` through ``operate``, which the kmock tests also
use, so what runs in a cluster is what the tests run. The controller runs as one replica (kopf
``standalone``: no peering objects needed); the injection webhook is a separate program
(``tungo-webhook``). Never holds reconcile logic itself: that lives in ``handlers``.

Cluster exclusions: ``--service-cidr``/``--pod-cidr``/``--dns-service`` tell the controller what it
cannot always discover (``model.exclusions``); ``--no-cluster-discovery`` stops it from watching Nodes,
ServiceCIDRs and Services at all (for RBAC without them: kopf waits for every index it was asked to
fill, so a forbidden watch would hold back every handler).
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
from tungo_operator.model import exclusions, fields
from tungo_operator.model.errors import SpecError

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def _cidr(text: str) -> str:
    try:
        return fields.cidr(text, "CIDR")
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("CIDR: ")) from None


def _service_ref(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not fields.DNS_LABEL.match(namespace) or not fields.DNS_LABEL.match(name):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME (e.g. kube-system/kube-dns)")
    return namespace, name


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
    dns_default = "/".join(exclusions.DEFAULT_DNS_SERVICE)
    cluster = parser.add_argument_group(
        "cluster exclusions",
        "The cluster's own ranges are kept off every tunnel (TunGateway spec.clusterExclusions): service "
        "CIDRs from ServiceCIDR objects, pod CIDRs from Nodes, the DNS Service, link-local.",
    )
    cluster.add_argument(
        "--service-cidr",
        action="append",
        default=[],
        type=_cidr,
        metavar="CIDR",
        help="the cluster's service range, used when the API has no ServiceCIDR objects (before "
        "Kubernetes 1.33); repeatable",
    )
    cluster.add_argument(
        "--pod-cidr",
        action="append",
        default=[],
        type=_cidr,
        metavar="CIDR",
        help="the cluster's pod range, used when no Node has spec.podCIDRs (CNIs with their own IPAM); "
        "repeatable",
    )
    cluster.add_argument(
        "--dns-service",
        default=exclusions.DEFAULT_DNS_SERVICE,
        type=_service_ref,
        metavar="NS/NAME",
        help=f"the cluster DNS Service whose ClusterIP is excluded (default {dns_default})",
    )
    cluster.add_argument(
        "--cluster-domain",
        default=exclusions.DEFAULT_CLUSTER_DOMAIN,
        help="the cluster's DNS domain (kubelet --cluster-domain): names under it stay with the "
        f"cluster DNS in split-DNS pods (default {exclusions.DEFAULT_CLUSTER_DOMAIN})",
    )
    cluster.add_argument(
        "--no-cluster-discovery",
        dest="cluster_discovery",
        action="store_false",
        help="do not watch Nodes, ServiceCIDRs and Services: only link-local and the CIDRs above are "
        "excluded",
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
    discovery: exclusions.DiscoveryConfig | None = None,
) -> None:
    """Run the controller until ``stop_flag`` is set (or forever): the whole operator in this loop."""
    clusterwide = not namespaces
    registry = kopf.OperatorRegistry()
    Controller(login=login, clusterwide=clusterwide, discovery=discovery).register(registry)
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


def discovery_config(args: argparse.Namespace) -> exclusions.DiscoveryConfig:
    """The cluster-exclusion options of a parsed command line (duplicates dropped, order kept)."""
    return exclusions.DiscoveryConfig(
        enabled=args.cluster_discovery,
        service_cidrs=tuple(dict.fromkeys(args.service_cidr)),
        pod_cidrs=tuple(dict.fromkeys(args.pod_cidr)),
        dns_service=args.dns_service,
        cluster_domain=args.cluster_domain.strip().rstrip(".") or exclusions.DEFAULT_CLUSTER_DOMAIN,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    kopf.configure(verbose=args.verbose, debug=args.debug)
    liveness = None if args.liveness == "off" else args.liveness
    try:
        asyncio.run(operate(namespaces=args.namespace, liveness=liveness, discovery=discovery_config(args)))
    except KeyboardInterrupt:
        return 130
    logging.getLogger(__name__).info("tungo-operator stopped")
    return 0
