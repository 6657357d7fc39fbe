"""Max pooling over disjoint windows (``stride >= size``) for :mod:`refdns.layers.pool`, and its NumPy twin.

Caffe's max pool (pooling_layer.cpp) scans each window in row-major order with a strict ``>`` and keeps the
index of the first maximum; backward sends the window's whole gradient there. The kernels do the same: the
forward writes each window's maximum and its winner as a window offset ``i * size + j`` (uint8 when
``size * size <= 256``, else int32), the backward writes ``dout`` at the winner.

The twin (:func:`maxpool_forward_ref`, :func:`maxpool_backward_ref`) is the separable whole-array NumPy
formulation the layer used before: a max over the ``size`` columns of every row (``np.maximum`` chains plus
bool "first wins" masks), then over ``size`` rows of those row maxima; backward multiplies ``dout`` by the
masks, stage by stage. It stays the layer's path for overlapping windows (``stride < size``), where an
element can win several windows and the order of the additions is the twin's.

Both give the same bits for NaN-free input:

- the winner: the first maximum in row-major order lies in the first row whose row maximum equals the window
  maximum, at that row's first maximal column, which is what "first wins" in both of the twin's stages picks;
- the value, signed zeros included: ``np.maximum(a, b)`` is ``a if a > b else b`` (on a tie it returns the
  later operand, so +0.0 and -0.0 are not interchangeable), and the kernel evaluates the same chain, over the
  columns of each window row and then over the row maxima;
- the gradient: the twin writes ``dout * 1 * 1`` at the winner, ``dout * 0`` (a zero with the sign of
  ``dout``) at the window's other elements and +0.0 at elements no window covers; with disjoint windows each
  element gets one such value, no sum, and the kernel writes the same.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from numba import njit

from refdns.kernels._check import FLOATS

Take = Callable[[str, tuple, object], np.ndarray]  # (key, shape, dtype) -> a buffer to overwrite


def _geometry(x_shape, size: int, stride: int) -> tuple[int, int]:
    H, W = x_shape[2], x_shape[3]
    if size < 1 or stride < 1 or size > H or size > W:
        raise ValueError(f"size={size}, stride={stride}: need 1 <= size <= min(H, W) = {min(H, W)} "
                         "and stride >= 1")
    return (H - size) // stride + 1, (W - size) // stride + 1


def index_dtype(size: int) -> np.dtype:
    """The dtype of the winner offsets ``i * size + j`` for a ``size x size`` window."""
    return np.dtype(np.uint8) if size * size <= 256 else np.dtype(np.int32)


def _out(out, shape, dtype, name: str) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != tuple(shape):
        got = f"{out.dtype}{out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"{name}: expected a {np.dtype(dtype)} array of shape {tuple(shape)}, got {got}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return out


# Data-dependent branches cost more than the work here (a random winner mispredicts half the time), so
# the forward is written as selects (`a if a > b else b`, np.maximum's rule, which LLVM compiles without a
# branch) and the backward stores to every window element and then to the winner, with no test at all.
# Measured on LeNet-5's pools (batch 64): the first, branchy version of these kernels ran 2.5x slower than
# the NumPy twin; see the commit messages for the figures.


@njit(cache=True)
def _maxpool2_fwd(x, stride, out, arg):
    # 2x2 windows: x (N, C, H, W); out, arg (N, C, OH, OW)
    N, C, OH, OW = out.shape
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                x0 = x[n, c, oh * stride]
                x1 = x[n, c, oh * stride + 1]
                orow = out[n, c, oh]
                arow = arg[n, c, oh]
                for ow in range(OW):
                    w0 = ow * stride
                    a0 = x0[w0]
                    b0 = x0[w0 + 1]
                    a1 = x1[w0]
                    b1 = x1[w0 + 1]
                    r0 = a0 if a0 > b0 else b0  # np.maximum(a0, b0)
                    r1 = a1 if a1 > b1 else b1
                    j0 = 1 if b0 > a0 else 0  # strict: a tie keeps the earlier column
                    j1 = 3 if b1 > a1 else 2
                    orow[ow] = r0 if r0 > r1 else r1  # np.maximum(r0, r1)
                    arow[ow] = j1 if r1 > r0 else j0  # strict: a tie keeps the earlier row


@njit(cache=True)
def _maxpool_fwd(x, size, stride, out, arg):
    # any size <= stride: x (N, C, H, W); out, arg (N, C, OH, OW). The innermost loops run along a row of
    # windows, keeping the current row's running maximum and winning column per window.
    N, C, OH, OW = out.shape
    rm = np.empty(OW, dtype=out.dtype)
    kj = np.empty(OW, dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                orow = out[n, c, oh]
                arow = arg[n, c, oh]
                for i in range(size):
                    xr = x[n, c, oh * stride + i]
                    for ow in range(OW):
                        rm[ow] = xr[ow * stride]
                        kj[ow] = 0
                    for j in range(1, size):
                        for ow in range(OW):
                            v = xr[ow * stride + j]
                            r = rm[ow]
                            kj[ow] = j if v > r else kj[ow]  # strict: a tie keeps the earlier column
                            rm[ow] = r if r > v else v  # np.maximum(r, v)
                    if i == 0:
                        for ow in range(OW):
                            orow[ow] = rm[ow]
                            arow[ow] = kj[ow]
                    else:
                        for ow in range(OW):
                            m = orow[ow]
                            r = rm[ow]
                            arow[ow] = i * size + kj[ow] if r > m else arow[ow]  # strict: ties keep the row
                            orow[ow] = m if m > r else r  # np.maximum(m, r)


@njit(cache=True)
def _maxpool_bwd(dout, arg, size, stride, z0, dx):
    # dout, arg (N, C, OH, OW); z0 a zero of dout's dtype; dx (N, C, H, W), overwritten.
    # Each window element first gets dout * 0 (the twin's product with a losing mask: a zero with dout's
    # sign), then the winner gets dout. Plain 4-D indexing, no row views: LeNet-5's conv2 pool has rows
    # of 4 windows, where a view per row costs more than the row's work.
    N, C, OH, OW = dout.shape
    H, W = dx.shape[2], dx.shape[3]
    tiled = stride == size and H == OH * size and W == OW * size  # every element in exactly one window
    for n in range(N):
        for c in range(C):
            if not tiled:
                dx[n, c] = 0  # gaps and trailing rows/columns: +0.0, as the twin's fill
            if size == 2:  # straight-line stores, and no integer division for the winner's row
                for oh in range(OH):
                    h0 = oh * stride
                    for ow in range(OW):
                        w0 = ow * stride
                        d = dout[n, c, oh, ow]
                        z = d * z0
                        dx[n, c, h0, w0] = z
                        dx[n, c, h0, w0 + 1] = z
                        dx[n, c, h0 + 1, w0] = z
                        dx[n, c, h0 + 1, w0 + 1] = z
                        k = np.int64(arg[n, c, oh, ow])
                        dx[n, c, h0 + (k >> 1), w0 + (k & 1)] = d
                continue
            for oh in range(OH):
                h0 = oh * stride
                for ow in range(OW):
                    w0 = ow * stride
                    d = dout[n, c, oh, ow]
                    z = d * z0
                    for i in range(size):
                        for j in range(size):
                            dx[n, c, h0 + i, w0 + j] = z
                    k = np.int64(arg[n, c, oh, ow])
                    i = k // size
                    dx[n, c, h0 + i, w0 + k - i * size] = d


def _check_x(name: str, x) -> None:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOATS:
        raise TypeError(f"{name}.dtype={x.dtype}: expected float32 or float64")
    if x.ndim != 4:
        raise ValueError(f"{name}.shape={x.shape}: expected 4 dimensions (N, C, H, W)")


def _check_disjoint(size: int, stride: int) -> None:
    if stride < size:
        raise ValueError(f"stride={stride} < size={size}: the kernels take disjoint windows only "
                         "(maxpool_forward_ref handles overlapping ones)")


def maxpool(x: np.ndarray, size: int, stride: int, *, out: np.ndarray | None = None,
            arg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Max over disjoint ``size x size`` windows taken every ``stride >= size`` pixels, and each one's winner.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64, NaN-free
    size, stride : int
        ``1 <= size <= min(H, W)``, ``stride >= size``.
    out : ndarray, shape (N, C, OH, OW), dtype of x, C-contiguous, optional
        ``OH = (H - size) // stride + 1``, likewise OW; new when None.
    arg : ndarray, shape (N, C, OH, OW), dtype :func:`index_dtype`, C-contiguous, optional
        New when None.

    Returns
    -------
    out : ndarray
        The window maxima.
    arg : ndarray
        The window offset ``i * size + j`` of the first maximum in row-major order (Caffe's strict scan).
    """
    _check_x("x", x)
    _check_disjoint(size, stride)
    OH, OW = _geometry(x.shape, size, stride)
    N, C = x.shape[:2]
    out = _out(out, (N, C, OH, OW), x.dtype, "out")
    arg = _out(arg, (N, C, OH, OW), index_dtype(size), "arg")
    xc = np.ascontiguousarray(x)
    if size == 2:
        _maxpool2_fwd(xc, stride, out, arg)
    else:
        _maxpool_fwd(xc, size, stride, out, arg)
    return out, arg


def maxpool_backward(dout: np.ndarray, arg: np.ndarray, x_shape: tuple[int, int, int, int], size: int,
                     stride: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """dL/dx of :func:`maxpool`: each window's ``dout`` at its winner, a zero elsewhere.

    Parameters
    ----------
    dout : ndarray, shape (N, C, OH, OW), float32 or float64
    arg : ndarray, shape of dout, dtype :func:`index_dtype`
        From :func:`maxpool`; offsets are not range-checked (the kernel trusts its own forward).
    x_shape : (N, C, H, W)
    size, stride : int
        As for the forward, ``stride >= size``.
    out : ndarray, shape x_shape, dtype of dout, C-contiguous, optional
        Overwritten entirely; new when None.

    Returns
    -------
    dx : ndarray, shape x_shape, ``out`` when given
        Non-winners of a window get ``dout * 0`` (signed zero, as the twin), elements in no window +0.0.
    """
    _check_x("dout", dout)
    _check_disjoint(size, stride)
    # no tuple(generator) here: it leaks a free-list tuple per call (tests/test_train_alloc.py)
    x_shape = (int(x_shape[0]), int(x_shape[1]), int(x_shape[2]), int(x_shape[3]))
    OH, OW = _geometry(x_shape, size, stride)
    if dout.shape != (*x_shape[:2], OH, OW):
        raise ValueError(f"dout.shape={dout.shape}: expected {(*x_shape[:2], OH, OW)} for x_shape={x_shape}")
    if not isinstance(arg, np.ndarray) or arg.shape != dout.shape or arg.dtype != index_dtype(size):
        got = f"{arg.dtype}{arg.shape}" if isinstance(arg, np.ndarray) else type(arg).__name__
        raise ValueError(f"arg: expected a {index_dtype(size)} array of shape {dout.shape}, got {got}")
    dx = _out(out, x_shape, dout.dtype, "out")
    _maxpool_bwd(np.ascontiguousarray(dout), np.ascontiguousarray(arg), size, stride,
                 dout.dtype.type(0), dx)
    return dx


def _new(key: str, shape: tuple, dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


def _max_first_wins(views: list[np.ndarray], take: Take, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise max over equally shaped views, and for each view a mask of where it is the first max.

    Returns ``(m, win)`` with ``m`` of the views' shape and ``win`` bool of shape ``(len(views), *m.shape)``;
    exactly one of ``win[:, idx]`` is True for every index (for non-NaN data).
    """
    shape = views[0].shape
    m = take(stage + "_max", shape, views[0].dtype)
    win = take(stage + "_win", (len(views),) + shape, np.bool_)
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
    taken = take(stage + "_taken", shape, np.bool_)
    free = take(stage + "_free", shape, np.bool_)
    taken.fill(False)
    for k, v in enumerate(views):
        np.equal(v, m, out=win[k])
        np.logical_not(taken, out=free)
        np.logical_and(win[k], free, out=win[k])
        np.logical_or(taken, win[k], out=taken)
    return m, win


def maxpool_forward_ref(x: np.ndarray, size: int, stride: int, *, take: Take | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The NumPy twin, any stride: ``(out, col_win, row_win)``.

    ``col_win`` (size, N, C, HU, OW) bool: column offset j won the row maximum, in each of the ``HU =
    stride * (OH - 1) + size`` rows some window touches; ``row_win`` (size, N, C, OH, OW) bool: row offset i
    won the window maximum. ``take(key, shape, dtype)`` supplies the buffers (new arrays when None).
    """
    take = take or _new
    N, C, H, W = x.shape
    OH, OW = _geometry(x.shape, size, stride)
    HU = stride * (OH - 1) + size
    he = stride * (OH - 1) + 1
    we = stride * (OW - 1) + 1
    xu = x[:, :, :HU]
    # Stage 1: max over the columns of each window, in every row a window touches: row_max (N, C, HU, OW).
    row_max, col_win = _max_first_wins([xu[..., j : j + we : stride] for j in range(size)], take, "rows")
    # Stage 2: max of those row maxima over the rows of each window: out (N, C, OH, OW).
    out, row_win = _max_first_wins([row_max[:, :, i : i + he : stride] for i in range(size)], take, "out")
    return out, col_win, row_win


def maxpool_backward_ref(dout: np.ndarray, col_win: np.ndarray, row_win: np.ndarray,
                         x_shape: tuple[int, int, int, int], size: int, stride: int, *,
                         take: Take | None = None) -> np.ndarray:
    """The twin's backward, any stride: ``dout`` times the masks, stage by stage; overlaps add up."""
    take = take or _new
    N, C, H, W = x_shape
    OH, OW = dout.shape[2:]
    HU = col_win.shape[3]
    he = stride * (OH - 1) + 1
    we = stride * (OW - 1) + 1
    drow = take("drow", (N, C, HU, OW), dout.dtype)  # dL/d(row maxima)
    dx = take("dx", (N, C, H, W), dout.dtype)
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
        tmp = take("tmp_out", dout.shape, dout.dtype)
        for i in range(size):
            part = drow[:, :, i : i + he : stride]
            np.add(part, np.multiply(dout, row_win[i], out=tmp), out=part)
        tmp = take("tmp_rows", drow.shape, dout.dtype)
        for j in range(size):
            part = dxu[..., j : j + we : stride]
            np.add(part, np.multiply(drow, col_win[j], out=tmp), out=part)
    return dx
