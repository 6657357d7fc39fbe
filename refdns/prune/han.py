"""Iterative magnitude pruning: Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient
Neural Networks", NeurIPS 2015.

Three steps, the last two repeated: train the dense net; prune every connection of layer l whose magnitude is
below a threshold; retrain the survivors with the pruned connections held at exactly zero. The paper (Sec. 3):
"the pruning threshold is chosen as a quality parameter multiplied by the standard deviation of a layer's
weights", so for round r of R and layer l::

    # Han et al. Sec. 3: prune w where |w| < q_l(r) * std(W_l);   q_l(r) = q_l * r / R   (growing thresholds)
    T_l <- T_l AND (|W_l| >= q_l(r) * std(W_l))

Masks only ever shrink (the AND). Held at zero means: the gradient of a pruned entry is dropped, *and* its
momentum buffer is zeroed, *and* the weight is reset to 0 after each step, so that neither momentum nor weight
decay can revive it (``grad_through_mask = False``; :func:`refdns.train.train_step` does all three).

The authors released no code. Two readings of ``std(W_l)`` are offered:

* ``std="dense"`` (default, as Intel Distiller's ``SensitivityPruner`` runs it): the population std of the
  trained dense layer's weights, computed once before the first round and stored with the run (Distiller
  caches ``torch.std``, the unbiased one; for a layer of >= 500 weights the two differ by < 0.1%); the
  quality parameter then grows the threshold directly;
* ``std="kept"``: the std of the layer's surviving weights, recomputed every round.

Instead of qualities, ``densities`` may name the kept fraction each layer should reach after the last round;
round r then sets the threshold to the magnitude that keeps ``round(d_l ** (r / R) * n_l)`` weights
(geometric steps): the same pruning rule with the quality solved for (to compare methods at matched sparsity).

Han et al. also lower the dropout rate of a retrained layer, because a sparser layer has less capacity to
overfit: ``D_new = D_old * sqrt(C_new / C_old)`` (eq. (2)), C the layer's number of connections. That is
:func:`adjusted_dropout`. refdns's LeNet-300-100 and Caffe LeNet-5 have no dropout (nor did Han et al.'s
LeNets; their AlexNet and VGG-16 did), so the pipeline never calls it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.nets.sequential import NetSpec
from refdns.prune.base import MaskUpdate, PruningMethod, Recipe, check_variant, surgery_trace
from refdns.prune.magnitude import (
    check_densities,
    check_layers,
    kept_count,
    layer_names,
    mask_records,
    top_k_mask,
)

STD_READINGS = ("dense", "kept")


@dataclass(frozen=True)
class HanConfig:
    """Han et al.'s iterative pruning.

    ``quality``: every layer's final quality parameter (threshold = quality * std in the last round), or
    ``None`` when ``densities`` (every layer's final kept fraction) is given instead. ``rounds`` prune/retrain
    rounds; ``round_iterations`` retraining iterations after each prune (the run is ``rounds *
    round_iterations`` iterations long). ``std``: "dense" or "kept" (see the module docstring).
    ``restart_lr``: every retraining restarts the solver's learning-rate policy at its iteration 0, as a
    fresh Caffe fine-tuning run from the pruned snapshot would (False: one policy across all rounds).
    """

    quality: dict[str, float] | None = None
    rounds: int = 4
    round_iterations: int = 5_000
    std: str = "dense"
    densities: dict[str, float] | None = None
    prune_biases: bool = False
    restart_lr: bool = False

    def __post_init__(self):
        if (self.quality is None) == (self.densities is None):
            raise ConfigError(
                "give exactly one of quality={layer: q} (Han's rule) or densities={layer: fraction}"
            )
        if self.quality is not None:
            if not isinstance(self.quality, dict) or not self.quality:
                raise ConfigError(f"quality must be a non-empty dict {{layer: q}}, got {self.quality!r}")
            for layer, q in self.quality.items():
                check_number(f"quality[{layer!r}]", q, lo=0.0)
            object.__setattr__(self, "quality", {str(k): float(v) for k, v in self.quality.items()})
        if self.densities is not None:
            object.__setattr__(self, "densities", check_densities(self.densities))
        check_number("rounds", self.rounds, lo=1, integer=True)
        check_number("round_iterations", self.round_iterations, lo=0, integer=True)
        if self.std not in STD_READINGS:
            raise ConfigError(f"std={self.std!r} must be one of {STD_READINGS}")
        for name in ("prune_biases", "restart_lr"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a bool")

    @property
    def layers(self) -> dict[str, float]:
        return self.quality if self.quality is not None else self.densities

    @property
    def iterations(self) -> int:
        return self.rounds * self.round_iterations


# Per-layer qualities and schedules refdns tuned on MNIST from the 10,000-iteration Caffe dense net (seed 0);
# what was tried and the numbers are in validate/results/han_tuning.md.
RECIPES: dict[str, dict[str, Any]] = {
    "lenet-300-100": {
        "quality": {"ip1": 1.55, "ip2": 1.5, "ip3": 1.0},
        "rounds": 5,
        "round_iterations": 8_000,
    },
    "lenet-5": {
        "quality": {"conv1": 0.6, "conv2": 1.5, "ip1": 1.4, "ip2": 1.35},
        "rounds": 3,
        "round_iterations": 3_000,
    },
}


def default_config(net: str, **overrides: Any) -> HanConfig:
    """refdns's Han recipe for ``net`` (:data:`RECIPES`), with ``overrides`` applied."""
    if net not in RECIPES:
        raise ConfigError(f"net={net!r}: no Han recipe; pass HanConfig(quality=...) explicitly")
    return HanConfig(**(RECIPES[net] | overrides))


def round_quality(quality: float, r: int, rounds: int) -> float:
    """``q(r) = q * r / R``: the growing quality of round ``r`` (1-based) of ``rounds``."""
    return quality * r / rounds


def layer_std(w: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Population std of a layer's weights (of the surviving ones when ``mask`` is given), in float64.

    Parameters
    ----------
    w : ndarray, any shape, float32
    mask : ndarray, same shape, bool, optional
    """
    v = w.astype(np.float64).ravel() if mask is None else w.astype(np.float64)[mask]
    return float(v.std()) if v.size else 0.0


def han_mask(w: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    """``T AND (|w| >= threshold)``: Han's pruning rule; a pruned entry never comes back. Inputs untouched.

    Parameters
    ----------
    w : ndarray, any shape, float
    mask : ndarray, same shape, bool
    threshold : float >= 0
    """
    return mask & (np.abs(w) >= threshold)


def threshold_for_density(w: np.ndarray, mask: np.ndarray, density: float) -> float:
    """The threshold t for which ``han_mask(w, mask, t)`` keeps ``round(density * w.size)`` entries.

    t is the magnitude of the last entry kept (ties at that magnitude are all kept, so the count can exceed
    the target by the number of tied entries; with trained float weights that is almost never).
    """
    k = min(kept_count(w.size, density), int(np.count_nonzero(mask)))
    if k == 0:
        return math.inf
    return float(np.min(np.abs(w[top_k_mask(w, k, mask)])))


def adjusted_dropout(d_old: float, c_old: int, c_new: int) -> float:
    """Han et al. eq. (2): ``D_new = D_old * sqrt(C_new / C_old)``, the dropout rate for a pruned layer.

    Parameters
    ----------
    d_old : float in [0, 1), the dropout rate used to train the dense layer
    c_old, c_new : int, the layer's connections before and after pruning (``0 <= c_new <= c_old``, c_old > 0)
    """
    check_number("d_old", d_old, lo=0.0, hi=1.0)
    check_number("c_old", c_old, lo=1, integer=True)
    check_number("c_new", c_new, lo=0, hi=c_old, integer=True)
    return d_old * math.sqrt(c_new / c_old)


class Han(PruningMethod):
    """Han et al.'s prune/retrain rounds as a :class:`~refdns.prune.base.PruningMethod`.

    Round r (1-based) prunes before the forward pass of iteration ``(r - 1) * round_iterations``; the
    retraining in between is ordinary training with the masks held (``grad_through_mask = False``).
    State (saved in checkpoints): ``round`` (rounds done), ``<layer>.std`` (dense reading: the dense std),
    ``<layer>.threshold`` (the last threshold used).
    """

    name = "han"
    grad_through_mask = False
    config_type = HanConfig

    @classmethod
    def recipe(cls, net: str, variant: str = "refdns") -> Recipe:
        """refdns's Han recipe (:data:`RECIPES`); the run's length is the schedule's."""
        check_variant(cls, variant)
        return Recipe(default_config(net), note="qualities tuned on MNIST (validate/results/han_tuning.md)")

    def schedule_iterations(self) -> int:
        return self.config.iterations

    def lr_iteration(self, iteration: int) -> int:
        cfg = self.config
        if cfg.restart_lr and cfg.round_iterations:
            return iteration % cfg.round_iterations
        return iteration

    def init_state(self, spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_layers(
            spec, self.config.layers, "Han quality" if self.config.quality is not None else "Han densities"
        )
        return {"round": np.array(0, dtype=np.int64)}

    def prune_round(self, r: int, params, masks, state) -> dict[str, np.ndarray]:
        """Round ``r``'s masks (new arrays); records the std and threshold of each layer in ``state``."""
        cfg = self.config
        kinds = ("weight", "bias") if cfg.prune_biases else ("weight",)
        out = {k: m.copy() for k, m in masks.items()}
        for layer, value in cfg.layers.items():
            w, m = params[f"{layer}.weight"], masks[f"{layer}.weight"]
            if cfg.std == "dense":
                if f"{layer}.std" not in state:
                    state[f"{layer}.std"] = np.array(layer_std(w), dtype=np.float64)
                std = float(state[f"{layer}.std"])
            else:
                std = layer_std(w, m)
                state[f"{layer}.std"] = np.array(std, dtype=np.float64)
            if cfg.quality is not None:
                threshold = round_quality(value, r, cfg.rounds) * std
            else:
                threshold = threshold_for_density(w, m, value ** (r / cfg.rounds))
            state[f"{layer}.threshold"] = np.array(threshold, dtype=np.float64)
            for kind in kinds:
                key = f"{layer}.{kind}"
                out[key] = han_mask(params[key], masks[key], threshold)
        return out

    def update_masks(self, iteration, params, masks, state, rng) -> list[MaskUpdate]:
        cfg = self.config
        records = []
        done = int(state["round"])
        while done < cfg.rounds and iteration >= done * cfg.round_iterations:
            new = self.prune_round(done + 1, params, masks, state)
            records += mask_records(iteration, layer_names(params), masks, new)
            for k in masks:
                masks[k][...] = new[k]
            done += 1
            state["round"] = np.array(done, dtype=np.int64)
        return records

    def trace_state(self, spec, state, records) -> dict[str, np.ndarray]:
        """Rounds done, each layer's std and last threshold (float64; NaN before round 1) and the step's
        pruning (``surgery/fired`` is 1 for a layer whose mask shrank this step, i.e. at a round boundary)."""
        layers = list(spec.layer_names)
        out = {"han/round": np.array(int(state["round"]), dtype=np.int64)}
        for k in ("std", "threshold"):
            out[f"han/{k}"] = np.array(
                [float(state[f"{n}.{k}"]) if f"{n}.{k}" in state else math.nan for n in layers],
                dtype=np.float64,
            )
        return out | surgery_trace(layers, records)
