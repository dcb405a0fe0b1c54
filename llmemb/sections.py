"""The one rule for config sections: a mapping whose keys are all known; an unknown key is an
error that names it and lists the known ones (a typo never silently falls back to a default)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def checked(values: Mapping[str, Any] | None, known: Iterable[str], where: str) -> dict[str, Any]:
    """`values` as a dict, refused unless a mapping of known keys (None: empty)."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a mapping, found {type(values).__name__}")
    known = set(known)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return dict(values)


def dataclass_from(cls: type[T], values: Mapping[str, Any] | None, where: str, base: T | None = None) -> T:
    """An instance of the dataclass `cls` from a section (or `base` with the section's keys replaced)."""
    values = checked(values, [f.name for f in fields(cls)], where)
    return replace(base, **values) if base is not None else cls(**values)
