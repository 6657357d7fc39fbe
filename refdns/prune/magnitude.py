"""One-shot magnitude pruning to a target sparsity: the simplest baseline for any pruning study.

Janowsky, "Pruning versus clipping in neural networks", Phys. Rev. A 39 (1989), and the baseline of Han,
Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural Networks", NeurIPS 2015
(without its iterations). Keep the ``k`` weights of largest magnitude and drop the rest, once:

* **per layer** (``scope="layer"``): in layer l keep ``k_l = round(density_l * n_l)`` weights,
  ``# T_l = 1[|w| >= |w|_(k_l)]``, the k_l-th largest magnitude of layer l;
* **global** (``scope="global"``): one threshold for all layers, ``k = round(density * sum_l n_l)``.

Ties at the threshold are broken by position (a stable sort), so exactly ``k`` weights survive and the
kept fraction matches the requested one to within half a weight. Biases are kept (``prune_biases=False``)
as in Han et al., whose counts are of connections.

With retraining, the masks are set before the first forward pass and then held fixed; pruned weights stay
exactly 0 (``grad_through_mask = False``: masked gradient, masked momentum). Without retraining, run 0
iterations (:func:`refdns.pipeline.run_training` applies the masks at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.nets.sequential import NetSpec
from refdns.prune.base import MaskUpdate, PruningMethod, Recipe, check_variant, surgery_trace

SCOPES = ("layer", "global")

# Han et al. 2015, Table 2 and 3: the per-layer densities they reached (weights kept / weights).
HAN_PAPER_DENSITIES = {
    "lenet-300-100": {"ip1": 0.08, "ip2": 0.09, "ip3": 0.26},
    "lenet-5": {"conv1": 0.66, "conv2": 0.12, "ip1": 0.08, "ip2": 0.19},
}


def han_paper_densities(net: str) -> dict[str, float]:
    """:data:`HAN_PAPER_DENSITIES` of ``net``, or a ConfigError naming the nets that have them."""
    if net not in HAN_PAPER_DENSITIES:
        raise ConfigError(f"net={net!r}: no default densities (known: {sorted(HAN_PAPER_DENSITIES)}); "
                          "pass densities={layer: fraction}")
    return HAN_PAPER_DENSITIES[net]


def check_densities(densities: Any, name: str = "densities") -> dict[str, float]:
    """Validate ``{layer: density}`` with every density in [0, 1]; returns a plain dict of floats."""
    if not isinstance(densities, dict) or not densities:
        raise ConfigError(f"{name} must be a non-empty dict {{layer: fraction kept}}, got {densities!r}")
    out = {}
    for layer, d in densities.items():
        check_number(f"{name}[{layer!r}]", d, lo=0.0, hi=1.0)
        out[str(layer)] = float(d)
    return out


def check_layers(spec: NetSpec, layers: dict[str, Any], what: str) -> None:
    """Every layer of ``spec`` named, and no other (no silent defaults for a forgotten layer)."""
    missing = [n for n in spec.layer_names if n not in layers]
    extra = [n for n in layers if n not in spec.layer_names]
    if missing or extra:
        raise ConfigError(f"{what} for {spec.name}: missing layers {missing}, unknown layers {extra}")


@dataclass(frozen=True)
class MagnitudeConfig:
    """One-shot magnitude pruning.

    ``densities`` maps every layer to the fraction of its weights to keep; with ``scope="global"`` only
    their parameter-weighted mean matters (one threshold for the net) unless ``density`` is given.
    ``density``, when set, is the global target fraction (``scope="global"`` only).
    ``retrain_iterations`` is the training length after pruning (0: no retraining).
    """

    densities: dict[str, float] | None = None
    scope: str = "layer"
    density: float | None = None
    retrain_iterations: int = 10_000
    prune_biases: bool = False

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ConfigError(f"scope={self.scope!r} must be one of {SCOPES}")
        if self.density is not None:
            check_number("density", self.density, lo=0.0, hi=1.0)
            if self.scope != "global":
                raise ConfigError(
                    "density (one number for the net) needs scope='global'; for scope='layer' "
                    "pass densities={layer: fraction}"
                )
        elif self.densities is None:
            raise ConfigError(
                "give densities={layer: fraction kept} or, with scope='global', density=fraction"
            )
        if self.densities is not None:
            object.__setattr__(self, "densities", check_densities(self.densities))
        check_number("retrain_iterations", self.retrain_iterations, lo=0, integer=True)
        if not isinstance(self.prune_biases, bool):
            raise ConfigError(f"prune_biases={self.prune_biases!r} must be a bool")


def top_k_mask(w: np.ndarray, k: int, alive: np.ndarray | None = None) -> np.ndarray:
    """A bool mask keeping exactly the ``k`` entries of largest ``|w|`` (ties: earlier position wins).

    Parameters
    ----------
    w : ndarray, any shape, float
    k : int, 0 <= k <= w.size (<= count_nonzero(alive) when ``alive`` is given)
    alive : ndarray, same shape, bool, optional
        Only these entries may be kept (already-pruned ones rank below every survivor, even a zero one).

    Returns
    -------
    mask : ndarray, same shape as ``w``, bool, with exactly ``k`` True entries
    """
    n_alive = w.size if alive is None else int(np.count_nonzero(alive))
    if not 0 <= k <= n_alive:
        raise ValueError(f"k={k} must be within [0, {n_alive}] (the entries that may be kept)")
    flat = np.abs(w).astype(np.float64).ravel()
    if alive is not None:
        flat[~alive.ravel()] = -1.0
    order = np.argsort(-flat, kind="stable")  # largest first; equal magnitudes keep their order
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(w.shape)


def kept_count(n: int, density: float) -> int:
    """``round(density * n)``: the number of entries a layer of ``n`` keeps at ``density``."""
    return int(np.floor(density * n + 0.5))


def layer_magnitude_masks(
    params: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    densities: dict[str, float],
    *,
    prune_biases: bool = False,
) -> dict[str, np.ndarray]:
    """Per-layer one-shot masks: layer l keeps its ``round(density_l * n_l)`` largest surviving weights.

    Entries already pruned in ``masks`` stay pruned (they count as magnitude 0 and are the first to go), so
    repeated calls never regrow a connection. Returns new masks; the inputs are untouched.
    """
    out = {k: m.copy() for k, m in masks.items()}
    kinds = ("weight", "bias") if prune_biases else ("weight",)
    for layer, d in densities.items():
        for kind in kinds:
            key = f"{layer}.{kind}"
            k = min(kept_count(masks[key].size, d), int(np.count_nonzero(masks[key])))
            out[key] = top_k_mask(params[key], k, masks[key])
    return out


def global_magnitude_masks(
    params: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    layers: list[str],
    density: float,
    *,
    prune_biases: bool = False,
) -> dict[str, np.ndarray]:
    """Global one-shot masks: one magnitude threshold over the weights of ``layers``.

    Keeps the ``round(density * sum_l n_l)`` largest surviving weights of the whole net. Returns new masks.
    """
    kinds = ("weight", "bias") if prune_biases else ("weight",)
    keys = [f"{layer}.{kind}" for layer in layers for kind in kinds]
    flat = np.concatenate([params[k].ravel() for k in keys])
    alive = np.concatenate([masks[k].ravel() for k in keys])
    keep = top_k_mask(flat, min(kept_count(flat.size, density), int(np.count_nonzero(alive))), alive)
    out = {k: m.copy() for k, m in masks.items()}
    start = 0
    for k in keys:
        n = masks[k].size
        out[k] = keep[start : start + n].reshape(masks[k].shape)
        start += n
    return out


def layer_names(params: dict[str, np.ndarray]) -> list[str]:
    """The layer names of a params dict, in its (the net's) order."""
    return list(dict.fromkeys(k.split(".")[0] for k in params))


def mask_records(iteration: int, spec_layers, old: dict[str, np.ndarray], new: dict[str, np.ndarray]):
    """One :class:`MaskUpdate` per layer whose masks changed."""
    records = []
    for layer in spec_layers:
        keys = (f"{layer}.weight", f"{layer}.bias")
        pruned = sum(int(np.count_nonzero(old[k] & ~new[k])) for k in keys)
        spliced = sum(int(np.count_nonzero(~old[k] & new[k])) for k in keys)
        if pruned or spliced:
            records.append(
                MaskUpdate(
                    iteration=int(iteration),
                    layer=layer,
                    pruned=pruned,
                    spliced=spliced,
                    kept=sum(int(np.count_nonzero(new[k])) for k in keys),
                    total=sum(new[k].size for k in keys),
                )
            )
    return records


class Magnitude(PruningMethod):
    """One-shot magnitude pruning at iteration 0, then (optional) retraining with the masks held fixed."""

    name = "magnitude"
    grad_through_mask = False
    config_type = MagnitudeConfig
    one_shot = True

    @classmethod
    def recipe(cls, net: str, variant: str = "refdns") -> Recipe:
        """Per layer, at the densities Han et al. report for ``net``, retrained 10,000 iterations."""
        check_variant(cls, variant)
        return Recipe(MagnitudeConfig(densities=han_paper_densities(net)), note="Han et al.'s densities")

    def schedule_iterations(self) -> int:
        return self.config.retrain_iterations

    def init_state(self, spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.config.densities is not None:
            check_layers(spec, self.config.densities, "magnitude densities")
        return {"pruned": np.array(0, dtype=np.int64)}

    def prune(self, params, masks) -> dict[str, np.ndarray]:
        """The one-shot masks (pure: new arrays)."""
        cfg = self.config
        if cfg.scope == "layer":
            return layer_magnitude_masks(params, masks, cfg.densities, prune_biases=cfg.prune_biases)
        layers = list(cfg.densities) if cfg.densities is not None else layer_names(params)
        if cfg.density is not None:
            density = cfg.density
        else:  # the parameter-weighted mean of the per-layer densities
            n = {layer: params[f"{layer}.weight"].size for layer in layers}
            density = sum(cfg.densities[layer] * n[layer] for layer in layers) / sum(n.values())
        return global_magnitude_masks(params, masks, layers, density, prune_biases=cfg.prune_biases)

    def update_masks(self, iteration, params, masks, state, rng) -> list[dict[str, Any]]:
        if int(state["pruned"]):
            return []
        new = self.prune(params, masks)
        records = mask_records(iteration, layer_names(params), masks, new)
        for k in masks:
            masks[k][...] = new[k]
        state["pruned"] = np.array(1, dtype=np.int64)
        return records

    def trace_state(self, spec, state, records) -> dict[str, np.ndarray]:
        """The step's pruning per layer and, at the prune step, each layer's threshold: the smallest |w| it
        kept (float64; NaN for a layer that keeps nothing), from the weights the masks were chosen from
        (the golden writer's ``before.params.*`` / ``before.masks.*``)."""
        layers = list(spec.layer_names)
        out = surgery_trace(layers, records)
        if records and f"before.params.{layers[0]}.weight" in state:
            params = {k.removeprefix("before.params."): v for k, v in state.items()
                      if k.startswith("before.params.")}
            masks = {k.removeprefix("before.masks."): v for k, v in state.items()
                     if k.startswith("before.masks.")}
            new = self.prune(params, masks)
            th = []
            for n in layers:
                kept = np.abs(params[f"{n}.weight"][new[f"{n}.weight"]]).astype(np.float64)
                th.append(float(kept.min()) if kept.size else np.nan)
            out["magnitude/threshold"] = np.array(th, dtype=np.float64)
        return out
