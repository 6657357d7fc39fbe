"""Products with a masked weight that skip the pruned entries (the design card's Numba masked GEMM).

DNS needs two products with the effective weight ``W * T`` of a dense layer (Caffe layout (M, D)):

    forward             Y  = X (W*T)^T      X (N, D) -> Y (N, M)      :func:`masked_matmul_t`
    gradient to input   dX = dY (W*T)       dY (N, M) -> dX (N, D)    :func:`masked_matmul`

(dL/dW stays a dense product: DNS applies the gradient to every entry of W, pruned ones included.)

The sparsity pattern of ``W * T`` is the mask's, so it is stored as CSR *structure only*
(:func:`mask_csr`: ``indptr`` (M+1,), ``indices`` (nnz,)), rebuilt when the mask changes, which in DNS is
rare after the first few thousand iterations. The *values* change every step (DNS's gradient reaches every
entry of W), so the kernels read them straight from the dense W through the index structure. The other
choice, gathering ``data = W[T]`` each step and running a classic CSR kernel on it, is kept as
``data=`` / :func:`csr_gather` so the two can be timed against each other (validate/bench_masked_gemm.py).

Both kernels work on transposed activations, ``X^T`` (D, N) and ``Y^T`` (M, N): for each kept entry
(m, j) the inner loop is an axpy over the batch, ``Y^T[m, :] += w[m, j] * X^T[j, :]``, contiguous in memory
and independent per lane, so LLVM vectorises it without fastmath (a dot-product loop over the kept entries
of a row would be a reduction, which strict IEEE order keeps scalar). The results differ from the dense
BLAS product only by float rounding (a different summation order).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def mask_csr(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR structure of a 2-D mask: where its True entries are, row by row.

    Parameters
    ----------
    mask : ndarray, shape (M, D), bool

    Returns
    -------
    indptr : ndarray, shape (M + 1,), int64
        Row m's kept entries are ``indices[indptr[m]:indptr[m + 1]]``.
    indices : ndarray, shape (nnz,), int32
        Column of each kept entry, ascending within a row.
    """
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
        got = getattr(mask, "dtype", type(mask).__name__)
        raise TypeError(f"mask: expected a 2-D bool ndarray, got {got} "
                        f"with shape {getattr(mask, 'shape', None)}")
    if mask.shape[1] >= 2**31:
        raise ValueError(f"mask.shape={mask.shape}: more columns than int32 indices can address")
    indptr = np.zeros(mask.shape[0] + 1, dtype=np.int64)
    indices = np.empty(np.count_nonzero(mask), dtype=np.int32)
    _mask_csr(mask, indptr, indices)
    return indptr, indices


@njit(cache=True)
def _mask_csr(mask, indptr, indices):
    # One row-major pass; several times faster than np.nonzero on a 2-D mask plus a per-row count.
    k = 0
    for m in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[m, j]:
                indices[k] = j
                k += 1
        indptr[m + 1] = k


def mask_csr_ref(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of :func:`mask_csr`: per-row counts and ``np.nonzero``."""
    indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)
    return indptr, np.nonzero(mask)[1].astype(np.int32)  # row-major: rows, then columns, ascending


def csr_gather(w: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
               out: np.ndarray | None = None) -> np.ndarray:
    """``data[k] = w[m, indices[k]]`` for the k-th kept entry, row m (the classic CSR value array).

    Parameters
    ----------
    w : ndarray, shape (M, D), float32 or float64
    indptr, indices : ndarray
        The mask's CSR structure from :func:`mask_csr`.
    out : ndarray, shape (nnz,), dtype of w, optional
        Written in place and returned (no allocation per step).

    Returns
    -------
    data : ndarray, shape (nnz,), dtype of w
    """
    if not isinstance(w, np.ndarray) or w.dtype not in _FLOATS or w.ndim != 2:
        got = getattr(w, "dtype", type(w).__name__)
        raise TypeError(f"w: expected a 2-D float32/float64 ndarray, got {got}")
    if indptr.shape != (w.shape[0] + 1,) or indptr[-1] != indices.shape[0]:
        raise ValueError(f"indptr.shape={indptr.shape} / indices.shape={indices.shape} do not describe a "
                         f"{w.shape} matrix; rebuild them with mask_csr(mask)")
    if out is not None and (out.shape != indices.shape or out.dtype != w.dtype):
        raise ValueError(f"out is {out.dtype}{out.shape}, expected {w.dtype}{indices.shape}")
    if out is None:
        out = np.empty(indices.shape[0], dtype=w.dtype)
    _gather(w, indptr, indices, out)
    return out


@njit(cache=True)
def _gather(w, indptr, indices, out):
    for m in range(w.shape[0]):
        for k in range(indptr[m], indptr[m + 1]):
            out[k] = w[m, indices[k]]


@njit(cache=True)
def _matmul_t(w, indptr, indices, xt, yt):
    # yt (M, N) = (W*T) @ xt, xt (D, N); values read from the dense w through the index structure.
    n = xt.shape[1]
    for m in range(w.shape[0]):
        for k in range(indptr[m], indptr[m + 1]):
            j = indices[k]
            wv = w[m, j]
            for i in range(n):
                yt[m, i] += wv * xt[j, i]


@njit(cache=True)
def _matmul_t_data(data, indptr, indices, xt, yt):
    # The same product from a gathered value array data (nnz,).
    n = xt.shape[1]
    for m in range(yt.shape[0]):
        for k in range(indptr[m], indptr[m + 1]):
            j = indices[k]
            wv = data[k]
            for i in range(n):
                yt[m, i] += wv * xt[j, i]


@njit(cache=True)
def _matmul(w, indptr, indices, dyt, dxt):
    # dxt (D, N) = (W*T)^T @ dyt, dyt (M, N): each kept entry scatters one row of dyt into dxt.
    n = dyt.shape[1]
    for m in range(w.shape[0]):
        for k in range(indptr[m], indptr[m + 1]):
            j = indices[k]
            wv = w[m, j]
            for i in range(n):
                dxt[j, i] += wv * dyt[m, i]


@njit(cache=True)
def _matmul_data(data, indptr, indices, dyt, dxt):
    n = dyt.shape[1]
    for m in range(dyt.shape[0]):
        for k in range(indptr[m], indptr[m + 1]):
            j = indices[k]
            wv = data[k]
            for i in range(n):
                dxt[j, i] += wv * dyt[m, i]


def _check(name_a: str, a: np.ndarray, w: np.ndarray, indptr: np.ndarray, indices: np.ndarray, axis_len: int,
           data: np.ndarray | None) -> None:
    for name, arr in (("w", w), (name_a, a)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
        if arr.dtype not in _FLOATS or arr.ndim != 2:
            raise TypeError(f"{name}: expected a 2-D float32/float64 array, got {arr.dtype} {arr.shape}")
    if a.dtype != w.dtype:
        raise TypeError(f"{name_a}.dtype={a.dtype}: expected {w.dtype} to match w (no silent promotion)")
    if a.shape[1] != axis_len:
        raise ValueError(f"{name_a}.shape={a.shape}: expected (N, {axis_len}) to match w.shape={w.shape}")
    if indptr.shape != (w.shape[0] + 1,) or indptr[-1] != indices.shape[0]:
        raise ValueError(f"indptr.shape={indptr.shape} / indices.shape={indices.shape} do not describe a "
                         f"{w.shape} matrix; rebuild them with mask_csr(mask)")
    if data is not None and (data.shape != indices.shape or data.dtype != w.dtype):
        raise ValueError(f"data is {data.dtype}{data.shape}, expected {w.dtype}{indices.shape} (csr_gather)")


def masked_matmul_t(x: np.ndarray, w: np.ndarray, indptr: np.ndarray, indices: np.ndarray, *,
                    data: np.ndarray | None = None) -> np.ndarray:
    """``Y = X (W*T)^T`` touching only the kept entries of W (the forward of a masked dense layer).

    Parameters
    ----------
    x : ndarray, shape (N, D), float32 or float64
    w : ndarray, shape (M, D), dtype of x
        The dense weight; entries outside the structure are ignored.
    indptr, indices : ndarray
        The mask's CSR structure from :func:`mask_csr`.
    data : ndarray, shape (nnz,), optional
        Gathered values (:func:`csr_gather`); when given, they are used instead of reading ``w``.

    Returns
    -------
    y : ndarray, shape (N, M), dtype of x
        A transposed view of a C-contiguous (M, N) array.
    """
    _check("x", x, w, indptr, indices, w.shape[1], data)
    xt = np.ascontiguousarray(x.T)  # (D, N)
    yt = np.zeros((w.shape[0], x.shape[0]), dtype=x.dtype)  # (M, N)
    if data is None:
        _matmul_t(w, indptr, indices, xt, yt)
    else:
        _matmul_t_data(data, indptr, indices, xt, yt)
    return yt.T


def masked_matmul(dy: np.ndarray, w: np.ndarray, indptr: np.ndarray, indices: np.ndarray, *,
                  data: np.ndarray | None = None) -> np.ndarray:
    """``dX = dY (W*T)`` touching only the kept entries of W (the gradient to a masked layer's input).

    Parameters
    ----------
    dy : ndarray, shape (N, M), float32 or float64
    w : ndarray, shape (M, D), dtype of dy
    indptr, indices : ndarray
        The mask's CSR structure from :func:`mask_csr`.
    data : ndarray, shape (nnz,), optional
        Gathered values (:func:`csr_gather`).

    Returns
    -------
    dx : ndarray, shape (N, D), dtype of dy
        A transposed view of a C-contiguous (D, N) array.
    """
    _check("dy", dy, w, indptr, indices, w.shape[0], data)
    dyt = np.ascontiguousarray(dy.T)  # (M, N)
    dxt = np.zeros((w.shape[1], dy.shape[0]), dtype=dy.dtype)  # (D, N)
    if data is None:
        _matmul(w, indptr, indices, dyt, dxt)
    else:
        _matmul_data(data, indptr, indices, dyt, dxt)
    return dxt.T


def _dense_from_csr_ref(w: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """W*T rebuilt from the structure by fancy indexing, in float64 (the oracle's effective weight)."""
    rows = np.repeat(np.arange(w.shape[0]), np.diff(indptr))
    w_eff = np.zeros(w.shape, dtype=np.float64)
    w_eff[rows, indices] = w[rows, indices]
    return w_eff


def masked_matmul_t_ref(x: np.ndarray, w: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`masked_matmul_t`: einsum with the densified effective weight, in float64."""
    return np.einsum("nd,md->nm", x.astype(np.float64), _dense_from_csr_ref(w, indptr, indices))


def masked_matmul_ref(dy: np.ndarray, w: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`masked_matmul`: einsum with the densified effective weight, in float64."""
    return np.einsum("nm,md->nd", dy.astype(np.float64), _dense_from_csr_ref(w, indptr, indices))
