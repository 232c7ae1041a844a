"""Did-you-mean hints for configuration keys that do not exist.

Every section forbids unknown keys, so a typo (``sip.lisen``) stops start-up instead
of being silently ignored; this names the key the operator most likely meant, found
among the keys that exist at that place in the models (``difflib``'s ratio, as
Python's own "did you mean" uses a close cousin of it). Environment variables are
checked too: one with a single ``_`` where ``__`` separates section and key
(``PBXWARDEN_SIP_LISTEN``) would otherwise be ignored without a word.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The model classes an annotation may hold (``X | None``, ``dict[str, X]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _mapping_values(annotation: Any) -> list[type[BaseModel]]:
    """For ``dict[str, X]`` (``guard.tenants.NAME``): the models X may be."""
    for candidate in [annotation, *typing.get_args(annotation)]:
        if typing.get_origin(candidate) in (dict, Mapping):
            args = typing.get_args(candidate)
            return _models_in(args[1]) if len(args) == 2 else []
    return []


def keys_at(root: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """The keys that exist in the section at ``path`` (empty when unknown)."""
    models: list[type[BaseModel]] = [root]
    parts = list(path)
    while parts:
        part = parts.pop(0)
        found: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(str(part))
            if field is None:
                continue
            nested = _models_in(field.annotation)
            if nested:
                found += nested
            elif (values := _mapping_values(field.annotation)) and parts:
                parts.pop(0)  # the mapping's own key, e.g. a tenant's name
                found += values
        models = found
        if not models:
            return []
    return sorted({name for model in models for name in model.model_fields})


def suggest(root: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """``sip.listen`` for ``("sip", "lisen")``, or None when nothing is close."""
    *where, key = [str(p) for p in loc] or [""]
    close = difflib.get_close_matches(key, keys_at(root, where), n=1, cutoff=0.6)
    return ".".join([*where, close[0]]) if close else None


def misnamed_variables(
    root: type[BaseModel], names: Iterable[str], prefix: str
) -> list[tuple[str, str]]:
    """(variable, what it should be called) for ``PBXWARDEN_SIP_LISTEN`` and the like:
    a known section and key joined by one underscore, which no one reads."""
    sections = {
        name: keys_at(root, [name])
        for name, field in root.model_fields.items()
        if _models_in(field.annotation)
    }
    found = []
    for name in names:
        if not name.startswith(prefix) or "__" in name:
            continue
        rest = name[len(prefix) :].lower()
        for section, keys in sections.items():
            key = rest[len(section) + 1 :]
            if rest.startswith(section + "_") and key in keys:
                found.append((name, f"{prefix}{section.upper()}__{key.upper()}"))
    return found
