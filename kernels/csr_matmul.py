"""Batched sparse x dense product ``Y = W X + b`` with feature-major activations.

W is CSR (M, D); activations are stored feature-major, X (D, N) and Y (M, N): one row per unit, the batch
along it. Each stored weight W_mj then touches two contiguous rows,

    Y[m, :] += W_mj * X[j, :]

which the compiler vectorises, and the net can stay feature-major from the first layer to the logits
(one transpose in, one out). The batch is cut into column tiles of ``TILE`` so that the tile of X a row
reads (D x TILE floats, 784 x 256 x 4 B = 0.8 MB for LeNet-300-100's ip1) stays in a core's L2 cache.

- :func:`csr_matmul` - serial, tile after tile.
- :func:`csr_matmul_parallel` - tiles spread over threads with ``prange`` (tiles write disjoint columns, so
  no races and a result identical to the serial one).
- :func:`csr_matmul_ref` - the NumPy/scipy twin: ``scipy.sparse.csr_matrix @ X`` in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refdns.kernels._check import bias_or_zeros, check_csr, check_dense, check_finite

TILE = 256


@njit(cache=True)
def _tile(indptr, indices, data, x, bias, relu, out, t0, t1):
    M = indptr.shape[0] - 1
    for m in range(M):
        row = out[m, t0:t1]
        row[:] = bias[m]
        for k in range(indptr[m], indptr[m + 1]):
            v = data[k]
            src = x[indices[k], t0:t1]
            for n in range(t1 - t0):
                row[n] += v * src[n]
        if relu:
            for n in range(t1 - t0):
                if row[n] < 0.0:
                    row[n] = 0.0


@njit(cache=True)
def _matmul_kernel(indptr, indices, data, x, bias, relu, out):
    N = x.shape[1]
    for t0 in range(0, N, TILE):
        _tile(indptr, indices, data, x, bias, relu, out, t0, min(t0 + TILE, N))


@njit(cache=True, parallel=True)
def _matmul_parallel_kernel(indptr, indices, data, x, bias, relu, out):
    N = x.shape[1]
    n_tiles = (N + TILE - 1) // TILE
    for t in prange(n_tiles):
        _tile(indptr, indices, data, x, bias, relu, out, t * TILE, min((t + 1) * TILE, N))


def _prepare(indptr, indices, data, x, n_in, bias, check_inputs):
    dtype = data.dtype if isinstance(data, np.ndarray) else np.dtype(np.float32)
    check_dense("x", x, 2, dtype)
    if x.shape[0] != n_in:
        raise ValueError(f"x has shape {x.shape}: feature-major activations need x.shape[0] == D == {n_in}")
    check_csr("W", indptr, indices, data, (len(indptr) - 1, n_in))
    if check_inputs:
        check_finite("x", x)
    return np.ascontiguousarray(x), bias_or_zeros(bias, len(indptr) - 1, dtype, "csr_matmul")


def csr_matmul(indptr, indices, data, x, *, n_in: int, bias=None, relu: bool = False,
               check_inputs: bool = True) -> np.ndarray:
    """``Y = W X + b[:, None]`` (then ReLU if ``relu``) for CSR W and feature-major X.

    Parameters
    ----------
    indptr : ndarray, shape (M + 1,), int32
    indices : ndarray, shape (nnz,), int32
    data : ndarray, shape (nnz,), float32 or float64
        W in CSR form, shape (M, n_in).
    x : ndarray, shape (D, N), dtype of ``data``
        Feature-major activations (one row per input unit). Made C-contiguous if it is not.
    n_in : int
        D, the number of columns of W.
    bias : ndarray, shape (M,), optional
    relu : bool
    check_inputs : bool
        Refuse NaN/Inf in ``x`` (NonFiniteError). Callers that checked already may skip the pass.

    Returns
    -------
    y : ndarray, shape (M, N), dtype of ``data``
    """
    x, b = _prepare(indptr, indices, data, x, n_in, bias, check_inputs)
    out = np.empty((len(indptr) - 1, x.shape[1]), dtype=data.dtype)
    _matmul_kernel(indptr, indices, data, x, b, bool(relu), out)
    return out


def csr_matmul_parallel(indptr, indices, data, x, *, n_in: int, bias=None, relu: bool = False,
                        check_inputs: bool = True) -> np.ndarray:
    """:func:`csr_matmul` with the column tiles spread over Numba threads (bit-identical result)."""
    x, b = _prepare(indptr, indices, data, x, n_in, bias, check_inputs)
    out = np.empty((len(indptr) - 1, x.shape[1]), dtype=data.dtype)
    _matmul_parallel_kernel(indptr, indices, data, x, b, bool(relu), out)
    return out


def csr_matmul_ref(indptr, indices, data, x, *, n_in: int, bias=None, relu: bool = False) -> np.ndarray:
    """scipy twin of :func:`csr_matmul`, in float64."""
    import scipy.sparse as sp

    w = sp.csr_matrix((np.asarray(data, np.float64), indices, indptr), shape=(len(indptr) - 1, n_in))
    y = np.asarray(w @ np.asarray(x, dtype=np.float64))
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[:, None]
    return np.maximum(y, 0.0) if relu else y
