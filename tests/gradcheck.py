"""Central-difference gradient checks in float64 [cs231n gradient_check].

A layer is checked through the scalar loss ``L = sum(out * R)`` with a fixed random ``R``: then
``dL/dout = R`` is what its backward receives, and the gradients it returns must match the difference
quotients of ``L`` with respect to each input.

Error measure (:func:`rel_error`)::

    max|a - n| / max(max|a|, max|n|, GRADCHECK_FLOOR)

over a whole gradient array ``a`` (analytic) against ``n`` (numerical).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tests.tolerances import GRADCHECK_FLOOR, GRADCHECK_RTOL, GRADCHECK_STEP


def numerical_gradient(
    f: Callable[[np.ndarray], float], x: np.ndarray, *, h: float = GRADCHECK_STEP
) -> np.ndarray:
    """Central differences ``(f(x + h e_i) - f(x - h e_i)) / (2h)`` for every entry i of ``x``.

    ``x`` must be float64 and is not modified (a copy is perturbed). The denominator is the difference
    of the two perturbed values as actually stored, so rounding of ``x +- h`` does not bias the result.
    """
    if x.dtype != np.float64:
        raise TypeError(f"x.dtype={x.dtype}: gradient checks run in float64")
    xc = np.array(x, dtype=np.float64, copy=True)
    flat = xc.reshape(-1)  # a view: xc was freshly allocated C-contiguous
    grad = np.empty(flat.size, dtype=np.float64)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        hi, f_hi = flat[i], f(xc)
        flat[i] = old - h
        lo, f_lo = flat[i], f(xc)
        flat[i] = old
        grad[i] = (f_hi - f_lo) / (hi - lo)
    return grad.reshape(x.shape)


def rel_error(analytic: np.ndarray, numeric: np.ndarray, *, floor: float = GRADCHECK_FLOOR) -> float:
    """``max|a - n| / max(max|a|, max|n|, floor)``; 0.0 for empty arrays."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"analytic.shape={a.shape} differs from numeric.shape={n.shape}")
    if a.size == 0:
        return 0.0
    denom = max(float(np.max(np.abs(a))), float(np.max(np.abs(n))), floor)
    return float(np.max(np.abs(a - n))) / denom


def layer_gradient_errors(
    forward: Callable[..., tuple[np.ndarray, Any]],
    backward: Callable[..., Any],
    inputs: Mapping[str, np.ndarray],
    dout: np.ndarray,
    *,
    forward_kwargs: Mapping[str, Any] | None = None,
    h: float = GRADCHECK_STEP,
) -> dict[str, float]:
    """Gradcheck a layer: ``forward(*inputs.values(), **forward_kwargs) -> (out, cache)``, then
    ``backward(dout, cache)``.

    ``backward`` returns the gradients in the order of ``inputs`` (a bare array when there is one input).
    Returns the :func:`rel_error` of each input's gradient, keyed by input name.
    """
    kw = dict(forward_kwargs or {})
    names = list(inputs)
    args = [inputs[k] for k in names]
    for name, a in zip(names, args, strict=True):
        if a.dtype != np.float64:
            raise TypeError(f"{name}.dtype={a.dtype}: gradient checks run in float64")
    out, cache = forward(*args, **kw)
    if out.shape != dout.shape:
        raise ValueError(f"dout.shape={dout.shape} differs from out.shape={out.shape}")
    grads = backward(dout, cache)
    if isinstance(grads, np.ndarray):
        grads = (grads,)
    if len(grads) != len(names):
        raise ValueError(f"backward returned {len(grads)} gradients for inputs {names}")
    errors = {}
    for k, (name, g) in enumerate(zip(names, grads, strict=True)):
        if g.shape != args[k].shape or g.dtype != np.float64:
            expected = f"{args[k].shape} float64"
            raise AssertionError(f"d{name}: shape {g.shape} dtype {g.dtype}, expected {expected}")

        def loss(v: np.ndarray, k: int = k) -> float:
            trial = args[:k] + [v] + args[k + 1 :]
            return float(np.sum(forward(*trial, **kw)[0] * dout))

        errors[name] = rel_error(g, numerical_gradient(loss, args[k], h=h))
    return errors


def assert_layer_gradients(
    forward: Callable[..., tuple[np.ndarray, Any]],
    backward: Callable[..., Any],
    inputs: Mapping[str, np.ndarray],
    dout: np.ndarray,
    *,
    forward_kwargs: Mapping[str, Any] | None = None,
    rtol: float = GRADCHECK_RTOL,
) -> None:
    """Assert that every gradient of :func:`layer_gradient_errors` is below ``rtol``."""
    errors = layer_gradient_errors(forward, backward, inputs, dout, forward_kwargs=forward_kwargs)
    bad = {f"d{k}": e for k, e in errors.items() if not e < rtol}
    assert not bad, f"gradient check failed (rel error > {rtol}): {bad}"
