"""Anwar, Hwang, Sung, "Structured Pruning of Deep Convolutional Neural Networks" (ACM JETC 13(3), 2017):
three granularities of conv-layer sparsity, each candidate judged by what removing it does to the net.

For a conv weight W of shape (F, C, K, K) (Anwar et al. Sec. 3):

* **channel-wise** (feature-map pruning): input channel c goes, ``W[:, c, :, :] = 0``; the previous layer's
  filter c is then read by nothing and :func:`refdns.thin.thin` cuts it out (a real speed-up);
* **kernel-wise**: one K x K kernel goes, ``W[f, c, :, :] = 0`` (the connection from map c to map f);
* **intra-kernel strided**: every kernel of the layer keeps the same strided set of taps, flat position
  ``p = i K + j`` kept iff ``p mod s == o`` (stride ``s``, offset ``o``), so a lowered convolution
  multiplies by a matrix with ``1/s`` of its rows.

Their selection (Sec. 4): candidate pruning patterns are scored by the network's misclassification rate on a
validation set and searched with a particle filter. refdns scores a candidate by the **mean cross-entropy loss
on one batch** with the candidate removed (smoother than the error rate on a small batch) and replaces the
particle filter by:

* channel and kernel: a **greedy** search: each round scores every remaining candidate removed on its own
  (on top of those removed already) and removes the ``per_round`` of least loss, until the layer's target
  count; ``per_round = 1`` is plain one-at-a-time greedy selection;
* intra-kernel: an **exhaustive** search over the ``s`` offsets of each layer.

Layers are searched in net order, each on the net with the earlier layers' removals applied. The method prunes
once (at ``at_iteration``) and pruned weights then stay at exactly 0 during retraining, as in the paper
(prune, then fine-tune).

    # choose  argmin_{candidate}  L(W * (T and not candidate); x, y)    L: mean cross-entropy on the batch
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.layers import softmax_cross_entropy
from refdns.nets.ops import weight_key
from refdns.nets.sequential import NetSpec, forward
from refdns.prune.base import MaskUpdate, OneShotOnData
from refdns.prune.magnitude import kept_count
from refdns.prune.units import effective_params

GRANULARITIES = ("channel", "kernel", "intra")


@dataclass(frozen=True)
class AnwarConfig:
    """Anwar et al.'s structured pruning of conv layers.

    ``granularity``: one of :data:`GRANULARITIES`. ``fractions`` ({conv layer: fraction of its channels or
    kernels removed, in [0, 1)}) for channel and kernel; ``strides`` ({conv layer: s >= 2}, the layer keeps
    1 in s taps) for intra. ``per_round``: candidates removed per greedy round; ``samples``: images of the
    batch the loss is measured on; ``at_iteration``: when the one prune happens.
    """

    granularity: str
    fractions: dict[str, float] | None = None
    strides: dict[str, int] | None = None
    per_round: int = 1
    samples: int = 256
    at_iteration: int = 0

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={self.granularity!r} must be one of {GRANULARITIES}")
        if self.granularity == "intra":
            if self.strides is None or self.fractions is not None:
                raise ConfigError("granularity 'intra' takes strides={layer: s}, not fractions")
            if not isinstance(self.strides, dict) or not self.strides:
                raise ConfigError(f"strides must be a non-empty dict {{layer: s}}, got {self.strides!r}")
            for layer, s in self.strides.items():
                check_number(f"strides[{layer!r}]", s, lo=2, integer=True)
            object.__setattr__(self, "strides", {str(k): int(v) for k, v in self.strides.items()})
        else:
            if self.fractions is None or self.strides is not None:
                raise ConfigError(f"granularity {self.granularity!r} takes fractions={{layer: f}}, "
                                  "not strides")
            if not isinstance(self.fractions, dict) or not self.fractions:
                raise ConfigError(f"fractions must be a non-empty dict {{layer: f}}, got {self.fractions!r}")
            for layer, f in self.fractions.items():
                check_number(f"fractions[{layer!r}]", f, lo=0.0, hi=1.0)
                if f >= 1.0:
                    raise ConfigError(f"fractions[{layer!r}]={f!r} would remove every {self.granularity} of "
                                      f"layer {layer!r}")
            object.__setattr__(self, "fractions", {str(k): float(v) for k, v in self.fractions.items()})
        check_number("per_round", self.per_round, lo=1, integer=True)
        check_number("samples", self.samples, lo=1, integer=True)
        check_number("at_iteration", self.at_iteration, lo=0, integer=True)

    @property
    def layers(self) -> dict[str, Any]:
        return self.strides if self.granularity == "intra" else self.fractions


def candidate_masks(w_shape: tuple[int, ...], granularity: str) -> tuple[int, Any]:
    """``(n, region)``: the number of channel or kernel candidates of a conv weight and a function giving the
    index expression of candidate i (channel c -> ``[:, c]``; kernel i = f C + c -> ``[f, c]``)."""
    F, C = w_shape[0], w_shape[1]
    if granularity == "channel":
        return C, lambda i: (slice(None), int(i))
    if granularity == "kernel":
        return F * C, lambda i: (int(i) // C, int(i) % C)
    raise ValueError(f"granularity={granularity!r} has no enumerable candidates")


def strided_pattern(k: int, stride: int, offset: int) -> np.ndarray:
    """bool (K, K): the taps a kernel keeps, flat ``p = i K + j`` kept iff ``p mod stride == offset``."""
    return (np.arange(k * k) % stride == offset).reshape(k, k)


def targets(spec: NetSpec, cfg: AnwarConfig) -> dict[str, int]:
    """Candidates each layer loses (channel/kernel) or its stride (intra); refuses, naming the layer, a layer
    the net lacks, a dense layer, removing every channel or kernel, and a stride of K*K or more."""
    ops = {op.name: op for op in spec.layers}
    out = {}
    for layer, value in cfg.layers.items():
        if layer not in ops:
            raise ConfigError(f"anwar: {spec.name} has no layer {layer!r} (its layers: {spec.layer_names})")
        w_shape = ops[layer].w_shape
        if len(w_shape) != 4:
            raise ConfigError(f"anwar: layer {layer!r} is fully connected; the granularities are conv ones")
        if cfg.granularity == "intra":
            taps = w_shape[2] * w_shape[3]
            if value >= taps:
                raise ConfigError(f"anwar: strides[{layer!r}]={value} would keep at most one of layer "
                                  f"{layer!r}'s {taps} taps per kernel; need s < {taps}")
            out[layer] = value
            continue
        n, _ = candidate_masks(w_shape, cfg.granularity)
        k = n - kept_count(n, 1.0 - value)
        if k >= n:
            raise ConfigError(f"anwar: removing {k} of {n} {cfg.granularity}s would remove every "
                              f"{cfg.granularity} of layer {layer!r}")
        out[layer] = k
    return out


def batch_loss(spec: NetSpec, params: dict[str, np.ndarray], masks: dict[str, np.ndarray], x, y) -> float:
    """Mean cross-entropy of the masked net on ``(x, y)``."""
    logits, _ = forward(spec, effective_params(params, masks), x)
    return float(softmax_cross_entropy(logits, y)[0])


def greedy_layer(spec, params, masks, layer: str, granularity: str, k: int, per_round: int, x, y
                 ) -> tuple[dict[str, np.ndarray], list[int]]:
    """Remove ``k`` channel or kernel candidates of ``layer`` greedily; returns new masks and the candidates
    removed, in the order chosen."""
    wk = weight_key(layer)
    n, region = candidate_masks(masks[wk].shape, granularity)
    masks = {key: m.copy() for key, m in masks.items()}
    removed: list[int] = []
    while len(removed) < k:
        left = [i for i in range(n) if i not in removed]
        losses = []
        for i in left:
            trial = masks[wk].copy()
            trial[region(i)] = False
            losses.append(batch_loss(spec, params, masks | {wk: trial}, x, y))
        order = np.argsort(np.asarray(losses), kind="stable")  # ties: the lower index first
        for j in order[: min(per_round, k - len(removed))]:
            masks[wk][region(left[int(j)])] = False
            removed.append(left[int(j)])
    return masks, removed


def exhaustive_intra(spec, params, masks, layer: str, stride: int, x, y) -> tuple[dict[str, np.ndarray], int]:
    """The offset of least loss for ``layer``'s strided pattern (every offset tried): (new masks, offset)."""
    wk = weight_key(layer)
    kh, kw = masks[wk].shape[2:]
    if kh != kw:
        raise ConfigError(f"anwar: layer {layer!r} has a {kh}x{kw} kernel; strided patterns need a "
                          "square one")
    best = None
    for o in range(stride):
        trial = masks[wk] & strided_pattern(kh, stride, o)
        loss = batch_loss(spec, params, masks | {wk: trial}, x, y)
        if best is None or loss < best[0]:
            best = (loss, o, trial)
    return masks | {wk: best[2]}, best[1]


def anwar_prune(spec: NetSpec, params, masks, x, y, cfg: AnwarConfig) -> tuple[dict[str, np.ndarray], dict]:
    """The masks after Anwar et al.'s pruning of every configured layer, and what was chosen per layer
    (removed candidates in order, or the offset)."""
    want = targets(spec, cfg)
    chosen: dict[str, Any] = {}
    masks = {k: m.copy() for k, m in masks.items()}
    for layer in (n for n in spec.layer_names if n in want):
        if cfg.granularity == "intra":
            masks, chosen[layer] = exhaustive_intra(spec, params, masks, layer, want[layer], x, y)
        else:
            masks, chosen[layer] = greedy_layer(spec, params, masks, layer, cfg.granularity, want[layer],
                                                cfg.per_round, x, y)
    return masks, chosen


class AnwarPruning(OneShotOnData):
    """Anwar et al.'s pruning at ``config.at_iteration`` from a batch of ``samples`` images drawn from the
    ``(x, y)`` given at construction (with the run's mask stream), then retraining with the masks fixed."""

    name = "anwar"
    config_type = AnwarConfig

    def init_state(self, spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        targets(spec, self.config)
        return super().init_state(spec, params) | {"done": np.array(0, dtype=np.int64)}

    def update_masks(self, iteration, params, masks, state, rng) -> list[MaskUpdate]:
        if int(state["done"]) or iteration < self.config.at_iteration:
            return []
        pick = rng.choice(len(self.x), size=min(self.config.samples, len(self.x)), replace=False)
        new, _ = anwar_prune(self.spec, params, masks, self.x[pick], self.y[pick], self.config)
        records = self._weight_records(iteration, masks, new)
        for k in masks:
            masks[k][...] = new[k]
        state["done"] = np.array(1, dtype=np.int64)
        return records
