"""Max pooling, NCHW, Caffe semantics with floor output size and no padding.

Output size is ``(H - size) // stride + 1`` (floor; Caffe itself rounds up), so trailing rows and
columns that do not fill a whole window are ignored and get zero gradient.

Ties go to the first maximum of the window in row-major order, as in Caffe's strict ``>`` scan, so the
whole gradient of a window goes to exactly one element: on MNIST's flat zero background a window of
equal values passes its gradient to its top-left pixel only.

The max over a ``size x size`` window is computed separably: first the max over ``size`` columns in
every row, then the max of those row maxima over ``size`` rows. Each stage loops over the ``size``
offsets with whole-array NumPy operations (no loop over samples or pixels), which also handles
overlapping windows (``stride < size``). The tie rule survives the split: the first maximum in
row-major order lies in the first row whose row maximum equals the window maximum, at that row's
first maximal column, which is exactly what "first wins" in both stages selects.

Disjoint windows (``stride >= size``, LeNet-5's 2x2/2) go through the Numba kernels of
:mod:`refdns.kernels.maxpool` instead, which keep one winner offset per output element rather than
two bool masks and write ``dx`` in one pass; the separable NumPy code above is their twin, and both
give the same bits (values, gradients and signed zeros; see that module). With overlapping windows an
element can win several windows, and the NumPy path's order of additions is kept.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refdns.kernels.maxpool import index_dtype, maxpool_backward_ref, maxpool_forward_ref
from refdns.kernels.maxpool import maxpool as kernel_maxpool
from refdns.kernels.maxpool import maxpool_backward as kernel_maxpool_backward
from refdns.layers._checks import FLOATS
from refdns.layers._checks import check_int as _check_int
from refdns.layers.workspace import Workspace, take


class MaxPoolCache(NamedTuple):
    """What :func:`maxpool_backward` needs: the winners (one of two encodings) and the input geometry.

    Disjoint windows (the kernel path) fill ``arg`` and leave the masks None; overlapping windows (the
    NumPy path) fill the masks and leave ``arg`` None.
    """

    col_win: np.ndarray | None  # (size, N, C, HU, OW) bool: column offset j won the row maximum
    row_win: np.ndarray | None  # (size, N, C, OH, OW) bool: row offset i won the window maximum
    arg: np.ndarray | None  # (N, C, OH, OW) uint8/int32: window offset i * size + j of the winner
    x_shape: tuple[int, int, int, int]
    dtype: np.dtype
    size: int
    stride: int


def _taker(ws: Workspace | None):
    return None if ws is None else ws.take


def maxpool_forward(x: np.ndarray, *, size: int = 2, stride: int = 2, ws: Workspace | None = None
                    ) -> tuple[np.ndarray, MaxPoolCache]:
    """Max over ``size x size`` windows taken every ``stride`` pixels.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
        Input maps, assumed free of NaN (where a window holding NaN sends its gradient is unspecified).
    size : int, default 2
        Window side, 1 <= size <= min(H, W).
    stride : int, default 2
        Step between windows, >= 1; ``stride < size`` gives overlapping windows.
    ws : Workspace, optional
        Write ``out`` and the winners into its buffers instead of new arrays
        (:mod:`refdns.layers.workspace`).

    Returns
    -------
    out : ndarray, shape (N, C, OH, OW), dtype of x
        ``OH = (H - size) // stride + 1``, likewise OW.
    cache : MaxPoolCache
        The winners (new arrays unless ``ws``); no reference to ``x``.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOATS:
        raise TypeError(f"x.dtype={x.dtype}: expected float32 or float64")
    if x.ndim != 4:
        raise ValueError(f"x.shape={x.shape}: expected 4 dimensions (N, C, H, W), got {x.ndim}")
    size = _check_int("size", size, 1)
    stride = _check_int("stride", stride, 1)
    N, C, H, W = x.shape
    if size > H or size > W:
        raise ValueError(f"size={size}: window larger than the input maps {H}x{W} of x.shape={x.shape}")
    OH = (H - size) // stride + 1
    OW = (W - size) // stride + 1
    if stride >= size:
        out = take(ws, "out", (N, C, OH, OW), x.dtype)
        arg = take(ws, "arg", (N, C, OH, OW), index_dtype(size))
        kernel_maxpool(x, size, stride, out=out, arg=arg)
        return out, MaxPoolCache(None, None, arg, (N, C, H, W), x.dtype, size, stride)
    out, col_win, row_win = maxpool_forward_ref(x, size, stride, take=_taker(ws))
    return out, MaxPoolCache(col_win, row_win, None, (N, C, H, W), x.dtype, size, stride)


def maxpool_backward(dout: np.ndarray, cache: MaxPoolCache, *, ws: Workspace | None = None) -> np.ndarray:
    """Route each window's gradient to the single element that won its forward max.

    Parameters
    ----------
    dout : ndarray, shape (N, C, OH, OW), dtype of the forward input
        dL/dout.
    cache : MaxPoolCache
        From the matching :func:`maxpool_forward` call.
    ws : Workspace, optional
        Write ``dx`` into its buffers (:mod:`refdns.layers.workspace`).

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
        dL/dx; where windows overlap, an element that wins several windows receives their sum.
    """
    col_win, row_win, arg, (N, C, H, W), dtype, size, stride = cache
    OH = (H - size) // stride + 1
    OW = (W - size) // stride + 1
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"dout: expected a numpy.ndarray, got {type(dout).__name__}")
    if dout.shape != (N, C, OH, OW):
        raise ValueError(f"dout.shape={dout.shape}: expected {(N, C, OH, OW)}, the forward output")
    if dout.dtype != dtype:
        raise TypeError(f"dout.dtype={dout.dtype}: expected {dtype}, the forward dtype")
    if arg is not None:
        return kernel_maxpool_backward(dout, arg, (N, C, H, W), size, stride,
                                       out=take(ws, "dx", (N, C, H, W), dtype))
    return maxpool_backward_ref(dout, col_win, row_win, (N, C, H, W), size, stride, take=_taker(ws))


def maxpool_select(rx: np.ndarray, cache: MaxPoolCache) -> np.ndarray:
    """Apply a forward's winner pattern to another array of the input's shape: ``rx`` at each window's winner.

    Linear in ``rx`` once the winners are fixed (the R-operator of max pooling).
    """
    col_win, row_win, arg, (N, C, H, W), dtype, size, stride = cache
    OH = (H - size) // stride + 1
    OW = (W - size) // stride + 1
    if arg is not None:
        i, j = np.divmod(arg.astype(np.intp), size)  # (N, C, OH, OW) each
        rows = stride * np.arange(OH)[:, None] + i
        cols = stride * np.arange(OW) + j
        return rx[np.arange(N)[:, None, None, None], np.arange(C)[:, None, None], rows, cols]
    HU = col_win.shape[3]
    he = stride * (OH - 1) + 1
    we = stride * (OW - 1) + 1
    ru = rx[:, :, :HU]
    rows = sum(col_win[j] * ru[..., j : j + we : stride] for j in range(size))  # (N, C, HU, OW)
    return sum(row_win[i] * rows[:, :, i : i + he : stride] for i in range(size))  # (N, C, OH, OW)
