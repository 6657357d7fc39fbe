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
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refdns.layers._checks import FLOATS
from refdns.layers._checks import check_int as _check_int
from refdns.layers.workspace import Workspace, take


class MaxPoolCache(NamedTuple):
    """What :func:`maxpool_backward` needs: which offset won in each stage, and the input geometry."""

    col_win: np.ndarray  # (size, N, C, HU, OW) bool: column offset j won the row maximum
    row_win: np.ndarray  # (size, N, C, OH, OW) bool: row offset i won the window maximum
    x_shape: tuple[int, int, int, int]
    dtype: np.dtype
    size: int
    stride: int


def _max_first_wins(views: list[np.ndarray], ws: Workspace | None, stage: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise max over equally shaped views, and for each view a mask of where it is the first max.

    Returns ``(m, win)`` with ``m`` of the views' shape and ``win`` bool of shape ``(len(views), *m.shape)``
    (buffers of ``ws`` under ``stage`` when given); exactly one of ``win[:, idx]`` is True for every index
    (for non-NaN data).
    """
    shape = views[0].shape
    m = take(ws, stage + "_max", shape, views[0].dtype)
    win = take(ws, stage + "_win", (len(views),) + shape, np.bool_)
    if len(views) == 1:
        np.copyto(m, views[0])
        win.fill(True)
        return m, win
    np.maximum(views[0], views[1], out=m)
    for v in views[2:]:
        np.maximum(m, v, out=m)
    if len(views) == 2:  # the common 2x2 case: one comparison instead of the general scan
        np.greater(views[1], views[0], out=win[1])  # strict: a tie stays with the first
        np.logical_not(win[1], out=win[0])
        return m, win
    taken = take(ws, stage + "_taken", shape, np.bool_)
    free = take(ws, stage + "_free", shape, np.bool_)
    taken.fill(False)
    for k, v in enumerate(views):
        np.equal(v, m, out=win[k])
        np.logical_not(taken, out=free)
        np.logical_and(win[k], free, out=win[k])
        np.logical_or(taken, win[k], out=taken)
    return m, win


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
        Write ``out`` and the winner masks into its buffers instead of new arrays
        (:mod:`refdns.layers.workspace`).

    Returns
    -------
    out : ndarray, shape (N, C, OH, OW), dtype of x
        ``OH = (H - size) // stride + 1``, likewise OW.
    cache : MaxPoolCache
        Winner masks (bool, new arrays unless ``ws``); no reference to ``x``.
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
    HU = stride * (OH - 1) + size  # rows some window touches
    he = stride * (OH - 1) + 1
    we = stride * (OW - 1) + 1
    xu = x[:, :, :HU]
    # Stage 1: max over the columns of each window, in every row a window touches: row_max (N, C, HU, OW).
    row_max, col_win = _max_first_wins([xu[..., j : j + we : stride] for j in range(size)], ws, "rows")
    # Stage 2: max of those row maxima over the rows of each window: out (N, C, OH, OW).
    out, row_win = _max_first_wins([row_max[:, :, i : i + he : stride] for i in range(size)], ws, "out")
    return out, MaxPoolCache(col_win, row_win, (N, C, H, W), x.dtype, size, stride)


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
    col_win, row_win, (N, C, H, W), dtype, size, stride = cache
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"dout: expected a numpy.ndarray, got {type(dout).__name__}")
    if dout.shape != row_win.shape[1:]:
        raise ValueError(f"dout.shape={dout.shape}: expected {row_win.shape[1:]}, the forward output")
    if dout.dtype != dtype:
        raise TypeError(f"dout.dtype={dout.dtype}: expected {dtype}, the forward dtype")
    OH, OW = dout.shape[2:]
    HU = col_win.shape[3]
    he = stride * (OH - 1) + 1
    we = stride * (OW - 1) + 1
    drow = take(ws, "drow", (N, C, HU, OW), dtype)  # dL/d(row maxima)
    dx = take(ws, "dx", (N, C, H, W), dtype)
    drow.fill(0)
    dx.fill(0)
    dxu = dx[:, :, :HU]
    if stride >= size:
        # Windows are disjoint: each offset's slice is written once, no accumulation needed.
        for i in range(size):
            np.multiply(dout, row_win[i], out=drow[:, :, i : i + he : stride])
        for j in range(size):
            np.multiply(drow, col_win[j], out=dxu[..., j : j + we : stride])
    else:
        tmp = take(ws, "tmp_out", dout.shape, dtype)
        for i in range(size):
            part = drow[:, :, i : i + he : stride]
            np.add(part, np.multiply(dout, row_win[i], out=tmp), out=part)
        tmp = take(ws, "tmp_rows", drow.shape, dtype)
        for j in range(size):
            part = dxu[..., j : j + we : stride]
            np.add(part, np.multiply(drow, col_win[j], out=tmp), out=part)
    return dx
