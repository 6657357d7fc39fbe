"""Dense-Sparse-Dense training: prune by magnitude, train sparse, then re-open every connection.

Han, Pool, Narang, Mao, Gong, Tang, Elsen, Vajda, Paluri, Tran, Catanzaro, Dally, "DSD: Dense-Sparse-Dense
Training for Deep Neural Networks", ICLR 2017, sec. 2 (Algorithm 1):

- D: train dense (refdns's dense phase);
- S: "prune the low-weight connections ... the weights with small magnitude ... by the sparsity ratio"
  (per layer, the paper uses 30-50 %), then retrain with the mask fixed; here the S phase is one-shot
  per-layer magnitude pruning (:mod:`refdns.prune.magnitude`) held fixed by Han's rule (masked gradient
  and momentum, pruned weights exactly 0);
- D: "remove the sparsity constraint ... the pruned connections are re-initialized as zero" and retrain
  the whole net "with 1/10 of the original learning rate".

Not a mask-update rule but a schedule of two phases, so it is no :class:`~refdns.prune.base.PruningMethod`
of its own; :func:`refdns.pipeline.run_dsd` runs it, and with ``masked=False`` the fair control: the
same two phases (lengths, learning rates, batch order) without the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refdns.config import check_number
from refdns.errors import ConfigError
from refdns.nets.sequential import NetSpec
from refdns.prune.magnitude import Magnitude, MagnitudeConfig


@dataclass(frozen=True)
class DSDConfig:
    """The S and final D phases after a dense phase.

    ``sparsity`` is the fraction of every layer's weights pruned in the S phase (biases are kept);
    ``redense_lr_factor`` multiplies the S phase's base learning rate in the final D phase (the paper's 1/10).
    """

    sparsity: float = 0.3
    sparse_iterations: int = 5_000
    redense_iterations: int = 5_000
    redense_lr_factor: float = 0.1

    def __post_init__(self):
        check_number("sparsity", self.sparsity, lo=0.0, hi=1.0)
        if self.sparsity == 1.0:
            raise ConfigError("sparsity=1.0 would prune every weight: the S phase needs some left")
        check_number("sparse_iterations", self.sparse_iterations, lo=0, integer=True)
        check_number("redense_iterations", self.redense_iterations, lo=0, integer=True)
        check_number("redense_lr_factor", self.redense_lr_factor, lo=0.0, lo_open=True)


def sparse_phase_method(spec: NetSpec, cfg: DSDConfig) -> Magnitude:
    """The S phase's pruning: every layer keeps its ``1 - sparsity`` largest-magnitude weights, held fixed."""
    densities = {name: 1.0 - cfg.sparsity for name in spec.layer_names}
    return Magnitude(MagnitudeConfig(densities=densities, scope="layer",
                                     retrain_iterations=cfg.sparse_iterations))


def release(params: dict[str, np.ndarray], masks: dict[str, np.ndarray]
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The final D phase's start: every connection back, the pruned ones at exactly 0 (new arrays).

    Returns ``(params * masks, all-ones masks)``.
    """
    out = {k: np.where(masks[k], w, np.zeros((), dtype=w.dtype)) for k, w in params.items()}
    return out, {k: np.ones(w.shape, dtype=bool) for k, w in params.items()}
