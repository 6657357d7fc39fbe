"""im2col and col2im for :mod:`refdns.layers.conv`: the data movement around a convolution's matrix products.

A convolution ``out[n, f] = sum_c x_pad[n, c] (*) w[f, c]`` becomes one product ``w (F, C*KH*KW) @ cols`` once
the input is unrolled into columns (im2col); its input gradient is ``w.T @ dout`` folded back onto the input
(col2im: every column entry is added to the pixel it was copied from). Two column layouts, as in the layer:

- ``"batch_first"``: ``cols`` shape ``(N, C*KH*KW, OH*OW)``, row ``(c, i, j)`` of sample ``n`` holding
  ``x_pad[n, c, oh*stride + i, ow*stride + j]`` at column ``oh*OW + ow``;
- ``"batch_last"``: ``cols`` shape ``(C*KH*KW, OH*OW*N)``, the same entry at column ``(oh*OW + ow)*N + n``.

The NumPy formulation these kernels replace (:func:`im2col_ref`, :func:`col2im_ref`, the twins) makes a
padded copy and a transposed copy of the input and one strided slice copy per kernel offset; measured on
LeNet-5's conv2 (batch 64) that data movement cost more than the matrix products themselves, and every
temporary was a fresh multi-megabyte allocation each step. The kernels read the input once, write straight
into a caller's buffer, and handle padding by bounds checks. col2im adds the contributions of the kernel
offsets to each pixel in the same order as the twin (offset ``(i, j)`` row-major), so both give the same
bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refdns.kernels._check import FLOATS

LAYOUTS = ("batch_first", "batch_last")


def _geometry(x_shape, KH: int, KW: int, stride: int, pad: int) -> tuple[int, int]:
    N, C, H, W = x_shape
    if stride < 1 or pad < 0 or KH < 1 or KW < 1:
        raise ValueError(f"need stride >= 1, pad >= 0 and a non-empty kernel, got stride={stride}, pad={pad}, "
                         f"kernel {KH}x{KW}")
    if KH > H + 2 * pad or KW > W + 2 * pad:
        raise ValueError(f"kernel {KH}x{KW} larger than the padded input {H + 2 * pad}x{W + 2 * pad}")
    return (H + 2 * pad - KH) // stride + 1, (W + 2 * pad - KW) // stride + 1


def cols_shape(x_shape, KH: int, KW: int, stride: int, pad: int, layout: str) -> tuple[int, ...]:
    """Shape of the column matrix of an input of ``x_shape`` (N, C, H, W)."""
    N, C = x_shape[:2]
    OH, OW = _geometry(x_shape, KH, KW, stride, pad)
    if layout == "batch_first":
        return (N, C * KH * KW, OH * OW)
    return (C * KH * KW, OH * OW * N)


def _check(name: str, a, ndim: int) -> None:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOATS:
        raise TypeError(f"{name}.dtype={a.dtype}: expected float32 or float64")
    if a.ndim != ndim:
        raise ValueError(f"{name}.shape={a.shape}: expected {ndim} dimensions")


def _out(out, shape, dtype, name: str) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != tuple(shape):
        got = f"{out.dtype}{out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"{name}: expected a {dtype} array of shape {tuple(shape)}, got {got}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return out


@njit(cache=True)
def _im2col_bf(x, KH, KW, stride, pad, OH, OW, cols):
    # cols (N, C*KH*KW, OH*OW)
    N, C, H, W = x.shape
    if pad == 0:  # no bounds checks: the inner copies vectorize
        for n in range(N):
            for c in range(C):
                for i in range(KH):
                    for j in range(KW):
                        r = (c * KH + i) * KW + j
                        for oh in range(OH):
                            h = oh * stride + i
                            p0 = oh * OW
                            if stride == 1:
                                for ow in range(OW):
                                    cols[n, r, p0 + ow] = x[n, c, h, ow + j]
                            else:
                                for ow in range(OW):
                                    cols[n, r, p0 + ow] = x[n, c, h, ow * stride + j]
        return
    for n in range(N):
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    r = (c * KH + i) * KW + j
                    for oh in range(OH):
                        h = oh * stride + i - pad
                        p0 = oh * OW
                        if h < 0 or h >= H:
                            for ow in range(OW):
                                cols[n, r, p0 + ow] = 0
                            continue
                        for ow in range(OW):
                            w = ow * stride + j - pad
                            if 0 <= w < W:
                                cols[n, r, p0 + ow] = x[n, c, h, w]
                            else:
                                cols[n, r, p0 + ow] = 0


@njit(cache=True)
def _to_batch_last(x, pad, xt):
    # xt (C, H + 2 pad, W + 2 pad, N): the input with the batch innermost, zero border
    N, C, H, W = x.shape
    xt[...] = 0
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    xt[c, h + pad, w + pad, n] = x[n, c, h, w]


@njit(cache=True)
def _im2col_bl(xt, KH, KW, stride, OH, OW, cols):
    # xt (C, Hp, Wp, N) padded, batch innermost; cols (C*KH*KW, OH*OW*N)
    C, Hp, Wp, N = xt.shape
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                r = (c * KH + i) * KW + j
                for oh in range(OH):
                    h = oh * stride + i
                    for ow in range(OW):
                        w = ow * stride + j
                        q = (oh * OW + ow) * N
                        for n in range(N):
                            cols[r, q + n] = xt[c, h, w, n]


def im2col(x: np.ndarray, KH: int, KW: int, *, stride: int = 1, pad: int = 0, layout: str = "batch_first",
           out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """The column matrix of ``x`` (see the module docstring for both layouts).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    KH, KW : int
        Kernel size.
    stride, pad : int
    layout : {"batch_first", "batch_last"}
    out : ndarray, optional
        Where to write the columns (shape :func:`cols_shape`, dtype of x, C-contiguous); new when None.
    scratch : ndarray, optional
        ``"batch_last"`` only: a buffer of shape (C, H + 2 pad, W + 2 pad, N), dtype of x, for the
        transposed padded input; new when None.

    Returns
    -------
    cols : ndarray, ``out`` when given
    """
    _check("x", x, 4)
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    OH, OW = _geometry(x.shape, KH, KW, stride, pad)
    cols = _out(out, cols_shape(x.shape, KH, KW, stride, pad, layout), x.dtype, "out")
    xc = np.ascontiguousarray(x)
    if layout == "batch_first":
        _im2col_bf(xc, KH, KW, stride, pad, OH, OW, cols)
    else:
        N, C, H, W = x.shape
        xt = _out(scratch, (C, H + 2 * pad, W + 2 * pad, N), x.dtype, "scratch")
        _to_batch_last(xc, pad, xt)
        _im2col_bl(xt, KH, KW, stride, OH, OW, cols)
    return cols


def im2col_ref(x: np.ndarray, KH: int, KW: int, *, stride: int = 1, pad: int = 0,
               layout: str = "batch_first") -> np.ndarray:
    """The NumPy twin: a padded copy, then one strided slice copy per kernel offset."""
    N, C, H, W = x.shape
    OH, OW = _geometry(x.shape, KH, KW, stride, pad)
    he, we = stride * (OH - 1) + 1, stride * (OW - 1) + 1
    if layout == "batch_first":
        xp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
        xp[:, :, pad : pad + H, pad : pad + W] = x
        cols = np.empty((N, C, KH, KW, OH, OW), dtype=x.dtype)
        for i in range(KH):
            for j in range(KW):
                cols[:, :, i, j] = xp[:, :, i : i + he : stride, j : j + we : stride]
        return cols.reshape(N, C * KH * KW, OH * OW)
    xt = np.zeros((C, H + 2 * pad, W + 2 * pad, N), dtype=x.dtype)
    xt[:, pad : pad + H, pad : pad + W, :] = x.transpose(1, 2, 3, 0)
    cols = np.empty((C, KH, KW, OH, OW, N), dtype=x.dtype)
    for i in range(KH):
        for j in range(KW):
            cols[:, i, j] = xt[:, i : i + he : stride, j : j + we : stride, :]
    return cols.reshape(C * KH * KW, OH * OW * N)


@njit(cache=True)
def _col2im_bf(dcols, KH, KW, stride, pad, OH, OW, dx):
    # dcols (N, C*KH*KW, OH*OW); dx (N, C, H, W), zeroed here
    N, C, H, W = dx.shape
    dx[...] = 0
    for n in range(N):
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    r = (c * KH + i) * KW + j
                    for oh in range(OH):
                        h = oh * stride + i - pad
                        if h < 0 or h >= H:
                            continue
                        for ow in range(OW):
                            w = ow * stride + j - pad
                            if 0 <= w < W:
                                dx[n, c, h, w] += dcols[n, r, oh * OW + ow]


@njit(cache=True)
def _col2im_bl(dcols, KH, KW, stride, pad, OH, OW, dxt, dx):
    # dcols (C*KH*KW, OH*OW*N); dxt (C, Hp, Wp, N) scratch; dx (N, C, H, W)
    C, Hp, Wp, N = dxt.shape
    H, W = dx.shape[2], dx.shape[3]
    dxt[...] = 0
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                r = (c * KH + i) * KW + j
                for oh in range(OH):
                    h = oh * stride + i
                    for ow in range(OW):
                        w = ow * stride + j
                        q = (oh * OW + ow) * N
                        for n in range(N):
                            dxt[c, h, w, n] += dcols[r, q + n]
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    dx[n, c, h, w] = dxt[c, h + pad, w + pad, n]


def col2im(dcols: np.ndarray, x_shape: tuple[int, int, int, int], KH: int, KW: int, *, stride: int = 1,
           pad: int = 0, layout: str = "batch_first", out: np.ndarray | None = None,
           scratch: np.ndarray | None = None) -> np.ndarray:
    """Fold a column-gradient matrix back onto an input of ``x_shape``: the adjoint of :func:`im2col`.

    Parameters
    ----------
    dcols : ndarray, shape ``cols_shape(x_shape, ...)``, float32 or float64
    x_shape : (N, C, H, W)
    KH, KW, stride, pad, layout
        As for :func:`im2col`.
    out : ndarray, shape x_shape, dtype of dcols, C-contiguous, optional
        Overwritten with the result; new when None.
    scratch : ndarray, optional
        ``"batch_last"`` only: shape (C, H + 2 pad, W + 2 pad, N), dtype of dcols; new when None.

    Returns
    -------
    dx : ndarray, shape x_shape, ``out`` when given
    """
    _check("dcols", dcols, 3 if layout == "batch_first" else 2)
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    x_shape = (int(x_shape[0]), int(x_shape[1]), int(x_shape[2]), int(x_shape[3]))
    OH, OW = _geometry(x_shape, KH, KW, stride, pad)
    want = cols_shape(x_shape, KH, KW, stride, pad, layout)
    if dcols.shape != want:
        raise ValueError(f"dcols.shape={dcols.shape}: expected {want} for x_shape={x_shape}")
    dx = _out(out, x_shape, dcols.dtype, "out")
    dc = np.ascontiguousarray(dcols)
    if layout == "batch_first":
        _col2im_bf(dc, KH, KW, stride, pad, OH, OW, dx)
    else:
        N, C, H, W = x_shape
        dxt = _out(scratch, (C, H + 2 * pad, W + 2 * pad, N), dcols.dtype, "scratch")
        _col2im_bl(dc, KH, KW, stride, pad, OH, OW, dxt, dx)
    return dx


def col2im_ref(dcols: np.ndarray, x_shape: tuple[int, int, int, int], KH: int, KW: int, *, stride: int = 1,
               pad: int = 0, layout: str = "batch_first") -> np.ndarray:
    """The NumPy twin: one strided slice addition per kernel offset into a padded buffer, then a crop."""
    N, C, H, W = x_shape
    OH, OW = _geometry(x_shape, KH, KW, stride, pad)
    he, we = stride * (OH - 1) + 1, stride * (OW - 1) + 1
    Hp, Wp = H + 2 * pad, W + 2 * pad
    if layout == "batch_first":
        d = dcols.reshape(N, C, KH, KW, OH, OW)
        dxp = np.zeros((N, C, Hp, Wp), dtype=dcols.dtype)
        for i in range(KH):
            for j in range(KW):
                dxp[:, :, i : i + he : stride, j : j + we : stride] += d[:, :, i, j]
        return np.ascontiguousarray(dxp[:, :, pad : pad + H, pad : pad + W])
    d = dcols.reshape(C, KH, KW, OH, OW, N)
    dxt = np.zeros((C, Hp, Wp, N), dtype=dcols.dtype)
    for i in range(KH):
        for j in range(KW):
            dxt[:, i : i + he : stride, j : j + we : stride, :] += d[:, i, j]
    return np.ascontiguousarray(dxt[:, pad : pad + H, pad : pad + W, :].transpose(3, 0, 1, 2))
