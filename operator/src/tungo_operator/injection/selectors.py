"""Kubernetes label selectors (``matchLabels`` + ``matchExpressions``) parsed once and evaluated purely.

Owns the parse of a ``metav1.LabelSelector`` mapping into a frozen value and its match against a pod's
labels, with the apiserver's semantics (all terms ANDed; ``{}`` selects everything). Called by the
injection core when a TunGateway's ``podSelector`` decides which pods it serves. Must never do I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

_OPERATORS: Final = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})


class InvalidSelectorError(ValueError):
    """A label selector Kubernetes semantics cannot evaluate; the message names the bad field.

    A ValueError for now: it joins the operator's error tree (tungo_operator.model.errors) once that
    lands, so the controller and the webhook translate it like any other spec error.
    """


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ``matchExpressions`` term."""

    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        match self.operator:
            case "In":
                return present and labels[self.key] in self.values
            case "NotIn":
                # Kubernetes: NotIn also matches objects without the key at all.
                return not present or labels[self.key] not in self.values
            case "Exists":
                return present
            case _:  # "DoesNotExist": the only operator left after parsing
                return not present


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed label selector; ``LabelSelector()`` (from ``{}``) selects every pod."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, raw: object) -> LabelSelector:
        """Parse a selector mapping; raise InvalidSelectorError naming the bad field otherwise."""
        if not isinstance(raw, Mapping):
            raise InvalidSelectorError(f"a label selector must be a mapping, got {type(raw).__name__}")
        unknown = set(raw) - {"matchLabels", "matchExpressions"}
        if unknown:
            names = ", ".join(sorted(map(str, unknown)))
            raise InvalidSelectorError(f"unknown label selector fields: {names}")
        labels = raw.get("matchLabels")
        labels = {} if labels is None else labels
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidSelectorError("matchLabels must map label names to string values")
        exprs = raw.get("matchExpressions")
        exprs = [] if exprs is None else exprs
        if not isinstance(exprs, list):
            raise InvalidSelectorError("matchExpressions must be a list")
        return cls(
            match_labels=tuple(sorted(labels.items())),
            match_expressions=tuple(_parse_requirement(i, e) for i, e in enumerate(exprs)),
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


def _parse_requirement(index: int, raw: Any) -> Requirement:
    where = f"matchExpressions[{index}]"
    if not isinstance(raw, Mapping):
        raise InvalidSelectorError(f"{where} must be a mapping")
    key, operator, values = raw.get("key"), raw.get("operator"), raw.get("values")
    values = [] if values is None else values
    if not isinstance(key, str) or not key:
        raise InvalidSelectorError(f"{where}.key must be a non-empty string")
    if operator not in _OPERATORS:
        raise InvalidSelectorError(
            f"{where}.operator must be one of {', '.join(sorted(_OPERATORS))}, got {operator!r}"
        )
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidSelectorError(f"{where}.values must be a list of strings")
    # Same rule as the apiserver: In/NotIn need values, Exists/DoesNotExist must have none.
    if operator in ("In", "NotIn") and not values:
        raise InvalidSelectorError(f"{where}: operator {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise InvalidSelectorError(f"{where}: operator {operator} takes no values")
    return Requirement(key=key, operator=str(operator), values=frozenset(values))
