"""Fully connected layer on a sparse effective weight: ``out = x @ w_eff.T + b``, pruned entries skipped.

The layer does not see a mask. It sees :class:`SparseWeight`, one way of *representing* the effective weight
``w_eff``: the dense array ``w`` plus the CSR structure (``indptr``, ``indices``) of the entries of ``w_eff``
that may be non-zero; every other entry of ``w_eff`` is 0 whatever ``w`` holds there. The net (through
:mod:`refdns.effective`) builds it; :func:`dense_forward` / :func:`dense_backward` are the same layer on a
dense ``w_eff``, and the two agree to float rounding (they sum in different orders).

The products with ``w_eff`` run in the Numba kernels of :mod:`refdns.kernels.masked_gemm`; the weight
gradient stays a dense product, dL/dw_eff at every entry, because DNS applies it to every entry of W
(Guo et al. 2016, eq. (2)).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refdns.kernels.masked_gemm import masked_matmul, masked_matmul_t


class SparseWeight(NamedTuple):
    """An effective weight ``w_eff`` (M, D): ``w[m, j]`` at the listed entries, 0 elsewhere.

    Row m's listed columns are ``indices[indptr[m]:indptr[m + 1]]``
    (:func:`refdns.kernels.masked_gemm.mask_csr`).
    """

    w: np.ndarray  # (M, D)
    indptr: np.ndarray  # (M + 1,) int64
    indices: np.ndarray  # (nnz,) int32

    @property
    def shape(self) -> tuple[int, int]:
        return self.w.shape

    @property
    def dtype(self) -> np.dtype:
        return self.w.dtype

    def toarray(self) -> np.ndarray:
        """The dense ``w_eff`` (a new array), for tests and inspection."""
        out = np.zeros_like(self.w)
        rows = np.repeat(np.arange(self.w.shape[0]), np.diff(self.indptr))
        out[rows, self.indices] = self.w[rows, self.indices]
        return out


class SparseDenseCache(NamedTuple):
    """What :func:`sparse_dense_backward` needs: the layer input and the sparse effective weight."""

    x: np.ndarray  # (N, D)
    w: SparseWeight


def sparse_dense_forward(
    x: np.ndarray, w: SparseWeight, b: np.ndarray
) -> tuple[np.ndarray, SparseDenseCache]:
    """Affine map ``out = x @ w_eff.T + b``, touching only the listed entries of ``w_eff``.

    Parameters
    ----------
    x : ndarray, shape (N, D), float32 or float64
    w : SparseWeight, shape (M, D), dtype of x
    b : ndarray, shape (M,), dtype of x
        The (effective) bias.

    Returns
    -------
    out : ndarray, shape (N, M), dtype of x
        Fortran-ordered (a transposed view), which the next sparse layer reads without a copy.
    cache : SparseDenseCache
        Holds references to ``x`` and ``w``: do not modify them before the backward pass.
    """
    if not isinstance(w, SparseWeight):
        raise TypeError(f"w: expected a SparseWeight, got {type(w).__name__}")
    if not isinstance(b, np.ndarray) or b.shape != (w.shape[0],) or b.dtype != w.dtype:
        raise ValueError(f"b: expected a {w.dtype} array of shape ({w.shape[0]},), got "
                         f"{getattr(b, 'dtype', type(b).__name__)} {getattr(b, 'shape', '')}")
    out = masked_matmul_t(x, w.w, w.indptr, w.indices)  # (N, M); validates x against w
    out += b
    return out, SparseDenseCache(x, w)


def sparse_dense_backward(
    dout: np.ndarray, cache: SparseDenseCache, *, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`sparse_dense_forward`; ``dw`` is dense (dL/dw_eff at every entry).

    Parameters
    ----------
    dout : ndarray, shape (N, M), dtype of the forward input
    cache : SparseDenseCache
    need_dx : bool, default True
        If False, skip the product with ``w_eff`` and return ``None`` for ``dx``.

    Returns
    -------
    dx : ndarray, shape (N, D), or None
        dL/dx = dout @ w_eff, computed from the listed entries only.
    dw : ndarray, shape (M, D)
        dL/dw_eff = dout.T @ x, every entry (pruned ones included).
    db : ndarray, shape (M,)
    """
    x, w = cache
    if not isinstance(dout, np.ndarray) or dout.shape != (x.shape[0], w.shape[0]) or dout.dtype != x.dtype:
        raise ValueError(f"dout: expected a {x.dtype} array of shape {(x.shape[0], w.shape[0])}, got "
                         f"{getattr(dout, 'dtype', type(dout).__name__)} {getattr(dout, 'shape', '')}")
    dx = masked_matmul(dout, w.w, w.indptr, w.indices) if need_dx else None  # (N, D)
    dw = dout.T @ x  # (M, D)
    db = dout.sum(axis=0)
    return dx, dw, db
