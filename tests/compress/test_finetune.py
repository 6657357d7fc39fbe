"""Centroid fine-tuning (Deep Compression eq. (3)) through the training engine: one step by hand, the
gradient by central differences, and the ties and mask left exactly as they were."""

from __future__ import annotations

import numpy as np
import pytest

from refdns.compress import dequantize_net, quantize_net, read_rdc, write_rdc
from refdns.compress.finetune import (
    CentroidState,
    centroid_loss_and_grads,
    centroid_step,
    finetune_centroids,
    tied_params,
)
from refdns.errors import CompressError, NonFiniteError
from refdns.layers import softmax_cross_entropy
from refdns.nets import backward, forward, get_spec, init_params
from refdns.optim import SGDConfig
from refdns.run import TrainConfig
from tests.compress.test_shared import TINY
from tests.gradcheck import numerical_gradient, rel_error
from tests.tolerances import GRADCHECK_RTOL

BITS = {"c1": 2, "f1": 3, "f2": 2}


def tiny_problem(rng, n=6):
    params = init_params(TINY, rng=rng)
    for k in params:
        params[k] = (rng.standard_normal(params[k].shape) * 0.5).astype(np.float32)
    masks = {k: rng.random(v.shape) < 0.7 for k, v in params.items()}
    layers = quantize_net(TINY, params, masks, bits=BITS)
    x = rng.standard_normal((n, *TINY.input_shape))  # float64
    y = rng.integers(0, TINY.n_classes, size=n)
    return layers, x, y


def test_two_steps_equal_the_hand_computation(rng):
    """Caffe's momentum SGD on sum-of-member gradients plus wd * n_k * C_k; biases by Han's masked rule."""
    layers, x, y = tiny_problem(rng)
    sgd = SGDConfig(base_lr=0.05, momentum=0.9, weight_decay=5e-3, lr_policy="inv")
    state = CentroidState.from_layers(layers, dtype=np.float64)
    cb = {la.name: la.codebook.astype(np.float64) for la in layers}
    b = {la.name: la.bias.astype(np.float64) for la in layers}
    vc = {k: np.zeros_like(v) for k, v in cb.items()}
    vb = {k: np.zeros_like(v) for k, v in b.items()}
    for it in range(2):
        # by hand: the shared net, its engine gradient dL/dW, members summed one by one
        p = {}
        for la in layers:
            w = np.zeros(la.shape)
            for pos, k in zip(np.argwhere(la.mask), la.indices, strict=True):
                w[tuple(pos)] = cb[la.name][k]
            p[f"{la.name}.weight"], p[f"{la.name}.bias"] = w, b[la.name] * la.bias_mask
        logits, cache = forward(TINY, p, x)
        _, dlogits = softmax_cross_entropy(logits, y)
        grads = backward(TINY, dlogits, cache)
        lr = 0.05 * (1 + 1e-4 * it) ** -0.75
        for la in layers:
            dw = grads[f"{la.name}.weight"]
            g = np.zeros(la.n_clusters)
            for pos, k in zip(np.argwhere(la.mask), la.indices, strict=True):
                g[k] += dw[tuple(pos)] + 5e-3 * cb[la.name][k]  # loss and decay of each member weight
            vc[la.name] = 0.9 * vc[la.name] + lr * g
            cb[la.name] = cb[la.name] - vc[la.name]
            db = grads[f"{la.name}.bias"] + 5e-3 * b[la.name]
            new_v = 0.9 * vb[la.name] + 2 * lr * db  # Caffe's bias lr_mult 2
            vb[la.name] = np.where(la.bias_mask, new_v, vb[la.name])
            b[la.name] = np.where(la.bias_mask, b[la.name] - new_v, b[la.name])
        centroid_step(TINY, layers, state, x, y, sgd)
        for la in layers:
            np.testing.assert_allclose(state.codebooks[la.name], cb[la.name], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(state.biases[la.name], b[la.name], rtol=1e-12, atol=1e-14)
    assert state.iteration == 2
    moved = [not np.allclose(state.codebooks[la.name], la.codebook) for la in layers]
    assert all(moved)


def test_engine_centroid_gradient_matches_central_differences(rng):
    layers, x, y = tiny_problem(rng)
    state = CentroidState.from_layers(layers, dtype=np.float64)
    _, dc, db = centroid_loss_and_grads(TINY, layers, state, x, y)
    for la in layers:
        def f_c(c, name=la.name):
            s = CentroidState({**state.codebooks, name: c}, state.biases, state.v_codebooks, state.v_biases)
            return centroid_loss_and_grads(TINY, layers, s, x, y)[0]

        def f_b(bias, name=la.name):
            s = CentroidState(state.codebooks, {**state.biases, name: bias}, state.v_codebooks,
                              state.v_biases)
            return centroid_loss_and_grads(TINY, layers, s, x, y)[0]

        numeric = numerical_gradient(f_c, state.codebooks[la.name])
        assert np.abs(dc[la.name]).max() > 1e-3
        assert rel_error(dc[la.name], numeric) < GRADCHECK_RTOL, la.name
        numeric_b = numerical_gradient(f_b, state.biases[la.name])
        assert rel_error(db[la.name], numeric_b) < GRADCHECK_RTOL, la.name
        assert (db[la.name][~la.bias_mask] == 0).all()


def test_finetuning_keeps_ties_and_mask_and_round_trips(tmp_path, rng):
    layers, _, _ = tiny_problem(rng)
    x = rng.standard_normal((40, *TINY.input_shape)).astype(np.float32)
    y = rng.integers(0, TINY.n_classes, size=40)
    cfg = TrainConfig(iterations=20, batch_size=8, test_interval=10, sgd=SGDConfig(base_lr=0.01))
    tuned, hist = finetune_centroids(TINY, layers, x, y, cfg, rng=np.random.default_rng(1), x_test=x,
                                     y_test=y)
    assert [h[0] for h in hist] == [10, 20]
    for a, b in zip(layers, tuned, strict=True):
        assert np.array_equal(a.indices, b.indices) and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.bias_mask, b.bias_mask)
        assert b.codebook.dtype == np.float32 and not np.array_equal(a.codebook, b.codebook)
        assert (b.weight[~b.mask] == 0).all()
        assert np.array_equal(b.bias[~b.bias_mask], a.bias[~a.bias_mask])  # pruned biases untouched
    params, _ = dequantize_net(tuned)
    _, back, _ = read_rdc(write_rdc(tmp_path / "t.rdc", TINY.name, tuned))
    for k in params:
        assert np.array_equal(back[k].view(np.uint32), params[k].view(np.uint32)), k
    # the same seed gives the same run
    again, _ = finetune_centroids(TINY, layers, x, y, cfg, rng=np.random.default_rng(1))
    assert all(np.array_equal(a.codebook, b.codebook) for a, b in zip(tuned, again, strict=True))


def test_finetuning_lowers_the_training_loss(rng):
    layers, _, _ = tiny_problem(rng)
    x = rng.standard_normal((32, *TINY.input_shape)).astype(np.float32)
    y = rng.integers(0, TINY.n_classes, size=32)
    cfg = TrainConfig(iterations=60, batch_size=32, sgd=SGDConfig(base_lr=0.01, weight_decay=0.0))
    tuned, _ = finetune_centroids(TINY, layers, x, y, cfg, rng=np.random.default_rng(0))

    def loss(ls):
        return centroid_loss_and_grads(TINY, ls, CentroidState.from_layers(ls), x, y)[0]

    assert loss(tuned) < 0.9 * loss(layers)


def test_bad_inputs_are_named(rng):
    layers, x, y = tiny_problem(rng)
    cfg = TrainConfig(iterations=1, batch_size=2)
    with pytest.raises(CompressError, match="do not fit lenet-300-100"):
        finetune_centroids(get_spec("lenet-300-100"), layers, x.astype(np.float32), y, cfg, rng=rng)
    state = CentroidState.from_layers(layers)
    state.codebooks["f1"][:] = np.inf
    with pytest.raises(NonFiniteError, match="iteration 0"), np.errstate(invalid="ignore"):
        centroid_step(TINY, layers, state, x[:2].astype(np.float32), y[:2], SGDConfig())
    assert tied_params(layers, CentroidState.from_layers(layers))["f1.weight"].dtype == np.float32
