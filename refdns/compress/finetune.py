"""Trained quantization: fine-tuning the shared centroids with the mask fixed.

Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
Huffman Coding", ICLR 2016, sec. 3 and Fig. 3: after weight sharing every kept weight is tied to its
centroid, ``W_ij = C_{I_ij}``; the forward and backward passes run on the shared weights, "the gradients
are grouped by color and summed together, multiplied by the learning rate and subtracted from the shared
centroids from last iteration", eq. (3):

    dL/dC_k = sum_{i,j} dL/dW_ij 1(I_ij = k)

The cluster assignment ``I`` and the mask stay fixed; only the codebooks (and the raw biases, which the
paper does not share) change. The training engine's forward and backward (:mod:`refdns.nets.sequential`)
give dL/dW for the shared weights; :func:`~refdns.compress.shared.centroid_grad` sums them per centroid.

The update is Caffe's SGD with momentum (:mod:`refdns.optim`), applied to the codebooks:

    diff_k = dL/dC_k + weight_decay * n_k * C_k          n_k = members of cluster k
    v_k    = momentum * v_k + lr * diff_k
    C_k   -= v_k

The decay term is the gradient of the L2 penalty ``weight_decay / 2 * sum_ij W_ij^2`` of the tied weights
(eq. (3) applied to the penalty as to the loss), so fine-tuning minimises the same objective the net was
trained on. Because a centroid's gradient is a sum over its n_k members, its step is n_k times a single
weight's: fine-tuning wants a base learning rate below the training one (validate/deep_compression.py uses
1e-3, fixed, on LeNet-300-100; at 1e-2 the DNS net's test error went from 2.2% to 2.7% in 500 iterations).
Biases train as in Han's retraining: masked gradient, Caffe's bias multipliers, pruned biases untouched.

Centroids may cross each other while training; the file stores the codebook as it is, so nothing needs
them sorted afterwards.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from refdns.compress.quantize import QuantizedLayer
from refdns.compress.shared import centroid_grad
from refdns.errors import CompressError, NonFiniteError
from refdns.kernels.sgd import sgd_update
from refdns.layers import softmax_cross_entropy
from refdns.nets.sequential import NetSpec, backward, check_params, error_rate, forward
from refdns.optim import SGDConfig, learning_rate, multipliers
from refdns.run import BatchStream, TrainConfig


@dataclasses.dataclass
class CentroidState:
    """What fine-tuning changes: a codebook and a bias per layer, with their momentum histories.

    The ties (cluster indices, masks) stay in the :class:`QuantizedLayer` tuple it was made from.
    """

    codebooks: dict[str, np.ndarray]  # layer -> (K,) float32 (float64 for gradient checks)
    biases: dict[str, np.ndarray]  # layer -> (M,) raw bias, dtype of the codebook
    v_codebooks: dict[str, np.ndarray]
    v_biases: dict[str, np.ndarray]
    iteration: int = 0

    @classmethod
    def from_layers(cls, layers: Sequence[QuantizedLayer], dtype=np.float32) -> CentroidState:
        cb = {la.name: la.codebook.astype(dtype) for la in layers}
        b = {la.name: la.bias.astype(dtype) for la in layers}
        zeros = {k: np.zeros_like(v) for k, v in cb.items()}
        return cls(cb, b, zeros, {k: np.zeros_like(v) for k, v in b.items()})


def tied_params(layers: Sequence[QuantizedLayer], state: CentroidState) -> dict[str, np.ndarray]:
    """Effective parameters of the tied net: ``W[mask] = C[I]`` (0 elsewhere), ``b * bias_mask``."""
    params: dict[str, np.ndarray] = {}
    for la in layers:
        cb = state.codebooks[la.name]
        w = np.zeros(la.shape, dtype=cb.dtype)
        w[la.mask] = cb[la.indices]  # row-major fill, the order of the indices
        params[f"{la.name}.weight"] = w
        params[f"{la.name}.bias"] = state.biases[la.name] * la.bias_mask
    return params


def centroid_loss_and_grads(spec: NetSpec, layers: Sequence[QuantizedLayer], state: CentroidState,
                            x: np.ndarray, y: np.ndarray
                            ) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Cross-entropy of a batch and its gradient w.r.t. every centroid (eq. (3)) and every kept bias.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), dtype of the codebooks
    y : ndarray, shape (N,), int64

    Returns
    -------
    loss : float
    dcodebooks : dict {layer: ndarray, shape (K,)}
    dbiases : dict {layer: ndarray, shape (M,)}, 0 at pruned biases
    """
    params = tied_params(layers, state)
    logits, cache = forward(spec, params, x)
    loss, dlogits = softmax_cross_entropy(logits, y)
    grads = backward(spec, dlogits, cache)  # dL/dW for the shared weights
    dc = {la.name: centroid_grad(grads[f"{la.name}.weight"], la.indices, la.mask, la.n_clusters)
          for la in layers}
    db = {la.name: grads[f"{la.name}.bias"] * la.bias_mask for la in layers}
    return float(loss), dc, db


def centroid_step(spec: NetSpec, layers: Sequence[QuantizedLayer], state: CentroidState, x: np.ndarray,
                  y: np.ndarray, sgd: SGDConfig, *, train_bias: bool = True) -> tuple[float, float]:
    """One SGD-with-momentum step on the codebooks (and kept biases); in place on ``state``.

    Returns ``(loss, lr)``. Raises NonFiniteError when the loss is NaN or Inf.
    """
    it = state.iteration
    loss, dc, db = centroid_loss_and_grads(spec, layers, state, x, y)
    if not math.isfinite(loss):
        raise NonFiniteError(f"centroid fine-tuning loss became {loss} at iteration {it}; lower base_lr",
                             step=it, where="loss")
    lr = learning_rate(sgd, it)
    for la in layers:
        c = state.codebooks[la.name]
        n_k = np.bincount(la.indices, minlength=la.n_clusters).astype(c.dtype)
        # Weight decay of the tied weights, summed per centroid like the loss gradient: wd * n_k * C_k.
        g = (dc[la.name] + sgd.weight_decay * n_k * c).astype(c.dtype)
        sgd_update(c, g, state.v_codebooks[la.name], decay=0.0, scale=lr, momentum=sgd.momentum)
        if train_bias:
            lr_mult, decay_mult = multipliers(sgd, f"{la.name}.bias")
            b, v = state.biases[la.name], state.v_biases[la.name]
            b_new, v_new = b.copy(), v.copy()
            sgd_update(b_new, db[la.name], v_new, decay=sgd.weight_decay * decay_mult, scale=lr * lr_mult,
                       momentum=sgd.momentum)
            keep = la.bias_mask
            b[keep], v[keep] = b_new[keep], v_new[keep]  # pruned biases stay as they are (Han's rule)
    state.iteration = it + 1
    return loss, lr


def layers_from_state(layers: Sequence[QuantizedLayer], state: CentroidState) -> tuple[QuantizedLayer, ...]:
    """The quantised layers with the fine-tuned codebooks and biases (ties unchanged), float32."""
    return tuple(dataclasses.replace(la, codebook=state.codebooks[la.name].astype(np.float32),
                                     bias=state.biases[la.name].astype(np.float32)) for la in layers)


def finetune_centroids(spec: NetSpec, layers: Sequence[QuantizedLayer], x_train: np.ndarray,
                       y_train: np.ndarray, cfg: TrainConfig, *, rng: np.random.Generator,
                       train_bias: bool = True, x_test: np.ndarray | None = None,
                       y_test: np.ndarray | None = None, on_test: Callable[[int, float], None] | None = None
                       ) -> tuple[tuple[QuantizedLayer, ...], list[tuple[int, float]]]:
    """Deep Compression's trained quantization: ``cfg.iterations`` SGD steps on the centroids.

    Parameters
    ----------
    spec : NetSpec
    layers : sequence of QuantizedLayer
        From :func:`refdns.compress.quantize.quantize_net`, one per parametric layer of ``spec``.
    x_train, y_train : training images (N, C, H, W) float32 and labels (N,) int64
    cfg : TrainConfig
        Iterations, batch size, test interval and the solver (lr policy, momentum, weight decay).
    rng : np.random.Generator
        Draws the batch order.
    train_bias : bool
        Also train the kept biases (they are not shared).
    x_test, y_test : optional test set, evaluated every ``cfg.test_interval`` iterations and at the end.
    on_test : callable (iteration, test_error), optional

    Returns
    -------
    layers : tuple of QuantizedLayer
        Same ties and masks, fine-tuned codebooks (and biases).
    test_error : list of (iteration, error)
    """
    layers = tuple(layers)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    state = CentroidState.from_layers(layers)
    try:
        check_params(spec, tied_params(layers, state))
    except ValueError as e:
        raise CompressError(f"the quantised layers do not fit {spec.name}: {e}") from None
    batches = BatchStream(len(x_train), cfg.batch_size, rng=rng)
    history: list[tuple[int, float]] = []
    have_test = x_test is not None and y_test is not None
    while state.iteration < cfg.iterations:
        idx = batches.next_indices()
        centroid_step(spec, layers, state, x_train[idx], y_train[idx], cfg.sgd, train_bias=train_bias)
        it = state.iteration
        if have_test and ((cfg.test_interval and it % cfg.test_interval == 0) or it == cfg.iterations):
            err = error_rate(spec, tied_params(layers, state), x_test, y_test)
            history.append((it, err))
            if on_test is not None:
                on_test(it, err)
    return layers_from_state(layers, state), history
