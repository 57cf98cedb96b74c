"""The pure parts of the reconcile steps: the Ready condition's bookkeeping and the Secret merge patch."""

from __future__ import annotations

from tungo_operator.handlers.reconcile import _patch_for, ready_condition


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
