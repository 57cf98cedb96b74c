"""``tungo-webhook``: serve the injection webhook over HTTPS, or make its certificates.

Owns the process: argument and environment parsing, kopf settings (standalone, no event posting, no
managed webhook configuration, no CRD scanning: the chart renders the MutatingWebhookConfiguration
and grants read-only RBAC), and the kopf loop that fills the indexes and serves ``on.mutate``. It runs
the handlers of ``webhook.handlers.make_registry()`` only, never the controller's.

    tungo-webhook serve --cert-file /tls/tls.crt --key-file /tls/tls.key --port 9443
    tungo-webhook certs --service tungo-webhook --namespace tungo-system --out ./certs
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import kopf

from tungo_operator.injection import sidecar
from tungo_operator.webhook import certs, handlers
from tungo_operator.webhook.server import TungoWebhookServer

DEFAULT_PORT = 9443


def sidecar_settings(env: Mapping[str, str]) -> sidecar.SidecarSettings:
    """Sidecar knobs from the environment the chart sets (``TUNGO_SIDECAR_*``); the image is required."""
    image = env.get("TUNGO_SIDECAR_IMAGE", "").strip()
    if not image:
        raise SystemExit("tungo-webhook: TUNGO_SIDECAR_IMAGE must name the sidecar image")
    defaults = sidecar.SidecarSettings(image=image)
    timeout = env.get("TUNGO_SIDECAR_STARTUP_TIMEOUT", str(defaults.startup_timeout_s))
    if not timeout.isdigit() or int(timeout) < 1:
        raise SystemExit(
            f"tungo-webhook: TUNGO_SIDECAR_STARTUP_TIMEOUT must be whole seconds, got {timeout!r}"
        )
    return sidecar.SidecarSettings(
        image=image,
        image_pull_policy=env.get("TUNGO_SIDECAR_PULL_POLICY", defaults.image_pull_policy),
        cpu_request=env.get("TUNGO_SIDECAR_CPU_REQUEST", defaults.cpu_request),
        memory_request=env.get("TUNGO_SIDECAR_MEMORY_REQUEST", defaults.memory_request),
        memory_limit=env.get("TUNGO_SIDECAR_MEMORY_LIMIT", defaults.memory_limit),
        startup_timeout_s=int(timeout),
        cluster_domain=env.get("TUNGO_CLUSTER_DOMAIN", defaults.cluster_domain).strip().rstrip(".")
        or defaults.cluster_domain,
    )


def operator_settings(server: TungoWebhookServer) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.admission.server = server
    settings.admission.managed = None  # Helm owns the MutatingWebhookConfiguration
    settings.posting.enabled = False  # no Events: the webhook has no write permissions
    settings.scanning.disabled = True  # CRDs come with the chart; no need to watch them
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tungo-webhook",
        description="Serve the tungo injection webhook over HTTPS, or make its certificates.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the mutating webhook (kopf) over HTTPS")
    serve.add_argument("--listen", default="0.0.0.0", help="address to listen on (default: all)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--cert-file", type=Path, help="PEM certificate chain (tls.crt)")
    serve.add_argument("--key-file", type=Path, help="PEM private key (tls.key)")
    serve.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL, or '' for none"
    )
    serve.add_argument("--verbose", action="store_true")
    gen = sub.add_parser("certs", help="write ca.crt, tls.crt, tls.key for the webhook Service")
    gen.add_argument("--service", required=True)
    gen.add_argument("--namespace", required=True)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--days", type=int, default=3650)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "certs":
        paths = certs.write(
            certs.generate(certs.service_names(args.service, args.namespace), days=args.days), args.out
        )
        print("\n".join(str(p) for p in paths))
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if (args.cert_file is None) != (args.key_file is None):
        print("tungo-webhook: give both --cert-file and --key-file, or neither", file=sys.stderr)
        return 2
    settings = sidecar_settings(os.environ)
    with tempfile.TemporaryDirectory(prefix="tungo-webhook-") as scratch:
        cert_file, key_file = args.cert_file, args.key_file
        if cert_file is None:
            # Development only: a throwaway CA the apiserver does not know; the chart mounts real ones.
            logging.warning("no --cert-file: serving with a throwaway self-made certificate")
            _, cert_file, key_file = certs.write(certs.generate(["localhost", "127.0.0.1"]), Path(scratch))
        indexes = handlers.IndexGate()
        server = TungoWebhookServer(
            addr=args.listen,
            port=args.port,
            certfile=cert_file,
            pkeyfile=key_file,
            webhooks=(handlers.HANDLER_ID,),
            ready=indexes.problem,
        )
        # A denial is routine: inject() logs it at INFO; kopf's ERROR copy of it is dropped.
        logging.getLogger("kopf.objects").addFilter(handlers.QUIET_DENIALS)
        asyncio.run(
            kopf.operator(
                registry=handlers.make_registry(),
                settings=operator_settings(server),
                memo=handlers.sidecar_memo(settings, indexes),
                standalone=True,
                clusterwide=True,
                liveness_endpoint=args.liveness or None,
            )
        )
    return 0
