"""Shared helper for the architecture config dataclasses of the model families."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

from .errors import ConfigError

C = TypeVar("C")


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """``cls(**data)`` that names unknown fields instead of a bare TypeError."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**dict(data))
