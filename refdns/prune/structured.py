"""Structured pruning: remove whole conv filters and dense neurons, a few at a time, fine-tuning in between.

The iterative scheme of Molchanov et al. (ICLR 2017, Sec. 2) and Luo & Wu (2017): score every unit of a layer
with a criterion (:mod:`refdns.prune.criteria`: random, mean activation, APoZ, entropy, scaled entropy,
l1-norm, Taylor, one-shot sensitivity), remove the lowest-scored ones, fine-tune, repeat. Step r (1-based) of
R brings layer l to

    # removed_l(r) = round(target_l * r / R)     target_l = round(fraction_l * F_l), or a given count

removed units, the new ones being the alive units of lowest score, all layers scored on one batch of the
current (masked) net. A removed unit is masked whole (:func:`refdns.prune.units.remove_units`: its weights,
its bias and the next layer's inputs that read it), so it stays exactly zero (``grad_through_mask = False``)
and :func:`refdns.thin.thin` can cut it out of the net. The output layer's units are never removed.

With a FLOP budget instead (``flops``: the FLOPs of one image's forward pass through the conv and fc layers,
Molchanov et al.'s count, :mod:`refdns.nets.flops`), step r aims at

    # FLOPs(r) <= F_1 - (F_1 - flops) * r / R          F_1 the net's FLOPs before step 1

by removing the same fraction f of each listed layer's units (the smallest f that meets the aim, every layer
keeping at least one unit; within a layer the lowest-scored units go). A uniform fraction needs no comparison
of scores across layers, which most criteria do not support (l1 norms and activations have per-layer scales);
refdns's choice, not Molchanov et al.'s one-unit-at-a-time global ranking of l2-normalised Taylor scores.

The activation criteria and sensitivity need data: construct the method with ``x, y`` (a training batch pool;
each step draws ``samples`` of them with the run's mask stream). ``random`` and ``l1`` need none.
Sensitivity runs, per alive unit, the ops after the unit's layer on the batch (removed units score 0 and
are not re-run; :func:`refdns.prune.units.unit_ablation_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.nets import NETS
from refdns.nets.flops import net_flops
from refdns.nets.sequential import NetSpec
from refdns.prune.base import PruningMethod, Recipe, check_variant
from refdns.prune.criteria import ACTIVATION_CRITERIA, CRITERIA, DATA_CRITERIA, unit_scores
from refdns.prune.magnitude import kept_count, layer_names, mask_records
from refdns.prune.units import (
    alive_units,
    effective_params,
    prunable_layers,
    remove_units,
    unit_ablation_losses,
    unit_activations,
    unit_layers,
)


@dataclass(frozen=True)
class StructuredConfig:
    """Structured pruning.

    ``criterion``: one of :data:`refdns.prune.criteria.CRITERIA`. Exactly one of ``fractions`` ({layer:
    fraction of its units to remove, in [0, 1)}), ``counts`` ({layer: number of units to remove}) or
    ``flops`` (the FLOP budget of the pruned net, :mod:`refdns.nets.flops`; ``flop_layers`` names the layers
    it may remove units from, default every hidden layer).
    ``steps`` prune/fine-tune rounds, ``step_iterations`` fine-tuning iterations after each (the run is
    ``steps * step_iterations`` long; 0 iterations prunes all steps at once, without fine-tuning).
    ``samples``: images scored per step (activation criteria); ``bins``: histogram bins of the entropies.
    """

    criterion: str
    fractions: dict[str, float] | None = None
    counts: dict[str, int] | None = None
    steps: int = 5
    step_iterations: int = 1_000
    samples: int = 1_000
    bins: int = 100
    flops: int | None = None
    flop_layers: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ConfigError(f"criterion={self.criterion!r} must be one of {CRITERIA}")
        if sum(v is not None for v in (self.fractions, self.counts, self.flops)) != 1:
            raise ConfigError("give exactly one of fractions={layer: fraction removed}, "
                              "counts={layer: units} or flops=<FLOP budget>")
        if self.flop_layers is not None:
            if self.flops is None:
                raise ConfigError("flop_layers only goes with flops")
            if isinstance(self.flop_layers, str) or not self.flop_layers:
                raise ConfigError(f"flop_layers={self.flop_layers!r} must be a non-empty list of layer names")
            object.__setattr__(self, "flop_layers", tuple(str(x) for x in self.flop_layers))
        given = self.fractions if self.fractions is not None else self.counts
        if self.flops is not None:
            check_number("flops", self.flops, lo=1, integer=True)
        elif not isinstance(given, dict) or not given:
            raise ConfigError(f"fractions/counts must be a non-empty dict {{layer: value}}, got {given!r}")
        if self.fractions is not None:
            for layer, f in self.fractions.items():
                check_number(f"fractions[{layer!r}]", f, lo=0.0, hi=1.0)
                if f >= 1.0:
                    raise ConfigError(
                        f"fractions[{layer!r}]={f!r} would remove every unit of layer {layer!r}")
            object.__setattr__(self, "fractions", {str(k): float(v) for k, v in self.fractions.items()})
        elif self.counts is not None:
            for layer, c in self.counts.items():
                check_number(f"counts[{layer!r}]", c, lo=0, integer=True)
            object.__setattr__(self, "counts", {str(k): int(v) for k, v in self.counts.items()})
        check_number("steps", self.steps, lo=1, integer=True)
        check_number("step_iterations", self.step_iterations, lo=0, integer=True)
        check_number("samples", self.samples, lo=1, integer=True)
        check_number("bins", self.bins, lo=2, integer=True)

    @property
    def layers(self) -> dict[str, Any]:
        """{layer: fraction or count}; in FLOP mode {layer: None} for the listed layers (all: empty)."""
        if self.flops is not None:
            return dict.fromkeys(self.flop_layers or ())
        return self.fractions if self.fractions is not None else self.counts


def _check_layer(spec: NetSpec, layer: str) -> None:
    if layer not in spec.layer_names:
        raise ConfigError(f"structured: {spec.name} has no layer {layer!r} (its layers: {spec.layer_names})")
    if layer not in prunable_layers(spec):
        raise ConfigError(f"structured: layer {layer!r} is {spec.name}'s output layer; its units are "
                          "the classes and are never removed")


def removal_targets(spec: NetSpec, cfg: StructuredConfig) -> dict[str, int]:
    """Units each layer loses by the last step; refuses, naming the layer, every unit, more than exist, the
    output layer or a layer the net does not have. FLOP mode: {} (the targets follow the budget, step by
    step, :func:`flop_step_removals`), after checking the listed layers and that the budget can be met."""
    units = unit_layers(spec)
    if cfg.flops is not None:
        layers = flop_layers(spec, cfg)
        least = net_flops(spec, {layer: 1 for layer in layers})
        full = net_flops(spec)
        if cfg.flops >= full:
            raise ConfigError(f"structured: flops={cfg.flops:,} is not below {spec.name}'s {full:,} FLOPs; "
                              "nothing would be removed")
        if cfg.flops < least:
            raise ConfigError(f"structured: flops={cfg.flops:,} cannot be met: keeping one unit in each of "
                              f"{list(layers)} still costs {least:,} FLOPs")
        return {}
    out = {}
    for layer, value in cfg.layers.items():
        _check_layer(spec, layer)
        n = units[layer].n_units
        k = n - kept_count(n, 1.0 - value) if cfg.fractions is not None else value
        if k > n:
            raise ConfigError(f"structured: removing {k} units of layer {layer!r}, which has only {n}")
        if k == n:
            raise ConfigError(f"structured: removing {k} units would remove every unit of layer {layer!r}")
        out[layer] = k
    return out


def flop_layers(spec: NetSpec, cfg: StructuredConfig) -> tuple[str, ...]:
    """The layers a FLOP budget may remove units from (checked), in net order."""
    layers = cfg.flop_layers or prunable_layers(spec)
    for layer in layers:
        _check_layer(spec, layer)
    return tuple(n for n in spec.layer_names if n in layers)


def flop_step_removals(spec: NetSpec, alive: dict[str, int], layers: tuple[str, ...], aim: float
                       ) -> dict[str, int]:
    """Units each of ``layers`` keeps so that the net's FLOPs are at most ``aim``: the smallest uniform
    fraction f of each layer's units removed (``round(f * F_l)``, never fewer than already removed, at least
    one kept); every layer at one unit when no f meets it. ``alive``: units each prunable layer has now."""
    full = {op.name: op.w_shape[0] for op in spec.layers}

    def kept(f: float) -> dict[str, int]:
        return alive | {n: max(1, min(alive[n], full[n] - int(np.floor(f * full[n] + 0.5)))) for n in layers}

    if net_flops(spec, kept(0.0)) <= aim:
        return kept(0.0)
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection on a non-increasing step function of f
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if net_flops(spec, kept(mid)) <= aim else (mid, hi)
    return kept(hi)


def step_target(total: int, r: int, steps: int) -> int:
    """``round(total * r / steps)``: units removed from a layer after step ``r`` of ``steps``."""
    return int(np.floor(total * r / steps + 0.5))


def lowest_alive(scores: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` alive units of lowest score (ties: earlier index first)."""
    idx = np.flatnonzero(alive)
    order = np.argsort(scores[idx], kind="stable")
    return idx[order[:k]]


class StructuredPruning(PruningMethod):
    """Iterative structured pruning as a :class:`~refdns.prune.base.PruningMethod`.

    Step r (1-based) runs before the forward pass of iteration ``(r - 1) * step_iterations``. State (saved
    in checkpoints): ``step`` (steps done); the removed units are the masks themselves.
    """

    name = "structured"
    grad_through_mask = False
    config_type = StructuredConfig

    def __init__(self, config, x: np.ndarray | None = None, y: np.ndarray | None = None):
        super().__init__(config)
        if (x is None) != (y is None):
            raise ValueError("give both x and y, or neither")
        self.x, self.y = x, y

    def _rebuild(self, config) -> StructuredPruning:
        return type(self)(config, self.x, self.y)

    def with_data(self, x: np.ndarray, y: np.ndarray) -> StructuredPruning:
        """A copy that scores activation criteria on batches drawn from ``(x, y)``."""
        return type(self)(self.config, x, y)

    @classmethod
    def recipe(cls, net: str, variant: str = "refdns") -> Recipe:
        """Half the units of every hidden layer by l1-norm (data-free, so ``refdns reproduce`` can run it),
        in 5 steps of 1,000 fine-tuning iterations: refdns's choice, not a paper's setting."""
        check_variant(cls, variant)
        layers = {"lenet-5": ("conv1", "conv2", "ip1"), "lenet-300-100": ("ip1", "ip2")}
        if net not in layers:
            raise ConfigError(
                f"method 'structured' has no default recipe for {net!r} (known: {sorted(layers)})")
        cfg = StructuredConfig(criterion="l1", fractions={layer: 0.5 for layer in layers[net]})
        return Recipe(cfg, note="refdns's choice: 50% of hidden units by l1-norm, 5 steps x 1,000 iterations")

    def schedule_iterations(self) -> int:
        return self.config.steps * self.config.step_iterations

    def init_state(self, spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.config.criterion in DATA_CRITERIA and self.x is None:
            raise ConfigError(f"criterion {self.config.criterion!r} scores training data: construct the "
                              "method with it (StructuredPruning(config, x, y) or .with_data(x, y))")
        self._layout(spec)
        return {"step": np.array(0, dtype=np.int64)}

    def _layout(self, spec: NetSpec) -> None:
        self.spec = spec
        self.units = unit_layers(spec)
        self.targets = removal_targets(spec, self.config)
        self.layers = flop_layers(spec, self.config) if self.config.flops is not None else tuple(self.targets)

    def _ensure_layout(self, params: dict[str, np.ndarray]) -> None:
        """A run resumed from a checkpoint skips :meth:`init_state`; find its net among the known ones by
        the parameter shapes (the unit layout needs the ops, not only the shapes)."""
        if hasattr(self, "spec"):
            return
        shapes = {k: tuple(v.shape) for k, v in params.items()}
        found = [s for s in NETS.values() if s.param_shapes() == shapes]
        if not found:
            raise ConfigError("structured: call init_state(spec, params) first (the net is not a known one)")
        self._layout(found[0])

    def flops(self, masks: dict[str, np.ndarray]) -> int:
        """FLOPs of one image through the net its masks leave (alive units; :mod:`refdns.nets.flops`)."""
        return net_flops(self.spec, {n: int(np.count_nonzero(alive_units(masks, n))) for n in self.units})

    def scores(self, params, masks, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Every configured layer's unit scores on the current masked net."""
        cfg = self.config
        acts, loss, removed = {}, None, {}
        if cfg.criterion in DATA_CRITERIA:
            pick = rng.choice(len(self.x), size=min(cfg.samples, len(self.x)), replace=False)
            eff = effective_params(params, masks)
            if cfg.criterion in ACTIVATION_CRITERIA:
                acts = unit_activations(self.spec, eff, self.x[pick], self.y[pick], list(self.layers))
            else:
                alive = {n: alive_units(masks, n) for n in self.layers}
                loss, removed = unit_ablation_losses(self.spec, eff, self.x[pick], self.y[pick],
                                                     list(self.layers), alive)
        out = {}
        for layer in self.layers:
            a, da = acts.get(layer, (None, None))
            w = params[f"{layer}.weight"] * masks[f"{layer}.weight"]
            out[layer] = unit_scores(cfg.criterion, w=w, a=a, da=da, bins=cfg.bins, rng=rng,
                                     loss_removed=removed.get(layer), loss=loss)
        return out

    def prune_step(self, r: int, params, masks, rng, flops_start: int | None = None) -> dict[str, np.ndarray]:
        """Step ``r``'s masks (new arrays). FLOP mode: ``flops_start`` is the net's FLOPs before step 1."""
        cfg = self.config
        scores = self.scores(params, masks, rng)
        alive = {n: alive_units(masks, n) for n in self.units}
        if cfg.flops is None:
            removed = {n: step_target(total, r, cfg.steps) for n, total in self.targets.items()}
        else:
            aim = flops_start - (flops_start - cfg.flops) * r / cfg.steps
            counts = {n: int(np.count_nonzero(a)) for n, a in alive.items()}
            kept = flop_step_removals(self.spec, counts, self.layers, aim)
            removed = {n: self.units[n].n_units - kept[n] for n in self.layers}
        new = masks
        for layer, total in removed.items():
            alive_l = alive[layer]
            k = total - (alive_l.size - int(np.count_nonzero(alive_l)))
            if k > 0:
                new = remove_units(new, self.units[layer], lowest_alive(scores[layer], alive_l, k))
        return {k: m.copy() for k, m in new.items()} if new is masks else new

    def update_masks(self, iteration, params, masks, state, rng) -> list[dict[str, Any]]:
        cfg = self.config
        records = []
        done = int(state["step"])
        if done < cfg.steps:
            self._ensure_layout(params)
        while done < cfg.steps and iteration >= done * cfg.step_iterations:
            if cfg.flops is not None and done == 0:
                state["flops_start"] = np.array(self.flops(masks), dtype=np.int64)
            start = int(state["flops_start"]) if cfg.flops is not None else None
            new = self.prune_step(done + 1, params, masks, rng, start)
            records += mask_records(iteration, layer_names(params), masks, new)
            for k in masks:
                masks[k][...] = new[k]
            done += 1
            state["step"] = np.array(done, dtype=np.int64)
        return records
