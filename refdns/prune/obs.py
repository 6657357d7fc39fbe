"""Optimal Brain Surgeon (B. Hassibi, D. G. Stork, "Second order derivatives for network pruning: Optimal
Brain Surgeon", NIPS 1992 / ICNN 1993).

Around a local minimum the loss is ``dL = 1/2 dw^T H dw``. Removing weight q means adding the constraint
``e_q^T dw + w_q = 0``; the Lagrangian's solution is ::

    # OBS: dw  = -(w_q / [H^-1]_qq) H^-1 e_q           (the other weights move to compensate)
    # OBS: L_q = w_q^2 / (2 [H^-1]_qq)                  (the loss increase that removal costs)

and the surgeon removes the q with the smallest L_q, one weight at a time.

**Keeping removed weights at zero.** After q is removed the constraint set grows: the next step must keep
w_q = 0. That is the same quadratic problem over the remaining coordinates R, whose inverse Hessian is the
Schur complement (the standard rank-1 downdate, which is what refdns does after every removal)::

    (H_RR)^-1 = [H^-1]_RR - [H^-1]_Rq [H^-1]_qR / [H^-1]_qq
    i.e.  H^-1 <- H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq

Row and column q of the downdated matrix are zero (set exactly), so no later update touches w_q again;
removing the weights one after another this way gives exactly the constrained minimiser at every step.
H is *not* recomputed between removals (no retraining): the whole path runs on the quadratic model at the
starting point.

Where H^-1 comes from (``OBSConfig.hessian``):

* ``"exact"`` - the full Hessian of the training loss (:mod:`refdns.hessian`, n Hessian-vector products),
  inverted with damping. The exact Hessian of a ReLU net is usually indefinite away from an exact minimum;
  refdns then raises :class:`~refdns.errors.SingularHessianError` unless ``shift_indefinite`` is set, which
  adds ``-lambda_min`` to the diagonal (reported).
* ``"gauss-newton"`` - the outer-product (Gauss-Newton) matrix, positive semi-definite, inverted directly.
* ``"woodbury"`` - Hassibi & Stork's recursive outer-product inverse over the P training samples::

      # OBS: H_{m+1}^-1 = H_m^-1 - H_m^-1 X_{m+1} X_{m+1}^T H_m^-1 / (P + X_{m+1}^T H_m^-1 X_{m+1})
      #      H_0^-1 = alpha^-1 I

  which ends at ``(alpha I + (1/P) sum_m X_m X_m^T)^-1``; with softmax outputs each sample contributes one X
  per class (:func:`refdns.hessian.output_factors`).
* ``"layerwise"`` - per layer, the Hessian of the layer's reconstruction error ``||W X - W' X||^2``,
  ``H = 2 X X^T`` over the layer inputs, the same for every output row (E. Frantar, D. Alistarh,
  "Optimal Brain Compression", NeurIPS 2022). Rows are pruned independently with their own copy of H^-1; a
  layer's sparsity is spread over rows by OBC's global order of the rows' removal costs. Biases are not
  pruned and not changed. Memory is one D x D inverse at a time, so LeNet-300-100 fits. When the layer has
  fewer input rows S than live inputs D (a small Hessian batch), H has rank S and the rows' paths run on its
  factor through Woodbury's identity, O(S D) per removal instead of O(D^2), and the weights at each level
  come from the constrained minimiser in closed form instead of a second pass (same removals and weights to
  rounding; the Numba kernel ``refdns.kernels.obs_lowrank`` and ``_lowrank_solution``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg.blas import dger as _dger

from refdns.config import check_number
from refdns.errors import ConfigError, SingularHessianError
from refdns.hessian import (
    LOSSES,
    full_hessian,
    output_factors,
    param_slices,
    param_vector,
    vector_to_params,
)
from refdns.kernels.obs_lowrank import obs_lowrank_paths
from refdns.layers.conv import Conv2dCache
from refdns.layers.dense import DenseCache
from refdns.nets.sequential import NetSpec, forward
from refdns.prune.base import MaskUpdate, OneShotOnData, surgery_trace

HESSIANS = ("exact", "gauss-newton", "woodbury", "layerwise")

# Largest accepted condition number of a (damped) Hessian before inversion: beyond ~1/sqrt(eps) the
# downdates of a long removal path lose all digits.
MAX_CONDITION = 1e10


# --------------------------------------------------------------------------------------------------------
# Inverse Hessians


def damped_inverse(
    H: np.ndarray,
    *,
    damping: float,
    shift_indefinite: bool = False,
    max_condition: float = MAX_CONDITION,
    layer: str | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """``(H + lambda I)^-1`` with ``lambda = damping * mean(diag H)`` (+ ``-lambda_min`` if asked), float64.

    Parameters
    ----------
    H : ndarray, shape (n, n), float64
        Symmetric (the triangles are averaged first).
    damping : float
        Relative damping, >= 0 (OBC uses 0.01).
    shift_indefinite : bool
        If the damped matrix is not positive definite, add ``-lambda_min + damping * mean(diag H)`` more.
    max_condition : float
        Largest accepted condition number of the matrix that is inverted.

    Returns
    -------
    h_inv : ndarray, shape (n, n), float64
    info : dict
        ``lambda`` (total diagonal added), ``eig_min``/``eig_max`` of H, ``condition`` of the inverted matrix.

    Raises
    ------
    SingularHessianError
        If the matrix to invert is not positive definite or worse conditioned than ``max_condition``,
        or holds NaN/Inf; the message says how much damping would fix it.
    """
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H.shape={H.shape}: expected a square matrix")
    check_number("damping", damping, lo=0.0)
    if not np.all(np.isfinite(H)):
        raise SingularHessianError(
            f"the Hessian{_where(layer)} holds NaN or Inf; check the loss and the data", layer=layer
        )
    Hs = 0.5 * (H + H.T)
    scale = float(np.mean(np.abs(np.diag(Hs)))) or 1.0
    lam = damping * scale
    evals, evecs = np.linalg.eigh(Hs)
    eig_min, eig_max = float(evals[0]), float(evals[-1])
    if shift_indefinite and eig_min + lam <= 0:
        lam = -eig_min + max(damping, 1e-12) * scale
    hi, lo = _check_spectrum(eig_min, eig_max, lam, scale, max_condition, layer)
    h_inv = (evecs / (evals + lam)) @ evecs.T
    return h_inv, {"lambda": lam, "eig_min": eig_min, "eig_max": eig_max, "condition": hi / lo}


def _check_spectrum(
    eig_min: float, eig_max: float, lam: float, scale: float, max_condition: float, layer: str | None
) -> tuple[float, float]:
    """(largest, smallest) eigenvalue of ``H + lam I``; SingularHessianError unless safely invertible."""
    lo, hi = eig_min + lam, eig_max + lam
    if lo <= 0 or hi / lo > max_condition:
        need = max(0.0, -eig_min) + hi / max_condition
        what = "not positive definite" if lo <= 0 else "ill-conditioned"
        cond = "inf" if lo <= 0 else f"{hi / lo:.3g}"
        alt = "" if eig_min > 0 else " or set shift_indefinite=True"
        raise SingularHessianError(
            f"the Hessian{_where(layer)} is {what} after damping {lam:.3g} (eigenvalues {eig_min:.3g} .. "
            f"{eig_max:.3g}, condition {cond} > {max_condition:.3g}); raise the relative damping to at least "
            f"{need / scale:.3g}{alt}",
            layer=layer,
        )
    return hi, lo


def _where(layer: str | None) -> str:
    return f" of layer {layer!r}" if layer else ""


def woodbury_inverse(X: np.ndarray, *, alpha: float, n_samples: int, block: int = 1) -> np.ndarray:
    """Hassibi & Stork's recursive inverse of ``alpha I + (1/P) sum_m X_m X_m^T``, float64.

    Parameters
    ----------
    X : ndarray, shape (m, n)
        One outer-product vector per row (e.g. :func:`refdns.hessian.output_factors`).
    alpha : float
        ``H_0 = alpha I``, > 0 (Hassibi & Stork use 1e-8 .. 1e-4).
    n_samples : int
        P, the normaliser of the outer-product sum (the number of training samples, not rows of X).
    block : int
        Rows folded in per step. 1 is the paper's rank-1 recursion; ``b > 1`` applies the same update to b
        rows at once, ``H^-1 - H^-1 X_b (P I + X_b^T H^-1 X_b)^-1 X_b^T H^-1``, identical in exact arithmetic.

    Returns
    -------
    h_inv : ndarray, shape (n, n), float64
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X.shape={X.shape}: expected (m, n)")
    check_number("alpha", alpha, lo=0.0, lo_open=True)
    check_number("n_samples", n_samples, lo=1, integer=True)
    check_number("block", block, lo=1, integer=True)
    n = X.shape[1]
    P = float(n_samples)
    h_inv = np.eye(n) / alpha
    # Overflow is possible with a tiny alpha; it is detected (and named) after the loop, not warned about.
    with np.errstate(over="ignore", invalid="ignore"):
        _woodbury_steps(h_inv, X, P, block)
    if not np.all(np.isfinite(h_inv)):
        raise SingularHessianError(f"the recursive inverse became non-finite (alpha={alpha}); raise alpha")
    return 0.5 * (h_inv + h_inv.T)


def _woodbury_steps(h_inv: np.ndarray, X: np.ndarray, P: float, block: int) -> None:
    for s in range(0, len(X), block):
        xb = X[s : s + block]  # (b, n)
        hx = h_inv @ xb.T  # (n, b)
        if block == 1:
            # OBS: H_{m+1}^-1 = H_m^-1 - H_m^-1 X X^T H_m^-1 / (P + X^T H_m^-1 X)
            denom = P + float(xb[0] @ hx[:, 0])
            h_inv -= np.outer(hx[:, 0], hx[:, 0]) / denom
        else:
            S = P * np.eye(len(xb)) + xb @ hx  # (b, b)
            h_inv -= hx @ np.linalg.solve(S, hx.T)


# --------------------------------------------------------------------------------------------------------
# The surgeon


def obs_costs(w: np.ndarray, h_inv: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``L_q = w_q^2 / (2 [H^-1]_qq)`` for every candidate q, ``inf`` elsewhere.

    Parameters
    ----------
    w : ndarray, shape (n,), float64
    h_inv : ndarray, shape (n, n), float64
    candidates : ndarray, shape (n,), bool

    Returns
    -------
    L : ndarray, shape (n,), float64
    """
    d = np.diag(h_inv)
    L = np.full(w.shape, np.inf)
    L[candidates] = w[candidates] ** 2 / (2.0 * d[candidates])  # OBS: L_q = w_q^2 / (2 [H^-1]_qq)
    return L


def _remove(w: np.ndarray, h_inv: np.ndarray, q: int) -> None:
    """One surgery step in place: the weight update, w_q := 0 exactly, and the Schur-complement downdate."""
    d = h_inv[q, q]
    if not d > 0 or not np.isfinite(d):
        raise SingularHessianError(
            f"[H^-1]_qq = {d} for q={q}: the inverse Hessian lost positive definiteness along the path; "
            "raise the damping"
        )
    col = h_inv[:, q].copy()
    w -= (w[q] / d) * col  # OBS: dw = -(w_q / [H^-1]_qq) H^-1 e_q
    w[q] = 0.0
    h_inv -= np.outer(col, col / d)  # H^-1 <- H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq
    h_inv[q, :] = 0.0
    h_inv[:, q] = 0.0


def obs_remove(w: np.ndarray, h_inv: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Remove weight q: returns (new w, downdated H^-1, L_q); the inputs are not modified."""
    w = np.array(w, dtype=np.float64, copy=True)
    h_inv = np.array(h_inv, dtype=np.float64, copy=True)
    L_q = float(w[q] ** 2 / (2.0 * h_inv[q, q]))
    _remove(w, h_inv, q)
    return w, h_inv, L_q


def obs_path(
    w: np.ndarray, h_inv: np.ndarray, candidates: np.ndarray, n_remove: int
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Remove ``n_remove`` candidates one at a time, cheapest first.

    Yields ``(q, L_q, w)`` after each removal; ``w`` is the working vector (copy it to keep it). The inputs
    are copied once and never modified.
    """
    w = np.array(w, dtype=np.float64, copy=True)
    h_inv = np.array(h_inv, dtype=np.float64, copy=True)
    alive = np.array(candidates, dtype=bool, copy=True)
    if n_remove > int(alive.sum()):
        raise ValueError(f"n_remove={n_remove} exceeds the {int(alive.sum())} candidates")
    for _ in range(n_remove):
        L = obs_costs(w, h_inv, alive)
        q = int(np.argmin(L))
        L_q = float(L[q])
        _remove(w, h_inv, q)
        alive[q] = False
        yield q, L_q, w


# --------------------------------------------------------------------------------------------------------
# Layer-wise OBS (Optimal Brain Compression form)


def layer_inputs(spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """The input rows X of every parametric layer, float64: dense (N, D); conv unfolded (N*OH*OW, C*KH*KW)."""
    p64 = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    _, cache = forward(spec, p64, np.asarray(x, dtype=np.float64))
    out = {}
    for op, c in zip(spec.ops, cache.op_caches, strict=True):
        if isinstance(c, DenseCache):
            out[op.name] = c.x
        elif isinstance(c, Conv2dCache):
            out[op.name] = (
                c.cols.transpose(0, 2, 1).reshape(-1, c.cols.shape[1])
                if c.layout == "batch_first"
                else c.cols.T
            )
    return out


def _row_path(
    w_row: np.ndarray, h_inv: np.ndarray, steps: int, snap_at: list[int], layer: str | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One row's OBS path of ``steps`` removals: its incremental costs (D,) (inf past the path) and the
    row after ``k`` removals for every ``k`` in ``snap_at``."""
    D = len(w_row)
    w = np.array(w_row, dtype=np.float64, copy=True)
    # Fortran order: BLAS dger then updates it in place, one pass over memory per removal (the NumPy
    # expression with its temporary was measured 10x slower on LeNet-300-100's 784 x 784 inverses).
    hi = np.array(h_inv, dtype=np.float64, order="F", copy=True)
    alive = np.ones(D, dtype=bool)
    costs = np.full(D, np.inf)
    snaps = [w.copy() if k == 0 else None for k in snap_at]
    for t in range(steps):
        d = np.diagonal(hi)
        L = np.full(D, np.inf)
        L[alive] = w[alive] ** 2 / (2.0 * d[alive])  # OBS: L_q = w_q^2 / (2 [H^-1]_qq)
        q = int(np.argmin(L))
        dq = float(d[q])
        if not dq > 0:
            raise SingularHessianError(
                f"[H^-1]_qq = {dq} in layer-wise OBS{_where(layer)}; raise the damping", layer=layer
            )
        costs[t] = L[q]
        col = hi[:, q].copy()
        w -= (w[q] / dq) * col  # OBS: dw = -(w_q / [H^-1]_qq) H^-1 e_q
        w[q] = 0.0
        hi = _dger(-1.0 / dq, col, col, a=hi, overwrite_a=1)  # H^-1 <- H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq
        hi[q, :] = 0.0
        hi[:, q] = 0.0
        alive[q] = False
        for i, k in enumerate(snap_at):
            if k == t + 1:
                snaps[i] = w.copy()
    return costs, snaps


def _lowrank_solution(W: np.ndarray, Z: np.ndarray, lam: float, removed: np.ndarray) -> np.ndarray:
    """Every row's weights after OBS removed the inputs ``removed[r]`` (bool (R, D)), in closed form.

    The surgeon's path ends at the constrained minimiser of ``dw^T H dw`` with ``w'_Q = 0`` (see the module
    docstring), so with ``H = lam I + Z^T Z`` the survivors R move by ::

        dw_R = [H_RR]^-1 H_RQ w_Q = Z_R^T (lam I_S + Z_R Z_R^T)^-1 Z_Q w_Q

    an S x S solve per row instead of replaying the path.
    """
    keep = ~removed
    M = np.einsum("sd,rd,td->rst", Z, keep.astype(np.float64), Z)  # Z_R Z_R^T per row, (R, S, S)
    M += lam * np.eye(Z.shape[0])
    b = (W * removed) @ Z.T  # Z_Q w_Q per row, (R, S)
    u = np.linalg.solve(M, b[:, :, None])[:, :, 0] @ Z  # (R, D)
    return np.where(keep, W + u, 0.0)


def _lowrank_damping(Z: np.ndarray, damping: float, layer: str | None) -> float:
    """``lam = damping * mean(diag H)`` for ``H = Z^T Z`` of rank < D, as :func:`damped_inverse` adds, after
    the same conditioning check (H's smallest eigenvalue is 0, its largest that of ``Z Z^T``)."""
    check_number("damping", damping, lo=0.0)
    if not np.all(np.isfinite(Z)):
        raise SingularHessianError(
            f"the Hessian{_where(layer)} holds NaN or Inf; check the loss and the data", layer=layer
        )
    scale = float(np.mean(np.einsum("si,si->i", Z, Z))) or 1.0
    lam = damping * scale
    _check_spectrum(0.0, float(np.linalg.eigvalsh(Z @ Z.T)[-1]), lam, scale, MAX_CONDITION, layer)
    return lam


def _first_removed(order: np.ndarray, k: np.ndarray, D: int) -> np.ndarray:
    """bool (R, D): row r's first ``k[r]`` removals in ``order`` (R, steps)."""
    taken = np.arange(order.shape[1])[None, :] < k[:, None]
    removed = np.zeros((len(order), D), dtype=bool)
    removed[np.nonzero(taken)[0], order[taken]] = True
    return removed


def layerwise_obs(
    W: np.ndarray,
    X: np.ndarray,
    kept_fractions: list[float],
    *,
    damping: float = 0.01,
    allocation: str = "global",
    layer: str | None = None,
) -> dict[float, np.ndarray]:
    """Prune one layer's weight matrix by OBS on its reconstruction error, to several densities.

    Parameters
    ----------
    W : ndarray, shape (M, D) dense or (F, C, KH, KW) conv
    X : ndarray, shape (S, D), float64
        The layer's input rows (:func:`layer_inputs`).
    kept_fractions : list of float in [0, 1]
    damping : float
        Relative damping of ``H = 2 X^T X`` (OBC: 0.01).
    allocation : {"global", "row"}
        ``"global"``: OBC's selection, the layer's cheapest removals over all rows (two passes over the
        rows' paths); ``"row"``: every row keeps the same fraction (one pass).

    Returns
    -------
    dict kept_fraction -> ndarray of W's shape, float64
        Pruned weights (exact zeros) with the survivors updated by OBS.
    """
    if allocation not in ("global", "row"):
        raise ConfigError(f"allocation={allocation!r} must be 'global' or 'row'")
    for f in kept_fractions:
        check_number("kept_fraction", f, lo=0.0, hi=1.0)
    shape = W.shape
    W2 = np.asarray(W, dtype=np.float64).reshape(shape[0], -1)
    R, D = W2.shape
    if X.ndim != 2 or X.shape[1] != D:
        raise ValueError(f"X.shape={X.shape}: expected (S, {D}) for weights of shape {shape}")
    H = 2.0 * X.T @ X  # OBC: the Hessian of ||W X - W' X||^2 w.r.t. one row
    # Inputs that are 0 on every sample (MNIST border pixels): their weights do nothing on this data and
    # their H rows are zero. They are the surgeon's first, free removals; the paths then run on the live
    # inputs only, which is the same problem in fewer dimensions.
    live = np.diag(H) > 0
    Dl = int(live.sum())
    n_dead = D - Dl
    Wl = W2[:, live]
    # Fewer input rows than live inputs (a small Hessian batch: LeNet-5's ip1 sees one row per image and has
    # 800 inputs): H has rank S < D, and the paths run on its factor (refdns.kernels.obs_lowrank).
    lowrank = 0 < len(X) < Dl
    if lowrank:
        Z = np.sqrt(2.0) * X[:, live]  # Z^T Z = H
        lam = _lowrank_damping(Z, damping, layer)
    else:
        h_inv = (damped_inverse(H[np.ix_(live, live)], damping=damping, layer=layer)[0] if Dl
                 else np.zeros((0, 0)))
    if allocation == "row":
        ks = [np.full(R, D - int(round(f * D))) for f in kept_fractions]
        if lowrank:
            longest = max((int(k.max()) for k in ks), default=0) - n_dead
            order = obs_lowrank_paths(Wl, Z, lam, max(0, longest), layer=layer)[1]
    else:
        costs = np.zeros((R, D))
        if lowrank:
            costs[:, n_dead:], order = obs_lowrank_paths(Wl, Z, lam, Dl, layer=layer)
        else:
            for r in range(R):
                costs[r, n_dead:] = _row_path(Wl[r], h_inv, Dl, [], layer)[0]
        # A row's removals must be taken in order: make its costs non-decreasing, then take the K cheapest
        # over the whole layer (OBC's global selection); a stable sort keeps ties in path order.
        env = np.maximum.accumulate(costs, axis=1)
        order_all = np.argsort(env.ravel(), kind="stable")
        ks = [np.bincount(order_all[: R * D - int(round(f * R * D))] // D, minlength=R)
              for f in kept_fractions]
    # Dead-input weights go first; a level that keeps some of them keeps them at their value.
    k_live = [np.maximum(0, k - n_dead) for k in ks]
    if lowrank:
        snaps = [_lowrank_solution(Wl, Z, lam, _first_removed(order, k, Dl)) for k in k_live]
    else:
        per_row = []
        for r in range(R):
            k_r = [int(k[r]) for k in k_live]
            per_row.append(_row_path(Wl[r], h_inv, max(k_r, default=0), k_r, layer)[1])
        snaps = [np.array([sn[i] for sn in per_row]).reshape(R, Dl) for i in range(len(k_live))]
    out = {f: np.zeros((R, D)) for f in kept_fractions}
    dead_idx = np.nonzero(~live)[0]
    for f, k, sn in zip(kept_fractions, ks, snaps, strict=True):
        out[f][:, live] = sn
        for r in range(R):
            keep_dead = dead_idx[int(k[r]) :] if k[r] < n_dead else dead_idx[:0]
            out[f][r, keep_dead] = W2[r, keep_dead]
    return {f: v.reshape(shape) for f, v in out.items()}


# --------------------------------------------------------------------------------------------------------
# The pruning method


@dataclass(frozen=True)
class OBSConfig:
    """One-shot Optimal Brain Surgeon.

    ``kept_fraction`` of the weights (biases are never pruned; for the global Hessians they move with the
    surgeon's update) survive, chosen at iteration ``at_iteration``. ``damping`` is relative to the mean
    Hessian diagonal; ``alpha`` is the recursion's ``H_0 = alpha I`` (``"woodbury"`` only).
    """

    kept_fraction: float
    hessian: str = "gauss-newton"
    damping: float = 1e-4
    shift_indefinite: bool = False
    alpha: float = 1e-4
    block: int = 1
    loss: str = "softmax_ce"
    at_iteration: int = 0

    def __post_init__(self):
        check_number("kept_fraction", self.kept_fraction, lo=0.0, hi=1.0)
        if self.hessian not in HESSIANS:
            raise ConfigError(f"hessian={self.hessian!r} must be one of {HESSIANS}")
        check_number("damping", self.damping, lo=0.0)
        check_number("alpha", self.alpha, lo=0.0, lo_open=True)
        check_number("block", self.block, lo=1, integer=True)
        check_number("at_iteration", self.at_iteration, lo=0, integer=True)
        if not isinstance(self.shift_indefinite, bool):
            raise ConfigError(f"shift_indefinite={self.shift_indefinite!r} must be a bool")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss={self.loss!r} must be one of {LOSSES}")


def global_inverse(
    spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, cfg: OBSConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """H^-1 over all parameters for the ``exact``, ``gauss-newton`` or ``woodbury`` configs."""
    if cfg.hessian == "woodbury":
        X = output_factors(spec, params, x, y, loss=cfg.loss)
        return woodbury_inverse(X, alpha=cfg.alpha, n_samples=len(x), block=cfg.block), {"alpha": cfg.alpha}
    if cfg.hessian not in ("exact", "gauss-newton"):
        raise ConfigError(f"hessian={cfg.hessian!r} has no global inverse")
    H = full_hessian(spec, params, x, y, loss=cfg.loss, gauss_newton=cfg.hessian == "gauss-newton")
    return damped_inverse(H, damping=cfg.damping, shift_indefinite=cfg.shift_indefinite)


def obs_prune(
    spec: NetSpec,
    params: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    cfg: OBSConfig,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Prune to ``cfg.kept_fraction`` of the weights; returns (new params float64, new masks, info).

    Masks only shrink: already-pruned weights stay at 0 and out of the candidates.
    """
    w_eff = {k: np.asarray(params[k], dtype=np.float64) * masks[k] for k in params}
    weight_keys = [k for k in spec.param_shapes() if k.endswith(".weight")]
    n_weights = sum(masks[k].size for k in weight_keys)
    target = int(round(cfg.kept_fraction * n_weights))
    new_masks = {k: np.array(m, dtype=bool, copy=True) for k, m in masks.items()}
    if cfg.hessian == "layerwise":
        X = layer_inputs(spec, w_eff, x)
        new = dict(w_eff)
        for op in spec.layers:
            key = op.name + ".weight"
            kept_now = int(masks[key].sum())
            f = min(cfg.kept_fraction, kept_now / masks[key].size)
            # Already-pruned weights are the row path's first (free) removals: they are zero, so cost 0.
            pruned = layerwise_obs(
                w_eff[key], X[op.name], [f], damping=max(cfg.damping, 1e-12), layer=op.name
            )[f]
            new[key] = pruned
            new_masks[key] &= pruned != 0
        return new, new_masks, {"hessian": "layerwise"}
    h_inv, info = global_inverse(spec, w_eff, x, y, cfg)
    sl = param_slices(spec)
    cand = np.zeros(spec.n_params(), dtype=bool)
    for k in weight_keys:
        cand[sl[k]] = masks[k].ravel()
    # Pruned weights are fixed at 0: eliminate them from H^-1 first (zero-cost removals).
    w = param_vector(spec, w_eff)
    h_inv = h_inv.copy()
    for q in np.nonzero(~cand)[0]:
        if any(sl[k].start <= q < sl[k].stop for k in weight_keys):
            _remove(w, h_inv, int(q))
    n_remove = int(cand.sum()) - target
    removed, w_end = [], w
    for q, _, w_path in obs_path(w, h_inv, cand, max(n_remove, 0)):
        removed.append(q)
        w_end = w_path
    new = vector_to_params(spec, w_end)
    flat_masks = np.concatenate([new_masks[k].ravel() for k in spec.param_shapes()])
    flat_masks[removed] = False
    for k, s in sl.items():
        new_masks[k] = flat_masks[s].reshape(masks[k].shape)
    return new, new_masks, info | {"removed": len(removed)}


class OBS(OneShotOnData):
    """One-shot OBS as a :class:`~refdns.prune.base.PruningMethod`.

    At ``at_iteration`` it prunes with the Hessian of the loss on the (x, y) it was given and writes the
    surgeon's compensating update into ``params`` (in place, the only method that does). Pruned weights then
    stay exactly 0 (``grad_through_mask = False``) and masks only shrink.
    """

    name = "obs"
    config_type = OBSConfig

    _memo: tuple | None = None  # the last prune's (params, masks) and result: trace_state asks for it again

    def _prune(self, params, masks) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """:func:`obs_prune` of these weights and masks; the golden writer's trace of a prune step asks again
        for the prune update_masks just did, which on LeNet-5 is most of the golden's cost, so the last
        result is kept (keyed by content: it never stands in for another input)."""
        memo = self._memo
        if memo is not None and all(
            np.array_equal(memo[0][k], params[k]) and np.array_equal(memo[1][k], masks[k]) for k in params
        ):
            return memo[2], memo[3]
        key = ({k: np.array(v, copy=True) for k, v in params.items()},
               {k: np.array(m, copy=True) for k, m in masks.items()})
        new, new_masks, _ = obs_prune(self.spec, params, masks, self.x, self.y, self.config)
        self._memo = (*key, new, new_masks)
        return new, new_masks

    def update_masks(self, iteration, params, masks, state, rng) -> list[MaskUpdate]:
        if iteration != self.config.at_iteration:
            return []
        new, new_masks = self._prune(params, masks)
        records = self._weight_records(iteration, masks, new_masks)
        for k in params:
            params[k][...] = new[k] * new_masks[k]
            masks[k][...] = new_masks[k]
        return records

    def trace_state(self, spec, state, records) -> dict[str, np.ndarray]:
        """The step's pruning per layer and, at the prune step, the surgeon's work, recomputed (it is
        deterministic) from the weights it started from (the golden writer's ``before.params.*`` /
        ``before.masks.*``): the Hessian batch (``hessian/inputs``, ``hessian/labels``, whole), each weight's
        first-step saliency ``L_q = w_q^2 / (2 [H^-1]_qq)`` (``obs/saliency/<layer>``; layer-wise Hessian
        ``2 X^T X`` with the config's damping; inf for inputs that are zero on the whole batch), the flat
        indices removed (``obs/pruned/<layer>``, ascending) and the compensating update of the surviving
        weights, ``new - W * T`` (``obs/update/<layer>``, float64). Layer-wise Hessians only."""
        layers = list(spec.layer_names)
        out = surgery_trace(layers, records)
        if not records or f"before.params.{layers[0]}.weight" not in state:
            return out
        cfg = self.config
        if cfg.hessian != "layerwise":
            raise ConfigError(f"OBS traces the layer-wise surgeon only, not hessian={cfg.hessian!r}")
        keys = list(spec.param_shapes())
        params = {k: state[f"before.params.{k}"] for k in keys}
        masks = {k: state[f"before.masks.{k}"] for k in keys}
        new, new_masks = self._prune(params, masks)
        w_eff = {k: np.asarray(params[k], dtype=np.float64) * masks[k] for k in keys}
        X = layer_inputs(spec, w_eff, self.x)
        out["hessian/inputs"] = np.asarray(self.x, dtype=np.float32)
        out["hessian/labels"] = np.asarray(self.y, dtype=np.int64)
        for n in layers:
            key = f"{n}.weight"
            W2 = w_eff[key].reshape(w_eff[key].shape[0], -1)
            H = 2.0 * X[n].T @ X[n]  # OBC: the Hessian of ||W X - W' X||^2 w.r.t. one row
            live = np.diag(H) > 0
            d = np.full(W2.shape[1], np.inf)
            if live.any():
                h_inv = damped_inverse(H[np.ix_(live, live)], damping=max(cfg.damping, 1e-12), layer=n)[0]
                d[live] = np.diag(h_inv)
            out[f"obs/saliency/{n}"] = (W2**2 / (2.0 * d)).reshape(w_eff[key].shape)  # OBS: L_q, first step
            out[f"obs/pruned/{n}"] = np.flatnonzero(masks[key] & ~new_masks[key]).astype(np.int64)
            out[f"obs/update/{n}"] = np.asarray(new[key], dtype=np.float64) * new_masks[key] - w_eff[key]
        return out
