"""Caffe's SGD solver: momentum, L2 weight decay, learning-rate policies, per-parameter lr multipliers.

Caffe's update (sgd_solver.cpp), for every parameter blob with multipliers ``lr_mult`` and ``decay_mult``::

    diff  += weight_decay * decay_mult * w          # Regularize
    v      = momentum * v + lr * lr_mult * diff      # ComputeUpdateValue
    w     -= v                                       # Update

The learning rate sits inside the velocity (not PyTorch's ``w -= lr * v``); with a changing rate the two
differ, and refdns follows Caffe. Policy "inv": ``lr = base_lr * (1 + gamma * iter) ** (-power)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.kernels.sgd import sgd_update

LR_POLICIES = ("inv", "fixed", "step")


@dataclass(frozen=True)
class SGDConfig:
    """Solver settings; defaults are Caffe's MNIST LeNet solver (lenet_solver.prototxt)."""

    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_policy: str = "inv"
    gamma: float = 1e-4
    power: float = 0.75
    stepsize: int = 10_000
    bias_lr_mult: float = 2.0
    bias_decay_mult: float = 1.0

    def __post_init__(self):
        check_number("base_lr", self.base_lr, lo=0.0, lo_open=True)
        check_number("momentum", self.momentum, lo=0.0, hi=1.0)
        check_number("weight_decay", self.weight_decay, lo=0.0)
        if self.lr_policy not in LR_POLICIES:
            raise ConfigError(f"lr_policy={self.lr_policy!r} must be one of {LR_POLICIES}")
        check_number("gamma", self.gamma, lo=0.0)
        check_number("power", self.power, lo=0.0)
        check_number("stepsize", self.stepsize, lo=1, integer=True)
        check_number("bias_lr_mult", self.bias_lr_mult, lo=0.0)
        check_number("bias_decay_mult", self.bias_decay_mult, lo=0.0)


def learning_rate(cfg: SGDConfig, iteration: int) -> float:
    """The rate Caffe uses at ``iteration`` (0-based, read before the update of that iteration)."""
    if cfg.lr_policy == "inv":
        return cfg.base_lr * (1.0 + cfg.gamma * iteration) ** (-cfg.power)
    if cfg.lr_policy == "step":
        return cfg.base_lr * cfg.gamma ** (iteration // cfg.stepsize)
    return cfg.base_lr


def multipliers(cfg: SGDConfig, key: str) -> tuple[float, float]:
    """(lr_mult, decay_mult) of a parameter key: biases get Caffe's second ``param {}`` block."""
    if key.endswith(".bias"):
        return cfg.bias_lr_mult, cfg.bias_decay_mult
    return 1.0, 1.0


def sgd_step(
    cfg: SGDConfig,
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    velocity: dict[str, np.ndarray],
    iteration: int,
) -> float:
    """One Caffe SGD update, in place on ``params`` and ``velocity``; ``grads`` is consumed (may be overwritten).

    Returns the learning rate used.
    """
    lr = learning_rate(cfg, iteration)
    for key, w in params.items():
        lr_mult, decay_mult = multipliers(cfg, key)
        # diff += wd * w;  v = m v + lr * diff;  w -= v  -- one fused pass, bit-identical to the NumPy lines
        # (kernels/sgd.py keeps them as its twin).
        sgd_update(w, grads[key], velocity[key], decay=cfg.weight_decay * decay_mult, scale=lr * lr_mult,
                   momentum=cfg.momentum)
    return lr


def zeros_like_params(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.zeros_like(v) for k, v in params.items()}
