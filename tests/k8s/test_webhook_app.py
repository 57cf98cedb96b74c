"""tungo-webhook's settings from the environment and its argument checks."""

from __future__ import annotations

import pytest

from tungo_operator.webhook import app


def test_sidecar_settings_from_the_chart_environment() -> None:
    settings = app.sidecar_settings(
        {
            "TUNGO_SIDECAR_IMAGE": "reg.example/kube-tungo:1.2.3",
            "TUNGO_SIDECAR_PULL_POLICY": "Always",
            "TUNGO_SIDECAR_MEMORY_LIMIT": "512Mi",
            "TUNGO_SIDECAR_STARTUP_TIMEOUT": "30",
            "TUNGO_CLUSTER_DOMAIN": "k8s.example.",
        }
    )
    assert settings.cluster_domain == "k8s.example"  # for split-DNS pods' search list
    assert app.sidecar_settings({"TUNGO_SIDECAR_IMAGE": "i"}).cluster_domain == "cluster.local"
    assert settings.image == "reg.example/kube-tungo:1.2.3" and settings.image_pull_policy == "Always"
    assert settings.memory_limit == "512Mi" and settings.startup_timeout_s == 30
    assert settings.cpu_request == "50m"  # default kept


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({}, "TUNGO_SIDECAR_IMAGE"),
        ({"TUNGO_SIDECAR_IMAGE": "  "}, "TUNGO_SIDECAR_IMAGE"),
        ({"TUNGO_SIDECAR_IMAGE": "i", "TUNGO_SIDECAR_STARTUP_TIMEOUT": "0"}, "whole seconds"),
        ({"TUNGO_SIDECAR_IMAGE": "i", "TUNGO_SIDECAR_STARTUP_TIMEOUT": "2m"}, "whole seconds"),
    ],
)
def test_bad_environment_stops_with_a_message(env: dict[str, str], expect: str) -> None:
    with pytest.raises(SystemExit, match=expect):
        app.sidecar_settings(env)


def test_serve_needs_both_cert_and_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TUNGO_SIDECAR_IMAGE", "i")
    assert app.main(["serve", "--cert-file", "/x/tls.crt"]) == 2
    assert "both --cert-file and --key-file" in capsys.readouterr().err


def test_operator_settings_leave_the_webhook_configuration_to_helm() -> None:
    from tungo_operator.webhook.server import TungoWebhookServer

    server = TungoWebhookServer(addr="127.0.0.1", port=1)
    settings = app.operator_settings(server)
    assert settings.admission.server is server and settings.admission.managed is None
    assert settings.posting.enabled is False and settings.scanning.disabled is True
