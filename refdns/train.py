"""The training loop: Caffe's SGD on a refdns net, with an optional pruning method.

One iteration, in Caffe's order::

    masks <- method.update_masks(iter, W, masks)      # DNS: before the forward pass
    W_eff  = W * masks                                 # refdns.effective: dense or sparse, by density
    loss, dL/dW_eff = forward/backward(W_eff, batch)
    g      = dL/dW_eff                 if method.grad_through_mask   (DNS eq. (2): every entry of W)
           = dL/dW_eff * masks         otherwise                     (Han: pruned entries stay 0)
    SGD step (weight decay, momentum) on all of W
    velocity *= masks, W *= masks      only when not grad_through_mask

All randomness comes from ``np.random.Generator`` streams held in :class:`RunState`, so a run is fixed by
its seed, and resuming from a checkpoint continues the very same streams.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refdns.config import check_number
from refdns.effective import EffectiveParams
from refdns.errors import NonFiniteError
from refdns.nets.sequential import NetSpec, backward, error_rate, forward, init_params
from refdns.layers import softmax_cross_entropy
from refdns.optim import SGDConfig, sgd_step, zeros_like_params
from refdns.prune.base import MaskUpdate, PruningMethod, all_ones_masks


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train; defaults are Caffe's MNIST recipe (10,000 iterations at batch 64)."""

    iterations: int = 10_000
    batch_size: int = 64
    test_interval: int = 1_000
    display_interval: int = 100
    sgd: SGDConfig = field(default_factory=SGDConfig)

    def __post_init__(self):
        check_number("iterations", self.iterations, lo=0, integer=True)
        check_number("batch_size", self.batch_size, lo=1, integer=True)
        check_number("test_interval", self.test_interval, lo=0, integer=True)
        check_number("display_interval", self.display_interval, lo=1, integer=True)
        if isinstance(self.sgd, dict):
            object.__setattr__(self, "sgd", SGDConfig(**self.sgd))
        if not isinstance(self.sgd, SGDConfig):
            raise TypeError(f"sgd must be an SGDConfig, got {type(self.sgd).__name__}")


class BatchStream:
    """Seeded shuffled mini-batches that wrap across epochs, like Caffe's data layer reading on and on.

    State is ``(perm, pos)`` plus the generator, all saved in checkpoints for bit-exact resume.
    """

    def __init__(self, n: int, batch_size: int, *, rng: np.random.Generator):
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} is larger than the {n} training examples")
        self.n = n
        self.batch_size = batch_size
        self.rng = rng
        self.perm = rng.permutation(n)
        self.pos = 0

    def next_indices(self) -> np.ndarray:
        end = self.pos + self.batch_size
        if end <= self.n:
            idx = self.perm[self.pos : end]
            self.pos = end
            return idx
        head = self.perm[self.pos :]
        self.perm = self.rng.permutation(self.n)
        self.pos = self.batch_size - len(head)
        return np.concatenate([head, self.perm[: self.pos]])


@dataclass
class History:
    """What a run leaves behind, besides its parameters."""

    loss: list[tuple[int, float]] = field(default_factory=list)  # (iteration, training loss)
    lr: list[tuple[int, float]] = field(default_factory=list)
    test_error: list[tuple[int, float]] = field(default_factory=list)
    mask_updates: list[MaskUpdate] = field(default_factory=list)  # one per layer update


@dataclass
class RunState:
    """Everything that determines the future of a run (and what a checkpoint stores)."""

    spec: NetSpec
    params: dict[str, np.ndarray]
    velocity: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    iteration: int
    data: BatchStream
    mask_rng: np.random.Generator
    method_state: dict[str, np.ndarray] = field(default_factory=dict)
    history: History = field(default_factory=History)
    seed: int | None = None
    # Per-run scratch (buffers, sparse index structures), rebuilt on demand; not state, never saved.
    workspace: EffectiveParams | None = field(default=None, repr=False, compare=False)


def new_run(
    spec: NetSpec,
    n_train: int,
    cfg: TrainConfig,
    *,
    seed: int,
    params: dict[str, np.ndarray] | None = None,
    masks: dict[str, np.ndarray] | None = None,
    dtype=np.float32,
) -> RunState:
    """A fresh run: params from Caffe xavier init (or the given ones, copied), zero velocity.

    The seed's generator is split with ``spawn`` into three independent streams: initialisation, data order
    and mask draws, so (for example) a different init never changes the batch order.
    """
    init_rng, data_rng, mask_rng = np.random.default_rng(seed).spawn(3)
    if params is None:
        params = init_params(spec, rng=init_rng, dtype=dtype)
    else:
        params = {k: np.array(v, dtype=dtype, copy=True) for k, v in params.items()}
    masks = all_ones_masks(params) if masks is None else {k: np.array(m, dtype=bool) for k, m in masks.items()}
    return RunState(
        spec=spec,
        params=params,
        velocity=zeros_like_params(params),
        masks=masks,
        iteration=0,
        data=BatchStream(n_train, cfg.batch_size, rng=data_rng),
        mask_rng=mask_rng,
        seed=seed,
    )


def effective_params(params: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``W * T`` for every parameter (a fresh array; ``params`` is untouched)."""
    return {k: params[k] * masks[k] if not masks[k].all() else params[k] for k in params}


def train_step(
    state: RunState,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    method: PruningMethod,
    *,
    trace: dict[str, Any] | None = None,
) -> tuple[float, float]:
    """One iteration on one batch; returns (loss, lr). Updates ``state`` in place.

    ``trace``, when given, is filled with copies of this step's intermediates (mask-update records, the
    masks used by the forward pass, every op's output, dL/dW_eff before the method touches it); the golden
    traces of :mod:`refdns.golden` are written from it, so they record exactly what this function does.
    """
    it = state.iteration
    records = method.update_masks(it, state.params, state.masks, state.method_state, state.mask_rng)
    if records:
        state.history.mask_updates.extend(records)
    if state.workspace is None:
        state.workspace = EffectiveParams(state.spec)
    w_eff = state.workspace(state.params, state.masks)  # W * T: dense buffer or sparse, by density
    logits, cache = forward(state.spec, w_eff, x, keep_outputs=trace is not None)
    loss, dlogits = softmax_cross_entropy(logits, y)
    loss = float(loss)
    if not math.isfinite(loss):
        raise NonFiniteError(
            f"training loss became {loss} at iteration {it}; lower base_lr or check the input data",
            step=it,
            where="loss",
        )
    grads = backward(state.spec, dlogits, cache)
    if trace is not None:
        trace.update(records=records, masks={k: m.copy() for k, m in state.masks.items()},
                     activations=[np.array(o, copy=True) for o in cache.outputs], loss=loss,
                     grads={k: g.copy() for k, g in grads.items()})
    if not method.grad_through_mask:
        for k, g in grads.items():
            g *= state.masks[k]
    lr = sgd_step(cfg.sgd, state.params, grads, state.velocity, method.lr_iteration(it))
    if not method.grad_through_mask:
        for k, m in state.masks.items():
            state.velocity[k] *= m
            state.params[k] *= m
    state.iteration = it + 1
    return loss, lr


def evaluate(state: RunState, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 test error (fraction) of the masked net."""
    return error_rate(state.spec, effective_params(state.params, state.masks), x, y)


def train(
    state: RunState,
    x_train: np.ndarray,
    y_train: np.ndarray,
    cfg: TrainConfig,
    *,
    method: PruningMethod | None = None,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    until: int | None = None,
    on_step: Callable[[RunState, float, float], None] | None = None,
    on_test: Callable[[RunState, float], None] | None = None,
) -> RunState:
    """Train until ``state.iteration == until`` (default ``cfg.iterations``); test every ``test_interval``.

    ``on_step(state, loss, lr)`` and ``on_test(state, test_error)`` let a caller (the CLI) show progress;
    this module never prints. The test error at the last iteration is always measured when test data is
    given.
    """
    method = method or PruningMethod()
    until = cfg.iterations if until is None else until
    if state.iteration == 0 and not state.method_state:
        state.method_state = method.init_state(state.spec, state.params)
    have_test = x_test is not None and y_test is not None
    while state.iteration < until:
        idx = state.data.next_indices()
        loss, lr = train_step(state, x_train[idx], y_train[idx], cfg, method)
        it = state.iteration  # iterations completed
        if it % cfg.display_interval == 0 or it == until:
            state.history.loss.append((it, loss))
            state.history.lr.append((it, lr))
        if on_step is not None:
            on_step(state, loss, lr)
        if have_test and ((cfg.test_interval and it % cfg.test_interval == 0) or it == until):
            err = evaluate(state, x_test, y_test)
            state.history.test_error.append((it, err))
            if on_test is not None:
                on_test(state, err)
    return state


def timed(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
