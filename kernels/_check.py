"""Input checks shared by the kernel wrappers (plain Python: they run once per call, outside the kernels)."""

from __future__ import annotations

import numpy as np

from refdns.errors import NonFiniteError, SparseFormatError

INDEX = np.dtype(np.int32)
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def check_csr(name: str, indptr, indices, data, shape: tuple[int, int], *, contents: bool = True) -> None:
    """Raise SparseFormatError unless (indptr, indices, data) is a valid CSR matrix of ``shape``.

    Valid means: int32 index arrays, float32/float64 values, ``len(indptr) == rows + 1``, ``indptr`` starting
    at 0, non-decreasing and ending at ``nnz``, every column index in ``[0, cols)``, finite values. Sorted or
    duplicate column indices are allowed (duplicates add, as in scipy).

    ``contents=False`` runs only the checks that cost O(1) (array types, dtypes, lengths, the first and last
    row pointer), for callers that ran the full check once on arrays they keep
    (:class:`refdns.sparse.SparseNet` checks every layer at construction). The kernels do not bounds-check,
    so the O(nnz) checks must have run on these arrays at some point.
    """
    rows, cols = shape
    for part, arr in (("indptr", indptr), ("indices", indices), ("data", data)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1:
            raise SparseFormatError(f"{name}.{part}: expected a 1-D numpy array, got {type(arr).__name__}"
                                    + (f" with shape {arr.shape}" if isinstance(arr, np.ndarray) else ""))
    if indptr.dtype != INDEX or indices.dtype != INDEX:
        raise SparseFormatError(f"{name}: indptr/indices must be int32, got {indptr.dtype}/{indices.dtype}")
    if data.dtype not in FLOATS:
        raise SparseFormatError(f"{name}.data.dtype={data.dtype}: expected float32 or float64")
    if len(indptr) != rows + 1:
        raise SparseFormatError(f"{name}.indptr has length {len(indptr)}, expected rows + 1 = {rows + 1}")
    if len(indices) != len(data):
        raise SparseFormatError(f"{name}: {len(indices)} indices but {len(data)} values")
    if indptr[0] != 0 or indptr[-1] != len(data):
        raise SparseFormatError(f"{name}.indptr must start at 0, never decrease and end at nnz={len(data)}")
    if not contents:
        return
    if rows and np.any(np.diff(indptr) < 0):
        raise SparseFormatError(f"{name}.indptr must start at 0, never decrease and end at nnz={len(data)}")
    if len(indices) and (indices.min() < 0 or indices.max() >= cols):
        raise SparseFormatError(f"{name}.indices hold a column outside [0, {cols})")
    if not np.isfinite(data).all():
        raise NonFiniteError(f"{name}.data holds NaN or Inf; a pruned checkpoint's weights must be finite",
                             where=name)


def check_dense(name: str, x, ndim: int, dtype: np.dtype) -> None:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name}.shape={x.shape}: expected {ndim} dimensions")
    if x.dtype != dtype:
        raise TypeError(f"{name}.dtype={x.dtype}: expected {dtype} (the dtype of the weights)")


def check_finite(name: str, x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise NonFiniteError(f"{name} holds NaN or Inf (first at index {bad}); sparse and dense products "
                             "disagree on non-finite inputs (0 * inf), so refdns refuses them", where=name)


def bias_or_zeros(bias, rows: int, dtype: np.dtype, name: str, *, contents: bool = True) -> np.ndarray:
    """``bias`` checked (finiteness only if ``contents``) and contiguous, or zeros when it is None."""
    if bias is None:
        return np.zeros(rows, dtype=dtype)
    check_dense(f"{name} bias", bias, 1, dtype)
    if bias.shape != (rows,):
        raise ValueError(f"{name} bias has shape {bias.shape}, expected ({rows},)")
    if contents:
        check_finite(f"{name} bias", bias)
    return np.ascontiguousarray(bias)


def out_or_empty(out, shape: tuple[int, ...], dtype: np.dtype, name: str) -> np.ndarray:
    """A preallocated output checked for type, shape, dtype and C order, or a new one when it is None."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    check_dense(f"{name} out", out, len(shape), dtype)
    if out.shape != tuple(shape):
        raise ValueError(f"{name} out has shape {out.shape}, expected {tuple(shape)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} out must be C-contiguous (the kernel writes it row by row)")
    return out
