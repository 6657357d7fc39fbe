"""Fully connected (inner-product) layer, Caffe weight layout ``(out, in)``.

``out = x @ w.T + b``, as Caffe's InnerProduct layer computes it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refdns.layers._checks import check_array as _check_array
from refdns.layers.workspace import Workspace, take


class DenseCache(NamedTuple):
    """What :func:`dense_backward` needs: the layer input and the (effective) weight."""

    x: np.ndarray  # (N, D)
    w: np.ndarray  # (M, D)


def dense_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, *, ws: Workspace | None = None
                  ) -> tuple[np.ndarray, DenseCache]:
    """Affine map ``out = x @ w.T + b``.

    Parameters
    ----------
    x : ndarray, shape (N, D), float32 or float64
        Batch of inputs.
    w : ndarray, shape (M, D), same dtype as x
        Weight in Caffe layout (out, in); nets pass the effective weight ``w * mask``.
    b : ndarray, shape (M,), same dtype as x
        Bias.
    ws : Workspace, optional
        Write ``out`` into its buffers (:mod:`refdns.layers.workspace`).

    Returns
    -------
    out : ndarray, shape (N, M), dtype of x
    cache : DenseCache
        Holds references to ``x`` and ``w`` (no copies): do not modify them before the backward pass.

    Raises
    ------
    TypeError
        If an argument is not a float32/float64 ndarray or the dtypes differ.
    ValueError
        If the shapes do not fit together.
    """
    _check_array("x", x, 2)
    _check_array("w", w, 2)
    _check_array("b", b, 1)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w.shape={w.shape}: expected (M, {x.shape[1]}) to match x.shape={x.shape}")
    if b.shape != (w.shape[0],):
        raise ValueError(f"b.shape={b.shape}: expected ({w.shape[0]},) to match w.shape={w.shape}")
    if w.dtype != x.dtype:
        raise TypeError(f"w.dtype={w.dtype}: expected {x.dtype} to match x (no silent promotion)")
    if b.dtype != x.dtype:
        raise TypeError(f"b.dtype={b.dtype}: expected {x.dtype} to match x (no silent promotion)")
    out = np.matmul(x, w.T, out=take(ws, "out", (x.shape[0], w.shape[0]), x.dtype))  # (N, M)
    out += b
    return out, DenseCache(x, w)


def dense_backward(
    dout: np.ndarray, cache: DenseCache, *, need_dx: bool = True, ws: Workspace | None = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of the loss with respect to the inputs of :func:`dense_forward`.

    Parameters
    ----------
    dout : ndarray, shape (N, M), dtype of the forward input
        dL/dout.
    cache : DenseCache
        From the matching :func:`dense_forward` call.
    need_dx : bool, default True
        If False, skip the ``dout @ w`` product and return ``None`` for ``dx`` (the first layer of a net,
        whose input is data, needs no gradient).

    Returns
    -------
    dx : ndarray, shape (N, D), or None
        dL/dx, None when ``need_dx`` is False.
    dw : ndarray, shape (M, D)
        dL/dw (with respect to the weight the forward saw, i.e. the effective weight).
    db : ndarray, shape (M,)
    """
    x, w = cache
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"dout: expected a numpy.ndarray, got {type(dout).__name__}")
    if dout.shape != (x.shape[0], w.shape[0]):
        raise ValueError(f"dout.shape={dout.shape}: expected {(x.shape[0], w.shape[0])}, the forward output")
    if dout.dtype != x.dtype:
        raise TypeError(f"dout.dtype={dout.dtype}: expected {x.dtype}, the forward dtype")
    dx = np.matmul(dout, w, out=take(ws, "dx", x.shape, x.dtype)) if need_dx else None  # (N, D)
    dw = np.matmul(dout.T, x, out=take(ws, "dw", w.shape, x.dtype))  # (M, D)
    db = np.sum(dout, axis=0, out=take(ws, "db", (w.shape[0],), x.dtype))
    return dx, dw, db
