"""Random pruning at matched per-layer sparsity: the control without which a pruning study is not credible.

If a criterion (magnitude, DNS's surgery, Hessian saliency) cannot beat dropping the same number of
connections per layer uniformly at random and retraining, the criterion is not what made the net small; the
per-layer budget was (Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019; Frankle & Carbin,
ICLR 2019, random-reinit controls; Gale, Elsen, Hooker, "The State of Sparsity in Deep Neural Networks",
2019). In layer l, ``k_l = round(density_l * n_l)`` weights are kept, drawn uniformly without replacement:

    ``# T_l = 1 on a uniform random k_l-subset of layer l's n_l weights, 0 elsewhere``

The draw comes from the run's mask stream (an ``np.random.Generator``, saved in checkpoints), so a seed fixes
it. After the draw the masks are held fixed and pruned weights stay exactly 0 (``grad_through_mask =
False``). Biases are kept (``prune_biases=False``), as for the magnitude baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.nets.sequential import NetSpec
from refdns.prune.base import PruningMethod, Recipe, check_variant, surgery_trace
from refdns.prune.magnitude import (
    check_densities,
    check_layers,
    han_paper_densities,
    kept_count,
    mask_records,
)


@dataclass(frozen=True)
class RandomConfig:
    """``densities``: every layer's fraction of weights to keep; ``retrain_iterations`` after the draw."""

    densities: dict[str, float]
    retrain_iterations: int = 10_000
    prune_biases: bool = False

    def __post_init__(self):
        object.__setattr__(self, "densities", check_densities(self.densities))
        check_number("retrain_iterations", self.retrain_iterations, lo=0, integer=True)
        if not isinstance(self.prune_biases, bool):
            raise ConfigError(f"prune_biases={self.prune_biases!r} must be a bool")


def random_mask(mask: np.ndarray, density: float, *, rng: np.random.Generator) -> np.ndarray:
    """Keep ``round(density * mask.size)`` entries of ``mask``, drawn uniformly among the surviving ones.

    Parameters
    ----------
    mask : ndarray, any shape, bool
        Entries already pruned stay pruned (a mask never regrows).
    density : float in [0, 1]
    rng : np.random.Generator

    Returns
    -------
    new : ndarray, same shape, bool, with ``min(round(density * size), count_nonzero(mask))`` True entries
    """
    alive = np.flatnonzero(mask)
    k = min(kept_count(mask.size, density), alive.size)
    new = np.zeros(mask.size, dtype=bool)
    new[rng.choice(alive, size=k, replace=False)] = True
    return new.reshape(mask.shape)


def random_masks(
    masks: dict[str, np.ndarray],
    densities: dict[str, float],
    *,
    rng: np.random.Generator,
    prune_biases: bool = False,
) -> dict[str, np.ndarray]:
    """Per-layer random masks at ``densities`` (new arrays; layers drawn in the order of ``densities``)."""
    out = {k: m.copy() for k, m in masks.items()}
    kinds = ("weight", "bias") if prune_biases else ("weight",)
    for layer, d in densities.items():
        for kind in kinds:
            key = f"{layer}.{kind}"
            out[key] = random_mask(masks[key], d, rng=rng)
    return out


class RandomPruning(PruningMethod):
    """Random per-layer masks drawn at iteration 0, then (optional) retraining with the masks held fixed."""

    name = "random"
    grad_through_mask = False
    config_type = RandomConfig
    one_shot = True

    @classmethod
    def recipe(cls, net: str, variant: str = "refdns") -> Recipe:
        """At the per-layer densities Han et al. report for ``net``, retrained 10,000 iterations."""
        check_variant(cls, variant)
        return Recipe(RandomConfig(densities=han_paper_densities(net)), note="Han et al.'s densities")

    def schedule_iterations(self) -> int:
        return self.config.retrain_iterations

    def init_state(self, spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_layers(spec, self.config.densities, "random densities")
        return {"pruned": np.array(0, dtype=np.int64)}

    def update_masks(self, iteration, params, masks, state, rng) -> list[dict[str, Any]]:
        if int(state["pruned"]):
            return []
        new = random_masks(masks, self.config.densities, rng=rng, prune_biases=self.config.prune_biases)
        records = mask_records(iteration, list(self.config.densities), masks, new)
        for k in masks:
            masks[k][...] = new[k]
        state["pruned"] = np.array(1, dtype=np.int64)
        return records

    def trace_state(self, spec, state, records) -> dict[str, np.ndarray]:
        """The step's pruning per layer; the drawn masks themselves are the trace's ``masks/`` (a replay takes
        them from the golden, as it takes DNS's draws, instead of reproducing NumPy's random stream)."""
        return surgery_trace(list(spec.layer_names), records)
