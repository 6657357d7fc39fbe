"""Element-wise activations. ReLU follows Caffe: the gradient at exactly 0 is 0."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refdns.layers.workspace import Workspace, take

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class ReluCache(NamedTuple):
    """What :func:`relu_backward` needs: where the input was strictly positive."""

    positive: np.ndarray  # bool, shape of x
    dtype: np.dtype


def relu_forward(x: np.ndarray, *, ws: Workspace | None = None) -> tuple[np.ndarray, ReluCache]:
    """Rectified linear unit ``out = max(x, 0)``.

    Parameters
    ----------
    x : ndarray, any shape, float32 or float64
    ws : Workspace, optional
        Write ``out`` and the mask into its buffers (:mod:`refdns.layers.workspace`).

    Returns
    -------
    out : ndarray, shape of x, dtype of x
    cache : ReluCache
        The bool mask ``x > 0`` (a new array unless ``ws``; no reference to ``x``).
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x.dtype={x.dtype}: expected float32 or float64")
    positive = np.greater(x, 0, out=take(ws, "positive", x.shape, np.bool_))
    return np.maximum(x, 0, out=take(ws, "out", x.shape, x.dtype)), ReluCache(positive, x.dtype)


def relu_backward(dout: np.ndarray, cache: ReluCache, *, ws: Workspace | None = None) -> np.ndarray:
    """``dx = dout * (x > 0)``: the gradient passes where the input was strictly positive.

    Parameters
    ----------
    dout : ndarray, shape of x, dtype of x
        dL/dout.
    cache : ReluCache
        From the matching :func:`relu_forward` call.
    ws : Workspace, optional
        Write ``dx`` into its buffers.

    Returns
    -------
    dx : ndarray, shape of x, dtype of x
        Zero where ``x <= 0``, including ``x == 0`` (Caffe's convention). A NaN in ``dout`` stays NaN.
    """
    positive, dtype = cache
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"dout: expected a numpy.ndarray, got {type(dout).__name__}")
    if dout.shape != positive.shape:
        raise ValueError(f"dout.shape={dout.shape}: expected {positive.shape}, the forward output")
    if dout.dtype != dtype:
        raise TypeError(f"dout.dtype={dout.dtype}: expected {dtype}, the forward dtype")
    # Multiplying by the bool mask is several times faster than np.where in NumPy.
    return np.multiply(dout, positive, out=take(ws, "dx", dout.shape, dtype))
