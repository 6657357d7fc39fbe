"""2-D convolution (cross-correlation, as Caffe's Convolution layer), NCHW, zero padding, any stride.

Forward is im2col followed by one matrix product; backward is two matrix products and a col2im that
adds the column gradients back onto the input. im2col and col2im are Numba kernels
(:mod:`refdns.kernels.conv_cols`, whose NumPy twins are the strided-slice formulation this layer used before);
the matrix products are BLAS.

Two column layouts compute the same thing; they differ in which product BLAS sees and in how long the
contiguous runs of the im2col/col2im slice copies are:

- ``"batch_first"``: columns ``(N, C*KH*KW, OH*OW)``, one product per sample; the output comes out NCHW
  with no transpose. Wins when each sample's product is wide (many output pixels, e.g. LeNet-5 conv1).
- ``"batch_last"``: columns ``(C*KH*KW, OH*OW*N)``, one large product for the whole batch; the batch is the
  innermost axis, so slice copies run over ``OW * N`` contiguous numbers instead of ``OW``. Costs two
  transposes (input and output) but wins when the output maps are small (e.g. LeNet-5 conv2: 8x8).

``layout="auto"`` picks by the rule in :func:`_auto_layout`; results agree to rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refdns.kernels.conv_cols import col2im, cols_shape, im2col
from refdns.layers._checks import check_array as _check_array
from refdns.layers._checks import check_int as _check_int
from refdns.layers.workspace import Workspace, take

_LAYOUTS = ("auto", "batch_first", "batch_last")


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs. ``cols`` is the im2col matrix of the padded input."""

    cols: np.ndarray  # (N, C*KH*KW, OH*OW) batch_first, or (C*KH*KW, OH*OW*N) batch_last
    w: np.ndarray  # (F, C, KH, KW)
    x_shape: tuple[int, int, int, int]
    stride: int
    pad: int
    layout: str


def _auto_layout(C: int, KH: int, KW: int, OH: int, OW: int) -> str:
    # Per-sample products (F x CKK) @ (CKK x P) keep BLAS busy only while P is large against CKK; measured
    # on LeNet-5 shapes (conv1: P=576, CKK=25 -> batch_first; conv2: P=64, CKK=500 -> batch_last).
    return "batch_first" if OH * OW >= 2 * C * KH * KW else "batch_last"


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    *,
    stride: int = 1,
    pad: int = 0,
    layout: str = "auto",
    ws: Workspace | None = None,
) -> tuple[np.ndarray, Conv2dCache]:
    """Cross-correlation ``out[n, f] = sum_c x_pad[n, c] (*) w[f, c] + b[f]`` sampled every ``stride`` pixels.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
        Batch of input maps.
    w : ndarray, shape (F, C, KH, KW), same dtype as x
        Filters in Caffe layout; nets pass the effective weight ``w * mask``.
    b : ndarray, shape (F,), same dtype as x
        Bias.
    stride : int, default 1
        Step between output pixels, >= 1 (same in both directions).
    pad : int, default 0
        Zeros added on every side of each map, >= 0.
    layout : {"auto", "batch_first", "batch_last"}, default "auto"
        Internal column layout (speed only, see the module docstring).
    ws : Workspace, optional
        Write ``out`` and the cache's columns into its buffers instead of new arrays
        (:mod:`refdns.layers.workspace`); they are overwritten by the next call with the same workspace.

    Returns
    -------
    out : ndarray, shape (N, F, OH, OW), dtype of x, C-contiguous
        ``OH = (H + 2*pad - KH) // stride + 1``, likewise OW (floor, as Caffe).
    cache : Conv2dCache
        Holds the im2col matrix (a new array) and a reference to ``w``.

    Raises
    ------
    TypeError
        If an argument has the wrong type or dtype, or the dtypes differ.
    ValueError
        If the shapes do not fit together or the kernel is larger than the padded input.
    """
    _check_array("x", x, 4)
    _check_array("w", w, 4)
    _check_array("b", b, 1)
    stride = _check_int("stride", stride, 1)
    pad = _check_int("pad", pad, 0)
    if layout not in _LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {_LAYOUTS}")
    N, C, H, W = x.shape
    F, Cw, KH, KW = w.shape
    if Cw != C:
        raise ValueError(f"w.shape={w.shape}: expected (F, {C}, KH, KW) to match x.shape={x.shape}")
    if b.shape != (F,):
        raise ValueError(f"b.shape={b.shape}: expected ({F},) to match w.shape={w.shape}")
    if w.dtype != x.dtype:
        raise TypeError(f"w.dtype={w.dtype}: expected {x.dtype} to match x (no silent promotion)")
    if b.dtype != x.dtype:
        raise TypeError(f"b.dtype={b.dtype}: expected {x.dtype} to match x (no silent promotion)")
    Hp, Wp = H + 2 * pad, W + 2 * pad
    if KH > Hp or KW > Wp or KH == 0 or KW == 0:
        raise ValueError(f"w.shape={w.shape}: kernel must be non-empty and fit the padded input {Hp}x{Wp}")
    OH = (Hp - KH) // stride + 1
    OW = (Wp - KW) // stride + 1
    if layout == "auto":
        layout = _auto_layout(C, KH, KW, OH, OW)
    w2 = w.reshape(F, C * KH * KW)
    shape = cols_shape(x.shape, KH, KW, stride, pad, layout)
    cols = im2col(x, KH, KW, stride=stride, pad=pad, layout=layout, out=take(ws, "cols", shape, x.dtype),
                  scratch=None if layout == "batch_first" else
                  take(ws, "x_t", (C, Hp, Wp, N), x.dtype))
    out = take(ws, "out", (N, F, OH, OW), x.dtype)
    if layout == "batch_first":
        np.matmul(w2, cols, out=out.reshape(N, F, OH * OW))  # (N, F, OH*OW)
    else:
        out_t = take(ws, "out_t", (F, OH * OW * N), x.dtype)
        np.matmul(w2, cols, out=out_t)  # (F, OH*OW*N)
        # A 2-D transpose copy is several times faster in NumPy than the equivalent 4-D one.
        np.copyto(out.reshape(N, F * OH * OW), out_t.reshape(F * OH * OW, N).T)
    out += b[:, None, None]
    return out, Conv2dCache(cols, w, (N, C, H, W), stride, pad, layout)


def conv2d_backward(
    dout: np.ndarray, cache: Conv2dCache, *, need_dx: bool = True, ws: Workspace | None = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of the loss with respect to the inputs of :func:`conv2d_forward`.

    Parameters
    ----------
    dout : ndarray, shape (N, F, OH, OW), dtype of the forward input
        dL/dout.
    cache : Conv2dCache
        From the matching :func:`conv2d_forward` call.
    need_dx : bool, default True
        If False, skip the column gradient and col2im and return ``None`` for ``dx`` (first layer).
    ws : Workspace, optional
        Write the gradients into its buffers (see :func:`conv2d_forward`).

    Returns
    -------
    dx : ndarray, shape (N, C, H, W), or None
    dw : ndarray, shape (F, C, KH, KW)
    db : ndarray, shape (F,)
    """
    cols, w, (N, C, H, W), stride, pad, layout = cache
    F, _, KH, KW = w.shape
    OH = (H + 2 * pad - KH) // stride + 1
    OW = (W + 2 * pad - KW) // stride + 1
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"dout: expected a numpy.ndarray, got {type(dout).__name__}")
    if dout.shape != (N, F, OH, OW):
        raise ValueError(f"dout.shape={dout.shape}: expected {(N, F, OH, OW)}, the forward output")
    if dout.dtype != cols.dtype:
        raise TypeError(f"dout.dtype={dout.dtype}: expected {cols.dtype}, the forward dtype")
    CKK = C * KH * KW
    w2 = w.reshape(F, CKK)
    db = np.sum(dout, axis=(0, 2, 3), out=take(ws, "db", (F,), dout.dtype))
    dw = take(ws, "dw", w.shape, dout.dtype)
    if layout == "batch_first":
        d = dout.reshape(N, F, OH * OW)
        dw_n = np.matmul(d, cols.transpose(0, 2, 1), out=take(ws, "dw_n", (N, F, CKK), dout.dtype))
        np.sum(dw_n, axis=0, out=dw.reshape(F, CKK))  # sum_n (F, CKK)
    else:
        d = take(ws, "dout_t", (F, OH * OW * N), dout.dtype)
        np.copyto(d.reshape(F * OH * OW, N), dout.reshape(N, F * OH * OW).T)
        np.matmul(d, cols.T, out=dw.reshape(F, CKK))
    if not need_dx:
        return None, dw, db
    dcols = np.matmul(w2.T, d, out=take(ws, "dcols", cols.shape, dout.dtype))
    dx = col2im(dcols, (N, C, H, W), KH, KW, stride=stride, pad=pad, layout=layout,
                out=take(ws, "dx", (N, C, H, W), dout.dtype),
                scratch=None if layout == "batch_first" else
                take(ws, "dx_t", (C, H + 2 * pad, W + 2 * pad, N), dout.dtype))
    return dx, dw, db
