"""Whole units (conv filters, dense neurons) of a sequential net: which entries belong to one; their masks.

Unit j of a parametric layer L is output channel j (conv, weight ``[j, :, :, :]``) or output neuron j
(dense, weight row ``[j, :]``) together with bias ``[j]``. What reads it is the next parametric layer L':

* conv -> (pool) -> conv: input channel j of L', weight ``[:, j, :, :]``;
* dense -> (relu) -> dense: input column j of L', weight ``[:, j]``;
* conv -> (pool) -> flatten -> dense: the flatten is channel-major (C, H, W), so channel j of a (C, H, W)
  map becomes the block of columns ``j*H*W : (j+1)*H*W`` of L' (LeNet-5: conv2 filter f is ip1's columns
  ``16f : 16f + 16``).

Removing unit j masks all three (its weights, its bias, and the next layer's weights that read it), so its
output is exactly zero and nothing downstream depends on it: ReLU(0) = 0 and max-pool of an all-zero map is 0.
The output layer's units are the classes and are never units to remove (:func:`prunable_layers`).

:func:`unit_activations` gives the per-unit activation a (the map L' reads, before any flatten) and dL/da for
a batch, from the one forward/backward engine (:func:`refdns.nets.sequential.forward` with
``keep_outputs=True`` and :func:`refdns.nets.sequential.output_grads`). :func:`unit_ablation_losses` gives
the batch loss with each unit removed in turn (the one-shot sensitivity criterion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refdns.layers import Workspace, softmax_cross_entropy
from refdns.nets.ops import OPS, bias_key, weight_key
from refdns.nets.sequential import NetSpec, forward, forward_from, output_grads


@dataclass(frozen=True)
class UnitLayer:
    """Where the units of one parametric layer live.

    ``op_index``: the layer's index in ``spec.ops``; ``act_index``: the op whose output is the units' map as
    the next layer reads it (before any flatten); ``next_layer``: the next parametric layer's name;
    ``block``: next-layer input columns per unit (1, or H*W when a flatten follows a conv).
    """

    name: str
    n_units: int
    op_index: int
    act_index: int
    next_layer: str
    next_is_conv: bool
    block: int

    def next_columns(self, j: int) -> slice:
        """The slice of the next layer's weight axis 1 that reads unit ``j``."""
        return slice(j * self.block, (j + 1) * self.block)


def op_output_shapes(spec: NetSpec) -> list[tuple[int, ...]]:
    """The per-sample output shape of every op (one forward of a zero image)."""
    params = {k: np.zeros(s, dtype=np.float32) for k, s in spec.param_shapes().items()}
    _, cache = forward(spec, params, np.zeros((1, *spec.input_shape), np.float32), keep_outputs=True)
    return [o.shape[1:] for o in cache.outputs]


def unit_layers(spec: NetSpec) -> dict[str, UnitLayer]:
    """Every layer whose units may be removed (all parametric layers but the output one), by name."""
    shapes = op_output_shapes(spec)
    param_idx = [i for i, op in enumerate(spec.ops) if OPS[op.kind].has_params]
    out = {}
    for i, nxt in zip(param_idx[:-1], param_idx[1:], strict=True):
        op = spec.ops[i]
        act = i
        for k in range(i + 1, nxt):
            if spec.ops[k].kind == "flatten":
                break
            act = k
        n_units = op.w_shape[0]
        per_unit = int(np.prod(shapes[act])) // n_units
        next_op = spec.ops[nxt]
        next_is_conv = len(next_op.w_shape) == 4
        block = 1 if next_is_conv or len(shapes[act]) == 1 else per_unit
        if not next_is_conv and next_op.w_shape[1] != n_units * block:
            raise ValueError(f"{spec.name}: {next_op.name} reads {next_op.w_shape[1]} inputs, "
                             f"not {n_units} units of {op.name} x {block}")
        out[op.name] = UnitLayer(op.name, n_units, i, act, next_op.name, next_is_conv, block)
    return out


def prunable_layers(spec: NetSpec) -> tuple[str, ...]:
    """Names of the layers whose units may be removed: every parametric layer except the output one."""
    return spec.layer_names[:-1]


def alive_units(masks: dict[str, np.ndarray], layer: str) -> np.ndarray:
    """bool (F,): units of ``layer`` with any weight or its bias still unmasked."""
    w = masks[weight_key(layer)]
    return w.reshape(w.shape[0], -1).any(axis=1) | masks[bias_key(layer)]


def remove_units(masks: dict[str, np.ndarray], unit: UnitLayer, units) -> dict[str, np.ndarray]:
    """New masks with ``units`` of ``unit.name`` removed whole: weights, bias and the next layer's inputs."""
    out = {k: m.copy() for k, m in masks.items()}
    units = np.asarray(list(units), dtype=np.int64)
    if units.size == 0:
        return out
    out[weight_key(unit.name)][units] = False
    out[bias_key(unit.name)][units] = False
    nxt = out[weight_key(unit.next_layer)]
    for j in units:
        nxt[:, unit.next_columns(int(j))] = False
    return out


def effective_params(params: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``w_eff = w * mask`` for every parameter (new arrays, dtype of ``params``)."""
    return {k: params[k] * masks[k] for k in params}


def unit_activations(
    spec: NetSpec, params_eff: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, layers=None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer: the units' activation ``a`` and ``dL/da`` on a batch (L the mean cross-entropy).

    Parameters
    ----------
    spec : NetSpec
    params_eff : dict of ndarray, effective parameters (masked)
    x : ndarray, shape (N, C, H, W), float32
    y : ndarray, shape (N,), int
    layers : names to return (default: :func:`prunable_layers`)

    Returns
    -------
    {layer: (a, da)} with ``a, da : ndarray, shape (N, F, H', W')`` (conv) or ``(N, F)`` (dense)
    """
    units = unit_layers(spec)
    layers = prunable_layers(spec) if layers is None else layers
    logits, cache = forward(spec, params_eff, x, keep_outputs=True)
    _, dlogits = softmax_cross_entropy(logits, y)
    grads = output_grads(spec, dlogits, cache)
    return {name: (cache.outputs[units[name].act_index], grads[units[name].act_index]) for name in layers}


def _mean_ce(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy, in float64 whatever the net's dtype (scores are differences of two losses)."""
    loss, _ = softmax_cross_entropy(logits.astype(np.float64, copy=False), y)
    return loss


def unit_ablation_losses(
    spec: NetSpec, params_eff: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, layers=None,
    alive: dict[str, np.ndarray] | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """The batch loss L of the net, and per layer the loss ``L_j`` with unit j alone removed.

    Removing unit j (:func:`remove_units`) makes its map, the one the next layer reads, exactly zero and
    changes nothing upstream, so ``L_j`` is the loss of the net whose map at ``act_index`` has channel j
    zeroed: one forward to every layer's map, then per unit only the ops after that map
    (:func:`refdns.nets.sequential.forward_from`), the same op calls as the ordinary forward of the masked
    net. A unit already removed (``alive[layer][j]`` False) has an all-zero map, so removing it again
    changes nothing: ``L_j = L`` exactly, and it is not re-run.

    Parameters
    ----------
    spec : NetSpec
    params_eff : dict of ndarray, effective parameters (masked)
    x : ndarray, shape (N, C, H, W)
    y : ndarray, shape (N,), int
    layers : names to score (default: :func:`prunable_layers`)
    alive : {layer: bool (F,)}, optional; default every unit alive

    Returns
    -------
    loss : float, the mean cross-entropy L of the batch (computed in float64 from the logits)
    {layer: ndarray, shape (F,), float64}: ``L_j``
    """
    units = unit_layers(spec)
    layers = prunable_layers(spec) if layers is None else layers
    logits, cache = forward(spec, params_eff, x, keep_outputs=True)
    base = _mean_ce(logits, y)
    ws = Workspace()
    out = {}
    for name in layers:
        u = units[name]
        a = cache.outputs[u.act_index]  # (N, F, ...) the map the next layer reads
        live = np.ones(u.n_units, bool) if alive is None or name not in alive else np.asarray(alive[name])
        if live.shape != (u.n_units,):
            raise ValueError(f"alive[{name!r}] has shape {live.shape}, expected ({u.n_units},)")
        h = a.copy()
        losses = np.full(u.n_units, base)
        for j in np.flatnonzero(live):
            h[:, j] = 0
            losses[j] = _mean_ce(forward_from(spec, params_eff, h, u.act_index + 1, ws=ws), y)
            h[:, j] = a[:, j]
        out[name] = losses
    return base, out
