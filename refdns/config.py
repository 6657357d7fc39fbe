"""Helpers shared by every frozen config dataclass: strict construction from dicts and value checks."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

from refdns.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Build ``cls`` from a dict; unknown keys raise (no silent defaults for typos)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown setting(s) {unknown}; known: {sorted(names)}")
    return cls(**d)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    return dataclasses.asdict(cfg)


def check_number(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, integer: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite real (an int when ``integer``) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{name}={value!r} must be {kind}")
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be finite")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        op = ">" if lo_open else ">="
        raise ConfigError(f"{name}={value!r} must be {op} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name}={value!r} must be <= {hi}")
