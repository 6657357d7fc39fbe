"""Caffe's SGD update fused into one pass over a parameter blob.

Caffe (sgd_solver.cpp), per blob with multipliers ``lr_mult`` and ``decay_mult``::

    diff += weight_decay * decay_mult * w          # Regularize
    v     = momentum * v + lr * lr_mult * diff      # ComputeUpdateValue
    w    -= v                                       # Update

The NumPy formulation (:func:`sgd_update_ref`, the one :mod:`refdns.optim` used before) makes five passes
and a full-size temporary (``decay * w``). The kernel makes one pass and no temporary, and is bit-identical
to the NumPy path: the same float operations in the same order, every scalar first rounded to the blob's
dtype (NumPy 2 rounds a Python float to a float32 array's dtype, NEP 50), no fastmath, and LLVM does not
contract ``a * b + c`` into a fused multiply-add unless fastmath allows it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@njit(cache=True)
def _sgd_update(w, g, v, decay, scale, momentum, use_decay):
    # w, g, v: 1-D views of one blob; decay, scale, momentum: scalars already in the blob's dtype.
    for i in range(w.shape[0]):
        d = g[i]
        if use_decay:
            d = d + decay * w[i]  # diff += wd * decay_mult * w
        d = d * scale  # lr * lr_mult * diff
        vi = v[i] * momentum + d  # v = m v + lr * lr_mult * diff
        v[i] = vi
        w[i] = w[i] - vi  # w -= v


def sgd_update(w: np.ndarray, g: np.ndarray, v: np.ndarray, *, decay: float, scale: float,
               momentum: float) -> None:
    """One Caffe SGD update of a blob, in place on ``w`` and ``v`` (``g`` is left as it was).

    Parameters
    ----------
    w : ndarray, any shape, float32 or float64, C-contiguous
        The parameter; updated in place.
    g : ndarray, shape of w, dtype of w
        dL/dw (before weight decay).
    v : ndarray, shape of w, dtype of w, C-contiguous
        The momentum history; updated in place.
    decay : float
        ``weight_decay * decay_mult``; 0 skips the decay term entirely (as the NumPy path does).
    scale : float
        ``lr * lr_mult``.
    momentum : float
    """
    for name, a in (("w", w), ("g", g), ("v", v)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
        if a.dtype not in _FLOATS:
            raise TypeError(f"{name}.dtype={a.dtype}: expected float32 or float64")
        if a.dtype != w.dtype or a.shape != w.shape:
            raise ValueError(f"{name} is {a.dtype}{a.shape}, expected {w.dtype}{w.shape} like w")
    if not (w.flags.c_contiguous and v.flags.c_contiguous):
        raise ValueError("w and v must be C-contiguous (they are updated in place through a flat view)")
    t = w.dtype.type
    g_flat = np.ascontiguousarray(g).reshape(-1)
    _sgd_update(w.reshape(-1), g_flat, v.reshape(-1), t(decay), t(scale), t(momentum), bool(decay))


def sgd_update_ref(w: np.ndarray, g: np.ndarray, v: np.ndarray, *, decay: float, scale: float,
                   momentum: float) -> None:
    """The NumPy twin: Caffe's three lines as whole-array operations (``g`` is overwritten)."""
    if decay:
        g += decay * w
    g *= scale
    v *= momentum
    v += g
    w -= v
