"""AdmissionReview shape checks (pure): every malformed shape has its own clear message."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tungo_operator.webhook import review

GOOD: dict[str, Any] = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "shop",
        "operation": "CREATE",
        "userInfo": {"username": "admin"},
        "object": {"metadata": {"generateName": "web-"}, "spec": {}},
    },
}


def broken(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


def test_a_real_review_passes_and_gets_its_namespace_filled() -> None:
    data = copy.deepcopy(GOOD)
    assert review.problem(data) is None
    review.normalise(data)
    assert data["request"]["object"]["metadata"]["namespace"] == "shop"


def test_request_namespace_wins_over_the_objects() -> None:
    data = broken(("request", "object", "metadata"), {"namespace": "other"})
    review.normalise(data)
    assert data["request"]["object"]["metadata"]["namespace"] == "shop"


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        ("text", "must be a JSON object, got str"),
        (broken(("apiVersion",), "admission.k8s.io/v1beta1"), "admissionReviewVersions: [v1]"),
        (broken(("kind",), "Pod"), "kind AdmissionReview"),
        (broken(("request",), ...), "request is missing"),
        (broken(("request", "uid"), ""), "uid is missing"),
        (broken(("request", "resource"), {"group": ""}), "resource must have"),
        (broken(("request", "operation"), 3), "operation is missing"),
        (broken(("request", "userInfo"), ...), "userInfo is missing"),
        (broken(("request", "object"), []), "object must be an object"),
        (broken(("request", "object"), None), "neither object nor oldObject"),
    ],
)
def test_malformed_reviews_are_named(data: Any, expect: str) -> None:
    trouble = review.problem(data)
    assert trouble is not None and expect in trouble
