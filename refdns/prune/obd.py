"""Optimal Brain Damage (Y. LeCun, J. S. Denker, S. A. Solla, "Optimal Brain Damage", NIPS 1990).

A second-order Taylor expansion of the loss around the trained weights, assuming a local minimum (the
gradient term vanishes) and a diagonal Hessian (the cross terms are dropped), gives each parameter's
saliency, the loss increase its deletion causes::

    # OBD: dE = sum_k g_k dw_k + 1/2 sum_k h_kk dw_k^2 + 1/2 sum_{k != l} h_kl dw_k dw_l + O(|dw|^3)
    # OBD: s_k = h_kk w_k^2 / 2

Deletion sets w_k to 0 and changes nothing else (unlike OBS). The paper's procedure: train, compute the
h_kk, delete the lowest-saliency parameters, retrain, repeat. refdns offers the diagonal two ways
(``OBDConfig.diagonal``):

* ``"recursion"`` - LeCun's backprop-like second-order recursion in its Gauss-Newton form, one extra
  backward pass (:func:`refdns.hessian.obd_diagonal`, where the recursion is quoted);
* ``"exact"`` - the diagonal of the exact Hessian (:func:`refdns.hessian.full_hessian`, small nets only),
  so the recursion's approximation can itself be measured.

Only weights are pruned (biases keep their values), globally over all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.hessian import LOSSES, full_hessian, obd_diagonal, param_slices
from refdns.nets.sequential import NetSpec
from refdns.prune.base import MaskUpdate, OneShotOnData, surgery_trace

DIAGONALS = ("recursion", "exact")


@dataclass(frozen=True)
class OBDConfig:
    """One-shot OBD: keep ``kept_fraction`` of the weights, chosen by saliency at ``at_iteration``."""

    kept_fraction: float
    diagonal: str = "recursion"
    loss: str = "softmax_ce"
    at_iteration: int = 0

    def __post_init__(self):
        check_number("kept_fraction", self.kept_fraction, lo=0.0, hi=1.0)
        if self.diagonal not in DIAGONALS:
            raise ConfigError(f"diagonal={self.diagonal!r} must be one of {DIAGONALS}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss={self.loss!r} must be one of {LOSSES}")
        check_number("at_iteration", self.at_iteration, lo=0, integer=True)


def hessian_diagonal(
    spec: NetSpec,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    diagonal: str = "recursion",
    loss: str = "softmax_ce",
) -> dict[str, np.ndarray]:
    """``h_diag`` keyed like ``params`` (float64), by LeCun's recursion or from the exact Hessian."""
    if diagonal == "recursion":
        return obd_diagonal(spec, params, x, y, loss=loss)
    if diagonal != "exact":
        raise ConfigError(f"diagonal={diagonal!r} must be one of {DIAGONALS}")
    d = np.diag(full_hessian(spec, params, x, y, loss=loss)).copy()
    shapes = spec.param_shapes()
    return {k: d[s].reshape(shapes[k]) for k, s in param_slices(spec).items()}


def saliency(params: dict[str, np.ndarray], h_diag: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``s_k = h_kk w_k^2 / 2`` for every parameter (float64), keyed like ``params``."""
    return {k: 0.5 * h_diag[k] * np.asarray(params[k], dtype=np.float64) ** 2 for k in params}  # OBD: s_k


def lowest_score_masks(
    scores: dict[str, np.ndarray], masks: dict[str, np.ndarray], keys: list[str], kept_fraction: float
) -> dict[str, np.ndarray]:
    """New masks keeping ``kept_fraction`` of the entries of ``keys`` with the highest scores, globally.

    Already-masked entries stay masked (masks only shrink) and count as removed first; ties are broken by
    position (a stable sort), so the result is deterministic. Keys not listed are copied unchanged.
    """
    check_number("kept_fraction", kept_fraction, lo=0.0, hi=1.0)
    flat_s = np.concatenate([np.where(masks[k], scores[k], -np.inf).ravel() for k in keys])
    total = flat_s.size
    n_prune = total - int(round(kept_fraction * total))
    order = np.argsort(flat_s, kind="stable")
    keep = np.ones(total, dtype=bool)
    keep[order[:n_prune]] = False
    out = {k: np.array(m, dtype=bool, copy=True) for k, m in masks.items()}
    start = 0
    for k in keys:
        n = masks[k].size
        out[k] = masks[k] & keep[start : start + n].reshape(masks[k].shape)
        start += n
    return out


class OBD(OneShotOnData):
    """One-shot OBD as a :class:`~refdns.prune.base.PruningMethod` (masks only shrink, pruned weights stay 0).

    The diagonal is computed on the (x, y) given here, at the effective weights of ``at_iteration``.
    """

    name = "obd"
    config_type = OBDConfig

    def update_masks(self, iteration, params, masks, state, rng) -> list[MaskUpdate]:
        cfg = self.config
        if iteration != cfg.at_iteration:
            return []
        w_eff = {k: params[k] * masks[k] for k in params}
        h = hessian_diagonal(self.spec, w_eff, self.x, self.y, diagonal=cfg.diagonal, loss=cfg.loss)
        keys = [op.name + ".weight" for op in self.spec.layers]
        new = lowest_score_masks(saliency(w_eff, h), masks, keys, cfg.kept_fraction)
        records = self._weight_records(iteration, masks, new)
        for key in keys:
            masks[key][...] = new[key]
        # Keep the stored weights consistent with the masks (pruned weights are exactly 0).
        for k in keys:
            params[k] *= masks[k]
        return records

    def trace_state(self, spec, state, records) -> dict[str, np.ndarray]:
        """The step's pruning per layer and, at the prune step, what it was chosen from: the Hessian batch
        (``hessian/inputs``, ``hessian/labels``, whole: a replay needs them), each weight's ``h_diag`` and
        saliency ``s_k = h_kk w_k^2 / 2`` (float64) and the flat indices of the weights it removed
        (``obd/pruned/<layer>``, int64, ascending). The weights are the golden writer's
        ``before.params.*``."""
        layers = list(spec.layer_names)
        out = surgery_trace(layers, records)
        if not records or f"before.params.{layers[0]}.weight" not in state:
            return out
        keys = list(spec.param_shapes())
        w_eff = {k: state[f"before.params.{k}"] * state[f"before.masks.{k}"] for k in keys}
        cfg = self.config
        h = hessian_diagonal(spec, w_eff, self.x, self.y, diagonal=cfg.diagonal, loss=cfg.loss)
        s = saliency(w_eff, h)
        out["hessian/inputs"] = np.asarray(self.x, dtype=np.float32)
        out["hessian/labels"] = np.asarray(self.y, dtype=np.int64)
        new_masks = lowest_score_masks(s, {k: state[f"before.masks.{k}"] for k in keys},
                                       [op.name + ".weight" for op in spec.layers], cfg.kept_fraction)
        for n in layers:
            key = f"{n}.weight"
            new = new_masks[key]
            out[f"obd/h_diag/{n}"] = h[key]
            out[f"obd/saliency/{n}"] = s[key]
            out[f"obd/pruned/{n}"] = np.flatnonzero(state[f"before.masks.{key}"] & ~new).astype(np.int64)
        return out
