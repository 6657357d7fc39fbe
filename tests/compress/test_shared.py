"""Shared weights and the centroid gradient, Deep Compression eq. (3), checked by central differences."""

from __future__ import annotations

import numpy as np
import pytest

from refdns.compress.quantize import quantize_net
from refdns.compress.shared import centroid_grad, shared_weights
from refdns.errors import CompressError
from refdns.layers import softmax_cross_entropy
from refdns.nets import NetSpec, Op, backward, forward, init_params
from tests.gradcheck import numerical_gradient, rel_error
from tests.tolerances import GRADCHECK_RTOL

TINY = NetSpec(
    name="tiny-conv-mlp",
    input_shape=(1, 6, 6),
    n_classes=3,
    ops=(
        Op("conv", "c1", w_shape=(2, 1, 3, 3), b_shape=(2,)),
        Op("relu"),
        Op("flatten"),
        Op("dense", "f1", w_shape=(5, 32), b_shape=(5,)),
        Op("relu"),
        Op("dense", "f2", w_shape=(3, 5), b_shape=(3,)),
    ),
)


def test_shared_weights_places_centroids_at_kept_positions():
    mask = np.array([[True, False, True], [False, True, True]])
    codebook = np.array([-1.5, 0.25, 2.0], dtype=np.float32)
    w = shared_weights(codebook, np.array([2, 0, 1, 0]), mask)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, np.array([[2.0, 0, -1.5], [0, 0.25, -1.5]], dtype=np.float32))


def test_centroid_grad_sums_member_gradients(rng):
    mask = rng.random((6, 7)) < 0.6
    idx = rng.integers(0, 4, size=int(mask.sum()))
    dw = rng.standard_normal(mask.shape)
    dc = centroid_grad(dw, idx, mask, 5)
    expected = np.zeros(5)
    for (i, j), k in zip(np.argwhere(mask), idx, strict=True):  # row-major order, the order of indices
        expected[k] += dw[i, j]
    np.testing.assert_allclose(dc, expected, rtol=1e-12, atol=1e-12)
    assert dc[4] == 0  # a cluster without members gets no gradient
    assert centroid_grad(dw.astype(np.float32), idx, mask, 5).dtype == np.float32


def test_gradient_of_pruned_weights_is_ignored(rng):
    mask = rng.random((4, 4)) < 0.5
    idx = np.zeros(int(mask.sum()), dtype=np.int64)
    dw = rng.standard_normal(mask.shape)
    dw2 = dw.copy()
    dw2[~mask] = 1e6
    assert np.array_equal(centroid_grad(dw, idx, mask, 1), centroid_grad(dw2, idx, mask, 1))


def test_centroid_gradient_matches_central_differences(rng):
    """dL/dC of eq. (3) against float64 central differences of the cross-entropy w.r.t. every centroid."""
    params = init_params(TINY, rng=rng)
    for k in params:
        params[k] = (rng.standard_normal(params[k].shape) * 0.5).astype(np.float32)
    masks = {k: rng.random(v.shape) < 0.7 for k, v in params.items()}
    layers = quantize_net(TINY, params, masks, bits={"c1": 2, "f1": 3, "f2": 2})
    x = rng.standard_normal((4, *TINY.input_shape))  # float64
    y = rng.integers(0, TINY.n_classes, size=4)
    biases = {f"{la.name}.bias": la.bias.astype(np.float64) * la.bias_mask for la in layers}

    def loss(codebooks: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        p = dict(biases)
        for la in layers:
            p[f"{la.name}.weight"] = shared_weights(codebooks[la.name], la.indices, la.mask)
        logits, cache = forward(TINY, p, x)
        value, dlogits = softmax_cross_entropy(logits, y)
        return float(value), backward(TINY, dlogits, cache)

    codebooks = {la.name: la.codebook.astype(np.float64) for la in layers}
    _, grads = loss(codebooks)
    for la in layers:
        analytic = centroid_grad(grads[f"{la.name}.weight"], la.indices, la.mask, la.n_clusters)

        def f(c: np.ndarray, name: str = la.name) -> float:
            return loss({**codebooks, name: c})[0]

        numeric = numerical_gradient(f, codebooks[la.name])
        assert la.n_clusters >= 2 and np.abs(analytic).max() > 1e-3  # a real test, not 0 against 0
        assert rel_error(analytic, numeric) < GRADCHECK_RTOL, la.name


def test_bad_ties_are_refused(rng):
    mask = rng.random((3, 4)) < 0.5
    n = int(mask.sum())
    dw = np.zeros(mask.shape)
    with pytest.raises(CompressError, match="keeps"):
        centroid_grad(dw, np.zeros(n + 1, dtype=np.int64), mask, 2)
    with pytest.raises(CompressError, match="outside"):
        centroid_grad(dw, np.full(n, 2), mask, 2)
    with pytest.raises(CompressError, match="outside"):
        shared_weights(np.zeros(2, dtype=np.float32), np.full(n, -1), mask)
    with pytest.raises(CompressError, match="bool"):
        centroid_grad(dw, np.zeros(n, dtype=np.int64), mask.astype(np.int8), 2)
    with pytest.raises(CompressError, match="shape"):
        centroid_grad(dw[:, :2], np.zeros(n, dtype=np.int64), mask, 2)
    with pytest.raises(CompressError, match="n_clusters"):
        centroid_grad(dw, np.zeros(n, dtype=np.int64), mask, -1)
    with pytest.raises(CompressError, match="float"):
        centroid_grad(dw.astype(np.int32), np.zeros(n, dtype=np.int64), mask, 2)
