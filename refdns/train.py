"""The training loop: Caffe's SGD on a refdns net, with an optional pruning method.

One iteration, in Caffe's order::

    masks <- method.update_masks(iter, W, masks)      # DNS: before the forward pass
    W_eff  = W * masks                                 # refdns.effective: dense or sparse, by density
    loss, dL/dW_eff = forward/backward(W_eff, batch)
    dL/dW_eff += method.penalty_grads(iter, W, masks)  # a method's own penalty (SSL's group lasso), if any
    g      = dL/dW_eff                 if method.grad_through_mask   (DNS eq. (2): every entry of W)
           = dL/dW_eff * masks         otherwise                     (Han: pruned entries stay 0)
    SGD step (weight decay, momentum) on all of W
    velocity *= masks, W *= masks      only when not grad_through_mask

The run itself (its state, batch order and random streams, all fixed by its seed) lives in :mod:`refdns.run`;
this module only advances it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from refdns.effective import EffectiveParams
from refdns.errors import NonFiniteError
from refdns.layers import Workspace, softmax_cross_entropy
from refdns.nets.sequential import backward, error_rate, forward
from refdns.optim import sgd_step
from refdns.prune.base import PruningMethod
from refdns.run import RunState, TrainConfig, effective_params


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
    if state.scratch is None:
        state.scratch = Workspace()
    # Activations, caches and gradients live in the run's buffers: a step allocates no new memory.
    logits, cache = forward(state.spec, w_eff, x, keep_outputs=trace is not None, ws=state.scratch)
    loss, dlogits = softmax_cross_entropy(logits, y)
    loss = float(loss)
    if not math.isfinite(loss):
        raise NonFiniteError(
            f"training loss became {loss} at iteration {it}; lower base_lr or check the input data",
            step=it,
            where="loss",
        )
    grads = backward(state.spec, dlogits, cache, ws=state.scratch)
    if trace is not None:
        trace.update(records=records, masks={k: m.copy() for k, m in state.masks.items()},
                     activations=[np.array(o, copy=True) for o in cache.outputs], loss=loss,
                     grads={k: g.copy() for k, g in grads.items()})
    extra = method.penalty_grads(it, state.params, state.masks)
    if extra:
        for k, g in extra.items():
            grads[k] += g
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


def _batch(state: RunState, x_train: np.ndarray, y_train: np.ndarray, idx: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(x_train[idx], y_train[idx])`` gathered into the run's buffers (no new memory per step)."""
    if state.scratch is None:
        state.scratch = Workspace()
    xb = state.scratch.take("batch.x", (len(idx),) + x_train.shape[1:], x_train.dtype)
    yb = state.scratch.take("batch.y", (len(idx),) + y_train.shape[1:], y_train.dtype)
    # mode="clip" only because NumPy buffers ``out`` under the default mode="raise" (a fresh copy each
    # call); the indices come from the run's permutation and are always in range.
    np.take(x_train, idx, axis=0, out=xb, mode="clip")
    np.take(y_train, idx, axis=0, out=yb, mode="clip")
    return xb, yb


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
    should_stop: Callable[[], bool] | None = None,
) -> RunState:
    """Train until ``state.iteration == until`` (default ``cfg.iterations``); test every ``test_interval``.

    ``should_stop()``, checked after each whole iteration, ends the run early (Ctrl-C, see
    :func:`refdns.pipeline.continue_training`).
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
        x, y = _batch(state, x_train, y_train, state.data.next_indices())
        loss, lr = train_step(state, x, y, cfg, method)
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
        if should_stop is not None and should_stop():
            break  # between iterations: the state is whole, and a checkpoint of it resumes exactly
    return state
