"""Cheap argument checks shared by the layers (they run thousands of times per second in training)."""

from __future__ import annotations

import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def check_array(name: str, a: object, ndim: int) -> None:
    """A float32/float64 ndarray with ``ndim`` dimensions, else a TypeError/ValueError naming ``name``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOATS:
        raise TypeError(f"{name}.dtype={a.dtype}: expected float32 or float64")
    if a.ndim != ndim:
        raise ValueError(f"{name}.shape={a.shape}: expected {ndim} dimensions, got {a.ndim}")


def check_int(name: str, v: object, minimum: int) -> int:
    """An int (not a bool) of at least ``minimum``, returned as a Python int."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}={v!r}: expected an int >= {minimum}")
    if v < minimum:
        raise ValueError(f"{name}={v!r}: expected an int >= {minimum}")
    return int(v)
