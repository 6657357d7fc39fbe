"""Softmax and mean softmax cross-entropy (Caffe's SoftmaxWithLoss, normalised by the batch size)."""

from __future__ import annotations

import numpy as np

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _check_logits(logits: object) -> None:
    if not isinstance(logits, np.ndarray):
        raise TypeError(f"logits: expected a numpy.ndarray, got {type(logits).__name__}")
    if logits.dtype not in _FLOATS:
        raise TypeError(f"logits.dtype={logits.dtype}: expected float32 or float64")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax ``exp(z) / sum(exp(z))`` over the last axis, stable for large logits.

    Parameters
    ----------
    logits : ndarray, shape (N, M) (any ndim >= 1; the last axis is normalised), float32 or float64

    Returns
    -------
    p : ndarray, shape of logits, dtype of logits
        Probabilities; each row sums to 1 up to rounding. Infinite or NaN logits give NaN rows.
    """
    _check_logits(logits)
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits.shape={logits.shape}: expected a non-empty last axis")
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))  # largest entry of each row is exp(0) = 1
    p /= p.sum(axis=-1, keepdims=True)
    return p


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over the batch of ``-log softmax(logits)[n, y[n]]``, and its gradient.

    Computed as ``log-sum-exp(z) - z[y]`` with ``z = logits - rowmax``, so logits of any finite size
    (1e4 and beyond) give a finite loss.

    Parameters
    ----------
    logits : ndarray, shape (N, M), float32 or float64
        Unnormalised class scores, N >= 1.
    y : ndarray, shape (N,), any integer dtype
        True class of each sample, in ``[0, M)``.

    Returns
    -------
    loss : float
        A Python float: computed in the dtype of ``logits``, then converted (exactly) to float.
    dlogits : ndarray, shape (N, M), dtype of logits
        ``(softmax(logits) - onehot(y)) / N``.

    Raises
    ------
    TypeError
        If ``logits`` is not float32/float64 or ``y`` is not an integer array.
    ValueError
        If the shapes disagree or a label is out of range.
    """
    _check_logits(logits)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits.shape={logits.shape}: expected (N, M) with N >= 1 and M >= 1")
    if not isinstance(y, np.ndarray):
        raise TypeError(f"y: expected a numpy.ndarray of integer labels, got {type(y).__name__}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y.dtype={y.dtype}: expected an integer dtype (class labels)")
    N, M = logits.shape
    if y.shape != (N,):
        raise ValueError(f"y.shape={y.shape}: expected ({N},) to match logits.shape={logits.shape}")
    y_min, y_max = int(y.min()), int(y.max())
    if y_min < 0 or y_max >= M:
        raise ValueError(f"y: labels must lie in [0, {M}), got min {y_min} and max {y_max}")
    z = logits - logits.max(axis=1, keepdims=True)  # (N, M), row max 0
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)  # (N, 1), in [1, M]
    rows = np.arange(N)
    log_p_y = z[rows, y] - np.log(s[:, 0])  # (N,)
    loss = float(-log_p_y.mean())
    dlogits = e / s  # softmax
    dlogits[rows, y] -= 1
    dlogits /= N
    return loss, dlogits
