"""Batch-1 sparse matrix-vector product ``y = W x + b`` that skips zero activations.

W is handed over column by column: the CSR arrays of W^T (the CSC form of W), row j of W^T listing the
outputs that input j feeds. A zero activation ``x[j] == 0`` then costs one comparison, its whole column is
never read. This is the dataflow of EIE (Han et al., "EIE: Efficient Inference Engine on Compressed Deep
Neural Network", ISCA 2016, sec. III: "we exploit activation sparsity ... the multiplication is skipped when
a_j = 0"), and it matters here because MNIST pixels are ~80% zero and ReLU zeroes about half the hidden units.

    y_i = b_i + sum_{j : x_j != 0} sum_{k in col j} W_ij x_j

- :func:`csr_matvec` - serial scatter over the non-zero inputs.
- :func:`csr_matvec_parallel` - the inputs split into ``n_chunks`` fixed contiguous ranges, one private
  accumulator per range (no write races), summed in range order; the split does not depend on the thread
  count, so results are reproducible.
- :func:`csr_matvec_ref` - the NumPy twin: dense gather of the needed columns, written as a segment sum.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refdns.errors import NonFiniteError
from refdns.kernels._check import bias_or_zeros, check_csr, check_dense


@njit(cache=True)
def _matvec_kernel(indptr, indices, data, x, bias, relu, out):
    """Scatter ``x[j] * W^T[j, :]`` into ``out`` for every non-zero ``x[j]``; return the first non-finite j or -1."""
    for i in range(out.shape[0]):
        out[i] = bias[i]
    bad = -1
    for j in range(x.shape[0]):
        xj = x[j]
        if xj == 0.0:
            continue
        if not np.isfinite(xj):
            if bad < 0:
                bad = j
            continue
        for k in range(indptr[j], indptr[j + 1]):
            out[indices[k]] += data[k] * xj
    if relu:
        for i in range(out.shape[0]):
            if out[i] < 0.0:
                out[i] = 0.0
    return bad


@njit(cache=True, parallel=True)
def _matvec_parallel_kernel(indptr, indices, data, x, bias, relu, n_chunks, partial, out):
    """``partial[c]`` accumulates inputs of chunk c; then out = bias + sum_c partial[c] (in chunk order)."""
    D = x.shape[0]
    M = out.shape[0]
    bads = np.full(n_chunks, -1, dtype=np.int64)
    for c in prange(n_chunks):
        lo = c * D // n_chunks
        hi = (c + 1) * D // n_chunks
        acc = partial[c]
        for i in range(M):
            acc[i] = 0.0
        for j in range(lo, hi):
            xj = x[j]
            if xj == 0.0:
                continue
            if not np.isfinite(xj):
                if bads[c] < 0:
                    bads[c] = j
                continue
            for k in range(indptr[j], indptr[j + 1]):
                acc[indices[k]] += data[k] * xj
    for i in range(M):
        s = bias[i]
        for c in range(n_chunks):
            s += partial[c, i]
        if relu and s < 0.0:
            s = 0.0
        out[i] = s
    for c in range(n_chunks):
        if bads[c] >= 0:
            return bads[c]
    return -1


def _prepare(wt_indptr, wt_indices, wt_data, x, n_out, bias):
    check_dense("x", x, 1, wt_data.dtype if isinstance(wt_data, np.ndarray) else np.dtype(np.float32))
    check_csr("W^T", wt_indptr, wt_indices, wt_data, (x.shape[0], n_out))
    return np.ascontiguousarray(x), bias_or_zeros(bias, n_out, wt_data.dtype, "csr_matvec")


def _raise_bad(bad: int) -> None:
    if bad >= 0:
        raise NonFiniteError(f"x[{bad}] is NaN or Inf; sparse and dense products disagree on non-finite inputs "
                             "(0 * inf), so refdns refuses them", where=f"x[{bad}]")


def csr_matvec(wt_indptr, wt_indices, wt_data, x, *, n_out: int, bias=None, relu: bool = False) -> np.ndarray:
    """``y = W x + b`` (then ReLU if ``relu``), skipping zero entries of ``x``.

    Parameters
    ----------
    wt_indptr : ndarray, shape (D + 1,), int32
    wt_indices : ndarray, shape (nnz,), int32
        Output index of each stored weight, in [0, n_out).
    wt_data : ndarray, shape (nnz,), float32 or float64
        W^T in CSR form (= W in CSC form); see :meth:`refdns.sparse.CSRMatrix.transpose`.
    x : ndarray, shape (D,), dtype of ``wt_data``
    n_out : int
        M, the number of outputs (rows of W).
    bias : ndarray, shape (M,), optional
    relu : bool

    Returns
    -------
    y : ndarray, shape (M,), dtype of ``wt_data``

    Raises
    ------
    SparseFormatError
        Malformed CSR arrays or a shape that does not match ``x``.
    NonFiniteError
        ``x`` or ``bias`` holds NaN or Inf.
    """
    x, b = _prepare(wt_indptr, wt_indices, wt_data, x, n_out, bias)
    out = np.empty(n_out, dtype=wt_data.dtype)
    _raise_bad(_matvec_kernel(wt_indptr, wt_indices, wt_data, x, b, bool(relu), out))
    return out


def csr_matvec_parallel(
    wt_indptr, wt_indices, wt_data, x, *, n_out: int, bias=None, relu: bool = False, n_chunks: int = 2
) -> np.ndarray:
    """:func:`csr_matvec` with the inputs split into ``n_chunks`` ranges run in parallel (Numba prange)."""
    if isinstance(n_chunks, bool) or not isinstance(n_chunks, (int, np.integer)) or n_chunks < 1:
        raise ValueError(f"n_chunks={n_chunks!r} must be an int >= 1")
    x, b = _prepare(wt_indptr, wt_indices, wt_data, x, n_out, bias)
    out = np.empty(n_out, dtype=wt_data.dtype)
    partial = np.empty((int(n_chunks), n_out), dtype=wt_data.dtype)
    _raise_bad(_matvec_parallel_kernel(wt_indptr, wt_indices, wt_data, x, b, bool(relu), int(n_chunks), partial, out))
    return out


def csr_matvec_ref(wt_indptr, wt_indices, wt_data, x, *, n_out: int, bias=None, relu: bool = False) -> np.ndarray:
    """NumPy twin of :func:`csr_matvec` in float64: every stored weight times its input, summed per output.

    Uses all inputs (zeros included), so it also checks that skipping zeros changes nothing.
    """
    x64 = np.asarray(x, dtype=np.float64)
    cols = np.repeat(np.arange(len(wt_indptr) - 1), np.diff(wt_indptr))  # input index of each stored weight
    y = np.zeros(n_out) if bias is None else np.asarray(bias, dtype=np.float64).copy()
    np.add.at(y, wt_indices, np.asarray(wt_data, dtype=np.float64) * x64[cols])
    return np.maximum(y, 0.0) if relu else y
