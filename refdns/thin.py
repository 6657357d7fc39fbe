"""Thinning: cut fully pruned filters and neurons out of a net, giving a smaller dense net of the same family.

Structured pruning (:mod:`refdns.prune.structured`) only masks; the masked net still computes every removed
unit's zeros. :func:`thin` slices them away. Unit j of a hidden layer L (see :mod:`refdns.prune.units`) can go
when the masked net does not depend on it:

* *dead*: all its weights and its bias are masked, so its pre-activation is exactly 0 everywhere, and every
  op between L and the next layer (ReLU, max-pool, flatten) maps 0 to 0; or
* *unread*: every next-layer weight that reads it is masked.

Removing it deletes row j of L's weight (conv: filter j) and bias j, and the next layer's inputs that read it:
conv input channel j, dense column j, or, after a conv and a channel-major flatten, the block of columns
``j*H*W : (j+1)*H*W``. The thinned net's parameters are the masked net's effective values ``w * mask`` on
what remains, so its logits equal the masked net's up to float rounding (a sum over fewer exact zeros may
be ordered differently by the GEMM). Unstructured zeros inside kept units stay as zeros.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from refdns.nets.ops import bias_key, weight_key
from refdns.nets.sequential import NetSpec, check_params
from refdns.prune.units import unit_layers

# The ops allowed between a layer and the next: each maps an all-zero map to an all-zero map.
ZERO_PRESERVING = ("relu", "pool", "flatten")


@dataclass(frozen=True)
class LayerThinning:
    """One layer before and after thinning: units (filters or neurons) and parameters (weights + biases)."""

    layer: str
    units_before: int
    units_after: int
    params_before: int
    params_after: int


@dataclass(frozen=True)
class ThinReport:
    """What :func:`thin` did. ``changed`` False: no fully pruned unit, the net came back unchanged."""

    net: str
    thinned_net: str
    changed: bool
    layers: tuple[LayerThinning, ...]
    message: str

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.layers)


def removable_units(spec: NetSpec, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per hidden layer: bool (F,), True for a unit the masked net does not depend on (dead or unread)."""
    out = {}
    for name, u in unit_layers(spec).items():
        between = spec.ops[u.op_index + 1 : _op_index(spec, u.next_layer)]
        bad = [op.kind for op in between if op.kind not in ZERO_PRESERVING]
        if bad:
            raise ValueError(f"thin: ops {bad} between {name} and {u.next_layer} may not map 0 to 0")
        w = masks[weight_key(name)]
        dead = ~(w.reshape(w.shape[0], -1).any(axis=1) | masks[bias_key(name)])
        nxt = masks[weight_key(u.next_layer)]
        unread = np.array([not nxt[:, u.next_columns(j)].any() for j in range(u.n_units)])
        out[name] = dead | unread
    return out


def _op_index(spec: NetSpec, layer: str) -> int:
    return next(i for i, op in enumerate(spec.ops) if op.name == layer)


def thin(
    spec: NetSpec, params: dict[str, np.ndarray], masks: dict[str, np.ndarray]
) -> tuple[NetSpec, dict[str, np.ndarray], ThinReport]:
    """A smaller dense net computing the same function as the masked net ``(spec, params * masks)``.

    :func:`thin_masked` also returns the masks of what remains (the unstructured zeros inside kept units).

    Parameters
    ----------
    spec : NetSpec
    params : dict of ndarray, ``"<layer>.weight"`` / ``"<layer>.bias"`` in Caffe layouts, float32
    masks : dict of ndarray, same keys and shapes, bool

    Returns
    -------
    new_spec : NetSpec
        The same ops with smaller shapes and a name naming the units kept, e.g. ``lenet-5-thin-10-25-250``;
        ``spec`` itself when nothing can be removed.
    new_params : dict of ndarray
        The effective parameters ``w * mask`` of what remains (``params`` itself when nothing is removed).
    report : ThinReport

    Raises
    ------
    ValueError
        On mismatched params/masks, or when a layer would keep no unit (the masked net's output is then a
        constant; a layer of zero units is not a net).
    """
    new_spec, new_params, _, report = thin_masked(spec, params, masks)
    return new_spec, new_params, report


def thin_masked(
    spec: NetSpec, params: dict[str, np.ndarray], masks: dict[str, np.ndarray]
) -> tuple[NetSpec, dict[str, np.ndarray], dict[str, np.ndarray], ThinReport]:
    """:func:`thin`, plus the masks of the kept entries (same keys and shapes as the new params; ``masks``
    itself when nothing is removed)."""
    check_params(spec, params)
    check_params(spec, masks)
    units = unit_layers(spec)
    removable = removable_units(spec, masks)
    keep = {name: np.flatnonzero(~r) for name, r in removable.items()}
    empty = [name for name, k in keep.items() if k.size == 0]
    if empty:
        raise ValueError(f"thin: every unit of layer(s) {empty} is pruned (dead or unread); the masked net's "
                         "output is a constant and cannot be thinned to a net")
    if not any(r.any() for r in removable.values()):
        sizes = {op.name: int(np.prod(op.w_shape)) + int(np.prod(op.b_shape)) for op in spec.layers}
        rows = tuple(LayerThinning(op.name, op.w_shape[0], op.w_shape[0], sizes[op.name], sizes[op.name])
                     for op in spec.layers)
        message = f"{spec.name}: no fully pruned filter or neuron; the net is unchanged"
        return spec, params, masks, ThinReport(spec.name, spec.name, False, rows, message)

    # Input columns each layer keeps, from the units its predecessor keeps.
    in_keep: dict[str, np.ndarray] = {}
    for name, u in units.items():
        if u.next_is_conv:
            in_keep[u.next_layer] = keep[name]
        else:
            in_keep[u.next_layer] = np.concatenate([np.arange(u.next_columns(j).start, u.next_columns(j).stop)
                                                    for j in keep[name]])
    new_params: dict[str, np.ndarray] = {}
    new_masks: dict[str, np.ndarray] = {}
    new_ops = []
    rows = []
    for op in spec.ops:
        if not op.name or op.name not in spec.layer_names:
            new_ops.append(op)
            continue
        wk, bk = weight_key(op.name), bias_key(op.name)
        out_idx = keep.get(op.name, np.arange(op.w_shape[0]))
        cols = in_keep.get(op.name, slice(None))
        for key in (wk, bk):
            p, m = (params[key] * masks[key])[out_idx], masks[key][out_idx]
            if key == wk:
                p, m = p[:, cols], m[:, cols]
            new_params[key], new_masks[key] = np.ascontiguousarray(p), np.ascontiguousarray(m)
        w, b = new_params[wk], new_params[bk]
        new_ops.append(dataclasses.replace(op, w_shape=tuple(w.shape), b_shape=tuple(b.shape)))
        rows.append(LayerThinning(op.name, op.w_shape[0], w.shape[0],
                                  int(np.prod(op.w_shape)) + int(np.prod(op.b_shape)), w.size + b.size))
    name = spec.name + "-thin-" + "-".join(str(keep[n].size) for n in units)
    new_spec = dataclasses.replace(spec, name=name, ops=tuple(new_ops))
    removed = ", ".join(f"{r.layer} {r.units_before}->{r.units_after}"
                        for r in rows if r.units_after < r.units_before)
    before, after = sum(r.params_before for r in rows), sum(r.params_after for r in rows)
    report = ThinReport(spec.name, name, True, tuple(rows),
                        f"{spec.name} -> {name}: {removed}; parameters {before:,} -> {after:,}")
    return new_spec, new_params, new_masks, report
