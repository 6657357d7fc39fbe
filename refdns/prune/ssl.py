"""Structured Sparsity Learning (Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep Neural
Networks", NIPS 2016).

Training minimises the data loss plus group-lasso penalties on groups of weights (Wen et al. eq. (1)):

    # E(W) = E_D(W) + lambda R(W) + lambda_g sum_{l=1}^{L} R_g(W^(l)),   R_g(w) = sum_{g=1}^{G} ||w^(g)||_2

where R(W) is the ordinary weight decay (refdns's SGD applies it) and the groups of a layer are, for a conv
weight W^(l) of shape (N_l, C_l, M_l, K_l) (eqs. (2) and (3)):

    # filter-wise:  lambda_n sum_{n_l} ||W^(l)_{n_l,:,:,:}||_2      (removes output filter n_l)
    # channel-wise: lambda_c sum_{c_l} ||W^(l)_{:,c_l,:,:}||_2      (removes input channel c_l)
    # shape-wise:   lambda_s sum_{c_l,m_l,k_l} ||W^(l)_{:,c_l,m_l,k_l}||_2   (one tap of every filter)

and, for a fully connected weight (M, D), refdns's fc reading: filter-wise are rows W[n, :] (an output
neuron), channel-wise are columns W[:, d] (an input neuron: Wen et al.'s neuron-wise sparsity of the MLP,
Sec. 4.1, which removes input pixels and hidden neurons). The output layer's rows are the classes and are
never grouped; neither are the channels of a first conv layer (the image's).

**Gradient** (hand-written, :func:`penalty_grads`, gradient-checked in float64):
``d||w_g||/dw = w_g / ||w_g||`` for ``||w_g|| > 0``; at ``||w_g|| = 0`` the norm is not differentiable and
refdns takes 0 (the least-norm subgradient, so a group at exactly zero stays there). A weight in several
groups gets the sum. The penalty reads the effective weights ``W * mask``.

**Removal.** Every ``prune_interval`` iterations of the penalised phase, and at its end, every group whose
l2 norm is below ``threshold`` is masked (then held at zero: ``grad_through_mask = False``). A removed filter
(row) takes its unit whole (:func:`refdns.prune.units.remove_units`: bias and the next layer's inputs too),
so :func:`refdns.thin.thin` can cut it out. Its output was the constant ``act(b_n)`` (its weights are ~0),
which the next layer reads as a constant: refdns adds that constant's contribution to the next layer's bias
before removing the unit, so removal changes the net's output only by the sub-threshold weights themselves
(ReLU, max-pool and flatten between the layers map a constant map to a constant map). After ``iterations``
the penalty stops and the net fine-tunes ``finetune_iterations`` with the groups masked (Wen et al.'s last
step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.nets import NETS
from refdns.nets.ops import bias_key, weight_key
from refdns.nets.sequential import NetSpec
from refdns.prune.base import PruningMethod, Recipe, check_variant
from refdns.prune.magnitude import layer_names, mask_records
from refdns.prune.units import alive_units, prunable_layers, remove_units, unit_layers

GROUP_KINDS = ("filter", "channel", "shape")


@dataclass(frozen=True)
class SSLConfig:
    """Structured Sparsity Learning.

    ``lambda_filter``, ``lambda_channel``, ``lambda_shape``: the group-lasso strengths lambda_n, lambda_c,
    lambda_s (0 turns a kind off; shape-wise applies to conv layers only). ``threshold``: a group whose l2
    norm is below it is removed. ``iterations``: penalised training; ``prune_interval``: iterations
    between removals during it; ``finetune_iterations``: training after, penalty off, groups masked.
    ``layers``: the layers penalised (default every layer).
    """

    lambda_filter: float = 0.0
    lambda_channel: float = 0.0
    lambda_shape: float = 0.0
    threshold: float = 1e-3
    iterations: int = 5_000
    prune_interval: int = 1_000
    finetune_iterations: int = 2_000
    layers: tuple[str, ...] | None = None

    def __post_init__(self):
        for name in ("lambda_filter", "lambda_channel", "lambda_shape"):
            check_number(name, getattr(self, name), lo=0.0)
        if not any(getattr(self, f"lambda_{k}") > 0 for k in GROUP_KINDS):
            raise ConfigError("SSL needs at least one of lambda_filter, lambda_channel, lambda_shape > 0")
        check_number("threshold", self.threshold, lo=0.0)
        check_number("iterations", self.iterations, lo=0, integer=True)
        check_number("prune_interval", self.prune_interval, lo=1, integer=True)
        check_number("finetune_iterations", self.finetune_iterations, lo=0, integer=True)
        if self.layers is not None:
            if isinstance(self.layers, str) or not self.layers:
                raise ConfigError(f"layers={self.layers!r} must be a non-empty list of layer names")
            object.__setattr__(self, "layers", tuple(str(x) for x in self.layers))

    def strength(self, kind: str) -> float:
        return float(getattr(self, f"lambda_{kind}"))


def group_axes(kind: str, ndim: int) -> tuple[int, ...] | None:
    """The axes a group's l2 norm sums over: filter (rows) all but 0; channel (columns) all but 1; shape (conv
    only) axis 0. None: the kind has no groups in a weight of ``ndim`` dimensions."""
    if kind == "filter":
        return tuple(range(1, ndim))
    if kind == "channel":
        return (0, *range(2, ndim))
    if kind == "shape":
        return (0,) if ndim == 4 else None
    raise ValueError(f"kind={kind!r} must be one of {GROUP_KINDS}")


def layer_kinds(spec: NetSpec, cfg: SSLConfig) -> dict[str, tuple[str, ...]]:
    """{layer: group kinds penalised}: the configured kinds with lambda > 0 that the layer has (no filter
    groups in the output layer, no shape groups in fc layers, no channel groups in a first conv layer: its
    channels are the image's)."""
    layers = cfg.layers or spec.layer_names
    for layer in layers:
        if layer not in spec.layer_names:
            raise ConfigError(f"ssl: {spec.name} has no layer {layer!r} (its layers: {spec.layer_names})")
    hidden = prunable_layers(spec)
    image_conv = spec.layers[0].name if len(spec.layers[0].w_shape) == 4 else None
    out = {}
    for op in spec.layers:
        if op.name not in layers:
            continue
        kinds = tuple(k for k in GROUP_KINDS if cfg.strength(k) > 0
                      and group_axes(k, len(op.w_shape)) is not None and (k != "filter" or op.name in hidden)
                      and (k != "channel" or op.name != image_conv))
        if kinds:
            out[op.name] = kinds
    if not out:
        raise ConfigError(f"ssl: no group of {spec.name}'s layers {list(layers)} has a lambda > 0 "
                          "(the output layer has no filter groups, fc layers no shape groups)")
    return out


def group_norms(w: np.ndarray, kind: str) -> np.ndarray:
    """The l2 norm of every group of ``kind`` in ``w``, keepdims (broadcasts against ``w``), float64."""
    w64 = w.astype(np.float64)
    return np.sqrt((w64 * w64).sum(axis=group_axes(kind, w.ndim), keepdims=True))


def penalty(w_eff: dict[str, np.ndarray], kinds: dict[str, tuple[str, ...]], cfg: SSLConfig) -> float:
    """``sum_l sum_kind lambda_kind sum_g ||w_g||_2`` over the penalised layers (float64)."""
    return float(sum(cfg.strength(k) * group_norms(w_eff[weight_key(layer)], k).sum()
                     for layer, ks in kinds.items() for k in ks))


def penalty_grads(w_eff: dict[str, np.ndarray], kinds: dict[str, tuple[str, ...]], cfg: SSLConfig
                  ) -> dict[str, np.ndarray]:
    """d(penalty)/dw for each penalised weight: ``sum_kind lambda_kind w / ||w_g||`` (0 in a zero group).

    Returned in the weight's dtype (float32 in training, float64 in the gradient check).
    """
    out = {}
    for layer, ks in kinds.items():
        w = w_eff[weight_key(layer)]
        g = np.zeros(w.shape, dtype=np.float64)
        w64 = w.astype(np.float64)
        for k in ks:
            norm = group_norms(w, k)
            inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)  # 0 where the group is 0
            g += cfg.strength(k) * w64 * inv
        out[weight_key(layer)] = g.astype(w.dtype)
    return out


def _between_relu(spec: NetSpec, layer: str, nxt: str) -> bool:
    names = [op.name for op in spec.ops]
    return any(op.kind == "relu" for op in spec.ops[names.index(layer) + 1 : names.index(nxt)])


def _live_inputs(units, masks: dict[str, np.ndarray], layer: str) -> np.ndarray:
    """bool, the shape of ``layer``'s weight: entries on that read a unit of the previous layer that is alive
    (the first layer reads the input: every entry on)."""
    w = masks[weight_key(layer)]
    prev = [u for u in units.values() if u.next_layer == layer]
    if not prev:
        return w.copy()
    u = prev[0]
    alive = alive_units(masks, u.name)
    cols = np.zeros(w.shape[1], dtype=bool)
    for j in np.flatnonzero(alive):
        cols[u.next_columns(int(j))] = True
    return w & cols.reshape((1, -1) + (1,) * (w.ndim - 2))


def _read_units(units, masks: dict[str, np.ndarray], layer: str) -> np.ndarray:
    """bool (F,): units of ``layer`` that the next layer still reads (all True for the output layer)."""
    if layer not in units:
        return np.ones(masks[weight_key(layer)].shape[0], dtype=bool)
    u = units[layer]
    nxt = masks[weight_key(u.next_layer)]
    return np.array([nxt[:, u.next_columns(j)].any() for j in range(u.n_units)])


def remove_small_groups(spec: NetSpec, params: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                        kinds: dict[str, tuple[str, ...]], threshold: float) -> dict[str, np.ndarray]:
    """New masks with every group whose norm (of ``W * mask``) is below ``threshold`` masked.

    Filter groups remove their unit whole after folding its constant output into the next layer's bias
    (``params`` changes in place there; see the module docstring). The net never loses its last path: a layer
    keeps its largest filter among those alive and read, and its largest channel or shape group among those
    reading an alive unit, when every one of them is below the threshold (too strong a lambda would otherwise
    leave a constant net, which cannot be thinned).
    """
    units = unit_layers(spec)
    new = {k: m.copy() for k, m in masks.items()}
    for layer, ks in kinds.items():
        wk = weight_key(layer)
        for k in ks:
            w_eff = params[wk] * new[wk]
            norm = group_norms(w_eff, k)
            small = norm < threshold
            if k != "filter":
                live = _live_inputs(units, new, layer)
                live_g = live.any(axis=group_axes(k, w_eff.ndim), keepdims=True)  # groups on a live path
                if live_g.any() and not (live_g & ~small).any():
                    keep = np.argmax(np.where(live_g, norm, -1.0))
                    small.reshape(-1)[keep] = False
                new[wk] &= ~np.broadcast_to(small, w_eff.shape)
                continue
            small = small.reshape(-1)
            alive = new[wk].reshape(new[wk].shape[0], -1).any(axis=1) | new[bias_key(layer)]
            useful = alive & _read_units(units, new, layer)
            drop = np.flatnonzero(small & alive)
            if useful.any() and not (useful & ~small).any():  # never the last useful unit of a layer
                drop = np.setdiff1d(drop, [int(np.argmax(np.where(useful, norm.reshape(-1), -1.0)))])
            if drop.size == 0:
                continue
            u = units[layer]
            b = params[bias_key(layer)] * new[bias_key(layer)]
            const = np.maximum(b, 0) if _between_relu(spec, layer, u.next_layer) else b  # the unit's output
            nw = params[weight_key(u.next_layer)] * new[weight_key(u.next_layer)]
            nb = params[bias_key(u.next_layer)]
            for j in drop:
                cols = nw[:, int(j)] if u.next_is_conv else nw[:, u.next_columns(int(j))]
                reads = cols.reshape(cols.shape[0], -1).sum(axis=1)  # next layer's weight on a constant map
                nb += (reads * const[j]).astype(nb.dtype)  # in place: params' own array
            new = remove_units(new, u, drop)
    return new


class SSL(PruningMethod):
    """Structured Sparsity Learning as a :class:`~refdns.prune.base.PruningMethod`: the group-lasso gradient
    through :meth:`penalty_grads` while ``iteration < iterations``, removals in :meth:`update_masks`.
    State (saved in checkpoints): ``removals`` (removal passes done)."""

    name = "ssl"
    grad_through_mask = False
    config_type = SSLConfig

    @classmethod
    def recipe(cls, net: str, variant: str = "refdns") -> Recipe:
        """refdns's settings, not Wen et al.'s (they tuned lambda per net in Caffe): LeNet-5 filter- and
        channel-wise, LeNet-300-100 neuron-wise (rows and columns), 5,000 penalised iterations with a removal
        every 1,000, then 2,000 of fine-tuning."""
        check_variant(cls, variant)
        if net == "lenet-5":
            cfg = SSLConfig(lambda_filter=2e-3, lambda_channel=2e-3, threshold=1e-2)
        elif net == "lenet-300-100":
            cfg = SSLConfig(lambda_filter=2e-3, lambda_channel=2e-3, threshold=1e-2)
        else:
            raise ConfigError(f"method 'ssl' has no default recipe for {net!r} (known: {sorted(NETS)})")
        return Recipe(cfg, note="refdns's lambdas (2e-3 filter- and channel-wise), threshold 1e-2; "
                      "5,000 + 2,000 iterations")

    def schedule_iterations(self) -> int:
        return self.config.iterations + self.config.finetune_iterations

    def init_state(self, spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._layout(spec)
        return {"removals": np.array(0, dtype=np.int64)}

    def _layout(self, spec: NetSpec) -> None:
        self.spec = spec
        self.kinds = layer_kinds(spec, self.config)

    def _ensure_layout(self, params: dict[str, np.ndarray]) -> None:
        if hasattr(self, "spec"):
            return
        shapes = {k: tuple(v.shape) for k, v in params.items()}
        found = [s for s in NETS.values() if s.param_shapes() == shapes]
        if not found:
            raise ConfigError("ssl: call init_state(spec, params) first (the net is not a known one)")
        self._layout(found[0])

    def removal_iterations(self) -> list[int]:
        """Iterations before whose forward pass groups are removed: every ``prune_interval`` after the start,
        and the end of the penalised phase."""
        cfg = self.config
        its = list(range(cfg.prune_interval, cfg.iterations, cfg.prune_interval))
        return its + [cfg.iterations] if cfg.iterations > 0 else []

    def penalty_grads(self, iteration: int, params: dict[str, np.ndarray], masks: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray] | None:
        if iteration >= self.config.iterations:
            return None
        self._ensure_layout(params)
        w_eff = {weight_key(n): params[weight_key(n)] * masks[weight_key(n)] for n in self.kinds}
        return penalty_grads(w_eff, self.kinds, self.config)

    def update_masks(self, iteration, params, masks, state, rng) -> list[Any]:
        schedule = self.removal_iterations()
        done = int(state["removals"])
        records = []
        while done < len(schedule) and iteration >= schedule[done]:
            self._ensure_layout(params)
            new = remove_small_groups(self.spec, params, masks, self.kinds, self.config.threshold)
            records += mask_records(iteration, layer_names(params), masks, new)
            for k in masks:
                masks[k][...] = new[k]
            done += 1
            state["removals"] = np.array(done, dtype=np.int64)
        return records
