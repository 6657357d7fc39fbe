"""The one forward/backward engine every refdns net shares.

A net is a frozen :class:`NetSpec`: an ordered tuple of ops (dense, conv, pool, relu, flatten). The engine
walks the ops, calling each op's forward and backward from the op table :data:`refdns.nets.ops.OPS`, which
wraps the hand-written layers in :mod:`refdns.layers`. Parameters live in a plain dict keyed
``"<layer>.weight"`` / ``"<layer>.bias"`` in Caffe layouts (dense (out, in), conv (F, C, K, K)), the same
keys the ``.npz`` interchange files use.

Layers never see masks: a pruning method passes the *effective* parameters ``w_eff = w * mask`` to
:func:`forward`, and :func:`backward` returns dL/d(w_eff). Who applies that gradient to which entries is the
pruning method's business.

A dense layer's effective weight may also come as a :class:`~refdns.layers.SparseWeight` (W plus the index
structure of its kept entries, see :mod:`refdns.effective`); the dense op then runs its sparse twin, which
skips the pruned entries and returns the same gradients to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from refdns.layers import Workspace, softmax_cross_entropy
from refdns.nets.ops import OP_KINDS, OPS, PARAM_KINDS, Op, bias_key, param_key, weight_key

__all__ = [
    "OP_KINDS",
    "PARAM_KINDS",
    "ForwardCache",
    "NetSpec",
    "Op",
    "backward",
    "bias_key",
    "check_params",
    "error_rate",
    "forward",
    "forward_from",
    "init_params",
    "loss_and_grads",
    "output_grads",
    "param_key",
    "predict",
    "weight_key",
]


@dataclass(frozen=True)
class NetSpec:
    """A whole network: its name, input shape (C, H, W), number of classes and ops in order."""

    name: str
    input_shape: tuple[int, int, int]
    n_classes: int
    ops: tuple[Op, ...]

    @cached_property
    def layers(self) -> tuple[Op, ...]:
        """The parametric ops (the ones with weights, masks and Caffe names), in order.

        Computed once per spec: every training step asks for it, and a tuple built from a generator each
        time would leave one more tuple on CPython's free list per step (a page fault every ~30 steps).
        """
        return tuple(op for op in self.ops if OPS[op.kind].has_params)

    @property
    def first_layer_index(self) -> int:
        """Index in ``ops`` of the first parametric op; backward passes stop there (no gradient for data)."""
        return next(i for i, op in enumerate(self.ops) if OPS[op.kind].has_params)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(op.name for op in self.layers)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{"<layer>.weight": shape, "<layer>.bias": shape}`` in layer order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for op in self.layers:
            shapes[weight_key(op.name)] = op.w_shape
            shapes[bias_key(op.name)] = op.b_shape
        return shapes

    def n_params(self) -> int:
        return int(sum(np.prod(s) for s in self.param_shapes().values()))


def init_params(spec: NetSpec, *, rng: np.random.Generator, dtype=np.float32) -> dict[str, np.ndarray]:
    """Caffe "xavier" weights and zero biases.

    Caffe's XavierFiller (variance_norm FAN_IN): ``scale = sqrt(3 / fan_in)``, ``w ~ U(-scale, scale)``,
    where fan_in = count / num_outputs; biases use the constant filler 0.

    Parameters
    ----------
    spec : NetSpec
    rng : np.random.Generator
        Layers draw in spec order from this one stream, so a seed fixes every weight.
    dtype : float32 (training) or float64 (gradient checks).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    params: dict[str, np.ndarray] = {}
    for op in spec.layers:
        scale = np.sqrt(3.0 / op.fan_in)
        params[weight_key(op.name)] = rng.uniform(-scale, scale, size=op.w_shape).astype(dtype)
        params[bias_key(op.name)] = np.zeros(op.b_shape, dtype=dtype)
    return params


class ForwardCache(NamedTuple):
    """Per-op caches and outputs of one forward pass; ``outputs[i]`` is the output of ``spec.ops[i]``."""

    op_caches: tuple[Any, ...]
    outputs: tuple[np.ndarray, ...]


def check_params(spec: NetSpec, params: dict[str, np.ndarray]) -> None:
    """Raise ValueError naming the first missing, extra or mis-shaped parameter."""
    shapes = spec.param_shapes()
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise ValueError(f"params for {spec.name}: missing {missing}, unexpected {extra}")
    for k, s in shapes.items():
        if params[k].shape != s:
            raise ValueError(f"params[{k!r}] has shape {params[k].shape}, expected {s} for {spec.name}")


def forward(
    spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, *, keep_outputs: bool = False,
    ws: Workspace | None = None,
) -> tuple[np.ndarray, ForwardCache]:
    """Logits for a batch.

    Parameters
    ----------
    spec : NetSpec
    params : dict of ndarray
        Effective parameters (already multiplied by any mask); a dense layer's weight may be a
        :class:`~refdns.layers.SparseWeight` instead.
    x : ndarray, shape (N, C, H, W), float32 or float64
        MLPs flatten it themselves (their first op is ``flatten``).
    keep_outputs : bool
        Also keep every op's output in the cache (golden traces and studies want activations).
    ws : Workspace, optional
        Keep outputs and caches in its buffers (one child per op) instead of new arrays, so that repeated
        calls allocate nothing (:mod:`refdns.layers.workspace`); the next call overwrites them.

    Returns
    -------
    logits : ndarray, shape (N, n_classes), dtype of ``x``
    cache : ForwardCache
    """
    if x.ndim != 4 or x.shape[1:] != spec.input_shape:
        raise ValueError(f"x has shape {x.shape}, expected (N, {', '.join(map(str, spec.input_shape))})")
    caches = []
    outputs = []
    h = x
    for i, op in enumerate(spec.ops):
        h, c = OPS[op.kind].forward(op, params, h, ws=None if ws is None else ws.child(i))
        caches.append(c)
        if keep_outputs:
            outputs.append(h)
    return h, ForwardCache(tuple(caches), tuple(outputs))


def forward_from(spec: NetSpec, params: dict[str, np.ndarray], h: np.ndarray, start: int, *,
                 ws: Workspace | None = None) -> np.ndarray:
    """Logits from the output ``h`` of op ``start - 1``: ops ``start, start + 1, ...`` only.

    The tail of :func:`forward` (same ops, same calls, so the same numbers): an ablation study that changes
    one op's output re-runs only what comes after it (:func:`refdns.prune.units.unit_ablation_losses`).
    ``ws`` as in :func:`forward`, its children keyed by op index.
    """
    if not 0 < start <= len(spec.ops):
        raise ValueError(f"start={start!r} must be in [1, {len(spec.ops)}] for {spec.name}")
    for i in range(start, len(spec.ops)):
        op = spec.ops[i]
        h, _ = OPS[op.kind].forward(op, params, h, ws=None if ws is None else ws.child(i))
    return h


def backward(spec: NetSpec, dlogits: np.ndarray, cache: ForwardCache, *, ws: Workspace | None = None
             ) -> dict[str, np.ndarray]:
    """dL/d(effective parameter) for every parameter, keyed like ``params``.

    The gradient with respect to the network input is never formed (nothing needs it), which saves the
    largest GEMM of the first layer. With ``ws`` (the one the forward used) the gradients live in its
    buffers until the next call.
    """
    grads: dict[str, np.ndarray] = {}
    for _, _, op_grads in _backward_steps(spec, dlogits, cache, ws):
        grads.update(op_grads)
    return {k: grads[k] for k in spec.param_shapes()}


def _backward_steps(spec: NetSpec, dlogits: np.ndarray, cache: ForwardCache, ws: Workspace | None = None):
    """The backward pass, one op at a time from the last: yields ``(i, dL/d(output of op i), op_grads)``."""
    d = dlogits
    first = spec.first_layer_index
    for i in range(len(spec.ops) - 1, first - 1, -1):
        op = spec.ops[i]
        d_out = d
        d, op_grads = OPS[op.kind].backward(op, d, cache.op_caches[i], need_dx=i != first,
                                            ws=None if ws is None else ws.child(i))
        yield i, d_out, op_grads


def output_grads(spec: NetSpec, dlogits: np.ndarray, cache: ForwardCache) -> dict[int, np.ndarray]:
    """dL/d(output of op i) for every op from the first parametric one on, keyed by op index.

    The same backward pass as :func:`backward` (activation-based pruning criteria such as Molchanov et al.'s
    Taylor expansion need dL/da of a unit, not only of the parameters).
    """
    return {i: d_out for i, d_out, _ in _backward_steps(spec, dlogits, cache)}


def loss_and_grads(
    spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean softmax cross-entropy of a batch and its gradient w.r.t. every (effective) parameter."""
    logits, cache = forward(spec, params, x)
    loss, dlogits = softmax_cross_entropy(logits, y)
    return float(loss), backward(spec, dlogits, cache)


def predict(
    spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, *, batch_size: int = 1000
) -> np.ndarray:
    """Top-1 class of every image, in batches so the whole test set fits comfortably in memory."""
    out = np.empty(len(x), dtype=np.int64)
    ws = Workspace()  # one set of activation buffers for every batch: the peak is one batch's forward
    for s in range(0, len(x), batch_size):
        logits, _ = forward(spec, params, x[s : s + batch_size], ws=ws)
        out[s : s + batch_size] = logits.argmax(axis=1)
    return out


def error_rate(spec: NetSpec, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 error as a fraction (0.0091 means 0.91 %)."""
    return float(np.mean(predict(spec, params, x) != y))
