"""Input checks shared by the compress modules (the streams and index arrays they pass each other)."""

from __future__ import annotations

import numpy as np

from refdns.errors import CompressError


def int_vector(name: str, a: object) -> np.ndarray:
    """``a`` as a 1-D int64 array, or CompressError naming ``name`` (an empty array of any dtype passes)."""
    arr = np.asarray(a)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise CompressError(f"{name} must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)
