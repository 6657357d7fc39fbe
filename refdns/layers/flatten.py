"""Flatten feature maps to vectors in NCHW (C, H, W) order, as Caffe feeds a conv stack into an ip layer."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class FlattenCache(NamedTuple):
    """What :func:`flatten_backward` needs: the input shape and dtype."""

    x_shape: tuple[int, ...]
    dtype: np.dtype


def flatten_forward(x: np.ndarray) -> tuple[np.ndarray, FlattenCache]:
    """Reshape ``(N, C, H, W)`` to ``(N, C*H*W)``, index ``c*H*W + h*W + w`` (C order).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W) (any ndim >= 2 works), float32 or float64

    Returns
    -------
    out : ndarray, shape (N, C*H*W), dtype of x
        A view of ``x`` when ``x`` is C-contiguous (no copy), otherwise a copy. Layers never write
        into their inputs, so sharing memory is safe within a net.
    cache : FlattenCache
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x.dtype={x.dtype}: expected float32 or float64")
    if x.ndim < 2:
        raise ValueError(f"x.shape={x.shape}: expected at least 2 dimensions (N, ...), got {x.ndim}")
    N = x.shape[0]
    return x.reshape(N, -1), FlattenCache(x.shape, x.dtype)


def flatten_backward(dout: np.ndarray, cache: FlattenCache) -> np.ndarray:
    """Reshape the gradient back to the input shape.

    Parameters
    ----------
    dout : ndarray, shape (N, C*H*W), dtype of x
    cache : FlattenCache

    Returns
    -------
    dx : ndarray, shape (N, C, H, W), dtype of x
        A view of ``dout`` when ``dout`` is C-contiguous.
    """
    x_shape, dtype = cache
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"dout: expected a numpy.ndarray, got {type(dout).__name__}")
    expected = (x_shape[0], int(np.prod(x_shape[1:])))
    if dout.shape != expected:
        raise ValueError(f"dout.shape={dout.shape}: expected {expected}, the forward output")
    if dout.dtype != dtype:
        raise TypeError(f"dout.dtype={dout.dtype}: expected {dtype}, the forward dtype")
    return dout.reshape(x_shape)
