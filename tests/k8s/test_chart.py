"""The Helm chart with a real helm: lint, render with several value sets, validate every manifest.

helm comes from scripts/fetch-helm.sh (DESIGN.md §5); rendered manifests are validated offline with
kubernetes-validate in strict mode (unknown fields are errors) against the oldest Kubernetes the
chart supports (1.29: native sidecars) and a current one.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

import tungo_operator.main as operator_main
from tungo_operator.model import exclusions
from tungo_operator.webhook import app, handlers

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kube-tungo"
HELM = ROOT / ".tools" / "helm"
NAMESPACE = "tungo-system"
K8S_VERSIONS = ("1.29.0", "1.35.0")
# Custom resources the chart may render whose schemas kubernetes-validate does not ship.
CERT_MANAGER_KINDS = {"Issuer", "Certificate"}


@pytest.fixture(scope="module")
def helm() -> Path:
    if not HELM.exists():
        subprocess.run([ROOT / "scripts" / "fetch-helm.sh"], check=True, timeout=300)
    return HELM


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60, check=False)


def render(
    helm: Path, *sets: str, values: dict[str, Any] | None = None, tmp: Path | None = None
) -> list[Any]:
    args = ["template", "rel", str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for item in sets:
        args += ["--set", item]
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate_all(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in CERT_MANAGER_KINDS:
            assert doc["apiVersion"] == "cert-manager.io/v1"
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc}") from exc


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0]


def rules(role: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    yield group, resource, verb


def test_helm_lint_strict_passes(helm: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_chart_crds_are_the_repository_crds() -> None:
    repo = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert repo, "crds/ is empty"
    assert chart == repo, "charts/kube-tungo/crds/ must be a byte-for-byte copy of crds/ (cp crds/*.yaml ...)"


def test_default_render_is_valid_and_wired_together(helm: Path) -> None:
    docs = render(helm)
    validate_all(docs)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("CustomResourceDefinition") == 2
    assert {"Deployment", "Service", "PodDisruptionBudget", "MutatingWebhookConfiguration", "Secret"} <= set(
        kinds
    )

    webhook = one(docs, "Deployment", "-webhook")
    assert webhook["spec"]["replicas"] >= 2
    pod_labels = webhook["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"] == pod_labels
    service = one(docs, "Service")
    assert service["spec"]["selector"] == pod_labels

    (ctr,) = webhook["spec"]["template"]["spec"]["containers"]
    sc = ctr["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    # The chart's command line is one the real program accepts, and the env one it can read.
    args = app.build_parser().parse_args(ctr["command"][1:])
    assert args.command == "serve" and str(args.cert_file).startswith("/etc/tungo-webhook/tls/")
    env = {e["name"]: e["value"] for e in ctr["env"]}
    assert app.sidecar_settings(env).image == "ghcr.io/kube-tungo/kube-tungo:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports[service["spec"]["ports"][0]["targetPort"]] == args.port
    # Ready once the indexes are filled (/readyz on the webhook's own HTTPS port); alive per kopf.
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert ports["https"] == args.port
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert args.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    # The TLS Secret's files are root-owned: the webhook reads them as the fsGroup (test_chart_files.py).
    pod_sc = webhook["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["fsGroup"] == sc["runAsGroup"] == 10001

    operator = one(docs, "Deployment", "-operator")
    assert operator["spec"]["replicas"] == 1 and operator["spec"]["strategy"]["type"] == "Recreate"
    (op_ctr,) = operator["spec"]["template"]["spec"]["containers"]
    assert op_ctr["command"][0] == "tungo-operator"

    mwc = one(docs, "MutatingWebhookConfiguration")
    assert [w["name"] for w in mwc["webhooks"]] == ["pods.inject.tungo.dev", "namespaces.inject.tungo.dev"]
    for hook in mwc["webhooks"]:
        svc = hook["clientConfig"]["service"]
        assert svc["name"] == service["metadata"]["name"] and svc["namespace"] == NAMESPACE
        assert svc["path"] == f"/{handlers.HANDLER_ID}" and svc["port"] == service["spec"]["ports"][0]["port"]
        assert hook["failurePolicy"] == "Fail" and 1 <= hook["timeoutSeconds"] <= 30
        assert hook["rules"] == [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "operations": ["CREATE"],
                "scope": "Namespaced",
            }
        ]
        excluded = [e for e in hook["namespaceSelector"]["matchExpressions"] if e["operator"] == "NotIn"]
        assert NAMESPACE in excluded[0]["values"] and "kube-system" in excluded[0]["values"]
    pods_hook, ns_hook = mwc["webhooks"]
    assert pods_hook["objectSelector"] == {"matchLabels": {"tungo.dev/inject": "enabled"}}
    assert ns_hook["objectSelector"]["matchExpressions"][0]["values"] == ["enabled", "disabled"]


def test_operator_command_lines_are_accepted_by_tungo_operator(helm: Path, tmp_path: Path) -> None:
    build_parser = operator_main.build_parser
    default = one(render(helm), "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert build_parser().parse_args(default["command"][1:]).all_namespaces is True
    values = {"operator": {"watchNamespaces": ["shop", "team"], "verbose": True}}
    scoped = one(render(helm, values=values, tmp=tmp_path), "Deployment", "-operator")
    parsed = build_parser().parse_args(scoped["spec"]["template"]["spec"]["containers"][0]["command"][1:])
    assert parsed.namespace == ["shop", "team"] and parsed.verbose is True
    assert parsed.liveness == "http://0.0.0.0:8080/healthz"


def test_generated_certificate_is_trusted_by_the_ca_bundle_for_the_service_name(helm: Path) -> None:
    docs = render(helm)
    secret = one(docs, "Secret", "-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca_bundle = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]
    assert ca_bundle == secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_bundle))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    service = one(docs, "Service")["metadata"]["name"]
    # The apiserver dials <service>.<namespace>.svc and verifies it against caBundle.
    verifier = (
        PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName(f"{service}.{NAMESPACE}.svc"))
    )
    verifier.verify(leaf, [])
    mounted = one(docs, "Deployment", "-webhook")["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "tls",
        "secret": {"secretName": secret["metadata"]["name"], "defaultMode": 0o440},
    } in mounted


def test_rbac_is_least_privilege(helm: Path) -> None:
    docs = render(helm)
    roles = {r["metadata"]["name"]: set(rules(r)) for r in by_kind(docs, "ClusterRole")}
    webhook = roles["rel-kube-tungo-webhook"]
    assert webhook == {
        (g, r, v)
        for g, r in (("tungo.dev", "tungateways"), ("", "namespaces"))
        for v in ("get", "list", "watch")
    }
    operator = roles["rel-kube-tungo-operator"]
    assert all("*" not in triple for rules_ in roles.values() for triple in rules_)
    # Cluster exclusions only read: Nodes, ServiceCIDRs, Services (watched cluster-wide by kopf).
    for group, resource in (("", "nodes"), ("networking.k8s.io", "servicecidrs"), ("", "services")):
        assert {v for g, r, v in operator if (g, r) == (group, resource)} == {"get", "list", "watch"}
    writes = {(g, r) for g, r, v in operator if v in {"create", "update", "patch", "delete"}}
    assert writes == {
        ("tungo.dev", "tungateways"),  # finalizer and kopf's progress annotations
        ("tungo.dev", "chains"),
        ("tungo.dev", "tungateways/status"),
        ("tungo.dev", "chains/status"),
        ("", "secrets"),
        ("", "events"),
    }
    for binding in by_kind(docs, "ClusterRoleBinding"):
        (subject,) = binding["subjects"]
        assert subject["name"] == binding["roleRef"]["name"] and subject["namespace"] == NAMESPACE
    accounts = {sa["metadata"]["name"] for sa in by_kind(docs, "ServiceAccount")}
    for deploy in by_kind(docs, "Deployment"):
        assert deploy["spec"]["template"]["spec"]["serviceAccountName"] in accounts


def test_non_default_values_render_valid_manifests(helm: Path, tmp_path: Path) -> None:
    values = {
        "fullnameOverride": "tungo",
        "image": {"repository": "registry.example/kt", "tag": "9.9.9", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {"watchNamespaces": ["shop", "team"], "verbose": True},
        "webhook": {
            "replicas": 3,
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "port": 10443,
            "excludedNamespaces": ["monitoring"],
            "podDisruptionBudget": {"minAvailable": 2},
            "priorityClassName": "system-cluster-critical",
        },
        "sidecar": {"image": {"tag": "9.9.9-sidecar"}, "startupTimeoutSeconds": 30},
    }
    docs = render(helm, values=values, tmp=tmp_path)
    validate_all(docs)
    webhook = one(docs, "Deployment", "tungo-webhook")
    assert webhook["spec"]["replicas"] == 3
    (ctr,) = webhook["spec"]["template"]["spec"]["containers"]
    assert (
        ctr["image"] == "registry.example/kt:9.9.9"
        and app.build_parser().parse_args(ctr["command"][1:]).port == 10443
    )
    settings = app.sidecar_settings({e["name"]: e["value"] for e in ctr["env"]})
    assert settings.image == "registry.example/kt:9.9.9-sidecar" and settings.startup_timeout_s == 30
    mwc = one(docs, "MutatingWebhookConfiguration")
    assert {w["failurePolicy"] for w in mwc["webhooks"]} == {"Ignore"}
    excluded = mwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert excluded == ["monitoring", NAMESPACE]
    # Namespaced RBAC: a Role in each watched namespace, and no cluster-wide Secret access.
    assert sorted(r["metadata"]["namespace"] for r in by_kind(docs, "Role")) == ["shop", "team"]
    cluster = one(docs, "ClusterRole", "tungo-operator")
    assert not [t for t in rules(cluster) if t[1] == "secrets"]
    (op_ctr,) = one(docs, "Deployment", "tungo-operator")["spec"]["template"]["spec"]["containers"]
    assert "--namespace=shop" in op_ctr["command"] and "--verbose" in op_ctr["command"]


def test_cert_manager_mode(helm: Path) -> None:
    docs = render(helm, "webhook.certs.mode=certManager")
    validate_all(docs)
    assert not by_kind(docs, "Secret")
    certificates = {c["metadata"]["name"]: c for c in by_kind(docs, "Certificate")}
    serving = certificates["rel-kube-tungo-webhook"]
    assert serving["spec"]["secretName"] == "rel-kube-tungo-webhook-tls"
    assert f"rel-kube-tungo-webhook.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]
    assert certificates["rel-kube-tungo-webhook-ca"]["spec"]["isCA"] is True
    mwc = one(docs, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/rel-kube-tungo-webhook"
    }
    assert all("caBundle" not in w["clientConfig"] for w in mwc["webhooks"])

    own = render(
        helm,
        "webhook.certs.mode=certManager",
        "webhook.certs.certManager.issuerRef.name=corp-ca",
        "webhook.certs.certManager.issuerRef.kind=ClusterIssuer",
    )
    assert not by_kind(own, "Issuer")
    (cert,) = by_kind(own, "Certificate")
    assert cert["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


def test_existing_secret_mode(helm: Path) -> None:
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...\n").decode()
    docs = render(
        helm,
        "webhook.certs.mode=existingSecret",
        "webhook.certs.existingSecret=my-tls",
        f"webhook.certs.caBundle={bundle}",
    )
    validate_all(docs)
    assert not by_kind(docs, "Secret") and not by_kind(docs, "Certificate")
    assert {w["clientConfig"]["caBundle"] for w in one(docs, "MutatingWebhookConfiguration")["webhooks"]} == {
        bundle
    }
    volumes = one(docs, "Deployment", "-webhook")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "my-tls", "defaultMode": 0o440}} in volumes


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (["webhook.replicas=1"], "/webhook/replicas"),
        (["operator.replicas=2"], "/operator/replicas"),
        (["webhook.failurePolicy=Maybe"], "/webhook/failurePolicy"),
        (["webhook.timeoutSeconds=31"], "/webhook/timeoutSeconds"),
        (["webhook.certs.mode=selfSigned"], "/webhook/certs/mode"),
        (["webhook.typo=1"], "typo"),
        (["webhook.certs.mode=existingSecret"], "/webhook/certs/caBundle"),
        (["sidecar.resources.requests.cpu=lots"], "/sidecar/resources/requests/cpu"),
        (["operator.watchNamespaces={Bad_NS}"], "/operator/watchNamespaces/0"),
        (["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["clusterExclusions.serviceCIDRs={10.96.0.0}"], "/clusterExclusions/serviceCIDRs/0"),
        (["clusterExclusions.dnsService.name=Kube_DNS"], "/clusterExclusions/dnsService/name"),
        (["clusterExclusions.discovery=maybe"], "/clusterExclusions/discovery"),
    ],
)
def test_schema_rejects_bad_values(helm: Path, sets: list[str], complaint: str) -> None:
    args = ["template", "rel", str(CHART)]
    for item in sets:
        args += ["--set", item]
    result = run_helm(helm, *args)
    assert result.returncode != 0
    assert "values don't meet the specifications" in result.stderr and complaint in result.stderr, (
        result.stderr
    )


def test_install_notes_tell_how_to_opt_in_and_allow_net_admin(helm: Path) -> None:
    result = run_helm(helm, "install", "rel", str(CHART), "--dry-run=client", "--namespace", NAMESPACE)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "tungo.dev/inject=enabled" in notes and "tungo.dev/gateway: <name>" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    assert "fail closed" in notes
    ignore = run_helm(
        helm,
        "install",
        "rel",
        str(CHART),
        "--dry-run=client",
        "-n",
        NAMESPACE,
        "--set",
        "webhook.failurePolicy=Ignore",
    )
    assert "leaves unencrypted" in ignore.stdout


def test_cluster_exclusion_values_reach_the_operator_and_its_rbac(
    helm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def operator_of(docs: list[dict[str, Any]]) -> Any:
        (ctr,) = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"]
        return operator_main.discovery_config(operator_main.build_parser().parse_args(ctr["command"][1:]))

    def service_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        role = one(docs, "ClusterRole", "-operator")
        return [r for r in role["rules"] if "services" in r["resources"] or "nodes" in r["resources"]]

    default = operator_of(render(helm))
    assert default == exclusions.DiscoveryConfig()  # discovery on, kube-system/kube-dns, no fallbacks

    values: dict[str, Any] = {
        "operator": {"watchNamespaces": ["shop"]},
        "clusterDomain": "k8s.example",
        "clusterExclusions": {
            "serviceCIDRs": ["10.96.0.0/12", "fd00:10:96::/112"],
            "podCIDRs": ["10.244.0.0/16"],
            "dnsService": {"namespace": "dns", "name": "coredns"},
        },
    }
    docs = render(helm, values=values, tmp=tmp_path)
    validate_all(docs)
    assert operator_of(docs) == exclusions.DiscoveryConfig(
        service_cidrs=("10.96.0.0/12", "fd00:10:96::/112"),
        pod_cidrs=("10.244.0.0/16",),
        dns_service=("dns", "coredns"),
        cluster_domain="k8s.example",
    )
    # The webhook writes the same domain into split-DNS pods' search lists.
    (webhook,) = one(docs, "Deployment", "-webhook")["spec"]["template"]["spec"]["containers"]
    assert {"name": "TUNGO_CLUSTER_DOMAIN", "value": "k8s.example"} in webhook["env"]
    # Namespaced: the operator GETs the two Services by name (no Service list/watch anywhere).
    services = [r for r in service_rules(docs) if r["resources"] == ["services"]]
    assert services == [
        {
            "apiGroups": [""],
            "resources": ["services"],
            "resourceNames": ["coredns", "kubernetes"],
            "verbs": ["get"],
        }
    ]
    assert not [r for r in by_kind(docs, "Role") for rule in r["rules"] if "services" in rule["resources"]]

    off = render(helm, "clusterExclusions.discovery=false")
    validate_all(off)
    assert operator_of(off).enabled is False and service_rules(off) == []
    assert not [t for t in rules(one(off, "ClusterRole", "-operator")) if t[1] == "servicecidrs"]

    # The schema checks the shape of a CIDR; host bits set pass it, and the operator refuses them.
    with pytest.raises(SystemExit) as info:
        operator_main.build_parser().parse_args(["--service-cidr=10.96.0.1/12"])
    assert info.value.code == 2
    assert "'10.96.0.1/12' has host bits set (did you mean 10.96.0.0/12?)" in capsys.readouterr().err
