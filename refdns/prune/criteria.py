"""Criteria that score whole units (conv filters, dense neurons): pure functions, higher = more important.

Each takes the unit's activation ``a`` on a batch, shape (N, F, ...) (F units, any trailing spatial axes;
from :func:`refdns.prune.units.unit_activations`), its gradient ``da = dL/da``, or the layer's weight ``w``
(F, ...), and returns one score per unit, shape (F,), float64. A structured method removes the units of
lowest score. The activation is the map the next layer reads (after the layer's ReLU and pooling, before any
flatten); the papers score the same thing, the feature map a filter produces.

* random: a uniform draw, the control (Mittal et al., "Recovering from Random Pruning", WACV 2018);
* mean activation: ``mean_{n, m} a_{n, j, m}`` (the baseline in Molchanov et al. 2017 and Mittal et al.);
* APoZ (Hu, Peng, Tai, Tang, "Network Trimming", 2016, eq. (1)):
  ``APoZ_j = sum_n sum_m f(O_{n,j,m} = 0) / (N M)``, f = 1 if true else 0: the fraction of zero outputs after
  the ReLU. Units with *high* APoZ are removed, so the score is ``1 - APoZ``. A layer with no ReLU after it
  (Caffe LeNet-5's convolutions) is scored by the outputs a ReLU would zero (a <= 0);
* entropy (Luo & Wu, "An Entropy-based Pruning Method for CNN Compression", 2017): global average
  pooling gives one value per image and unit, ``v_{n,j} = mean_m a_{n,j,m}``; its histogram over the batch in
  ``bins`` equal bins gives p_i, and ``H_j = - sum_i p_i log p_i``; a unit whose output hardly varies carries
  little information;
* scaled entropy: refdns's reading of the "scaled entropy" criterion Mittal et al. compare, the entropy
  weighted by the unit's mean absolute activation, ``H_j * mean_{n,m} |a_{n,j,m}|`` (entropy is scale-free:
  a unit whose output varies but is tiny scores high on H alone);
* l1-norm (Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017, Sec. 3.1):
  ``s_j = sum |F_j|``, the sum of absolute weights of filter (or neuron) j; needs no data;
* Taylor (Molchanov, Tyree, Karras, Aila, Kautz, "Pruning Convolutional Neural Networks for Resource
  Efficient Inference", ICLR 2017, the criterion Theta_TE): ``Theta_j = | (1/M) sum_m dC/dz_{j,m}
  z_{j,m} |`` per image,
  averaged over the N images of the batch, then their per-layer l2 normalisation,
  ``Theta_j / sqrt(sum_j' Theta_j'^2)``;
* sensitivity (one-shot; issue 14's definition): the increase of the batch's mean cross-entropy when unit j
  alone is removed (its output zeroed), everything else unchanged, ``s_j = L(W with unit j removed) - L(W)``.
  This is the oracle ranking of Molchanov et al. (2017, Sec. 2.2; every feature map removed in turn and the
  change in cost recorded), signed as in their "oracle-loss" variant (a unit whose removal lowers the loss
  goes first; their "oracle-abs" takes the absolute change), and Li et al. (2017, Sec. 4.1)'s sensitivity
  analysis done one unit at a time. It needs the net, not a map: the losses come from
  :func:`refdns.prune.units.unit_ablation_losses`.
"""

from __future__ import annotations

import numpy as np

ACTIVATION_CRITERIA = ("mean_activation", "apoz", "entropy", "scaled_entropy", "taylor")
# Criteria that score a batch of training data: the activation ones, and sensitivity (losses of the net).
DATA_CRITERIA = ACTIVATION_CRITERIA + ("sensitivity",)
CRITERIA = ("random", "l1") + DATA_CRITERIA


def _per_unit(a: np.ndarray) -> np.ndarray:
    """(N, F, ...) -> (N, F, M) float64, M the spatial size (1 for a dense layer)."""
    if a.ndim < 2:
        raise ValueError(f"activations must have shape (N, F, ...), got {a.shape}")
    return a.astype(np.float64).reshape(a.shape[0], a.shape[1], -1)


def random_scores(n_units: int, *, rng: np.random.Generator) -> np.ndarray:
    """A uniform score per unit: removing the lowest is removing a uniform random subset."""
    return rng.random(n_units)


def mean_activation(a: np.ndarray) -> np.ndarray:
    """``mean_{n, m} a_{n, j, m}`` per unit j."""
    return _per_unit(a).mean(axis=(0, 2))


def apoz(a: np.ndarray) -> np.ndarray:
    """Hu et al. eq. (1): the average percentage of zeros of unit j's output, ``APoZ_j`` in [0, 1]."""
    return (_per_unit(a) <= 0).mean(axis=(0, 2))


def apoz_score(a: np.ndarray) -> np.ndarray:
    """``1 - APoZ_j``: higher = more important (Hu et al. remove the units of highest APoZ)."""
    return 1.0 - apoz(a)


def entropy(a: np.ndarray, bins: int = 100) -> np.ndarray:
    """Luo & Wu: entropy (nats) of the histogram of unit j's globally average-pooled outputs.

    The histogram spans the unit's own range over the batch in ``bins`` equal bins; a constant unit has
    entropy 0.
    """
    v = _per_unit(a).mean(axis=2)  # (N, F) global average pooling
    out = np.empty(v.shape[1])
    for j in range(v.shape[1]):
        counts, _ = np.histogram(v[:, j], bins=bins)
        p = counts[counts > 0] / v.shape[0]
        out[j] = float(-(p * np.log(p)).sum())
    return out


def scaled_entropy(a: np.ndarray, bins: int = 100) -> np.ndarray:
    """``H_j * mean |a_j|``: the entropy weighted by the size of the unit's output (see module docstring)."""
    return entropy(a, bins) * np.abs(_per_unit(a)).mean(axis=(0, 2))


def l1_norm(w: np.ndarray) -> np.ndarray:
    """Li et al. Sec. 3.1: ``s_j = sum |F_j|`` per filter (conv, (F, C, K, K)) or neuron (dense, (M, D))."""
    return np.abs(w.astype(np.float64)).reshape(w.shape[0], -1).sum(axis=1)


def taylor(a: np.ndarray, da: np.ndarray) -> np.ndarray:
    """Molchanov et al.'s Theta_TE averaged over the batch, then l2-normalised over the layer's units."""
    if a.shape != da.shape:
        raise ValueError(f"a {a.shape} and da {da.shape} must have the same shape")
    theta = np.abs((_per_unit(a) * _per_unit(da)).mean(axis=2)).mean(axis=0)  # (F,)
    norm = np.sqrt((theta * theta).sum())
    return theta / norm if norm > 0 else theta


def sensitivity(loss_removed: np.ndarray, loss: float) -> np.ndarray:
    """One-shot sensitivity, ``s_j = L(W with unit j removed) - L(W)``: the rise of the batch's mean loss.

    Molchanov et al. 2017's oracle (signed, "oracle-loss"); ``loss_removed[j]`` is L with unit j removed
    (:func:`refdns.prune.units.unit_ablation_losses`), ``loss`` the intact net's L on the same batch.
    """
    return np.asarray(loss_removed, dtype=np.float64) - float(loss)


def unit_scores(criterion: str, *, w=None, a=None, da=None, bins: int = 100, rng=None,
                loss_removed=None, loss=None) -> np.ndarray:
    """The scores of one layer's units under ``criterion`` (one of :data:`CRITERIA`)."""
    if criterion == "random":
        return random_scores(w.shape[0], rng=rng)
    if criterion == "l1":
        return l1_norm(w)
    if criterion == "mean_activation":
        return mean_activation(a)
    if criterion == "apoz":
        return apoz_score(a)
    if criterion == "entropy":
        return entropy(a, bins)
    if criterion == "scaled_entropy":
        return scaled_entropy(a, bins)
    if criterion == "taylor":
        return taylor(a, da)
    if criterion == "sensitivity":
        return sensitivity(loss_removed, loss)
    raise ValueError(f"criterion={criterion!r} must be one of {CRITERIA}")
