"""The pure parts of the reconcile steps: the Ready and ClusterExclusions conditions' bookkeeping and the
Secret merge patch."""

from __future__ import annotations

from tungo_operator.handlers.reconcile import _patch_for, exclusions_condition, ready_condition
from tungo_operator.model.exclusions import Exclusion, Exclusions


def test_ready_condition_keeps_transition_time_until_the_status_flips() -> None:
    first = ready_condition(None, ready=False, reason="ChainNotFound", message="m1", generation=3)
    (cond,) = first
    assert cond["type"] == "Ready" and cond["status"] == "False" and cond["observedGeneration"] == 3
    old = [dict(cond, lastTransitionTime="2020-01-01T00:00:00Z")]

    same = ready_condition(old, ready=False, reason="SecretNotFound", message="m2", generation=4)
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"  # still False: no transition
    assert (same[0]["reason"], same[0]["message"]) == ("SecretNotFound", "m2")

    flipped = ready_condition(old, ready=True, reason="ConfigRendered", message="ok", generation=None)
    assert flipped[0]["status"] == "True" and flipped[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert "observedGeneration" not in flipped[0]


def test_ready_condition_keeps_other_conditions_and_bounds_messages() -> None:
    other = {"type": "Progressing", "status": "True"}
    conds = ready_condition([other, "junk"], ready=True, reason="R", message="x" * 5000, generation=1)
    assert conds[0] == other and conds[1]["type"] == "Ready"
    assert len(conds[1]["message"]) == 1024


def test_secret_patch_removes_keys_no_longer_rendered() -> None:
    existing = {"data": {"config.yaml": "b2xk", "ca-hop-old.pem": "cGVt"}}
    desired = {"metadata": {"labels": {"a": "b"}}, "data": {"config.yaml": "bmV3"}}
    assert _patch_for(existing, desired) == {
        "metadata": {"labels": {"a": "b"}},
        "data": {"ca-hop-old.pem": None, "config.yaml": "bmV3"},
    }


def test_exclusions_condition_says_discovered_incomplete_or_disabled() -> None:
    complete = Exclusions(entries=(Exclusion("10.96.0.0/12", "ServiceCIDR/kubernetes"),))
    ready = ready_condition(None, ready=True, reason="ConfigRendered", message="ok", generation=2)
    conds = exclusions_condition(ready, complete, generation=2)
    assert [c["type"] for c in conds] == ["Ready", "ClusterExclusions"]  # Ready left as it was
    cond = conds[1]
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("True", "Discovered", 2)
    assert cond["message"] == "1 CIDR(s) kept off the tunnel (status.exclusions)"

    incomplete = Exclusions(problems=("pod CIDRs unknown: ...", "DNS Service kube-system/kube-dns not found"))
    (cond,) = exclusions_condition(None, incomplete, generation=None)
    assert (cond["status"], cond["reason"]) == ("False", "Incomplete") and "observedGeneration" not in cond
    assert cond["message"] == "pod CIDRs unknown: ...; DNS Service kube-system/kube-dns not found"

    (cond,) = exclusions_condition(None, Exclusions(cluster=False, problems=("ignored",)), generation=1)
    assert (cond["status"], cond["reason"]) == ("False", "Disabled")
    assert (
        cond["message"] == "spec.clusterExclusions is false: only spec.excludedCIDRs are kept off the tunnel"
    )


def test_exclusions_condition_keeps_its_transition_time_while_incomplete() -> None:
    old = [{"type": "ClusterExclusions", "status": "False", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    (cond,) = exclusions_condition(old, Exclusions(problems=("other problem",)), generation=3)
    assert cond["lastTransitionTime"] == "2020-01-01T00:00:00Z" and cond["message"] == "other problem"
    (cond,) = exclusions_condition(old, Exclusions(), generation=3)
    assert cond["status"] == "True" and cond["lastTransitionTime"] != "2020-01-01T00:00:00Z"
