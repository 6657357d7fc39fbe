"""Gradual magnitude pruning: Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for
model compression", ICLR workshop 2018 (arXiv:1710.01878), the cubic schedule torch.ao, Distiller, SparseML
and NNI ship.

Every ``dt`` iterations from ``t0``, n times, each layer's sparsity is raised to

    # Zhu & Gupta eq. (1): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3,  t = t0, t0 + dt, .., t0 + n dt

by masking the smallest-magnitude surviving weights of the layer (unstructured, per layer: the layer keeps
``round((1 - s_t) * n_l)`` weights). Pruning is fast at first, while there are many redundant weights, and
slows as it nears ``s_f``. Masks only shrink; pruned weights stay exactly 0 (``grad_through_mask = False``),
as in the paper, where the masked weights get no gradient. After the last update the net trains on for
``tail_iterations`` with the masks fixed. Biases are not pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.nets.sequential import NetSpec
from refdns.prune.base import PruningMethod, Recipe, check_variant
from refdns.prune.magnitude import (
    check_layers,
    han_paper_densities,
    layer_magnitude_masks,
    layer_names,
    mask_records,
)


@dataclass(frozen=True)
class GMPConfig:
    """Zhu & Gupta's schedule.

    ``final_sparsity``: {layer: s_f in [0, 1]} for every layer (0 leaves a layer dense); ``initial_sparsity``
    s_i (all layers; <= every s_f); ``start_iteration`` t0; ``steps`` n; ``interval`` dt;
    ``tail_iterations`` of training after the last update (the run is t0 + n dt + tail long).
    """

    final_sparsity: dict[str, float]
    initial_sparsity: float = 0.0
    start_iteration: int = 0
    steps: int = 10
    interval: int = 500
    tail_iterations: int = 5_000

    def __post_init__(self):
        if not isinstance(self.final_sparsity, dict) or not self.final_sparsity:
            raise ConfigError(
                f"final_sparsity must be a non-empty dict {{layer: s_f}}, got {self.final_sparsity!r}")
        check_number("initial_sparsity", self.initial_sparsity, lo=0.0, hi=1.0)
        for layer, s in self.final_sparsity.items():
            check_number(f"final_sparsity[{layer!r}]", s, lo=0.0, hi=1.0)
            if s < self.initial_sparsity:
                raise ConfigError(f"final_sparsity[{layer!r}]={s!r} is below initial_sparsity="
                                  f"{self.initial_sparsity!r}; the schedule only raises sparsity")
        object.__setattr__(self, "final_sparsity", {str(k): float(v) for k, v in self.final_sparsity.items()})
        check_number("start_iteration", self.start_iteration, lo=0, integer=True)
        check_number("steps", self.steps, lo=1, integer=True)
        check_number("interval", self.interval, lo=1, integer=True)
        check_number("tail_iterations", self.tail_iterations, lo=0, integer=True)

    @property
    def iterations(self) -> int:
        return self.start_iteration + self.steps * self.interval + self.tail_iterations


def gmp_sparsity(t: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """Zhu & Gupta eq. (1) at iteration ``t`` (held at s_i before t0 and at s_f after t0 + n dt)."""
    frac = min(max((t - t0) / (n * dt), 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - frac) ** 3


class GradualMagnitude(PruningMethod):
    """Zhu & Gupta's gradual magnitude pruning as a :class:`~refdns.prune.base.PruningMethod`.

    Update k (0-based, k = 0..n) runs before the forward pass of iteration ``t0 + k dt``. State (saved in
    checkpoints): ``updates`` (updates done) and ``<layer>.sparsity`` (the last target).
    """

    name = "gmp"
    grad_through_mask = False
    config_type = GMPConfig

    @classmethod
    def recipe(cls, net: str, variant: str = "refdns") -> Recipe:
        """To Han et al.'s per-layer densities in 10 updates 500 iterations apart, then 5,000 iterations."""
        check_variant(cls, variant)
        sparsity = {layer: round(1.0 - d, 6) for layer, d in han_paper_densities(net).items()}
        return Recipe(GMPConfig(final_sparsity=sparsity),
                      note="refdns's schedule (n=10, dt=500, tail 5,000) to Han et al.'s densities")

    def schedule_iterations(self) -> int:
        return self.config.iterations

    def init_state(self, spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_layers(spec, self.config.final_sparsity, "gmp final_sparsity")
        return {"updates": np.array(0, dtype=np.int64)}

    def sparsity(self, t: int, layer: str) -> float:
        cfg = self.config
        return gmp_sparsity(t, cfg.initial_sparsity, cfg.final_sparsity[layer], cfg.start_iteration,
                            cfg.steps, cfg.interval)

    def update_masks(self, iteration, params, masks, state, rng) -> list[dict[str, Any]]:
        cfg = self.config
        records = []
        done = int(state["updates"])
        while done <= cfg.steps and iteration >= cfg.start_iteration + done * cfg.interval:
            t = cfg.start_iteration + done * cfg.interval
            targets = {layer: self.sparsity(t, layer) for layer in cfg.final_sparsity}
            new = layer_magnitude_masks(params, masks, {layer: 1.0 - s for layer, s in targets.items()})
            records += mask_records(iteration, layer_names(params), masks, new)
            for k in masks:
                masks[k][...] = new[k]
            for layer, s in targets.items():
                state[f"{layer}.sparsity"] = np.array(s, dtype=np.float64)
            done += 1
            state["updates"] = np.array(done, dtype=np.int64)
        return records
