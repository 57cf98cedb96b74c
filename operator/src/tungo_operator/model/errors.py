"""The operator's error tree (controller side), rooted in ``OperatorError``.

    OperatorError
    ├── SpecError            the TunGateway/Chain spec is invalid: the user must edit it (permanent)
    ├── MissingReferenceError  something the spec names is missing: a Chain, a Secret, a Secret key
    │                          (fixable without editing the spec: create the object)
    ├── InvalidSecretError   a referenced Secret's content is unusable (bad UTF-8, not a PEM CA)
    └── SecretConflictError  another gateway already owns the config Secret we would write

The model layer raises these with messages written for ``kubectl describe``; the handlers map them to
``kopf.PermanentError`` and to ``status.conditions`` reasons (``reason`` below). Nothing here imports
kopf: the model and render layers must stay usable without it.
"""

from __future__ import annotations


class OperatorError(Exception):
    """Base of every error the controller reports to users."""

    reason = "Error"


class SpecError(OperatorError):
    """An invalid spec; the message starts with the field path (``spec.hops[0].nodes[1].addr: ...``)."""

    reason = "InvalidSpec"


class MissingReferenceError(OperatorError):
    """A referenced object (Chain, Secret) or Secret key does not exist (yet)."""

    reason = "MissingReference"

    def __init__(self, message: str, *, kind: str, namespace: str, name: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.namespace = namespace
        self.name = name

    @property
    def reason_for_kind(self) -> str:
        return f"{self.kind}NotFound"


class SecretConflictError(OperatorError):
    """The config Secret exists and belongs to another gateway (same name, other namespace)."""

    reason = "SecretConflict"


class InvalidSecretError(OperatorError):
    """A referenced Secret exists but its content is unusable (not UTF-8, not a PEM certificate...)."""

    reason = "InvalidSecret"
