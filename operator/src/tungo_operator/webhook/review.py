"""Shape checks for an incoming AdmissionReview, before kopf sees it.

Owns the answer to "is this body an AdmissionReview v1 we can reply to?". Called by
``webhook.server`` for every request; a non-None result becomes a 400 with that text. kopf alone would
answer some malformed bodies with a 500 and a traceback in the log. Pure: no I/O, no kopf, no aiohttp.
"""

from __future__ import annotations

from typing import Any, Final

API_VERSION: Final = "admission.k8s.io/v1"
KIND: Final = "AdmissionReview"


def problem(data: object) -> str | None:
    """What is wrong with ``data`` as an AdmissionReview v1 request, or None when it is usable."""
    if not isinstance(data, dict):
        return f"an {KIND} must be a JSON object, got {type(data).__name__}"
    if data.get("apiVersion") != API_VERSION or data.get("kind") != KIND:
        return (
            f"expected apiVersion {API_VERSION} and kind {KIND}, got {data.get('apiVersion')!r} and "
            f"{data.get('kind')!r} (set admissionReviewVersions: [v1] in the webhook configuration)"
        )
    request = data.get("request")
    if not isinstance(request, dict):
        return f"{KIND}.request is missing or not an object"
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        return f"{KIND}.request.uid is missing"
    resource = request.get("resource")
    if not isinstance(resource, dict) or not all(
        isinstance(resource.get(k), str) for k in ("group", "version", "resource")
    ):
        return f"{KIND}.request.resource must have string group, version and resource"
    if not isinstance(request.get("operation"), str):
        return f"{KIND}.request.operation is missing"
    if not isinstance(request.get("userInfo"), dict):
        return f"{KIND}.request.userInfo is missing or not an object"
    for key in ("object", "oldObject"):
        if request.get(key) is not None and not isinstance(request[key], dict):
            return f"{KIND}.request.{key} must be an object"
    if request.get("object") is None and request.get("oldObject") is None:
        return f"{KIND}.request has neither object nor oldObject"
    return None


def normalise(data: dict[str, Any]) -> None:
    """Make ``object.metadata.namespace`` equal ``request.namespace``, the authoritative one.

    The apiserver sends the request's namespace separately and a pod created by a controller may not
    carry one yet; kopf only looks at the object, and the injection decision needs the namespace.
    kopf diffs against this normalised body, so the field never shows up in the returned patch.
    Call only after ``problem()`` returned None.
    """
    request = data["request"]
    namespace = request.get("namespace")
    obj = request.get("object")
    if isinstance(namespace, str) and namespace and isinstance(obj, dict):
        meta = obj.setdefault("metadata", {})
        if isinstance(meta, dict):
            meta["namespace"] = namespace
